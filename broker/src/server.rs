//! `corelog serve`: one pinned glommio executor per shard, each accepting on the shared
//! port (SO_REUSEPORT), joined by a channel mesh.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

use crate::cluster::transport::{self, Peers};
use crate::cluster::{ClusterCtx, controller};
use crate::config::Config;
use crate::conn;
use crate::shard::{Shard, ShardMsg};
use crate::tls::TlsState;
use corelog_replication::NodeId;

/// Capacity of each shard-to-shard channel; senders wait when it is full.
const MESH_CAPACITY: usize = 1024;
const PREEMPT_MS: u64 = 5;

pub fn run(cfg: Config) -> Result<(), String> {
    cfg.check()?;
    let shards = cfg.shard_count();
    // Every shard binds with SO_REUSEPORT, which would also let a second broker (same
    // user) share the port silently and take half the connections: refuse to start when
    // something already answers there. (A plain bind test would also trip over the
    // TIME_WAIT sockets a restart leaves behind.)
    use std::net::ToSocketAddrs;
    let listeners = cfg.listener_list()?;
    let mut addrs: Vec<std::net::SocketAddr> = Vec::new();
    for addr in listeners
        .iter()
        .map(|l| &l.addr)
        .chain(cfg.metrics_listen.as_ref())
    {
        addrs.extend(
            addr.to_socket_addrs()
                .map_err(|e| format!("bad listen address {addr}: {e}"))?,
        );
    }
    // A broker that just died can hold its listening socket for a moment longer (io_uring
    // tears down its pending accepts asynchronously), so a restart waits for it to go.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Some(busy) = addrs
        .iter()
        .find(|a| std::net::TcpStream::connect_timeout(a, Duration::from_millis(300)).is_ok())
    {
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "cannot listen on {busy}: another process is already listening there"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if cfg.clustered() && cfg.cluster_secret_file.is_none() {
        tracing::warn!(
            "no cluster_secret_file: any host that reaches the RPC listener can act as a broker of this cluster"
        );
    }
    raise_open_files_limit();
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", cfg.data_dir.display()))?;
    // Relative paths (the default ./corelog-data) are resolved once, here: glommio's
    // io_uring opens refuse them.
    let mut cfg = cfg;
    cfg.data_dir = std::fs::canonicalize(&cfg.data_dir)
        .map_err(|e| format!("data dir {}: {e}", cfg.data_dir.display()))?;
    // One broker per data dir: a second one would interleave writes to the same logs. The
    // lock is released by the kernel when this process ends, however it ends.
    let lock_path = cfg.data_dir.join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    use std::os::fd::AsRawFd;
    if nix::fcntl::flock(
        lock.as_raw_fd(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .is_err()
    {
        return Err(format!(
            "data dir {} is in use by another corelog process",
            cfg.data_dir.display()
        ));
    }
    // Created here, once, before the shards start: they all read it concurrently.
    let meta = crate::topics::MetaFile::load_or_create(&cfg.data_dir)
        .map_err(|e| format!("metadata in {}: {e}", cfg.data_dir.display()))?;
    // A broker whose every listener is SASL and that knows no user could never be used:
    // no one could log in to make the first one.
    let listeners = cfg.listener_list()?;
    let config_users = cfg.sasl.as_ref().is_some_and(|s| !s.users.is_empty());
    if !listeners.is_empty()
        && listeners.iter().all(|l| l.protocol.sasl())
        && !config_users
        && !cfg.clustered()
        && meta.security.credentials.is_empty()
    {
        return Err("a SASL listener needs users: [[sasl.users]] name and password in the config (for the first admin; more with `corelog user create`), or another listener to make them through".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| e.to_string())?;
    }
    // SIGHUP reloads the TLS certificate: counted here, noticed by every shard.
    let hangups = Arc::new(AtomicUsize::new(0));
    // SASL users' credentials, derived once (PBKDF2) for every shard.
    // (Without a [sasl] table too: the key of unknown users' salts is drawn there.)
    let users = Arc::new(crate::sasl::Users::from_config(
        &cfg.sasl.clone().unwrap_or_default(),
    )?);
    {
        let hangups = hangups.clone();
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
            .map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("corelog-sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    hangups.fetch_add(1, Ordering::SeqCst);
                }
            })
            .map_err(|e| e.to_string())?;
    }
    let mesh = MeshBuilder::<ShardMsg, _>::full(shards, MESH_CAPACITY);
    let drained = Arc::new(AtomicUsize::new(0));
    let per_ip = crate::limits::PerIp::new(cfg.max_connections_per_ip);
    let cfg = Arc::new(cfg);
    // Only the allowed CPUs: several brokers on one machine (`corelog dev`, a benchmark's
    // cluster) each get their own instead of all pinning to the first.
    let allowed = cfg.cpu_list()?;
    let cpus = glommio::CpuSet::online()
        .map_err(|e| format!("cannot read the CPU topology: {e}"))?
        .filter(|l| allowed.contains(&l.cpu));
    let handles = LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(shards, Some(cpus)))
        .name("corelog-shard")
        // Shorter than glommio's 100 ms default: a task that runs long yields sooner, and
        // the executor re-checks its rings for completions that often.
        .preempt_timer(Duration::from_millis(PREEMPT_MS))
        .on_all_shards(move || {
            let (cfg, mesh, stop, drained, per_ip, hangups, users) = (
                cfg.clone(),
                mesh.clone(),
                stop.clone(),
                drained.clone(),
                per_ip.clone(),
                hangups.clone(),
                users.clone(),
            );
            async move {
                let r = shard_main(
                    Rc::new((*cfg).clone()),
                    mesh,
                    stop.clone(),
                    drained.clone(),
                    per_ip,
                    hangups,
                    users,
                )
                .await;
                if let Err(e) = &r {
                    // It never reaches the drain point: count it so the others can finish.
                    drained.fetch_add(1, Ordering::SeqCst);
                    // One shard down means partitions nobody serves: stop them all.
                    tracing::error!(error = %e, "shard failed; stopping the broker");
                    stop.store(true, Ordering::Relaxed);
                }
                r
            }
        })
        .map_err(|e| format!("cannot start shards: {e}"))?;
    let mut first_err = None;
    for r in handles.join_all() {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => first_err = first_err.or(Some(format!("shard failed: {e}"))),
        }
    }
    drop(lock);
    match first_err {
        None => {
            tracing::info!("corelog stopped");
            Ok(())
        }
        Some(e) => Err(e),
    }
}

