//! What the controller and the agents share about TLS: reading PEM files (errors name the file
//! and the flag), the CA pin a join token carries, the token's text form, and the one TLS client
//! that trusts a server by that pin alone (an agent's first connection, before it has the CA).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {path}: {why}")]
    File {
        flag: &'static str,
        path: String,
        why: String,
    },
    #[error("invalid join token: {0}")]
    Token(String),
}

/// Reads a PEM file given by `flag` and checks it holds at least one certificate (`cert`) or
/// a private key (`!cert`); returns its text.
pub fn read_pem(path: &Path, flag: &'static str, cert: bool) -> Result<String, TlsError> {
    let fail = |why: String| TlsError::File {
        flag,
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    if cert {
        first_cert(&text).map_err(fail)?;
    } else {
        rustls::pki_types::PrivateKeyDer::from_pem_slice(text.as_bytes())
            .map_err(|e| fail(format!("no private key in it ({e})")))?;
    }
    Ok(text)
}

/// The first certificate of a PEM text, as DER.
pub fn first_cert(pem: &str) -> Result<CertificateDer<'static>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or("no certificate in it")?
        .map_err(|e| format!("not PEM ({e})"))
}

/// Writes a file only its owner may read, so from its creation on, and syncs it.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// The pin of a CA certificate: the SHA-256 of its DER, lower-case hex.
pub fn pin_of(cert_der: &[u8]) -> String {
    ::ring::digest::digest(&::ring::digest::SHA256, cert_der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A join token: `ID.SECRET.sha256:PIN`. The controller keeps ID with a hash of SECRET; PIN is
/// the controller's CA, so the agent trusts no other server with the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    pub ca_pin: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl FromStr for JoinToken {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        let bad = |why: &str| TlsError::Token(format!("{why} (expected ID.SECRET.sha256:PIN)"));
        let mut parts = s.trim().splitn(3, '.');
        let (Some(id), Some(secret), Some(pin)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("not three parts"));
        };
        let pin = pin
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("the CA pin lacks its sha256: prefix"))?;
        if !is_hex(id, 16) || !is_hex(secret, 32) || !is_hex(pin, 64) {
            return Err(bad("a part is not lower-case hex of the right length"));
        }
        Ok(JoinToken {
            id: id.into(),
            secret: secret.into(),
            ca_pin: pin.into(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.sha256:{}", self.id, self.secret, self.ca_pin)
    }
}

/// Trusts a server whose chain carries the CA with the pin, and whose certificate that CA
/// signed for the name connected to.
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| pin_of(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the controller's CA is not the one the join token pins (sha256:{})",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
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

/// A gRPC channel to `url` (https://HOST:PORT) over TLS that trusts the server by the CA pin
/// only, presenting no client certificate: for the Join call.
pub fn pinned_channel(url: &str, pin: &str) -> Result<Channel, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid controller URL {url}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "joining needs an https:// controller URL, not {url}"
        ));
    }
    // An IPv6 literal keeps its brackets in a URI and loses them as a server name.
    let authority_host = uri
        .host()
        .ok_or_else(|| format!("controller URL {url} has no host"))?;
    let host = authority_host.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(6786);
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
    let provider = Arc::new(ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            pin: pin.to_string(),
            provider,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // The connector does TLS itself: the URI tonic sees is plain http.
    let endpoint = Endpoint::from_shared(format!("http://{authority_host}:{port}"))
        .map_err(|e| e.to_string())?;
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let (connector, name, host) = (connector.clone(), name.clone(), host.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_as_written() {
        let token = JoinToken {
            id: "0123456789abcdef".into(),
            secret: "0123456789abcdef0123456789abcdef".into(),
            ca_pin: "ab".repeat(32),
        };
        assert_eq!(token.to_string().parse::<JoinToken>().unwrap(), token);
    }

    #[test]
    fn a_mangled_token_is_refused() {
        for bad in ["", "a.b", "0123456789abcdef.00.sha256:00", "x.y.z.w"] {
            assert!(bad.parse::<JoinToken>().is_err(), "accepted {bad:?}");
        }
    }
}
