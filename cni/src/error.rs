//! The CNI spec's error object and codes: what a runtime reads on stdout when a command fails.

use serde::Serialize;

/// Error codes of the CNI spec (1.1.0, "Error"), and weft's own above 99.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// weft's: the agent refused the request for a reason the message gives.
    pub const REFUSED: u32 = 100;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The error object as the spec has it, in the version the runtime asked for.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("plain fields");
        value["cniVersion"] = cni_version.into();
        value
    }
}

/// The agent's answer to a failed call, as a CNI error: the agent's message names the culprit;
/// the code says what the runtime may do about it.
pub fn from_status(what: &str, status: &tonic::Status) -> CniError {
    use tonic::Code;
    let code = match status.code() {
        // No controller yet, or the agent is starting: the runtime retries.
        Code::Unavailable | Code::DeadlineExceeded => code::TRY_AGAIN_LATER,
        Code::InvalidArgument => code::INVALID_CONFIG,
        Code::NotFound => code::UNKNOWN_CONTAINER,
        _ => code::REFUSED,
    };
    CniError {
        details: format!("the agent answered {:?}", status.code()),
        ..CniError::new(code, format!("{what}: {}", status.message()))
    }
}
