//! TLS termination (`proxy.tls`): certificates from PEM files, chosen per
//! connection by SNI, reloaded when the files change.
//!
//! The TLS listener is a second front door to the same data path: after the
//! handshake, `server` serves the stream with the same HTTP/1.1 + h2 builder
//! and handler as plaintext; ALPN offers `h2` and `http/1.1`. The loading
//! code here is also what `--check` runs (see `check_files`), so a file that
//! the check accepts is one the listener can use.
//!
//! Choosing a certificate: an exact SAN DNS name of any certificate wins,
//! then a wildcard (`*.example.com` covers one label), and a client without
//! SNI or with an unknown name gets the first certificate.
//!
//! Reloading: the files are read every `reload_interval`; when their bytes
//! changed, the whole set is loaded anew and swapped in at once for new
//! handshakes. A set that does not load keeps the previous one in use, is
//! logged, and counts in `rouse_tls_reload_errors_total` (once per change,
//! not once per poll).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rouse_nats::config::{CertKeyFiles, ConfigError, ConfigIssue, LineIndex, ProxyTlsConfig};
use rouse_nats::config::{Config, TlsVersion};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::metrics::ProxyMetrics;
use crate::server::Handshake;

/// What is wrong with one file, as (config key, reason).
pub type Problem = (String, String);

/// Why the TLS listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}", join(.0))]
    Files(Vec<Problem>),
    #[error("proxy.tls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|(key, reason)| format!("key `{key}`: {reason}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crypto of every TLS connection: ring, which async-nats already
/// builds, so there is one crypto library in the binary.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The bytes of one file as last read, or why it could not be read.
type FileBytes = Result<Vec<u8>, String>;

/// One `certs` entry as read from disk.
#[derive(PartialEq, Eq)]
struct PairBytes {
    cert: FileBytes,
    key: FileBytes,
}

fn read_file(path: &Path) -> FileBytes {
    std::fs::read(path).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => format!("{}: no such file", path.display()),
        _ => format!("{}: cannot read: {err}", path.display()),
    })
}

fn read_all(certs: &[CertKeyFiles]) -> Vec<PairBytes> {
    certs
        .iter()
        .map(|pair| PairBytes {
            cert: read_file(&pair.cert_file),
            key: read_file(&pair.key_file),
        })
        .collect()
}

/// One usable certificate and the DNS names it answers for.
struct Loaded {
    /// Lowercase; wildcards as written (`*.example.com`).
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Every certificate of `proxy.tls.certs`, in config order.
pub struct CertSet {
    certs: Vec<Loaded>,
}

impl fmt::Debug for CertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.certs.iter().map(|c| &c.names))
            .finish()
    }
}

fn pem_reason(path: &Path, what: &str, err: pem::Error) -> String {
    match err {
        pem::Error::NoItemsFound => format!("{}: no PEM {what} in it", path.display()),
        other => format!("{}: not valid PEM: {other}", path.display()),
    }
}

fn parse_chain(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_reason(path, "certificate", err))?;
    if chain.is_empty() {
        return Err(pem_reason(path, "certificate", pem::Error::NoItemsFound));
    }
    Ok(chain)
}

/// The SAN DNS names of the leaf, which also proves it parses as X.509.
fn dns_names(path: &Path, leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|err| {
        format!(
            "{}: the first certificate is not valid X.509: {err}",
            path.display()
        )
    })?;
    Ok(cert
        .valid_dns_names()
        .map(|name| name.to_ascii_lowercase())
        .collect())
}

fn load_pair(
    at: &str,
    files: &CertKeyFiles,
    bytes: &PairBytes,
    provider: &CryptoProvider,
) -> Result<Loaded, Vec<Problem>> {
    let cert_key = format!("{at}.cert_file");
    let key_key = format!("{at}.key_file");
    let chain = bytes
        .cert
        .as_deref()
        .map_err(String::clone)
        .and_then(|b| parse_chain(&files.cert_file, b))
        .and_then(|chain| Ok((dns_names(&files.cert_file, &chain[0])?, chain)));
    let key = bytes.key.as_deref().map_err(String::clone).and_then(|b| {
        PrivateKeyDer::from_pem_slice(b)
            .map_err(|err| pem_reason(&files.key_file, "private key", err))
    });
    let key = key.and_then(|key| {
        provider.key_provider.load_private_key(key).map_err(|err| {
            format!(
                "{}: unsupported private key: {err}",
                files.key_file.display()
            )
        })
    });
    let ((names, chain), key) = match (chain, key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (chain, key) => {
            let mut problems = Vec::new();
            if let Err(reason) = chain {
                problems.push((cert_key, reason));
            }
            if let Err(reason) = key {
                problems.push((key_key, reason));
            }
            return Err(problems);
        }
    };
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        // A key type whose public half the provider cannot derive cannot be
        // compared; the handshake still proves it or fails.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Loaded {
                names,
                key: Arc::new(certified),
            })
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(vec![(
            key_key,
            format!(
                "{}: the private key does not match the certificate in {}",
                files.key_file.display(),
                files.cert_file.display()
            ),
        )]),
        Err(err) => Err(vec![(
            cert_key,
            format!("{}: {err}", files.cert_file.display()),
        )]),
    }
}

