//! Broker-to-broker traffic: `frame.rs` envelopes over TCP on the RPC listener.
//!
//! Every shard keeps one outgoing connection to each peer broker, written by one task per
//! peer from a bounded queue ([`Peers`]); the Raft groups of the shard hand envelopes to
//! it and never wait: when a peer is slow or gone its queue fills and further envelopes
//! are dropped (Raft retransmits), so a dead peer costs nothing but its own queue. The
//! writer merges everything queued into one envelope per write, so the heartbeats of
//! every group the shard shares with that peer leave in one frame.
//!
//! Connections are one-way: a broker reads only on the connections peers opened to it.
//! Every shard accepts on the RPC address (SO_REUSEPORT), reads a hello naming the peer,
//! then frames; each item goes to the shard that owns its group (over the mesh when that
//! is another shard) and into the group's queue, again without waiting. A malformed
//! frame, a hello from a node that is not a voter, or an envelope that claims another
//! sender closes that connection only, and is logged.
//!
//! With `rpc_tls` every link is mutual TLS (rustls: both brokers show a certificate of the
//! cluster's CA, the connecting one checks the name it dialed), and the challenge and hello
//! run inside it; the certificates reload like the Kafka listeners' (`TlsState`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corelog_replication::{Envelope, GroupId, LeaderClaim, Message, NodeId, frame};
use event_listener::Event;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::tls::{RpcTls, TlsState};

/// An RPC connection's bytes: plain TCP, or TLS over it.
trait RpcStream: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin {}
impl<T: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin> RpcStream for T {}
type Stream = Box<dyn RpcStream>;

/// TLS of the RPC links on this shard, when `rpc_tls` is on.
pub type RpcTlsState = Option<Rc<TlsState<RpcTls>>>;

/// How a writer opens its connection: TLS if on, then the hello with its secret's tag.
struct Opening {
    hello: Rc<Vec<u8>>,
    secret: Option<Rc<[u8]>>,
    tls: RpcTlsState,
}

/// First bytes of every RPC connection, then a version byte, the sender's node id and
/// its advertised Kafka address (`[u8 len][host][u16 LE port]`): how the controller
/// leader learns the address to register for each broker. Version 2 follows it with a
/// tag that proves the sender knows the cluster's secret (see [`hello_tag`]).
pub const HELLO_MAGIC: &[u8; 4] = b"CLRP";
pub const HELLO_VERSION: u8 = 2;
const HELLO_FIXED: usize = 10;
/// The accepting broker's random challenge, the first bytes it writes; and the tag's size.
pub const CHALLENGE_LEN: usize = 32;
pub const TAG_LEN: usize = 32;

/// Bytes of envelopes queued toward one peer (per shard) before new ones are dropped.
const QUEUE_BYTES: usize = 16 << 20;
/// Envelopes queued toward one peer (per shard): bounds the small ones too.
const QUEUE_ENVELOPES: usize = 4096;
/// Entry bytes merged into one frame.
const FRAME_TARGET: usize = 8 << 20;
/// Largest frame read from a peer: bounds what one connection can make us buffer.
const MAX_FRAME: usize = 32 << 20;

/// The least a peer connection reads at once, and the most room it makes for one read.
const READ_CHUNK: usize = 64 << 10;
const READ_MAX: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// An accepted RPC connection must prove the secret within this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A write that makes no progress for this long (a peer that stopped reading) drops the
/// connection: the queue behind it would only be stale by then.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection silent this long is dead (writers send a keepalive every `KEEPALIVE`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const KEEPALIVE: Duration = Duration::from_secs(5);
/// Incoming RPC connections per shard (peers need one each).
const MAX_INBOUND: usize = 64;

