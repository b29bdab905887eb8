//! A vhost's TLS settings (feature `tls`): its certificate and key as PEM
//! files (or a ready `rustls::ServerConfig`), and the client certificates it
//! asks for (mutual TLS).
//!
//! [`VhostBuilder::build`](super::VhostBuilder::build) loads the files and
//! checks them (readable, PEM, a key that matches the certificate; a
//! certificate outside its validity period is logged as a warning), so
//! every reload runs the same checks before anything changes. The result is
//! one `rustls::ServerConfig` per vhost; the runtime's TLS acceptor picks
//! among a listener's vhosts by the client's SNI name.
//!
//! The crypto provider is rustls' *ring* provider: it builds on a fresh
//! machine with a C compiler alone, where aws-lc-rs also needs cmake (and on
//! some targets NASM or libclang).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ConfigError;
use crate::proto::tls::Certificate;

/// The largest PEM file read: far above any certificate chain or CA bundle,
/// small enough that a wrong path (a log file, a device) cannot fill memory.
const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// What ALPN advertises: WebSocket handshakes are HTTP/1.1 (RFC 6455; RFC
/// 8441's HTTP/2 bootstrap is not supported).
pub(crate) const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The TLS settings of a vhost: what
/// [`VhostBuilder::tls`](super::VhostBuilder::tls) takes.
///
/// # Examples
///
/// ```no_run
/// use wsgate::config::{ClientAuth, TlsConfig};
/// use wsgate::{Mount, VhostConfig, protocols::Echo};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let vhost = VhostConfig::builder("a")
///     .listen("0.0.0.0:443".parse()?)
///     .host("a.example.com")
///     .tls(
///         TlsConfig::from_pem_files("certs/a.pem", "certs/a.key")
///             .client_ca("certs/clients.pem")
///             .client_auth(ClientAuth::Optional),
///     )
///     .protocol(Echo)
///     .mount(Mount::websocket("/echo", ["echo"]))
///     .build()?; // reads and checks the files
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    source: Source,
    /// `client_ca` was asked of a ready server configuration (refused by
    /// `load`, which names the key).
    client_ca_misplaced: bool,
    /// What `load` made of it (set by the vhost builder).
    pub(crate) loaded: Option<Arc<LoadedTls>>,
}

#[derive(Clone)]
enum Source {
    Files {
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
        client_auth: Option<ClientAuth>,
    },
    Server(Arc<ServerConfig>),
}

/// Whether a vhost with a `client_ca` insists on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientAuth {
    /// A handshake without a valid client certificate fails at the TLS
    /// layer. The default once a `client_ca` is set.
    Required,
    /// A client may present no certificate (then
    /// [`Request::peer_certificates`](crate::Request::peer_certificates) is
    /// empty); one it presents must verify.
    Optional,
}

/// A vhost's TLS settings, loaded and checked: the server configuration its
/// handshakes use, and what a reload compares.
pub(crate) struct LoadedTls {
    pub(crate) server: Arc<ServerConfig>,
    /// The files' contents (hashed) and settings, or the server
    /// configuration's identity: a certificate rotated under the same path
    /// changes it.
    pub(crate) fingerprint: String,
}

