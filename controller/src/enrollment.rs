//! Joining: the admin API makes join tokens (on a root-only unix socket), and Join trades one,
//! once, for a client certificate naming the joining peer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};
use tracing::{info, warn};
use weft_proto::v1::admin_server::Admin;
use weft_proto::v1::enrollment_server::Enrollment;
use weft_proto::v1::{CreateTokenRequest, CreateTokenResponse, JoinRequest, JoinResponse};
use weft_tls::JoinToken;

use crate::limits;
use crate::metrics::METRICS;
use crate::tls::Ca;
use crate::tokens::{TokenError, Tokens};

/// The longest a token may live: it is meant for the next few agents to start.
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone)]
pub struct EnrollmentService {
    ca: Arc<Ca>,
    tokens: Arc<Tokens>,
}

impl EnrollmentService {
    pub fn new(ca: Arc<Ca>, tokens: Tokens) -> Self {
        EnrollmentService {
            ca,
            tokens: Arc::new(tokens),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EnrollmentService) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| Status::internal(format!("controller task failed: {e}")))?
    }
}

fn status_of(err: TokenError) -> Status {
    match err {
        TokenError::Used { .. } => Status::permission_denied(err.to_string()),
        TokenError::Store { .. } => Status::internal(err.to_string()),
        _ => Status::unauthenticated(err.to_string()),
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let joined = self.redeem(request).await;
        METRICS.joined(joined.is_ok());
        joined
    }
}

impl EnrollmentService {
    /// Signs the joining agent's CSR once its token is redeemed.
    async fn redeem(
        &self,
        request: Request<JoinRequest>,
    ) -> Result<Response<JoinResponse>, Status> {
        let JoinRequest {
            token,
            peer,
            csr_pem,
        } = request.into_inner();
        limits::peer_name(&peer)?;
        let token: JoinToken = token
            .parse()
            .map_err(|e: weft_tls::TlsError| Status::unauthenticated(e.to_string()))?;
        let id = token.id.clone();
        let cert_pem = self
            .blocking({
                let peer = peer.clone();
                move |this| {
                    // Checked before the token is used up: a bad CSR leaves it good.
                    if let Err(why) = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem) {
                        return Err(Status::invalid_argument(format!(
                            "invalid certificate signing request: {why}"
                        )));
                    }
                    this.tokens
                        .redeem(&token, this.ca.pin(), &peer, SystemTime::now())
                        .map_err(status_of)?;
                    this.ca
                        .sign_client(&csr_pem, &peer)
                        .map_err(Status::failed_precondition)
                }
            })
            .await
            .inspect_err(|s| warn!(%peer, token = %id, "join refused: {}", s.message()))?;
        info!(%peer, token = %id, "peer joined: certificate issued");
        Ok(Response::new(JoinResponse {
            cert_pem,
            ca_pem: self.ca.cert_pem.clone(),
        }))
    }
}

#[tonic::async_trait]
impl Admin for EnrollmentService {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let ttl = Duration::from_secs(request.into_inner().ttl_secs);
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(Status::invalid_argument(format!(
                "a token lives from 1 s to {} h",
                MAX_TTL.as_secs() / 3600
            )));
        }
        let (token, expires_unix) = self
            .blocking(move |this| {
                this.tokens
                    .create(ttl, this.ca.pin(), SystemTime::now())
                    .map_err(status_of)
            })
            .await?;
        info!(token = %token.id, ttl_secs = ttl.as_secs(), "join token created");
        Ok(Response::new(CreateTokenResponse {
            token: token.to_string(),
            expires_unix,
        }))
    }
}
