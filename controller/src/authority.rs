//! Who is calling, and what they may do. Over TLS every call but Join carries a client
//! certificate signed by the controller's CA (checked in the handshake); the peer name in it is
//! the caller's identity, and a call may act only for that peer. Under --insecure there is no
//! identity and nothing is checked; a call that carries neither an identity nor the --insecure
//! mark came by a route that checked nothing, and acts for no peer.

use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

/// The peer name of the certificate the caller presented.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub String);

/// The peer name in a certificate: its first DNS subject-alternative name, else its common name.
pub fn name_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::DNSName(name) => Some(name.to_string()),
                _ => None,
            })
        });
    san.or_else(|| {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
    })
}

/// The interceptor in front of the Controller service over TLS: refuses a caller without a
/// client certificate and records the peer it names for [`act_for`].
pub fn require_certificate(mut request: Request<()>) -> Result<Request<()>, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate: every call but Join needs one signed by the controller's CA \
             (start the agent with --join TOKEN, or --tls-cert and --tls-key)",
        )
    })?;
    let name = certs
        .first()
        .and_then(|cert| name_of(cert))
        .ok_or_else(|| {
            Status::unauthenticated("the client certificate names no peer (no DNS name, no CN)")
        })?;
    request.extensions_mut().insert(PeerIdentity(name));
    Ok(request)
}

/// The mark of a call served under --insecure, where callers have no identity.
#[derive(Debug, Clone, Copy)]
pub struct Insecure;

/// The interceptor in front of the Controller service under --insecure: marks the call so that
/// [`act_for`] lets it act for any peer.
pub fn mark_insecure(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.extensions_mut().insert(Insecure);
    Ok(request)
}

/// Refuses a call that acts for `peer` from a caller whose certificate names another peer, and
/// one that passed neither interceptor.
pub fn act_for<T>(request: &Request<T>, peer: &str) -> Result<(), Status> {
    let extensions = request.extensions();
    match (
        extensions.get::<PeerIdentity>(),
        extensions.get::<Insecure>(),
    ) {
        (Some(PeerIdentity(me)), _) if me != peer => Err(Status::permission_denied(format!(
            "peer {me} may not act for peer {peer}"
        ))),
        (Some(_), _) | (None, Some(Insecure)) => Ok(()),
        (None, None) => Err(Status::unauthenticated(format!(
            "no verified caller: the call reached the controller without the client-certificate \
             check, so it may not act for peer {peer}"
        ))),
    }
}

/// The caller's peer name, if it presented a certificate.
pub fn identity<T>(request: &Request<T>) -> Option<&str> {
    request
        .extensions()
        .get::<PeerIdentity>()
        .map(|PeerIdentity(name)| name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(peer: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(PeerIdentity(peer.to_string()));
        request
    }

    #[test]
    fn a_peer_acts_for_itself_only() {
        assert!(act_for(&from("host1"), "host1").is_ok());
        let refused = act_for(&from("host1"), "host2").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(refused.message(), "peer host1 may not act for peer host2");
    }

    #[test]
    fn under_insecure_any_caller_acts_for_any_peer() {
        let request = mark_insecure(Request::new(())).unwrap();
        assert!(act_for(&request, "host2").is_ok());
    }

    #[test]
    fn a_call_with_neither_identity_nor_the_insecure_mark_acts_for_no_peer() {
        let refused = act_for(&Request::new(()), "host2").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            refused.message(),
            "no verified caller: the call reached the controller without the client-certificate \
             check, so it may not act for peer host2"
        );
    }

    #[test]
    fn a_caller_without_a_certificate_is_unauthenticated() {
        let refused = require_certificate(Request::new(())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().starts_with("no client certificate"));
    }
}
