//! The agent's identity towards the controller: a client certificate given by flags, or one
//! stored in --state-dir, or one obtained once with a join token and stored there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rcgen::{CertificateParams, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tracing::info;
use weft_proto::v1::JoinRequest;
use weft_proto::v1::enrollment_client::EnrollmentClient;
use weft_tls::{JoinToken, pinned_channel, read_pem, write_private};

/// How long the Join call may take, connection included.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The files an agent keeps in --state-dir.
const CERT: &str = "cert.pem";
const KEY: &str = "key.pem";
const CA: &str = "ca.pem";

/// A client certificate, its key and the CA that signs the controller's, all PEM.
pub struct Credentials {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl Credentials {
    /// From the files of --tls-cert, --tls-key and --tls-ca (errors name the flag and file).
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<Credentials> {
        Ok(Credentials {
            cert_pem: read_pem(cert, "--tls-cert", true)?,
            key_pem: read_pem(key, "--tls-key", false)?,
            ca_pem: read_pem(ca, "--tls-ca", true)?,
        })
    }

    /// What an earlier join stored in `dir`, if it did.
    pub fn stored(dir: &Path) -> anyhow::Result<Option<Credentials>> {
        if !dir.join(CERT).exists() {
            return Ok(None);
        }
        Credentials::from_files(&dir.join(CERT), &dir.join(KEY), &dir.join(CA))
            .map(Some)
            .with_context(|| format!("the certificate stored in {}", dir.display()))
    }

    /// The TLS settings of the channels to the controller.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// Trades `token` for a certificate naming `peer`, at the controller of `url`, trusted only if
/// its CA is the one the token pins; stores key, certificate and CA in `dir`. Nothing is
/// stored if the controller refuses.
pub async fn join(url: &str, token: &str, peer: &str, dir: &Path) -> anyhow::Result<Credentials> {
    let token: JoinToken = token.parse().context("--join")?;
    let key = KeyPair::generate().context("cannot make a key")?;
    let csr = CertificateParams::new(vec![peer.to_string()])
        .and_then(|p| p.serialize_request(&key))
        .and_then(|csr| csr.pem())
        .with_context(|| format!("cannot make a certificate request for {peer:?}"))?;
    let channel = pinned_channel(url, &token.ca_pin).map_err(|e| anyhow!(e))?;
    let reply = tokio::time::timeout(
        JOIN_TIMEOUT,
        EnrollmentClient::new(channel).join(JoinRequest {
            token: token.to_string(),
            peer: peer.to_string(),
            csr_pem: csr,
        }),
    )
    .await
    .map_err(|_| anyhow!("joining {url}: no answer within {JOIN_TIMEOUT:?}"))?
    .map_err(|s| anyhow!("joining {url} refused: {}", weft_proto::error::describe(&s)))?
    .into_inner();
    let creds = Credentials {
        cert_pem: reply.cert_pem,
        key_pem: key.serialize_pem(),
        ca_pem: reply.ca_pem,
    };
    store(dir, &creds)
        .with_context(|| format!("cannot store the certificate in {}", dir.display()))?;
    info!(%peer, dir = %dir.display(), "joined: certificate stored");
    Ok(creds)
}

fn store(dir: &Path, creds: &Credentials) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    write_private(&dir.join(KEY), &creds.key_pem)?;
    write_private(&dir.join(CA), &creds.ca_pem)?;
    // Written last: its presence means the other two are there.
    write_private(&dir.join(CERT), &creds.cert_pem)
}

/// How the agent authenticates, as its flags say.
pub enum Auth {
    Insecure,
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
    /// Stored in the state dir, or obtained with the token (if any) and stored there.
    StateDir {
        dir: PathBuf,
        token: Option<String>,
    },
}

/// The agent's credentials (`None` under --insecure); checks the URLs' scheme matches. A join
/// asks each controller of `urls` in turn until one answers it.
pub async fn credentials(
    auth: Auth,
    urls: &[String],
    peer: &str,
) -> anyhow::Result<Option<Credentials>> {
    if let Auth::Insecure = auth {
        if let Some(url) = urls.iter().find(|u| u.starts_with("https://")) {
            bail!("--insecure speaks plaintext: give the controller as http://, not {url}");
        }
        tracing::warn!(
            "--insecure: plaintext gRPC without authentication; anyone on the path can read and forge the tables"
        );
        return Ok(None);
    }
    if let Some(url) = urls.iter().find(|u| !u.starts_with("https://")) {
        bail!("the controller URL {url} is plaintext: use https:// (or --insecure)");
    }
    let creds = match auth {
        Auth::Insecure => unreachable!("handled above"),
        Auth::Files { cert, key, ca } => Credentials::from_files(&cert, &key, &ca)?,
        Auth::StateDir { dir, token } => match (Credentials::stored(&dir)?, token) {
            (Some(creds), _) => creds,
            (None, Some(token)) => join_any(urls, &token, peer, &dir).await?,
            (None, None) => bail!(
                "no certificate in {}: give --join TOKEN (from `weftctl token create` on the \
                 controller's host), or --tls-cert, --tls-key and --tls-ca, or --insecure",
                dir.display()
            ),
        },
    };
    Ok(Some(creds))
}

/// [`join`] at the first of `urls` that takes the token; the error says why each did not.
async fn join_any(
    urls: &[String],
    token: &str,
    peer: &str,
    dir: &Path,
) -> anyhow::Result<Credentials> {
    let mut failed = Vec::new();
    for url in urls {
        match join(url, token, peer, dir).await {
            Ok(creds) => return Ok(creds),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    bail!("{}", failed.join("; "))
}
