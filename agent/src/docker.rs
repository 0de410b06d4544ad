//! Docker and Podman containers, through the Docker Engine API (bollard): finding the one an
//! operator names (name, full ID or unique ID prefix), and hearing when one stops or goes away.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use bollard::{API_DEFAULT_VERSION, Docker};
use futures::{Stream, StreamExt};
use tokio::sync::OnceCell;
use weft_proto::error::root_cause;

use weft_proto::names::short_container_id;

/// Where the Docker API is when neither `--docker-host` nor `$DOCKER_HOST` says.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// Seconds an API request may take before the API counts as unreachable.
const REQUEST_TIMEOUT_SECS: u64 = 5;
/// The events after which a container no longer needs its endpoints ("remove" is Podman's
/// word for Docker's "destroy").
const STOP_EVENTS: [&str; 3] = ["die", "destroy", "remove"];
const START_EVENT: &str = "start";
/// A network's event: a container joined it (`docker network connect`, also at its start).
const CONNECT_EVENT: &str = "connect";
/// How often, and how far apart, a reply the client cannot decode is asked for again. Podman
/// reports a container it is stopping or removing as `stopped`, a state the Docker API (and so
/// bollard) does not know, until its cleanup a moment later; one such container anywhere on the
/// host would otherwise fail every listing.
const UNDECODABLE_TRIES: u32 = 10;
const UNDECODABLE_PAUSE: Duration = Duration::from_millis(100);

/// Why the Docker API did not give the container asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    #[error("no container has the name or ID \"{reference}\" at {url}")]
    NoSuchContainer { reference: String, url: String },
    #[error("ID prefix \"{prefix}\" matches {} containers: {}", .matches.len(),
        .matches.iter().map(|id| short_container_id(id)).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        prefix: String,
        matches: Vec<String>,
    },
    #[error("cannot reach the Docker API at {url}: {why}")]
    Unreachable { url: String, why: String },
}

/// A container as the Docker API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerContainer {
    /// The full 64-hex-digit ID.
    pub id: String,
    /// Its name, without Docker's leading `/`.
    pub name: String,
    /// The PID of its main process, while it runs.
    pub pid: Option<u32>,
    /// Docker's word for its state: running, created, exited, paused, ...
    pub status: String,
    pub hostname: String,
}

/// What became of a container (its ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEvent {
    /// Started, or connected to a network.
    Started(String),
    /// Stopped or removed.
    Stopped(String),
}

/// A Docker Engine API endpoint, connected on first use.
pub struct DockerApi {
    url: String,
    client: OnceCell<Docker>,
}

