//! CONTAINER references as weftctl takes them: `netns:NAME`, `pid:PID`, or the path of a
//! network-namespace file. Each has one canonical id, the key of its endpoint in the tables.

use std::path::{Path, PathBuf};

/// Where named namespaces live (`ip netns add NAME`).
const NETNS_DIR: &str = "/var/run/netns";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The key of its endpoints: `netns:NAME`, `pid:PID` or the namespace path.
    pub id: String,
    /// The network namespace file to enter.
    pub netns: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerError {
    #[error("network namespace {} does not exist", .0.display())]
    NoNamespace(PathBuf),
    #[error("process {0} does not exist")]
    NoProcess(u32),
    #[error("\"{0}\" is not a container reference: use netns:NAME, pid:PID or a namespace path")]
    Unsupported(String),
}

/// The canonical form of a reference, without checking that the container exists
/// (detach must work after the namespace is gone).
pub fn parse(reference: &str) -> Result<Container, ContainerError> {
    let unsupported = || ContainerError::Unsupported(reference.to_string());
    if let Some(name) = reference.strip_prefix("netns:") {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(unsupported());
        }
        return Ok(Container {
            id: format!("netns:{name}"),
            netns: Path::new(NETNS_DIR).join(name),
        });
    }
    if let Some(pid) = reference.strip_prefix("pid:") {
        let pid: u32 = pid.parse().map_err(|_| unsupported())?;
        return Ok(Container {
            id: format!("pid:{pid}"),
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
        });
    }
    if reference.starts_with('/') {
        // A named namespace gets the same id whichever way it is referred to.
        for dir in [NETNS_DIR, "/run/netns"] {
            if let Some(name) = Path::new(reference)
                .strip_prefix(dir)
                .ok()
                .and_then(|rest| rest.to_str())
                .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            {
                return parse(&format!("netns:{name}"));
            }
        }
        return Ok(Container {
            id: reference.to_string(),
            netns: PathBuf::from(reference),
        });
    }
    Err(unsupported())
}

/// Parses a reference and checks that its namespace exists now.
pub fn resolve(reference: &str) -> Result<Container, ContainerError> {
    let container = parse(reference)?;
    if !container.netns.exists() {
        if let Some(pid) = container.id.strip_prefix("pid:") {
            return Err(ContainerError::NoProcess(pid.parse().unwrap_or_default()));
        }
        return Err(ContainerError::NoNamespace(container.netns));
    }
    Ok(container)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_has_one_canonical_id() {
        let named = parse("netns:c1").unwrap();
        assert_eq!(named.id, "netns:c1");
        assert_eq!(named.netns, Path::new("/var/run/netns/c1"));
        assert_eq!(parse("/var/run/netns/c1").unwrap(), named);
        assert_eq!(parse("/run/netns/c1").unwrap().id, "netns:c1");
        let pid = parse("pid:42").unwrap();
        assert_eq!(pid.id, "pid:42");
        assert_eq!(pid.netns, Path::new("/proc/42/ns/net"));
        let path = parse("/tmp/ns/x").unwrap();
        assert_eq!(path.id, "/tmp/ns/x");
    }

    #[test]
    fn bad_references_say_what_is_accepted() {
        for bad in ["", "netns:", "netns:a/b", "pid:x", "my-container"] {
            assert_eq!(
                parse(bad).unwrap_err().to_string(),
                format!(
                    "\"{bad}\" is not a container reference: use netns:NAME, pid:PID or a namespace path"
                )
            );
        }
    }

    #[test]
    fn missing_namespaces_are_named() {
        assert_eq!(
            resolve("netns:weft-test-no-such-ns")
                .unwrap_err()
                .to_string(),
            "network namespace /var/run/netns/weft-test-no-such-ns does not exist"
        );
        assert_eq!(
            resolve("pid:4294967295").unwrap_err().to_string(),
            "process 4294967295 does not exist"
        );
    }
}