fn env_bytes(env: &Envelope) -> usize {
    let claims: usize = env
        .claims
        .iter()
        .flatten()
        .map(|c| 16 + 4 * c.isr.len())
        .sum();
    claims
        + env.proposals.iter().map(Bytes::len).sum::<usize>()
        + env
            .items
            .iter()
            .map(|(_, m)| match m {
                Message::Append(a) => 64 + a.entries.iter().map(Bytes::len).sum::<usize>(),
                _ => 32,
            })
            .sum::<usize>()
}

/// One peer's queue on this shard.
struct Link {
    addr: String,
    queue: RefCell<VecDeque<Envelope>>,
    bytes: Cell<usize>,
    wake: Event,
    dropped: Cell<u64>,
}

/// This shard's outgoing side: a queue and a writer task per peer broker.
pub struct Peers {
    me: NodeId,
    links: BTreeMap<NodeId, Rc<Link>>,
    stopping: Rc<Cell<bool>>,
}

/// What a peer says about itself when it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub node: NodeId,
    pub host: String,
    pub port: u16,
}

impl Peers {
    /// Starts a writer per peer (every voter but `me`); each connection opens with a
    /// hello naming `me` and its Kafka address.
    pub fn start(
        me: NodeId,
        voters: &[(NodeId, String)],
        kafka: (String, u16),
        secret: Option<Rc<[u8]>>,
        tls: RpcTlsState,
    ) -> Rc<Self> {
        let hello = Rc::new(encode_hello(&Hello {
            node: me,
            host: kafka.0,
            port: kafka.1,
        }));
        let stopping = Rc::new(Cell::new(false));
        let mut links = BTreeMap::new();
        for (id, addr) in voters {
            if *id == me {
                continue;
            }
            let link = Rc::new(Link {
                addr: addr.clone(),
                queue: RefCell::new(VecDeque::new()),
                bytes: Cell::new(0),
                wake: Event::new(),
                dropped: Cell::new(0),
            });
            links.insert(*id, link.clone());
            glommio::spawn_local(writer(
                me,
                *id,
                link,
                stopping.clone(),
                Opening {
                    hello: hello.clone(),
                    secret: secret.clone(),
                    tls: tls.clone(),
                },
            ))
            .detach();
        }
        Rc::new(Self {
            me,
            links,
            stopping,
        })
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Queues `env` for `to`; never waits. Dropped when the peer's queue is full or the
    /// peer unknown: Raft retransmits what matters.
    pub fn send(&self, to: NodeId, env: Envelope) {
        let Some(link) = self.links.get(&to) else {
            tracing::debug!(to, "no RPC link to this node");
            return;
        };
        let n = env_bytes(&env);
        if link.bytes.get() + n > QUEUE_BYTES || link.queue.borrow().len() >= QUEUE_ENVELOPES {
            let d = link.dropped.get() + 1;
            link.dropped.set(d);
            if d.is_power_of_two() {
                tracing::debug!(to, dropped = d, "RPC queue full; dropping envelopes");
            }
            return;
        }
        link.bytes.set(link.bytes.get() + n);
        link.queue.borrow_mut().push_back(env);
        link.wake.notify(1);
    }

    pub fn stop(&self) {
        self.stopping.set(true);
        for l in self.links.values() {
            l.wake.notify(usize::MAX);
        }
    }
}

/// Takes everything queued (up to `FRAME_TARGET` entry bytes) as one envelope.
fn merge(me: NodeId, link: &Link) -> Option<Envelope> {
    let mut q = link.queue.borrow_mut();
    let first = q.pop_front()?;
    let mut size = env_bytes(&first);
    let mut items = first.items;
    let mut claims = first.claims;
    let mut proposals = first.proposals;
    while let Some(next) = q.front() {
        let n = env_bytes(next);
        if size + n > FRAME_TARGET {
            break;
        }
        size += n;
        let next = q.pop_front().expect("peeked");
        items.extend(next.items);
        proposals.extend(next.proposals);
        // Each announcement is a whole set: the newest replaces any before it.
        if next.claims.is_some() {
            claims = next.claims;
        }
    }
    link.bytes.set(link.bytes.get().saturating_sub(size));
    Some(Envelope {
        from: me,
        items,
        claims,
        proposals,
    })
}

/// HMAC-SHA256 under the cluster secret of the acceptor's challenge and the hello: only a
/// broker that has the secret can make it, and it is good for that one connection. With
/// no secret configured it is zeros (and not checked).
pub fn hello_tag(secret: Option<&[u8]>, challenge: &[u8], hello: &[u8]) -> [u8; TAG_LEN] {
    let mut tag = [0u8; TAG_LEN];
    if let Some(secret) = secret {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(b"corelog-rpc-hello-v2");
        ctx.update(challenge);
        ctx.update(hello);
        tag.copy_from_slice(ctx.sign().as_ref());
    }
    tag
}

/// Whether `tag` proves the secret for this challenge and hello (constant time).
fn tag_ok(secret: Option<&[u8]>, challenge: &[u8], hello: &[u8], tag: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    match secret {
        None => true,
        Some(_) => bool::from(hello_tag(secret, challenge, hello).ct_eq(tag)),
    }
}

pub fn encode_hello(h: &Hello) -> Vec<u8> {
    let host = &h.host.as_bytes()[..h.host.len().min(255)];
    let mut out = Vec::with_capacity(HELLO_FIXED + host.len() + 2);
    out.extend_from_slice(HELLO_MAGIC);
    out.push(HELLO_VERSION);
    out.extend_from_slice(&h.node.to_le_bytes());
    out.push(host.len() as u8);
    out.extend_from_slice(host);
    out.extend_from_slice(&h.port.to_le_bytes());
    out
}

/// Parses the fixed part of a hello: (node, host length).
fn hello_head(b: &[u8; HELLO_FIXED]) -> Result<(NodeId, usize), String> {
    if &b[..4] != HELLO_MAGIC || b[4] != HELLO_VERSION {
        return Err("not a corelog RPC hello".into());
    }
    Ok((
        u32::from_le_bytes(b[5..9].try_into().expect("4 bytes")),
        b[9] as usize,
    ))
}

async fn with_timeout<T>(
    d: Duration,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    futures_lite::future::or(f, async {
        glommio::timer::sleep(d).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        ))
    })
    .await
}

