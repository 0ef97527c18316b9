//! Which certificate authorities to trust, and what to say when a server's certificate is not
//! trusted.
//!
//! Trust comes from the operating system's store, or from `SSL_CERT_FILE` / `SSL_CERT_DIR`
//! when set (read by `rustls-native-certs`, the way OpenSSL reads them), so a self-hosted sqld
//! behind a company CA works. Only when the system has no store at all (a minimal container
//! without ca-certificates) do the bundled public web roots stand in, so Turso Cloud still works
//! there.
//!
//! rustls reports an untrusted certificate as `UnknownIssuer` and nothing more. To name the
//! certificate and its issuer, a failed handshake is followed by a second one that only
//! records the certificate the server presents and then aborts: nothing is sent over it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The roots to verify servers against, and a phrase saying where they came from.
pub(super) fn roots() -> (ureq::tls::RootCerts, String) {
    let from_env = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .iter()
        .filter(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
        .copied()
        .collect::<Vec<_>>();
    let loaded = rustls_native_certs::load_native_certs();
    let source = if from_env.is_empty() {
        "the system's certificate store".to_owned()
    } else {
        from_env.join(" and ")
    };
    if loaded.certs.is_empty() && from_env.is_empty() {
        return (
            ureq::tls::RootCerts::WebPki,
            "the bundled public web roots (the system has no certificate store)".to_owned(),
        );
    }
    let n = loaded.certs.len();
    let certs = loaded
        .certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned());
    (
        ureq::tls::RootCerts::new_with_certs(&certs.collect::<Vec<_>>()),
        format!("{source}, {n} certificates"),
    )
}

/// The certificate problem inside a ureq error, if that is what it is.
pub(super) fn certificate_error(e: &ureq::Error) -> Option<CertificateError> {
    let tls = match e {
        ureq::Error::Rustls(r) => r,
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        _ => return None,
    };
    match tls {
        rustls::Error::InvalidCertificate(c) => Some(c.clone()),
        _ => None,
    }
}

/// Explains why the certificate of `host:port` was refused: what it is, who issued it, which
/// roots were tried, and how to trust a private CA.
pub(super) fn explain(
    problem: &CertificateError,
    host: &str,
    port: u16,
    proxy: Option<&ureq::Proxy>,
    trust: &str,
) -> String {
    let cert = peer_certificate(host, port, proxy).and_then(|der| describe(&der));
    let mut out = match &cert {
        Some(c) => format!(
            "the server's certificate (subject \"{}\", issued by \"{}\") was refused: {problem:?}",
            c.subject, c.issuer
        ),
        None => format!("the server's certificate was refused: {problem:?}"),
    };
    if matches!(problem, CertificateError::UnknownIssuer) {
        out.push_str(&format!(
            ". Its issuer is not among the trusted roots ({trust}). If it is your organization's CA, \
             point SSL_CERT_FILE at its certificate (PEM) or SSL_CERT_DIR at a directory holding it"
        ));
    }
    out
}

struct Described {
    subject: String,
    issuer: String,
}

fn describe(der: &[u8]) -> Option<Described> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(Described {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
    })
}

/// Connects (through an HTTP proxy if one applies) and returns the end-entity certificate the
/// server presents, aborting the handshake right after.
fn peer_certificate(host: &str, port: u16, proxy: Option<&ureq::Proxy>) -> Option<Vec<u8>> {
    let mut tcp = match proxy {
        Some(p) if p.protocol() == ureq::ProxyProtocol::Http => {
            let mut tcp = connect(p.host(), p.port())?;
            write!(
                tcp,
                "CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
            )
            .ok()?;
            let mut reader = BufReader::new(tcp.try_clone().ok()?);
            let mut line = String::new();
            reader.read_line(&mut line).ok()?;
            if line.split_whitespace().nth(1) != Some("200") {
                return None;
            }
            while line != "\r\n" {
                line.clear();
                if reader.read_line(&mut line).ok()? == 0 {
                    return None;
                }
            }
            tcp
        }
        Some(_) => return None,
        None => connect(host, port)?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder {
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).ok()?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            break;
        }
    }
    let seen = recorder.seen.lock().ok()?.take();
    seen
}

fn connect(host: &str, port: u16) -> Option<TcpStream> {
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let tcp = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    tcp.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    tcp.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    Some(tcp)
}

/// Records the server's certificate and fails the handshake, so the connection carries nothing.
#[derive(Debug)]
struct Recorder {
    seen: Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(end_entity.as_ref().to_vec());
        }
        Err(rustls::Error::General(
            "certificate recorded for the error message".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
