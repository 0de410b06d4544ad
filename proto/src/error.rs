//! Error chains as people read them.

/// The innermost error's message: for a failed connection, the operating system's reason
/// ("No such file or directory (os error 2)") rather than a library's wrapper of it.
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A failed gRPC call in a few words: its message and, when a transport error lies
/// beneath, the operating system's reason ("tcp connect error: Connection refused (os error 111)").
pub fn describe(status: &tonic::Status) -> String {
    use std::error::Error;
    let root = root_cause(status);
    if status.source().is_none() || root == status.message() {
        status.message().to_string()
    } else {
        format!("{}: {root}", status.message())
    }
}