impl TlsConfig {
    /// A certificate chain (PEM, leaf first) and its private key (PEM:
    /// PKCS#8, PKCS#1 or SEC1). Relative paths are relative to the process's
    /// working directory (the TOML loader resolves them against the file's
    /// folder first). The files are read when the vhost is built, and again
    /// at each reload.
    pub fn from_pem_files(cert_chain: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            source: Source::Files {
                cert: cert_chain.into(),
                key: key.into(),
                client_ca: None,
                client_auth: None,
            },
            client_ca_misplaced: false,
            loaded: None,
        }
    }

    /// A ready rustls configuration, for hosts with their own certificate
    /// resolver (ACME, a hardware key): used as it is, with its own ALPN
    /// list, client verification and resolver. SNI still picks the vhost
    /// among those sharing the listener.
    pub fn from_server_config(config: Arc<ServerConfig>) -> Self {
        Self {
            source: Source::Server(config),
            client_ca_misplaced: false,
            loaded: None,
        }
    }

    /// Asks clients for a certificate issued by one of the CAs in this PEM
    /// file (mutual TLS); a verified chain reaches `Protocol::open` through
    /// [`Request::peer_certificates`](crate::Request::peer_certificates).
    /// Only with [`from_pem_files`](Self::from_pem_files). Default: no
    /// client certificates asked for.
    #[must_use = "the changed settings are returned"]
    pub fn client_ca(mut self, path: impl Into<PathBuf>) -> Self {
        if let Source::Files { client_ca, .. } = &mut self.source {
            *client_ca = Some(path.into());
        } else {
            self.client_ca_misplaced = true;
        }
        self
    }

    /// Whether a client certificate is required or optional; only with a
    /// [`client_ca`](Self::client_ca). Default: [`ClientAuth::Required`].
    #[must_use = "the changed settings are returned"]
    pub fn client_auth(mut self, mode: ClientAuth) -> Self {
        if let Source::Files { client_auth, .. } = &mut self.source {
            *client_auth = Some(mode);
        }
        self
    }

    /// The files this configuration reads, relative ones resolved against
    /// `dir` (the TOML loader's: the configuration file's folder).
    #[cfg(feature = "toml-config")]
    #[must_use = "the changed settings are returned"]
    pub(crate) fn relative_to(mut self, dir: &Path) -> Self {
        if let Source::Files {
            cert,
            key,
            client_ca,
            ..
        } = &mut self.source
        {
            for p in [Some(cert), Some(key), client_ca.as_mut()]
                .into_iter()
                .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        self
    }

    /// Reads and checks the files (or takes the server configuration):
    /// what the vhost builder calls, under the key prefix `prefix.tls`.
    pub(crate) fn load(&mut self, prefix: &str) -> Result<(), ConfigError> {
        let loaded = match &self.source {
            Source::Server(_) if self.client_ca_misplaced => {
                return Err(ConfigError::new(
                    format!("{prefix}.tls.client_ca"),
                    "only with certificate files (a ready ServerConfig verifies clients itself)",
                ));
            }
            Source::Server(server) => LoadedTls {
                server: server.clone(),
                fingerprint: format!("server-config@{:p}", Arc::as_ptr(server)),
            },
            Source::Files {
                cert,
                key,
                client_ca,
                client_auth,
            } => load_files(
                &format!("{prefix}.tls"),
                cert,
                key,
                client_ca.as_deref(),
                *client_auth,
            )?,
        };
        self.loaded = Some(Arc::new(loaded));
        Ok(())
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Files {
                cert,
                key,
                client_ca,
                client_auth,
            } => f
                .debug_struct("TlsConfig")
                .field("cert", cert)
                .field("key", key)
                .field("client_ca", client_ca)
                .field("client_auth", client_auth)
                .finish(),
            Source::Server(_) => f
                .debug_struct("TlsConfig")
                .field("server_config", &"(host's)")
                .finish(),
        }
    }
}

impl fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint)
    }
}

