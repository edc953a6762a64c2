//! The TLS configuration in force and its re-reading from the files.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio_util::sync::CancellationToken;

use crate::error::AppError;

/// Where the server's TLS material lives, and how often it is re-read.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key_file: PathBuf,
    /// PEM CA certificates: when set, every client must present a
    /// certificate that chains to one of them (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are compared with what is in force.
    pub reload_interval: Duration,
}

/// The rustls crypto provider of every TLS configuration the service builds
/// (ring: no C toolchain needed beyond what `cc` brings).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The files' bytes as last read: a rotation is a change of content, so a
/// copy that keeps the modification time (or two writes within a second) is
/// still seen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// The configurations built from one set of files: the gRPC port's, and the
/// HTTP port's (same certificate; HTTP/1.1; no client certificate asked,
/// since probes, Prometheus and browsers do not carry one and the console
/// authenticates people by its login).
#[derive(Clone)]
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

impl Configs {
    fn build(contents: &Contents) -> Result<Self, String> {
        Ok(Self {
            grpc: Arc::new(build(contents, Port::Grpc)?),
            http: Arc::new(build(contents, Port::Http)?),
        })
    }
}

/// Which listener a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Grpc,
    Http,
}

/// The TLS configuration in force, shared by the accept loops (which read it
/// per connection) and the reloader (which replaces it).
#[derive(Clone)]
pub struct TlsServer {
    files: TlsFiles,
    current: Arc<RwLock<Configs>>,
    loaded: Arc<RwLock<Contents>>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Reads and checks the files; a server does not start on material that
    /// does not load.
    pub async fn load(files: TlsFiles) -> Result<Self, AppError> {
        let contents = read(&files).await.map_err(AppError::Config)?;
        let configs =
            Configs::build(&contents).map_err(|e| AppError::Config(format!("TLS: {e}")))?;
        Ok(Self {
            files,
            current: Arc::new(RwLock::new(configs)),
            loaded: Arc::new(RwLock::new(contents)),
        })
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca_file.is_some()
    }

    /// The configuration the next gRPC connection is accepted with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .grpc
            .clone()
    }

    /// The configuration the next connection to the HTTP port (probes,
    /// metrics, console) is accepted with: the same certificate, rotated
    /// with it.
    pub fn http_config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .http
            .clone()
    }

    /// Re-reads the files once: a changed, valid set replaces the
    /// configuration (true); a changed set that does not load is logged and
    /// the previous one kept.
    pub async fn reload(&self) -> bool {
        let contents = match read(&self.files).await {
            Ok(contents) => contents,
            Err(error) => {
                tracing::warn!(%error, "TLS files unreadable; keeping the certificate in force");
                return false;
            }
        };
        let unchanged = *self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            == contents;
        if unchanged {
            return false;
        }
        match Configs::build(&contents) {
            Ok(configs) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = configs;
                *self
                    .loaded
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = contents;
                tracing::info!(
                    cert_file = %self.files.cert_file.display(),
                    "TLS certificate reloaded; new connections get it"
                );
                true
            }
            Err(error) => {
                // A half-written rotation (new certificate, old key) lands
                // here too and is retried on the next tick.
                tracing::warn!(
                    %error,
                    cert_file = %self.files.cert_file.display(),
                    "new TLS files do not load; keeping the certificate in force"
                );
                false
            }
        }
    }

    /// Re-reads the files every `reload_interval` until `stop`.
    pub fn spawn_reloader(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let server = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(server.files.reload_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => { server.reload().await; }
                }
            }
        })
    }
}

/// Reads the files off the async threads (tokio's file I/O runs on its
/// blocking pool).
async fn read(files: &TlsFiles) -> Result<Contents, String> {
    async fn one(path: &Path, what: &str) -> Result<Vec<u8>, String> {
        tokio::fs::read(path)
            .await
            .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
    }
    let cert = one(&files.cert_file, "TLS certificate (TLS_CERT_FILE)").await?;
    let key = one(&files.key_file, "TLS key (TLS_KEY_FILE)").await?;
    let client_ca = match &files.client_ca_file {
        Some(path) => Some(one(path, "client CA (TLS_CLIENT_CA_FILE)").await?),
        None => None,
    };
    Ok(Contents {
        cert,
        key,
        client_ca,
    })
}

/// The rustls configuration from PEM bytes: TLS 1.2 and 1.3; for gRPC, ALPN
/// `h2` (gRPC is HTTP/2 only) and the client verifier when mutual TLS is
/// on; for the HTTP port, ALPN `http/1.1` and no client certificate.
fn build(contents: &Contents, port: Port) -> Result<ServerConfig, String> {
    let chain = certificates(&contents.cert, "TLS_CERT_FILE")?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key)
        .map_err(|e| format!("TLS_KEY_FILE holds no usable private key: {e}"))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let client_ca = contents.client_ca.as_ref().filter(|_| port == Port::Grpc);
    let builder = match client_ca {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(pem, "TLS_CLIENT_CA_FILE")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("TLS_CLIENT_CA_FILE: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("TLS_CLIENT_CA_FILE: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("TLS_CERT_FILE and TLS_KEY_FILE: {e}"))?;
    config.alpn_protocols = match port {
        Port::Grpc => vec![b"h2".to_vec()],
        Port::Http => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}

/// Every certificate of a PEM file; none is an error.
fn certificates(pem: &[u8], setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{setting}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{setting} holds no PEM certificate"));
    }
    Ok(chain)
}