impl CertSet {
    fn load(certs: &[CertKeyFiles], bytes: &[PairBytes]) -> Result<CertSet, Vec<Problem>> {
        let provider = provider();
        let mut loaded = Vec::with_capacity(certs.len());
        let mut problems = Vec::new();
        for (i, (files, bytes)) in certs.iter().zip(bytes).enumerate() {
            match load_pair(&format!("proxy.tls.certs[{i}]"), files, bytes, &provider) {
                Ok(cert) => loaded.push(cert),
                Err(mut more) => problems.append(&mut more),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        if loaded.is_empty() {
            return Err(vec![(
                "proxy.tls.certs".into(),
                "needs at least one {cert_file, key_file}".into(),
            )]);
        }
        Ok(CertSet { certs: loaded })
    }

    /// The certificate for a client that asked for `sni`.
    fn choose(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let chosen = sni.and_then(|sni| {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            let exact = self.certs.iter().find(|c| c.names.contains(&sni));
            exact.or_else(|| {
                let (_, parent) = sni.split_once('.')?;
                let wildcard = format!("*.{parent}");
                self.certs.iter().find(|c| c.names.contains(&wildcard))
            })
        });
        &chosen.unwrap_or(&self.certs[0]).key
    }
}

/// Every problem with the files of `tls`, as (key, reason); empty when the
/// listener could load them all.
pub fn check_files(tls: &ProxyTlsConfig) -> Vec<Problem> {
    match CertSet::load(&tls.certs, &read_all(&tls.certs)) {
        Ok(_) => Vec::new(),
        Err(problems) => problems,
    }
}

/// `--check`'s part in the proxy binary: the certificate files of the
/// config at `path`, reported like every other config issue (file, line,
/// key, reason). A config that does not load at all passes here: the shared
/// loader reports it.
pub fn check_config_files(path: &Path) -> Result<(), ConfigError> {
    let Ok(config) = Config::load(path) else {
        return Ok(());
    };
    let Some(tls) = &config.proxy.tls else {
        return Ok(());
    };
    let problems = check_files(tls);
    if problems.is_empty() {
        return Ok(());
    }
    let index = std::fs::read_to_string(path)
        .map(|source| LineIndex::new(&source))
        .unwrap_or_default();
    Err(ConfigError::Invalid(
        problems
            .into_iter()
            .map(|(key, reason)| ConfigIssue {
                file: PathBuf::from(path),
                line: index.line_of(&key),
                key,
                reason,
            })
            .collect(),
    ))
}

/// Hands rustls the current set's choice; the reloader swaps the set.
#[derive(Debug)]
struct Resolver {
    current: ArcSwap<CertSet>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.current.load().choose(hello.server_name())))
    }
}

/// The TLS handshake of an accepted connection, bounded by
/// `handshake_timeout` so that a silent client cannot pin a connection.
#[derive(Clone)]
pub struct TlsHandshake {
    acceptor: TlsAcceptor,
    timeout: std::time::Duration,
}

impl Handshake for TlsHandshake {
    type Stream = TlsStream<TcpStream>;
    const SCHEME: &'static str = "https";

    async fn handshake(&self, tcp: TcpStream) -> io::Result<Self::Stream> {
        match tokio::time::timeout(self.timeout, self.acceptor.accept(tcp)).await {
            Ok(stream) => stream,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

/// Loads the certificates of `tls` and builds the handshake the data threads
/// run, and the reloader that keeps its certificates current.
pub fn start(
    tls: &ProxyTlsConfig,
    metrics: Arc<ProxyMetrics>,
) -> Result<(TlsHandshake, Reloader), TlsError> {
    let bytes = read_all(&tls.certs);
    let set = CertSet::load(&tls.certs, &bytes).map_err(TlsError::Files)?;
    let resolver = Arc::new(Resolver {
        current: ArcSwap::from_pointee(set),
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let handshake = TlsHandshake {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        timeout: tls.handshake_timeout,
    };
    let reloader = Reloader {
        certs: tls.certs.clone(),
        interval: tls.reload_interval,
        resolver,
        last: bytes,
        metrics,
    };
    Ok((handshake, reloader))
}

/// Watches the certificate files and swaps in a changed set that loads.
pub struct Reloader {
    certs: Vec<CertKeyFiles>,
    interval: std::time::Duration,
    resolver: Arc<Resolver>,
    /// What the files held at the last look, loadable or not.
    last: Vec<PairBytes>,
    metrics: Arc<ProxyMetrics>,
}

impl Reloader {
    /// Polls forever; spawn it.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            // Off the control thread: a slow disk must not stall NATS.
            let certs = self.certs.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || read_all(&certs)).await else {
                continue;
            };
            self.look(now);
        }
    }

    fn look(&mut self, now: Vec<PairBytes>) {
        if now == self.last {
            return;
        }
        match CertSet::load(&self.certs, &now) {
            Ok(set) => {
                tracing::info!(certs = ?set, "TLS certificates reloaded");
                self.resolver.current.store(Arc::new(set));
                self.metrics.tls_reloads.inc();
            }
            Err(problems) => {
                self.metrics.tls_reload_errors.inc();
                for (key, reason) in problems {
                    tracing::error!(%key, %reason, "changed TLS certificate files refused; the previous certificates stay in use");
                }
            }
        }
        self.last = now;
    }
}

#[cfg(test)]
mod tests;