/// The provider every vhost's configuration is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_files(
    prefix: &str,
    cert_path: &Path,
    key_path: &Path,
    ca_path: Option<&Path>,
    client_auth: Option<ClientAuth>,
) -> Result<LoadedTls, ConfigError> {
    let err = |leaf: &str, path: &Path, problem: String| {
        ConfigError::new(
            format!("{prefix}.{leaf}"),
            format!("{}: {problem}", path.display()),
        )
    };
    if client_auth.is_some() && ca_path.is_none() {
        return Err(ConfigError::new(
            format!("{prefix}.client_auth"),
            "only with client_ca (the CAs client certificates must come from)",
        ));
    }
    let provider = provider();

    let cert_pem = read_pem(cert_path).map_err(|p| err("cert", cert_path, p))?;
    let chain = certificates(&cert_pem).map_err(|p| err("cert", cert_path, p))?;
    let key_pem = read_pem(key_path).map_err(|p| err("key", key_path, p))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        err(
            "key",
            key_path,
            match e {
                rustls_pki_types::pem::Error::NoItemsFound => {
                    "no private key in the file (expected PEM: PKCS#8, PKCS#1 or SEC1)".to_owned()
                }
                e => format!("not a PEM private key: {e}"),
            },
        )
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| err("key", key_path, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(TlsError::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(TlsError::InconsistentKeys(_)) => {
            return Err(err(
                "key",
                key_path,
                format!("does not match the certificate in {}", cert_path.display()),
            ));
        }
        Err(e) => {
            return Err(err(
                "cert",
                cert_path,
                format!("not a valid certificate: {e}"),
            ));
        }
    }
    if let Some(leaf) = certified.cert.first() {
        warn_validity(prefix, cert_path, &Certificate::from_der(leaf.to_vec()));
    }

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| ConfigError::new(prefix.to_owned(), e.to_string()))?;
    let mut ca_pem = Vec::new();
    let builder = match ca_path {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            ca_pem = read_pem(ca_path).map_err(|p| err("client_ca", ca_path, p))?;
            let mut roots = RootCertStore::empty();
            for ca in certificates(&ca_pem).map_err(|p| err("client_ca", ca_path, p))? {
                roots.add(ca).map_err(|e| {
                    err(
                        "client_ca",
                        ca_path,
                        format!("not a usable CA certificate: {e}"),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            let verifier = match client_auth.unwrap_or(ClientAuth::Required) {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| err("client_ca", ca_path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(OneCertificate(Arc::new(certified))));
    server.alpn_protocols = vec![ALPN_HTTP11.to_vec()];

    let mut hash = std::collections::hash_map::DefaultHasher::new();
    (&cert_pem, &key_pem, &ca_pem, client_auth).hash(&mut hash);
    let fingerprint = format!(
        "{} {} {:?} {:016x}",
        cert_path.display(),
        key_path.display(),
        ca_path,
        hash.finish()
    );
    Ok(LoadedTls {
        server: Arc::new(server),
        fingerprint,
    })
}

/// A file's bytes, if it is a regular file of at most [`MAX_PEM_BYTES`].
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {}", io_reason(&e)))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read: {}", io_reason(&e)))?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {}", io_reason(&e)))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "larger than {} MiB: not a PEM file",
            MAX_PEM_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// An I/O error in a few words (`no such file`), without the OS's code.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

/// Every `CERTIFICATE` section of a PEM file, at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM file: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the file (expected PEM \"BEGIN CERTIFICATE\")".to_owned());
    }
    Ok(chain)
}

/// Warns (without refusing: clocks can be wrong, and a renewal may be on
/// its way) about a certificate outside its validity period.
fn warn_validity(prefix: &str, path: &Path, leaf: &Certificate) {
    let Some((not_before, not_after)) = leaf.validity() else {
        return;
    };
    let now = SystemTime::now();
    let vhost = prefix.trim_end_matches(".tls").trim_start_matches("vhost.");
    if now > not_after {
        tracing::warn!(
            vhost,
            file = %path.display(),
            "certificate expired {} ago; clients will refuse it",
            ago(now, not_after)
        );
    } else if now < not_before {
        tracing::warn!(
            vhost,
            file = %path.display(),
            "certificate not valid for another {}; clients will refuse it",
            ago(not_before, now)
        );
    }
}

fn ago(later: SystemTime, earlier: SystemTime) -> String {
    let secs = later.duration_since(earlier).map_or(0, |d| d.as_secs());
    match secs {
        s if s >= 86_400 => format!("{} days", s / 86_400),
        s if s >= 3600 => format!("{} hours", s / 3600),
        s => format!("{s} seconds"),
    }
}

/// A vhost's one certificate (SNI already chose the vhost).
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
