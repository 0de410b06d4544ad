//! Podman as a CNI runtime: one Podman per test host, on its CNI backend, whose only network is
//! weft (the plugin talking to that host's agent) with `portmap` chained. Podman 4.3 has no flag
//! for the backend: a containers.conf of the guard's own says `network_backend = "cni"` and
//! where the plugins and the network configuration are (temp dirs; /etc is left alone). Podman
//! runs in the host's namespace (`nsenter --net`, not `ip netns exec`, which remounts /sys), so
//! the pods' namespaces are its own and the plugin runs where a runtime on that host runs it.
//!
//! Dropping the guard removes its containers (Podman calls the plugin's DEL for each), so make
//! it after the [`World`] whose agent it uses.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use nix::sys::signal::{self, Signal};
use serde_json::json;
use tempfile::TempDir;

use crate::cmd::{self, Output};
use crate::cni::CNI_PLUGIN_DIR;
use crate::podman::{
    CONTAINER_IMAGE, CONTAINERS_CONF, conmons_of, ensure_image, guard_dir, succeeded,
};
use crate::world::World;

/// The network's name, as `podman run --network` takes it.
pub const NETWORK: &str = "weft";

pub struct PodmanCni {
    prefix: String,
    host_ns: String,
    dir: TempDir,
}

impl PodmanCni {
    /// A Podman for host `host` of `world`, whose containers join weft through its agent.
    pub fn on(world: &World, host: usize) -> PodmanCni {
        let (prefix, dir) = guard_dir("wftp");
        let (bin, netd) = (dir.path().join("cnibin"), dir.path().join("net.d"));
        fs::create_dir_all(&bin)
            .and_then(|_| fs::create_dir_all(&netd))
            .expect("cni dirs");
        symlink(crate::locate_bin("weft-cni"), bin.join("weft")).expect("linking the plugin");
        for plugin in ["portmap", "loopback"] {
            symlink(Path::new(CNI_PLUGIN_DIR).join(plugin), bin.join(plugin))
                .expect("linking a reference plugin");
        }
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [
                {"type": "weft", "socket": world.socket(host), "ipMasq": true},
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        fs::write(netd.join("weft.conflist"), conflist.to_string()).expect("the conflist");
        let d = dir.path().display();
        let conf = format!(
            "{CONTAINERS_CONF}events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\n\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{d}/cnibin\"]\n\
             network_config_dir = \"{d}/net.d\"\n"
        );
        fs::write(dir.path().join("containers.conf"), conf).expect("containers.conf");
        ensure_image(&dir.path().join("containers.conf"));
        PodmanCni {
            prefix,
            host_ns: world.host_ns(host),
            dir,
        }
    }

    /// `podman ARGS...` in the host's namespace with this guard's settings.
    pub fn podman(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"));
        cmd::run(cmd)
    }

    pub fn podman_ok(&self, args: &[&str]) -> String {
        succeeded("podman", args, self.podman(args))
    }

    /// `podman run -d --network weft --name <prefix>-<name> EXTRA... IMAGE COMMAND...`; returns
    /// the container's full name.
    pub fn run(&self, name: &str, extra: &[&str], command: &[&str]) -> String {
        let name = format!("{}-{name}", self.prefix);
        let mut args = vec!["run", "-d", "--network", NETWORK, "--name", &name];
        args.extend_from_slice(extra);
        args.push(CONTAINER_IMAGE);
        args.extend_from_slice(command);
        self.podman_ok(&args);
        name
    }

    /// The container's full ID, its CNI_CONTAINERID.
    pub fn id(&self, container: &str) -> String {
        self.podman_ok(&["inspect", "-f", "{{.Id}}", container])
            .trim()
            .to_string()
    }

    /// The container's address on weft.
    pub fn ip(&self, container: &str) -> String {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}");
        self.podman_ok(&["inspect", "-f", &format, container])
            .trim()
            .to_string()
    }
}

impl Drop for PodmanCni {
    fn drop(&mut self) {
        let filter = format!("name=^{}-", self.prefix);
        let listed = self.podman(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter]);
        let ids: Vec<&str> = listed.stdout.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "--force", "--time", "0"];
            args.extend_from_slice(&ids);
            let _ = self.podman(&args);
        }
        for pid in conmons_of(&format!("{}-", self.prefix)) {
            let _ = signal::kill(pid, Signal::SIGKILL);
        }
    }
}
