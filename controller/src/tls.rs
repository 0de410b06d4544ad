//! The controller's PKI: its CA (made on first start in the data dir or, for controllers on
//! etcd, in etcd; or given by flags), the server certificate it presents, and the client
//! certificates it signs for joining agents.

use std::fs;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use weft_tls::{first_cert, pin_of, read_pem, write_private};

/// How long a certificate the controller signs is valid. Server certificates are made afresh
/// on each start; an agent's lasts until it joins again.
const CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Clocks of hosts differ a little: certificates are valid from a moment before they are made.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    Pem(#[from] weft_tls::TlsError),
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error(transparent)]
    Cert(#[from] rcgen::Error),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> PkiError {
    PkiError::File {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

/// The CA client certificates must be signed by, and, when the controller made it, its key.
pub struct Ca {
    pub cert_pem: String,
    pin: String,
    issuer: Option<Issuer<'static, KeyPair>>,
}

/// What the controller presents to agents: its certificate chain and key, PEM.
pub struct ServerIdentity {
    pub chain_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// The CA of `dir` (ca.pem, ca.key), made there on first start; the key is root-only.
    pub fn load_or_create(dir: &Path) -> Result<Ca, PkiError> {
        let pems = match Ca::local_pems(dir)? {
            Some(pems) => pems,
            None => {
                let pems = Ca::new_pems()?;
                Ca::keep_pems(dir, &pems)?;
                pems
            }
        };
        Ca::from_pems(pems, &dir.join("ca.pem").display().to_string())
    }

    /// Writes a CA's certificate and key (PEM) into `dir` as ca.pem and ca.key, root-only.
    pub fn keep_pems(dir: &Path, (cert, key): &(String, String)) -> Result<(), PkiError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        write_private(&key_path, key).map_err(|e| file_err(&key_path, e))?;
        fs::write(&cert_path, cert).map_err(|e| file_err(&cert_path, e))
    }

    /// The certificate and key of `dir`'s CA (ca.pem, ca.key), if it has one.
    pub fn local_pems(dir: &Path) -> Result<Option<(String, String)>, PkiError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if !key_path.exists() {
            return Ok(None);
        }
        Ok(Some((
            read_pem(&cert_path, "CA certificate", true)?,
            read_pem(&key_path, "CA key", false)?,
        )))
    }

    /// A new self-signed CA: its certificate and key, PEM.
    pub fn new_pems() -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "weft controller CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The CA of a certificate and key (PEM) read from `whence` (for errors).
    pub fn from_pems((cert_pem, key_pem): (String, String), whence: &str) -> Result<Ca, PkiError> {
        let bad = |e: rcgen::Error| PkiError::File {
            path: whence.to_string(),
            why: e.to_string(),
        };
        let key = KeyPair::from_pem(&key_pem).map_err(bad)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(bad)?;
        Ca::new(cert_pem, Some(issuer))
    }

    /// A CA given by --tls-ca: it checks client certificates; without its key, the controller
    /// signs none.
    pub fn given(cert_path: &Path) -> Result<Ca, PkiError> {
        Ca::new(read_pem(cert_path, "--tls-ca", true)?, None)
    }

    fn new(cert_pem: String, issuer: Option<Issuer<'static, KeyPair>>) -> Result<Ca, PkiError> {
        let der = first_cert(&cert_pem).map_err(|why| PkiError::File {
            path: "CA certificate".into(),
            why,
        })?;
        Ok(Ca {
            pin: pin_of(&der),
            cert_pem,
            issuer,
        })
    }

    /// The SHA-256 of the CA certificate, which join tokens carry.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    fn issuer(&self) -> Result<&Issuer<'static, KeyPair>, String> {
        self.issuer.as_ref().ok_or_else(|| {
            "this controller was given its CA by --tls-ca and has not its key: it signs no \
             certificates; give the agent --tls-cert and --tls-key"
                .to_string()
        })
    }

    /// A fresh server certificate for `names` (IP addresses or DNS names), with the CA after it
    /// in the chain: an agent joining by token finds there the CA its token pins.
    pub fn issue_server(&self, names: &[String]) -> Result<ServerIdentity, PkiError> {
        let issuer = self.issuer().map_err(|why| PkiError::File {
            path: "--tls-ca".into(),
            why,
        })?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "weft-controller");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params);
        let cert = params.signed_by(&key, issuer)?;
        Ok(ServerIdentity {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a joining agent's CSR as a client certificate for `peer`: the name in it is the
    /// peer's, whatever the CSR asked for.
    pub fn sign_client(&self, csr_pem: &str, peer: &str) -> Result<String, String> {
        let issuer = self.issuer()?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("invalid certificate signing request: {e}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, peer);
        params.subject_alt_names =
            vec![SanType::DnsName(peer.try_into().map_err(|e| {
                format!("peer name {peer:?} cannot be a certificate name: {e}")
            })?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params);
        let cert = params
            .signed_by(&csr.public_key, issuer)
            .map_err(|e| format!("cannot sign the certificate: {e}"))?;
        Ok(cert.pem())
    }
}

fn set_validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + CERT_LIFETIME;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_its_key_is_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = Ca::load_or_create(dir.path()).unwrap();
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(first.pin(), again.pin());
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_client_certificate_names_the_peer_not_what_the_csr_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["host2".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let pem = ca.sign_client(&csr, "host1").unwrap();
        let der = first_cert(&pem).unwrap();
        assert_eq!(crate::authority::name_of(&der).as_deref(), Some("host1"));
    }
}
