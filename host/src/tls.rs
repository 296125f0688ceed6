//! TLS for the listeners (rustls, the `ring` provider): HTTP/2 and HTTP/1.1 offered
//! by ALPN, the certificate re-read on SIGHUP or when its files change, optionally
//! client certificates checked against a CA (mTLS, for the admin listener).
//!
//! A reload swaps the certificate new handshakes get; connections already open keep
//! theirs and are not dropped. A reload that fails (a half-written file, a key that
//! does not match) keeps the old certificate and logs why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

/// How often the certificate files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Where a listener's certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates a client's certificate must chain to (mTLS); `None`: no
    /// client certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// A listener's TLS: its rustls configuration and the certificate it can reload.
pub struct Tls {
    config: Arc<rustls::ServerConfig>,
    cert: Arc<Reloading>,
}

impl Tls {
    /// Reads the certificate and key (and client CA) and builds the configuration.
    pub fn load(files: &TlsFiles) -> anyhow::Result<Arc<Tls>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = Arc::new(Reloading {
            current: ArcSwap::from_pointee(certified_key(files, &provider)?),
            stamp: Mutex::new(stamp(files)),
            files: files.clone(),
            provider: provider.clone(),
        });
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs(ca)? {
                    roots.add(c).with_context(|| {
                        format!("{}: not a usable CA certificate", ca.display())
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .with_context(|| format!("client CA {}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(Tls {
            config: Arc::new(config),
            cert,
        }))
    }

    /// An acceptor for one connection's handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Re-reads the certificate and key; on error the old ones stay.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.cert.reload()
    }

    /// Reloads on SIGHUP and whenever the files' modification times change, until
    /// `shutdown`.
    pub async fn watch(self: Arc<Self>, name: &'static str, shutdown: CancellationToken) {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let why = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangup => "SIGHUP",
                _ = tick.tick() => {
                    if !self.cert.changed() {
                        continue;
                    }
                    "files changed"
                }
            };
            match self.reload() {
                Ok(()) => tracing::info!(listener = name, why, "TLS certificate reloaded"),
                Err(e) => tracing::error!(
                    listener = name,
                    why,
                    error = format!("{e:#}"),
                    "TLS certificate reload failed; still serving the previous one"
                ),
            }
        }
    }
}

/// The certificate handshakes get, swapped on reload.
struct Reloading {
    files: TlsFiles,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// Modification times of (cert, key) when last read.
    stamp: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Reloading {
    fn reload(&self) -> anyhow::Result<()> {
        let stamp_now = stamp(&self.files);
        let key = certified_key(&self.files, &self.provider)?;
        self.current.store(Arc::new(key));
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = stamp_now;
        Ok(())
    }

    fn changed(&self) -> bool {
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) != stamp(&self.files)
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn stamp(files: &TlsFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(&files.cert), modified(&files.key))
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)",
        path.display()
    );
    Ok(certs)
}

fn certified_key(
    files: &TlsFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("{}: no usable PEM private key", files.key.display()))?;
    CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "{} and {} do not make a usable certificate (does the key match?)",
            files.cert.display(),
            files.key.display()
        )
    })
}
