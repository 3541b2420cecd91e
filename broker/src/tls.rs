//! TLS for the Kafka listeners and, with `rpc_tls`, between brokers (rustls; no OpenSSL at
//! run time).
//!
//! The certificate chain, key and (for client certificates) the CA are PEM files, read
//! when the broker starts and again when it gets SIGHUP or one of the files changes:
//! new connections get the new certificate, open ones keep theirs. A reload that fails
//! (a half-written file, a key that does not match) keeps the certificate in use and
//! says why.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;

/// Kafka's `ssl.client.auth`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate asked for.
    #[default]
    None,
    /// Asked for; a client without one is let in, one with a bad one is refused.
    Requested,
    /// A client certificate signed by the CA is required.
    Required,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "requested" => Ok(Self::Requested),
            "required" => Ok(Self::Required),
            _ => Err(format!(
                "ssl client auth {s:?}: expected none, requested or required"
            )),
        }
    }
}

/// The `[tls]` table of the config (Kafka: `ssl.keystore.*`, `ssl.truststore.*`,
/// `ssl.client.auth`, with `ssl.keystore.type=PEM`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the broker's own certificate first. May also hold the key.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); defaults to the certificate file.
    pub key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to.
    pub ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// TLS versions offered (Kafka's `ssl.enabled.protocols`): "TLSv1.2", "TLSv1.3";
    /// empty means both.
    pub protocols: Vec<String>,
}

impl TlsConfig {
    fn files(&self) -> Vec<&Path> {
        let mut f = vec![self.certificate.as_path()];
        f.extend(self.key.as_deref());
        f.extend(self.ca.as_deref());
        f
    }

    /// When each file was last changed (None: unreadable), to notice a replacement.
    pub fn stamp(&self) -> Vec<Option<SystemTime>> {
        self.files()
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Reads the files into a server configuration: TLS 1.2 and 1.3 only, client
    /// certificates checked against `ca` as `client_auth` says.
    pub fn load(&self) -> Result<Arc<ServerConfig>, String> {
        self.server(self.client_auth)
    }

    /// The broker's own certificate chain and key.
    fn identity(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let cert_pem = read(&self.certificate)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("tls: {}: {e}", self.certificate.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "tls: {} holds no PEM certificate",
                self.certificate.display()
            ));
        }
        let key_path = self.key.as_deref().unwrap_or(&self.certificate);
        let key = PrivateKeyDer::from_pem_slice(&read(key_path)?).map_err(|e| {
            format!(
                "tls: {} holds no usable PEM private key (an encrypted key is not supported): {e}",
                key_path.display()
            )
        })?;
        Ok((chain, key))
    }

    fn versions(&self) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
        let mut versions = Vec::new();
        for p in &self.protocols {
            versions.push(match p.trim() {
                "TLSv1.3" => &rustls::version::TLS13,
                "TLSv1.2" => &rustls::version::TLS12,
                other => {
                    return Err(format!(
                        "tls: protocol {other:?} is not supported (TLSv1.2 and TLSv1.3 are)"
                    ));
                }
            });
        }
        if versions.is_empty() {
            versions = vec![&rustls::version::TLS13, &rustls::version::TLS12];
        }
        Ok(versions)
    }

    /// The CA certificates of `ca`.
    fn roots(ca: &Path) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&read(ca)?) {
            let c = c.map_err(|e| format!("tls: {}: {e}", ca.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("tls: {}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("tls: {} holds no PEM certificate", ca.display()));
        }
        Ok(roots)
    }

    fn server(&self, client_auth: ClientAuth) -> Result<Arc<ServerConfig>, String> {
        let (chain, key) = self.identity()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.versions()?)
            .map_err(|e| format!("tls: {e}"))?;
        let builder = match (client_auth, &self.ca) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (_, None) => {
                return Err("tls: client_auth requested or required needs a ca file".into());
            }
            (auth, Some(ca)) => {
                let roots = Self::roots(ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = match auth {
                    ClientAuth::Requested => verifier.allow_unauthenticated(),
                    _ => verifier,
                };
                builder
                    .with_client_cert_verifier(verifier.build().map_err(|e| format!("tls: {e}"))?)
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("tls: the key does not fit the certificate: {e}"))?;
        Ok(Arc::new(config))
    }

    /// Mutual TLS between brokers (`rpc_tls`): each broker presents its certificate and
    /// requires the peer's, both signed by `ca`; the connecting side also checks the peer
    /// certificate names the host it dialed.
    pub fn load_rpc(&self) -> Result<RpcTls, String> {
        let Some(ca) = &self.ca else {
            return Err(
                "rpc_tls needs tls.ca: the CA that signed every broker's certificate".into(),
            );
        };
        let server = self.server(ClientAuth::Required)?;
        let (chain, key) = self.identity()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&self.versions()?)
            .map_err(|e| format!("tls: {e}"))?
            .with_root_certificates(Self::roots(ca)?)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("tls: the key does not fit the certificate: {e}"))?;
        Ok(RpcTls {
            server,
            client: Arc::new(client),
        })
    }
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("tls: cannot read {}: {e}", p.display()))
}

