//! The Kafka driver's connections over TLS (`corelog-bench run --tls`): rustls on the
//! client side, so the run measures what TLS costs the broker next to plaintext.
//!
//! A pipelined produce connection is written by the producer thread and read by its
//! acknowledgement thread at once. TLS has one state per connection, so the two share it
//! under a mutex held only to seal or open records, never across a blocking socket call:
//! the writer seals into a buffer, takes the socket's write lock before it lets go of the
//! state (records go out in the order they were sealed), then writes; the reader reads
//! the socket unlocked and opens what came under the lock.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
/// The certificate and key a spawned corelog serves (made with openssl for the run).
static SPAWN: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();

/// Connections from now on use TLS, trusting the PEM certificates in `ca`.
pub fn enable(ca: &Path) -> Result<(), String> {
    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(c.map_err(|e| format!("{}: {e}", ca.display()))?)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    CONFIG
        .set(Arc::new(config))
        .map_err(|_| "TLS enabled twice".to_string())
}

/// Makes a certificate for 127.0.0.1 in `dir` (openssl), trusts it, and has spawned
/// corelog brokers serve it on an SSL listener.
pub fn enable_for_spawn(dir: &Path) -> Result<(), String> {
    let openssl = |args: &[&str]| -> Result<(), String> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl (needed for --tls with --spawn): {e}"))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!("openssl: {}", String::from_utf8_lossy(&out.stderr))),
        }
    };
    // A CA and the broker's certificate signed by it (webpki takes no CA certificate as
    // a server's own).
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = [
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=corelog-bench CA",
    ];
    let ca_out = ["-keyout", "ca.key", "-out", "ca.pem"];
    openssl(&[&ca[..], &ec[..], &ca_out[..]].concat())?;
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    let leaf = ["req", "-new", "-subj", "/CN=localhost"];
    let leaf_out = ["-keyout", "bench-key.pem", "-out", "leaf.csr"];
    openssl(&[&leaf[..], &ec[..], &leaf_out[..]].concat())?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "bench-cert.pem",
    ])?;
    enable(&dir.join("ca.pem"))?;
    let _ = SPAWN.set((dir.join("bench-cert.pem"), dir.join("bench-key.pem")));
    Ok(())
}

/// The certificate and key spawned brokers serve, when the run is over TLS.
pub fn spawn_files() -> Option<&'static (PathBuf, PathBuf)> {
    SPAWN.get()
}

pub fn enabled() -> bool {
    CONFIG.get().is_some()
}

/// A TLS client session on `sock`, its handshake done.
fn handshake(sock: &mut TcpStream, addr: &str) -> Result<ClientConnection, String> {
    let config = CONFIG.get().expect("enabled").clone();
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let mut conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    // Writes are sealed and sent at once (the writer holds a whole pipelined request,
    // often more than rustls' default 64 KiB of pending plaintext).
    conn.set_buffer_limit(None);
    while conn.is_handshaking() {
        conn.complete_io(sock)
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    }
    Ok(conn)
}

/// One connection used by one thread.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    pub fn open(mut sock: TcpStream, addr: &str) -> Result<Self, String> {
        if !enabled() {
            return Ok(Self::Plain(sock));
        }
        let conn = handshake(&mut sock, addr)?;
        Ok(Self::Tls(Box::new(rustls::StreamOwned::new(conn, sock))))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// What both halves of a split TLS connection share.
pub struct Shared {
    conn: Mutex<ClientConnection>,
    /// The socket's write side: held while sealed records are written, so that they go
    /// out in the order they were sealed.
    out: Mutex<TcpStream>,
}

impl Shared {
    /// Writes what the session has sealed; called with the session locked, which it lets
    /// go of once the socket is held.
    fn flush(&self, mut conn: std::sync::MutexGuard<'_, ClientConnection>) -> io::Result<()> {
        let mut sealed = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut sealed)?;
        }
        let mut out = self.out.lock().expect("not poisoned");
        drop(conn);
        out.write_all(&sealed)
    }
}

/// The write half of a connection split between two threads.
pub enum WriteHalf {
    Plain(TcpStream),
    Tls(Arc<Shared>),
}

/// The read half of a connection split between two threads.
pub enum ReadHalf {
    Plain(TcpStream),
    Tls {
        shared: Arc<Shared>,
        sock: TcpStream,
        /// Opened bytes not read yet, from `at`.
        plain: Vec<u8>,
        at: usize,
        raw: Vec<u8>,
    },
}

/// Splits a connected socket for a writer thread and a reader thread.
pub fn split(mut sock: TcpStream, addr: &str) -> Result<(WriteHalf, ReadHalf), String> {
    let clone = sock.try_clone().map_err(|e| e.to_string())?;
    if !enabled() {
        return Ok((WriteHalf::Plain(sock), ReadHalf::Plain(clone)));
    }
    let conn = handshake(&mut sock, addr)?;
    let shared = Arc::new(Shared {
        conn: Mutex::new(conn),
        out: Mutex::new(sock),
    });
    Ok((
        WriteHalf::Tls(shared.clone()),
        ReadHalf::Tls {
            shared,
            sock: clone,
            plain: Vec::new(),
            at: 0,
            raw: vec![0u8; 64 << 10],
        },
    ))
}

impl Write for WriteHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(shared) => {
                let mut conn = shared.conn.lock().expect("not poisoned");
                conn.writer().write_all(buf)?;
                shared.flush(conn)?;
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(_) => Ok(()),
        }
    }
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (shared, sock, plain, at, raw) = match self {
            Self::Plain(s) => return s.read(buf),
            Self::Tls {
                shared,
                sock,
                plain,
                at,
                raw,
            } => (shared, sock, plain, at, raw),
        };
        loop {
            if *at < plain.len() {
                let n = buf.len().min(plain.len() - *at);
                buf[..n].copy_from_slice(&plain[*at..*at + n]);
                *at += n;
                return Ok(n);
            }
            plain.clear();
            *at = 0;
            let n = sock.read(raw)?;
            if n == 0 {
                return Ok(0);
            }
            let mut conn = shared.conn.lock().expect("not poisoned");
            let mut rest = &raw[..n];
            while !rest.is_empty() {
                conn.read_tls(&mut rest)?;
                conn.process_new_packets().map_err(io::Error::other)?;
                match conn.reader().read_to_end(plain) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if conn.wants_write() {
                shared.flush(conn)?;
            }
        }
    }
}