/// Every segment and index is an open file: raise the soft RLIMIT_NOFILE to the hard limit
/// (the usual soft 1024 runs out at a few hundred partitions) and say what it is.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            let now = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            };
            tracing::info!(open_files = now, was = soft, "open files limit");
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

async fn shard_main(
    cfg: Rc<Config>,
    mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    stop: Arc<AtomicBool>,
    drained: Arc<AtomicUsize>,
    per_ip: Arc<crate::limits::PerIp>,
    hangups: Arc<AtomicUsize>,
    users: Arc<crate::sasl::Users>,
) -> Result<(), String> {
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|e| format!("shard mesh join failed: {e}"))?;
    let secret: Option<Rc<[u8]>> = cfg.cluster_secret()?.map(Rc::from);
    // Mutual TLS on the RPC links (checked at start: rpc_tls needs [tls] with a CA).
    let rpc_tls = match (&cfg.tls, cfg.rpc_tls && cfg.clustered()) {
        (Some(t), true) => {
            let stopping = stop.clone();
            Some(TlsState::watch(
                t.clone(),
                hangups.clone(),
                false,
                Rc::new(move || stopping.load(Ordering::SeqCst)),
                crate::tls::TlsConfig::load_rpc,
            )?)
        }
        _ => None,
    };
    let cluster = if cfg.clustered() {
        let voters = cfg.voter_list()?;
        let me = cfg.node_id as NodeId;
        let (host, port) = cfg.advertised();
        let peers = Peers::start(
            me,
            &voters,
            (host, port as u16),
            secret.clone(),
            rpc_tls.clone(),
        );
        Some(Rc::new(ClusterCtx { me, voters, peers }))
    } else {
        None
    };
    let shard = Shard::start(cfg.clone(), senders, cluster.clone(), users).await?;
    if let Some(c) = &cluster {
        let rpc = cfg.rpc_listen.clone().expect("checked by voter_list");
        transport::listen(
            &rpc,
            Rc::new(c.voter_ids()),
            c.me,
            shard.clone(),
            secret.clone(),
            rpc_tls,
        )
        .await?;
        glommio::spawn_local(shard.clone().relay_views()).detach();
        if shard.id == 0 {
            glommio::spawn_local(shard.clone().announce_claims()).detach();
            let (host, port) = cfg.advertised();
            let weak = Rc::downgrade(&shard);
            let handle = controller::start(
                cfg.data_dir.join("cluster").join("controller"),
                c.me,
                c.voter_ids(),
                c.peers.clone(),
                (host, port as u16),
                Rc::new(move |meta, leader| {
                    if let Some(s) = weak.upgrade() {
                        s.on_metadata(meta, leader);
                    }
                }),
            )
            .await?;
            shard.set_controller(handle);
            tracing::info!(node = c.me, rpc = %rpc, voters = ?c.voters, "cluster member");
        }
    }
    for (from, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                glommio::spawn_local(shard.clone().on_message(from, msg)).detach();
            }
        })
        .detach();
    }
    {
        // Group sessions and rebalance deadlines advance on this clock.
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while !shard.stopping.get() {
                glommio::timer::sleep(Duration::from_millis(100)).await;
                shard.tick_groups();
            }
        })
        .detach();
    }
    {
        let shard = shard.clone();
        crate::disk_space::spawn_watcher(
            cfg.data_dir.clone(),
            cfg.storage_min_free_bytes,
            move || shard.stopping.get(),
        );
    }
    let listeners = cfg.listener_list()?;
    let tls = match (&cfg.tls, listeners.iter().any(|l| l.protocol.tls())) {
        (Some(t), true) => Some(TlsState::start(t.clone(), hangups, shard.clone())?),
        _ => None,
    };
    // Every SASL listener authenticates, with the [sasl] settings or their defaults.
    let auth = match listeners.iter().any(|l| l.protocol.sasl()) {
        true => Some(Rc::new(crate::sasl::Auth::new(
            &cfg.sasl.clone().unwrap_or_default(),
        )?)),
        false => None,
    };
    // Shard 0 alone serves the metrics listener: a scrape gathers every shard from there.
    if let (0, Some(addr)) = (shard.id, &cfg.metrics_listen) {
        let socket =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        glommio::spawn_local(crate::observe::http::serve(shard.clone(), socket)).detach();
        tracing::info!(metrics = %addr, "metrics listener: /metrics, /health, /ready");
    }
    let mut bound = Vec::new();
    for l in &listeners {
        bound.push(
            TcpListener::bind(&l.addr).map_err(|e| format!("cannot listen on {}: {e}", l.addr))?,
        );
    }
    if shard.id == 0 {
        tracing::info!(
            listeners = ?listeners.iter().map(|l| format!("{}://{}", l.name, l.addr)).collect::<Vec<_>>(),
            advertised = ?listeners.iter().map(|l| format!("{}://{}:{}", l.name, l.advertised.0, l.advertised.1)).collect::<Vec<_>>(),
            shards = shard.count,
            data_dir = %cfg.data_dir.display(),
            cluster_id = %shard.cluster_id.borrow(),
            "corelog serving"
        );
    }
    {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while !stop.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            if shard.id == 0 {
                tracing::info!("shutting down: no new connections; finishing requests in flight");
            }
            shard.stopping.set(true);
            shard.shutdown.notify(usize::MAX);
        })
        .detach();
    }
    let accepting: Vec<_> = listeners
        .iter()
        .zip(bound)
        .enumerate()
        .map(|(index, (l, socket))| {
            let tls = l.protocol.tls().then(|| tls.clone().expect("checked"));
            let auth = l.protocol.sasl().then(|| auth.clone().expect("checked"));
            glommio::spawn_local(accept_loop(
                shard.clone(),
                socket,
                index,
                (tls, auth),
                per_ip.clone(),
            ))
        })
        .collect();
    futures::future::join_all(accepting).await;
    // Requests in flight finish (long polls end at their max wait); then every partition
    // syncs and closes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut reported = false;
    while shard.connections.get() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
        if !reported && std::time::Instant::now() + Duration::from_secs(29) > deadline {
            reported = true;
            tracing::info!(
                shard = shard.id,
                open = shard.connections.get(),
                "waiting for connections to finish their requests"
            );
        }
    }
    // Other shards' connections may still forward requests for partitions this shard
    // owns: serve them until every shard has drained, then close the partitions.
    drained.fetch_add(1, Ordering::SeqCst);
    while drained.load(Ordering::SeqCst) < shard.count {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    shard.close_all().await;
    if let Some(c) = &cluster {
        c.peers.stop();
    }
    Ok(())
}

