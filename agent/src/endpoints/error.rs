//! Why a change of endpoints failed, by kind: each front end turns a kind into its own codes
//! (gRPC for weftctl in `local_api.rs`), and the message names the culprit either way.

use tonic::Status;

use crate::container::ContainerError;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The request itself is wrong: an ADDR, a DNS name.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// Not possible as things are: a resolv.conf for what has no file system, a DNS name for a
    /// container that is not attached here and no addresses.
    #[error("{0}")]
    Precondition(String),
    /// The controller's answer, or that it could not be reached, passed on as it is.
    #[error("{}", .0.message())]
    Controller(Status),
    /// A step in the kernel failed; the chain says which and why.
    #[error("{0:#}")]
    Kernel(anyhow::Error),
    /// What the attach made went away while it ran: the container lost its interface, or the
    /// controller its endpoint.
    #[error("{0}")]
    Lost(String),
    /// No tables from the controller yet.
    #[error("{0}")]
    NoTables(String),
    /// The controller answered with something unusable.
    #[error("{0}")]
    Internal(String),
}

impl EndpointError {
    /// Its kind, as the `result` label of the agent's operation metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            EndpointError::Invalid(_) => "invalid",
            EndpointError::Container(_) => "container",
            EndpointError::Precondition(_) => "precondition",
            EndpointError::Controller(_) => "controller",
            EndpointError::Kernel(_) => "kernel",
            EndpointError::Lost(_) => "lost",
            EndpointError::NoTables(_) => "no_tables",
            EndpointError::Internal(_) => "internal",
        }
    }
}

impl From<Status> for EndpointError {
    fn from(status: Status) -> Self {
        EndpointError::Controller(status)
    }
}

impl From<anyhow::Error> for EndpointError {
    fn from(e: anyhow::Error) -> Self {
        EndpointError::Kernel(e)
    }
}
