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
