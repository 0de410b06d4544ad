//! CONTAINER references as weftctl takes them: a Docker/Podman container's name, ID or unique
//! ID prefix (through the Docker API), or `netns:NAME`, `pid:PID`, or the path of a
//! network-namespace file; and `cni:ID/IFNAME`, an attachment the CNI plugin made (whose
//! namespace only its runtime knows). Each container has one canonical id, the key of its
//! endpoints.

use std::path::{Path, PathBuf};

use weft_proto::names::{
    MAX_CONTAINER_ID, cni_attachment, excerpt, is_docker_plugin_key, short_container_id,
};

use crate::cni_namespaces::CniNamespaces;
use crate::docker::{DockerApi, DockerError};
use crate::netns::{self, NamespaceError};

/// Where named namespaces live (`ip netns add NAME`).
const NETNS_DIR: &str = "/var/run/netns";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The key of its endpoints: the full Docker ID, `netns:NAME`, `pid:PID` or the namespace
    /// path.
    pub id: String,
    /// The network namespace file to enter; empty for a Docker container that is not running.
    pub netns: PathBuf,
    /// Its hostname, the DNS name it gets when attach is given none (Docker containers only).
    pub hostname: String,
    /// Its file system, `/proc/PID/root`, for a running Docker container (whose resolv.conf
    /// weft may rewrite); none for namespaces.
    pub root: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("process {0} does not exist")]
    NoProcess(u32),
    #[error(
        "\"{}\" is not a container reference: use a container name or ID, netns:NAME, pid:PID \
         or a namespace path", excerpt(.0)
    )]
    Unsupported(String),
    #[error("container reference \"{}\" is {len} bytes long, at most {MAX_CONTAINER_ID}",
        excerpt(.reference))]
    TooLong { reference: String, len: usize },
    #[error("container {name} ({}) is not running: it is {status}", short_container_id(.id))]
    NotRunning {
        name: String,
        id: String,
        status: String,
    },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("{0} was attached by the CNI plugin: its runtime attaches it (CNI ADD)")]
    Cni(String),
    #[error(
        "{} is an endpoint of Docker's network driver weft: Docker attaches and detaches it \
         (docker network connect/disconnect)", short_container_id(.0)
    )]
    DockerPlugin(String),
}

/// A namespace reference in its canonical form, without checking that it exists (detach must
/// work after the namespace is gone); `None` for what can only be a Docker container.
pub fn parse_namespace(reference: &str) -> Result<Option<Container>, ContainerError> {
    if reference.len() > MAX_CONTAINER_ID {
        return Err(ContainerError::TooLong {
            reference: reference.to_string(),
            len: reference.len(),
        });
    }
    let unsupported = || ContainerError::Unsupported(reference.to_string());
    let container = |id: String, netns: PathBuf| {
        Ok(Some(Container {
            id,
            netns,
            hostname: String::new(),
            root: None,
        }))
    };
    if cni_attachment(reference).is_some() {
        return container(reference.to_string(), PathBuf::new());
    }
    if is_docker_plugin_key(reference) {
        return Err(ContainerError::DockerPlugin(reference.to_string()));
    }
    if let Some(name) = reference.strip_prefix("netns:") {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(unsupported());
        }
        return container(format!("netns:{name}"), Path::new(NETNS_DIR).join(name));
    }
    if let Some(pid) = reference.strip_prefix("pid:") {
        let pid: u32 = pid.parse().map_err(|_| unsupported())?;
        return container(
            format!("pid:{pid}"),
            PathBuf::from(format!("/proc/{pid}/ns/net")),
        );
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
                return parse_namespace(&format!("netns:{name}"));
            }
        }
        return container(reference.to_string(), PathBuf::from(reference));
    }
    if is_docker_reference(reference) {
        return Ok(None);
    }
    Err(unsupported())
}

/// Docker's syntax for names (and so for IDs and their prefixes): `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn is_docker_reference(reference: &str) -> bool {
    let mut bytes = reference.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Finds containers by reference, asking the Docker API for those that are not namespaces.