/// Connects to a peer's RPC address, with TLS when `tls` says so (the peer's certificate
/// must name the host of `addr`).
async fn connect(addr: &str, tls: &RpcTlsState) -> std::io::Result<Stream> {
    let tcp = connect_tcp(addr).await?;
    let Some(tls) = tls else {
        return Ok(Box::new(tcp));
    };
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
    let connector = futures_rustls::TlsConnector::from(tls.current().client);
    let stream = with_timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await?;
    Ok(Box::new(stream))
}

async fn connect_tcp(addr: &str) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let a: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing")))?;
    let s = TcpStream::connect_timeout(a, CONNECT_TIMEOUT)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    s.set_nodelay(true)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(s)
}

/// Keeps a connection to one peer and writes its queue into it, reconnecting with
/// backoff. While the peer is unreachable its queue is dropped rather than kept: what
/// it held is stale by the time the peer is back.
async fn writer(
    me: NodeId,
    to: NodeId,
    link: Rc<Link>,
    stopping: Rc<Cell<bool>>,
    Opening { hello, secret, tls }: Opening,
) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    while !stopping.get() {
        let mut stream = match connect(&link.addr, &tls).await {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::info!(peer = to, addr = %link.addr, error = %e, failures, "cannot reach peer broker; retrying");
                }
                link.queue.borrow_mut().clear();
                link.bytes.set(0);
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(peer = to, addr = %link.addr, "connected to peer broker");
        }
        failures = 0;
        // The peer speaks first: its challenge, which the hello's tag answers.
        let mut challenge = [0u8; CHALLENGE_LEN];
        if let Err(e) = with_timeout(WRITE_TIMEOUT, stream.read_exact(&mut challenge)).await {
            tracing::debug!(peer = to, error = %e, "no RPC challenge");
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        let mut signed = hello.to_vec();
        signed.extend_from_slice(&hello_tag(secret.as_deref(), &challenge, &hello));
        if let Err(e) = with_timeout(WRITE_TIMEOUT, stream.write_all(&signed)).await {
            tracing::debug!(peer = to, error = %e, "RPC hello failed");
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        // The peer answered with its challenge: a live link (a peer that closes at once,
        // full or shutting down, is retried with backoff above, not in a tight loop).
        backoff = BACKOFF_MIN;
        loop {
            let env = loop {
                let l = link.wake.listen();
                if stopping.get() {
                    return;
                }
                if let Some(env) = merge(me, &link) {
                    break env;
                }
                // A link that only followers use can go quiet for long: an empty
                // envelope now and then keeps the peer from closing it as dead.
                let woke = futures_lite::future::or(
                    async {
                        l.await;
                        true
                    },
                    async {
                        glommio::timer::sleep(KEEPALIVE).await;
                        false
                    },
                )
                .await;
                if !woke {
                    break Envelope {
                        from: me,
                        items: Vec::new(),
                        claims: None,
                        proposals: Vec::new(),
                    };
                }
            };
            let bytes = frame::encode(&env);
            if let Err(e) = with_timeout(WRITE_TIMEOUT, stream.write_all(&bytes)).await {
                tracing::info!(peer = to, error = %e, "RPC connection lost; reconnecting");
                break;
            }
        }
    }
}