/// A TLS handshake must end within this long after the connection is accepted.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on one listener until the broker stops; each is served by its
/// own task (after its TLS handshake on an SSL listener).
async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    index: usize,
    (tls, auth): (Option<Rc<TlsState>>, Option<Rc<crate::sasl::Auth>>),
    per_ip: Arc<crate::limits::PerIp>,
) {
    let cfg = shard.cfg.clone();
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.stopped().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        if shard.connections.get() >= cfg.max_connections_per_shard {
            tracing::warn!(%peer, limit = cfg.max_connections_per_shard, "refusing connection: too many connections");
            drop(stream);
            continue;
        }
        let Some(slot) = per_ip.admit(peer.ip()) else {
            tracing::info!(%peer, limit = cfg.max_connections_per_ip, "refusing connection: too many connections from this address");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        shard.connections.set(shard.connections.get() + 1);
        let s = shard.clone();
        let tls = tls.clone();
        let auth = auth.clone();
        glommio::spawn_local(async move {
            match tls {
                None => conn::serve(s.clone(), stream, peer, index, auth).await,
                Some(tls) => {
                    let handshake = futures_rustls::TlsAcceptor::from(tls.current()).accept(stream);
                    let done = futures_lite::future::or(async { Some(handshake.await) }, async {
                        glommio::timer::sleep(TLS_HANDSHAKE_TIMEOUT).await;
                        None
                    })
                    .await;
                    match done {
                        Some(Ok(stream)) => {
                            conn::serve(s.clone(), stream, peer, index, auth).await
                        }
                        Some(Err(e)) => crate::tls::log_refused(peer, &e),
                        None => tracing::debug!(%peer, "closing connection: no TLS handshake within 10 s"),
                    }
                }
            }
            drop(slot);
            s.connections.set(s.connections.get() - 1);
        })
        .detach();
    }
}
