//! The Docker CLI against one engine of the harness: a real dockerd ([`crate::DockerEngine`])
//! or Podman's Docker-compatible service ([`crate::Podman`]).

use std::process::Command;

use crate::cmd::{self, Output};
use crate::podman::succeeded;

pub trait DockerCli {
    /// The engine's API, `unix:///PATH`: for `docker -H`, `DOCKER_HOST` or `weft-agent
    /// --docker-host`.
    fn url(&self) -> String;

    /// Runs `docker -H URL ARGS...` and reports how it ended.
    fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker");
        cmd.arg("-H").arg(self.url()).args(args);
        cmd::run(cmd)
    }

    /// [`DockerCli::docker`] for a step that must succeed; returns what it printed.
    fn docker_ok(&self, args: &[&str]) -> String {
        succeeded("docker", args, self.docker(args))
    }

    /// `docker exec CONTAINER ARGS...`.
    fn exec(&self, container: &str, args: &[&str]) -> Output {
        let mut argv = vec!["exec", container];
        argv.extend_from_slice(args);
        self.docker(&argv)
    }

    /// The pid of the container's main process, as the engine reports it; panics unless it
    /// runs.
    fn pid(&self, container: &str) -> u32 {
        let pid = self.inspect(container, "{{.State.Pid}}");
        match pid.parse() {
            Ok(pid) if pid > 0 => pid,
            _ => panic!("container {container} has no running process (pid {pid:?})"),
        }
    }

    /// `docker inspect -f FORMAT CONTAINER`, trimmed.
    fn inspect(&self, container: &str, format: &str) -> String {
        self.docker_ok(&["inspect", "-f", format, container])
            .trim()
            .to_owned()
    }
}