impl DockerApi {
    pub fn new(url: &str) -> DockerApi {
        DockerApi {
            url: url.to_string(),
            client: OnceCell::new(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn unreachable(&self, err: &bollard::errors::Error) -> DockerError {
        let why = match err {
            bollard::errors::Error::SocketNotFoundError(_) => {
                "the socket does not exist (is Docker, or Podman's API service, running?)".into()
            }
            err => root_cause(err),
        };
        DockerError::Unreachable {
            url: self.url.clone(),
            why,
        }
    }

    /// The client, speaking the newest API version both sides know (Podman's is older than
    /// Docker's).
    async fn client(&self) -> Result<&Docker, DockerError> {
        self.client
            .get_or_try_init(|| async {
                let client = if self.url.starts_with("tcp://") || self.url.starts_with("http://") {
                    Docker::connect_with_http(&self.url, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                } else {
                    Docker::connect_with_unix(&self.url, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                };
                let client = client.map_err(|e| self.unreachable(&e))?;
                client
                    .negotiate_version()
                    .await
                    .map_err(|e| self.unreachable(&e))
            })
            .await
    }

    /// The containers, all or only the running ones: (ID, names).
    async fn list(&self, all: bool) -> Result<Vec<(String, Vec<String>)>, DockerError> {
        let client = self.client().await?;
        let options = ListContainersOptionsBuilder::new().all(all).build();
        let list = decoded(|| client.list_containers(Some(options.clone())))
            .await
            .map_err(|e| self.unreachable(&e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let names = c.names.unwrap_or_default();
                let names = names
                    .iter()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .collect();
                Some((c.id?, names))
            })
            .collect())
    }

    /// The container a reference names: its full ID, its name, or a prefix of exactly one ID
    /// (in that order, as the Docker CLI takes them).
    pub async fn find(&self, reference: &str) -> Result<DockerContainer, DockerError> {
        let all = self.list(true).await?;
        let id = match pick(reference, &all) {
            Pick::One(id) => id,
            Pick::None => {
                return Err(DockerError::NoSuchContainer {
                    reference: reference.to_string(),
                    url: self.url.clone(),
                });
            }
            Pick::Many(ids) => {
                return Err(DockerError::Ambiguous {
                    prefix: reference.to_string(),
                    matches: ids,
                });
            }
        };
        Ok(self.inspect(&id, reference).await?.0)
    }

    /// The container `id` (a `reference` to it, for errors), and the Docker endpoint IDs of its
    /// networks.
    pub async fn inspect(
        &self,
        id: &str,
        reference: &str,
    ) -> Result<(DockerContainer, Vec<String>), DockerError> {
        let client = self.client().await?;
        let found = decoded(|| client.inspect_container(id, None))
            .await
            .map_err(|e| match e {
                // Removed between the listing and now.
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                } => DockerError::NoSuchContainer {
                    reference: reference.to_string(),
                    url: self.url.clone(),
                },
                e => self.unreachable(&e),
            })?;
        let state = found.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let endpoints = found
            .network_settings
            .and_then(|n| n.networks)
            .into_iter()
            .flat_map(|networks| networks.into_values())
            .filter_map(|n| n.endpoint_id.filter(|e| !e.is_empty()))
            .collect();
        let container = DockerContainer {
            name: found
                .name
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default(),
            pid: state
                .pid
                .filter(|pid| running && *pid > 0)
                .and_then(|pid| u32::try_from(pid).ok()),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            hostname: found.config.and_then(|c| c.hostname).unwrap_or_default(),
            id: id.to_string(),
        };
        Ok((container, endpoints))
    }

    /// The IDs of the containers running now.
    pub async fn running(&self) -> Result<HashSet<String>, DockerError> {
        Ok(self
            .list(false)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Containers as they start, stop or are removed, from `since` (seconds since the epoch)
    /// on.
    pub async fn events(
        &self,
        since: u64,
    ) -> Result<impl Stream<Item = Result<ContainerEvent, DockerError>> + '_, DockerError> {
        let actions = [START_EVENT, CONNECT_EVENT]
            .into_iter()
            .chain(STOP_EVENTS)
            .collect();
        let filters = HashMap::from([("type", vec!["container", "network"]), ("event", actions)]);
        let options = EventsOptionsBuilder::new()
            .since(&since.to_string())
            .filters(&filters)
            .build();
        let events = self.client().await?.events(Some(options));
        Ok(events.filter_map(move |event| async move {
            let e = match event {
                Ok(e) => e,
                Err(e) => return Some(Err(self.unreachable(&e))),
            };
            let actor = e.actor?;
            match e.action.as_deref().unwrap_or_default() {
                // A network's event: the container is among its attributes.
                CONNECT_EVENT => {
                    let id = actor.attributes?.remove("container")?;
                    Some(Ok(ContainerEvent::Started(id)))
                }
                START_EVENT => Some(Ok(ContainerEvent::Started(actor.id?))),
                action if STOP_EVENTS.contains(&action) => {
                    Some(Ok(ContainerEvent::Stopped(actor.id?)))
                }
                _ => None,
            }
        }))
    }
}

/// `request`'s reply, asked for again while it cannot be decoded (see [`UNDECODABLE_TRIES`]).
async fn decoded<T, F, R>(request: F) -> Result<T, bollard::errors::Error>
where
    F: Fn() -> R,
    R: Future<Output = Result<T, bollard::errors::Error>>,
{
    let mut tries = 1;
    loop {
        match request().await {
            Err(bollard::errors::Error::JsonDataError { .. }) if tries < UNDECODABLE_TRIES => {
                tries += 1;
                tokio::time::sleep(UNDECODABLE_PAUSE).await;
            }
            reply => return reply,
        }
    }
}

enum Pick {
    One(String),
    None,
    Many(Vec<String>),
}

/// Docker's rule for a reference: a full ID, then a name, then a unique ID prefix.
fn pick(reference: &str, all: &[(String, Vec<String>)]) -> Pick {
    if let Some((id, _)) = all.iter().find(|(id, _)| id == reference) {
        return Pick::One(id.clone());
    }
    if let Some((id, _)) = all
        .iter()
        .find(|(_, names)| names.iter().any(|n| n == reference))
    {
        return Pick::One(id.clone());
    }
    let mut matches: Vec<String> = all
        .iter()
        .filter(|(id, _)| id.starts_with(reference))
        .map(|(id, _)| id.clone())
        .collect();
    matches.sort();
    match matches.len() {
        0 => Pick::None,
        1 => Pick::One(matches.remove(0)),
        _ => Pick::Many(matches),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn containers() -> Vec<(String, Vec<String>)> {
        [
            ("3f2a9c1d7e55", "web"),
            ("3f9b0c2d1e44", "db"),
            ("06d700491410", "3f9b"),
        ]
        .into_iter()
        .map(|(id, name)| (id.repeat(5) + "0000", vec![name.to_string()]))
        .collect()
    }

    fn picked(reference: &str) -> Result<String, Vec<String>> {
        match pick(reference, &containers()) {
            Pick::One(id) => Ok(id[..12].to_string()),
            Pick::None => Err(vec![]),
            Pick::Many(ids) => Err(ids.iter().map(|id| id[..12].to_string()).collect()),
        }
    }

    #[test]
    fn references_resolve_as_docker_does() {
        assert_eq!(picked("web"), Ok("3f2a9c1d7e55".into()));
        assert_eq!(picked("3f2"), Ok("3f2a9c1d7e55".into()));
        assert_eq!(picked(&containers()[1].0), Ok("3f9b0c2d1e44".into()));
        // A name wins over an ID prefix.
        assert_eq!(picked("3f9b"), Ok("06d700491410".into()));
        assert_eq!(
            picked("3f"),
            Err(vec!["3f2a9c1d7e55".into(), "3f9b0c2d1e44".into()])
        );
        assert_eq!(picked("nope"), Err(vec![]));
    }
}
