//! Client certificates for simulated agents from the controller's own CA: what joining would
//! give each of them (a fresh key, a certificate naming its peer, for client authentication),
//! without a join token per agent.

use std::fs;
use std::path::Path;

use anyhow::Context;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub struct AgentCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl AgentCa {
    /// The CA in the controller's data dir `dir` (ca.pem, ca.key).
    pub fn load(dir: &Path) -> anyhow::Result<AgentCa> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
        };
        let (ca_pem, key_pem) = (read("ca.pem")?, read("ca.key")?);
        let key = KeyPair::from_pem(&key_pem).context("ca.key is not a key")?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).context("ca.pem is not a CA")?;
        Ok(AgentCa { issuer, ca_pem })
    }

    /// The TLS settings of the agent of peer `peer`: the controller's CA to trust, and a fresh
    /// key with a client certificate naming `peer`.
    pub fn tls_for(&self, peer: &str) -> anyhow::Result<ClientTlsConfig> {
        let key = KeyPair::generate().context("cannot make a key")?;
        let mut params = CertificateParams::default();
        params.subject_alt_names =
            vec![SanType::DnsName(peer.try_into().with_context(|| {
                format!("{peer:?} cannot be a certificate name")
            })?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("cannot sign a certificate for {peer}"))?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(cert.pem(), key.serialize_pem())))
    }
}