/// Where received items go: implemented by the shard (its groups, and the mesh to the
/// shards that own the others).
pub trait Deliver {
    /// Hands `items` from `from` to their groups; never waits.
    fn deliver(&self, from: NodeId, items: Vec<(GroupId, Message)>);
    /// A peer announced the groups it leads (see `claims.rs`); never waits.
    fn claims(&self, from: NodeId, claims: Vec<LeaderClaim>);
    /// A peer connected and said who it is.
    fn hello(&self, hello: Hello);
    /// A peer asks this broker, as the controller's leader, to propose these controller
    /// batches (see `Envelope::proposals`); never waits.
    fn proposals(&self, from: NodeId, batches: Vec<Bytes>);
    fn stopping(&self) -> bool;
}

/// Accepts peer connections on `addr` (every shard binds it) until `deliver` stops.
pub async fn listen(
    addr: &str,
    voters: Rc<Vec<NodeId>>,
    me: NodeId,
    deliver: Rc<impl Deliver + 'static>,
    secret: Option<Rc<[u8]>>,
    tls: RpcTlsState,
) -> Result<(), String> {
    let listener =
        TcpListener::bind(addr).map_err(|e| format!("cannot listen for RPC on {addr}: {e}"))?;
    let open = Rc::new(Cell::new(0usize));
    glommio::spawn_local(async move {
        loop {
            let accepted =
                futures_lite::future::or(async { Some(listener.accept().await) }, async {
                    while !deliver.stopping() {
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    }
                    None
                })
                .await;
            let stream = match accepted {
                None => return,
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "RPC accept failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let peer = stream
                .peer_addr()
                .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
            if open.get() >= MAX_INBOUND {
                tracing::warn!(%peer, "refusing RPC connection: too many");
                continue;
            }
            open.set(open.get() + 1);
            let (open, voters, deliver) = (open.clone(), voters.clone(), deliver.clone());
            let secret = secret.clone();
            let tls = tls.clone();
            glommio::spawn_local(async move {
                let stream: Result<Stream, String> = match tls {
                    None => Ok(Box::new(stream)),
                    Some(tls) => {
                        let acceptor = futures_rustls::TlsAcceptor::from(tls.current().server);
                        with_timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                            .map(|s| Box::new(s) as Stream)
                            .map_err(|e| format!("TLS handshake failed: {e}"))
                    }
                };
                let served = match stream {
                    Ok(stream) => {
                        serve_peer(stream, &voters, me, &*deliver, secret.as_deref()).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(why) = served {
                    tracing::warn!(%peer, "closing RPC connection: {why}");
                }
                open.set(open.get() - 1);
            })
            .detach();
        }
    })
    .detach();
    Ok(())
}

/// Reads one peer connection: the hello, then frames, each delivered as it arrives.
/// Returns why it closed (a clean EOF is `Ok`).
async fn serve_peer(
    mut stream: Stream,
    voters: &[NodeId],
    me: NodeId,
    deliver: &impl Deliver,
    secret: Option<&[u8]>,
) -> Result<(), String> {
    let mut challenge = [0u8; CHALLENGE_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut challenge)
        .map_err(|_| "no random numbers for the RPC challenge".to_string())?;
    // One deadline for the whole handshake: a connection that has not proven the secret
    // holds one of the shard's few inbound slots only this long.
    let deadline = std::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    with_timeout(left(), stream.write_all(&challenge))
        .await
        .map_err(|e| format!("cannot send the RPC challenge: {e}"))?;
    let mut h = [0u8; HELLO_FIXED];
    with_timeout(left(), stream.read_exact(&mut h))
        .await
        .map_err(|e| format!("no hello: {e}"))?;
    let (from, host_len) = hello_head(&h)?;
    if from == me || !voters.contains(&from) {
        return Err(format!("hello from node {from}, which is not a peer voter"));
    }
    let mut rest = vec![0u8; host_len + 2 + TAG_LEN];
    with_timeout(left(), stream.read_exact(&mut rest))
        .await
        .map_err(|e| format!("short hello: {e}"))?;
    let (body, tag) = rest.split_at(host_len + 2);
    let mut signed = h.to_vec();
    signed.extend_from_slice(body);
    if !tag_ok(secret, &challenge, &signed, tag) {
        return Err(format!(
            "hello from node {from} failed authentication (no cluster secret, or another one)"
        ));
    }
    let host = std::str::from_utf8(&rest[..host_len])
        .map_err(|_| "hello host is not UTF-8".to_string())?
        .to_string();
    let port = u16::from_le_bytes([rest[host_len], rest[host_len + 1]]);
    deliver.hello(Hello {
        node: from,
        host,
        port,
    });
    // Bytes are read straight into the frame buffer and each whole frame is split off
    // it without a copy: the batches an Append carries are slices of it all the way to
    // the follower's storage, which copies them once, into its DMA buffer.
    let mut buf = BytesMut::new();
    loop {
        // Whole frames at the front of the buffer are delivered first.
        let mut missing = 0;
        loop {
            let len = match frame::frame_len(&buf) {
                Ok(Some(n)) if n > MAX_FRAME => return Err(format!("frame of {n} bytes")),
                Ok(Some(n)) if buf.len() >= n => n,
                Ok(Some(n)) => {
                    missing = n - buf.len();
                    break;
                }
                Ok(None) => break,
                Err(e) => return Err(format!("bad frame from node {from}: {e}")),
            };
            let frame_bytes = buf.split_to(len).freeze();
            let env = frame::decode(frame_bytes)
                .map_err(|e| format!("bad frame from node {from}: {e}"))?;
            if env.from != from {
                return Err(format!(
                    "node {from} sent an envelope signed as node {}",
                    env.from
                ));
            }
            deliver.deliver(from, env.items);
            if !env.proposals.is_empty() {
                deliver.proposals(from, env.proposals);
            }
            if let Some(claims) = env.claims {
                deliver.claims(from, claims);
            }
        }
        if deliver.stopping() {
            return Ok(());
        }
        // Room for the rest of the frame under way (bounded: a header alone must not make
        // the broker allocate a whole frame's worth), or a chunk.
        let room = missing.clamp(READ_CHUNK, READ_MAX);
        let filled = buf.len();
        buf.resize(filled + room, 0);
        let n = with_timeout(IDLE_TIMEOUT, stream.read(&mut buf[filled..]))
            .await
            .map_err(|e| format!("read: {e}"))?;
        buf.truncate(filled + n);
        if n == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_round_trip_and_refuse_strangers() {
        let h = Hello {
            node: 3,
            host: "broker-3.example".into(),
            port: 19092,
        };
        let b = encode_hello(&h);
        let (node, len) = hello_head(b[..HELLO_FIXED].try_into().unwrap()).unwrap();
        assert_eq!((node, len), (3, h.host.len()));
        assert_eq!(&b[HELLO_FIXED..HELLO_FIXED + len], h.host.as_bytes());
        let mut bad = b.clone();
        bad[0] = b'X';
        assert!(hello_head(bad[..HELLO_FIXED].try_into().unwrap()).is_err());
    }

    #[test]
    fn a_hello_tag_proves_the_secret_for_one_challenge_only() {
        let hello = encode_hello(&Hello {
            node: 2,
            host: "h".into(),
            port: 1,
        });
        let (secret, other) = (
            Some(&b"a cluster secret of 32 bytes...."[..]),
            Some(&b"another"[..]),
        );
        let (c1, c2) = ([1u8; CHALLENGE_LEN], [2u8; CHALLENGE_LEN]);
        let tag = hello_tag(secret, &c1, &hello);
        assert!(tag_ok(secret, &c1, &hello, &tag));
        assert!(
            !tag_ok(secret, &c2, &hello, &tag),
            "replayed on another connection"
        );
        assert!(!tag_ok(other, &c1, &hello, &tag), "another secret");
        assert!(
            !tag_ok(secret, &c1, &hello, &hello_tag(None, &c1, &hello)),
            "no secret"
        );
        let mut forged = hello.clone();
        forged[5] = 3; // claims node 3
        assert!(!tag_ok(secret, &c1, &forged, &tag), "the hello changed");
        assert!(
            tag_ok(None, &c1, &hello, &[0; TAG_LEN]),
            "nothing checked without a secret"
        );
    }

    fn env(from: NodeId, group: GroupId, entry: usize) -> Envelope {
        Envelope {
            from,
            items: vec![(
                group,
                Message::Append(corelog_replication::Append {
                    term: 1,
                    prev_end: 0,
                    prev_term: 0,
                    commit: 0,
                    entries: vec![Bytes::from(vec![0u8; entry])],
                    sent_ms: 0,
                    log_start: 0,
                }),
            )],
            claims: None,
            proposals: Vec::new(),
        }
    }

    #[test]
    fn merging_takes_queued_envelopes_into_one_up_to_the_target() {
        let link = Link {
            addr: String::new(),
            queue: RefCell::new(VecDeque::new()),
            bytes: Cell::new(0),
            wake: Event::new(),
            dropped: Cell::new(0),
        };
        for g in 0..3 {
            let mut e = env(9, g, 10);
            // Announcements 1 and 2 (of group g led at epoch g): the newest survives.
            e.claims = (g > 0).then(|| {
                vec![corelog_replication::LeaderClaim {
                    group: g,
                    epoch: g,
                    isr: vec![9],
                }]
            });
            link.bytes.set(link.bytes.get() + env_bytes(&e));
            link.queue.borrow_mut().push_back(e);
        }
        let big = env(9, 7, FRAME_TARGET);
        link.bytes.set(link.bytes.get() + env_bytes(&big));
        link.queue.borrow_mut().push_back(big);
        let first = merge(1, &link).unwrap();
        assert_eq!(first.from, 1);
        assert_eq!(
            first.items.iter().map(|(g, _)| *g).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(first.claims.unwrap()[0].group, 2);
        let second = merge(1, &link).unwrap();
        assert_eq!(second.items.len(), 1);
        assert!(merge(1, &link).is_none());
        assert_eq!(link.bytes.get(), 0);
    }
}