/// Both sides of TLS on the RPC links.
#[derive(Clone)]
pub struct RpcTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

/// One shard's TLS configuration in use (a listener's `ServerConfig`, or the RPC links'
/// [`RpcTls`]), replaced when the files change or on SIGHUP. Connections already open
/// keep the configuration they were made with.
pub struct TlsState<T = Arc<ServerConfig>> {
    current: RefCell<T>,
}

impl TlsState {
    /// The Kafka listeners' configuration, watched until the shard stops.
    pub fn start(
        config: TlsConfig,
        hangups: Arc<AtomicUsize>,
        shard: Rc<crate::shard::Shard>,
    ) -> Result<Rc<Self>, String> {
        let log = shard.id == 0;
        let stop = Rc::new(move || shard.stopping.get());
        TlsState::watch(config, hangups, log, stop, TlsConfig::load)
    }
}

impl<T: Clone + 'static> TlsState<T> {
    /// Loads the files with `load` and starts watching them (every second: SIGHUP seen,
    /// or a file's modification time changed) until `stop` says so or nobody holds the
    /// state any more; `log`: this shard reports reloads.
    pub fn watch(
        config: TlsConfig,
        hangups: Arc<AtomicUsize>,
        log: bool,
        stop: Rc<dyn Fn() -> bool>,
        load: fn(&TlsConfig) -> Result<T, String>,
    ) -> Result<Rc<Self>, String> {
        let state = Rc::new(Self {
            current: RefCell::new(load(&config)?),
        });
        let weak = Rc::downgrade(&state);
        glommio::spawn_local(async move {
            let mut seen = (hangups.load(Ordering::SeqCst), config.stamp());
            while !stop() {
                glommio::timer::sleep(Duration::from_secs(1)).await;
                let Some(watched) = weak.upgrade() else {
                    return;
                };
                let now = (hangups.load(Ordering::SeqCst), config.stamp());
                if now == seen {
                    continue;
                }
                seen = now;
                match load(&config) {
                    Ok(c) => {
                        *watched.current.borrow_mut() = c;
                        if log {
                            tracing::info!("tls: certificate reloaded; new connections use it");
                        }
                    }
                    Err(e) => {
                        if log {
                            tracing::warn!("{e}; still using the certificate loaded before");
                        }
                    }
                }
            }
        })
        .detach();
        Ok(state)
    }

    pub fn current(&self) -> T {
        self.current.borrow().clone()
    }
}

/// Logs a failed handshake: a refused certificate at info (an operator wants to know),
/// anything else (a plaintext client, a scanner, a dropped connection) at debug.
pub fn log_refused(peer: SocketAddr, e: &std::io::Error) {
    let cert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        });
    if cert {
        tracing::info!(%peer, error = %e, "TLS handshake refused: client certificate");
    } else {
        tracing::debug!(%peer, error = %e, "TLS handshake failed");
    }
}