pub struct Containers {
    pub docker: DockerApi,
    /// The namespaces of CNI attachments, which their references do not name.
    pub cni: CniNamespaces,
}

impl Containers {
    /// The container, which must be there now, with its namespace to plug into.
    pub async fn resolve(&self, reference: &str) -> Result<Container, ContainerError> {
        let container = self.identify(reference).await?;
        if cni_attachment(&container.id).is_some() {
            return Err(ContainerError::Cni(container.id));
        }
        if container.netns.as_os_str().is_empty() {
            let found = self.docker.find(reference).await?;
            return Err(ContainerError::NotRunning {
                name: found.name,
                id: found.id,
                status: found.status,
            });
        }
        if let Some(pid) = container.id.strip_prefix("pid:")
            && !container.netns.exists()
        {
            return Err(ContainerError::NoProcess(pid.parse().unwrap_or_default()));
        }
        // Checked (and opened without blocking) before anything is asked of the controller.
        netns::open(&container.netns)?;
        Ok(container)
    }

    /// The container named by `reference` in the namespace a front end was told, which must be
    /// a network namespace now.
    pub async fn resolve_at(
        &self,
        reference: &str,
        netns: &Path,
    ) -> Result<Container, ContainerError> {
        netns::open(netns)?;
        let mut container = self.identify(reference).await?;
        container.netns = netns.to_path_buf();
        Ok(container)
    }

    /// The container's canonical id, running or not; a namespace that is gone still has one.
    pub async fn identify(&self, reference: &str) -> Result<Container, ContainerError> {
        if let Some(mut container) = parse_namespace(reference)? {
            if let Some(netns) = self.cni.get(&container.id) {
                container.netns = netns;
            }
            return Ok(container);
        }
        let found = self.docker.find(reference).await?;
        let proc = found.pid.map(|pid| PathBuf::from(format!("/proc/{pid}")));
        Ok(Container {
            netns: proc.as_ref().map(|p| p.join("ns/net")).unwrap_or_default(),
            root: proc.map(|p| p.join("root")),
            id: found.id,
            hostname: found.hostname,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(reference: &str) -> Result<Container, ContainerError> {
        parse_namespace(reference).map(|c| c.expect("a namespace reference"))
    }

    fn containers_without_docker() -> Containers {
        Containers {
            docker: DockerApi::new("unix:///nonexistent/weft-test-docker.sock"),
            cni: CniNamespaces::load(Path::new("/nonexistent/weft-test-state")),
        }
    }

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
        let cni = parse("cni:pod-1/eth0").unwrap();
        assert_eq!(
            (cni.id.as_str(), cni.netns.as_os_str()),
            ("cni:pod-1/eth0", "".as_ref())
        );
    }

    #[test]
    fn bad_references_say_what_is_accepted() {
        for bad in [
            "",
            "netns:",
            "netns:a/b",
            "pid:x",
            "my container",
            "-x",
            "a:b",
        ] {
            assert_eq!(
                parse_namespace(bad).unwrap_err().to_string(),
                format!(
                    "\"{bad}\" is not a container reference: use a container name or ID, \
                     netns:NAME, pid:PID or a namespace path"
                )
            );
        }
        for docker in ["my-test1", "06d700491410", "a_b.c-d"] {
            assert_eq!(parse_namespace(docker), Ok(None));
        }
    }

    #[tokio::test]
    async fn an_unreachable_docker_api_is_named() {
        let err = containers_without_docker()
            .resolve("my-test1")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot reach the Docker API at unix:///nonexistent/weft-test-docker.sock: \
             the socket does not exist (is Docker, or Podman's API service, running?)"
        );
    }

    #[tokio::test]
    async fn missing_namespaces_are_named() {
        let containers = containers_without_docker();
        assert_eq!(
            containers
                .resolve("netns:weft-test-no-such-ns")
                .await
                .unwrap_err()
                .to_string(),
            "network namespace /var/run/netns/weft-test-no-such-ns does not exist"
        );
        assert_eq!(
            containers
                .resolve("pid:4294967295")
                .await
                .unwrap_err()
                .to_string(),
            "process 4294967295 does not exist"
        );
    }
}
