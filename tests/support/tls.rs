//! TLS for the tests: certificates made with rcgen at test time (a CA, and
//! leaves it signs), written to a temporary folder as PEM, and a wss/https
//! client on futures-rustls that trusts that CA.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_io::Async;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// A TLS client stream.
pub type Tls = TlsStream<Async<TcpStream>>;
/// A WebSocket client over TLS.
pub type Wss = WebSocketStream<Tls>;

/// A test CA that signs server and client certificates.
pub struct Ca {
    pub cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM and DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub key_der: PrivateKeyDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` with serial `serial`.
    pub fn server(&self, names: &[&str], serial: u64) -> Leaf {
        self.leaf(
            names,
            serial,
            names.first().copied().unwrap_or("server"),
            false,
        )
    }

    /// A server certificate for `names` that expired on 2001-01-01.
    pub fn expired(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, 9, names[0], false, |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
    }

    /// A client certificate whose subject's common name is `cn`.
    pub fn client(&self, cn: &str) -> Leaf {
        self.leaf(&[], 1, cn, true)
    }

    fn leaf(&self, names: &[&str], serial: u64, cn: &str, client: bool) -> Leaf {
        self.leaf_with(names, serial, cn, client, |_| {})
    }

    fn leaf_with(
        &self,
        names: &[&str],
        serial: u64,
        cn: &str,
        client: bool,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }
}

impl Leaf {
    /// Writes `NAME.pem` and `NAME.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// A fresh folder under the target directory's tmp, removed by the OS's
/// tmp cleaning (tests may leave it for a look after a failure).
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wsgate-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A client configuration trusting `ca`, presenting `identity` if given.
pub fn client_config(ca: &Ca, identity: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.der.clone()], leaf.key_der.clone_key())
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS connection to `addr` with SNI `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: &Arc<ClientConfig>,
) -> std::io::Result<Tls> {
    let tcp = Async::<TcpStream>::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(config.clone()).connect(name, tcp).await
}

/// The serial of the certificate the server presented.
pub fn server_serial(tls: &Tls) -> Vec<u8> {
    let der = &tls.get_ref().1.peer_certificates().unwrap()[0];
    wsgate::http::Certificate::from_der(der.to_vec())
        .serial()
        .unwrap()
        .to_vec()
}

/// A WebSocket handshake over `tls` for `wss://host/path`.
pub async fn wss(tls: Tls, host: &str, path: &str) -> Result<Wss, tungstenite::Error> {
    let request = format!("wss://{host}{path}").into_client_request().unwrap();
    async_tungstenite::client_async(request, tls)
        .await
        .map(|(ws, _)| ws)
}

/// The serial `n` as rcgen encodes it (big-endian, minimal).
pub fn serial_bytes(n: u64) -> Vec<u8> {
    let bytes = SerialNumber::from(n).to_bytes();
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes[first..].to_vec()
}
