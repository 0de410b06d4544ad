//! Running weft's CNI plugin as a runtime does: the `CNI_*` environment and the network
//! configuration on stdin, in the host's namespace (the reference plugins, chained after it,
//! the same way).

use std::path::Path;

use serde_json::{Value, json};

use crate::cmd::{self, Output};
use crate::netns::in_netns;
use crate::world::World;

/// Where Debian's containernetworking-plugins are.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// What a plugin printed: its exit status and stdout as JSON (null when it printed nothing).
#[derive(Debug)]
pub struct CniRun {
    pub output: Output,
    pub json: Value,
}

impl CniRun {
    pub fn success(&self) -> bool {
        self.output.success()
    }

    /// The error object's code, asserting the failure's shape (non-zero exit, the spec's fields).
    pub fn error_code(&self) -> u64 {
        assert!(
            !self.success(),
            "the plugin succeeded: {}",
            self.output.stdout
        );
        assert!(
            self.json["msg"].is_string() && self.json["cniVersion"].is_string(),
            "not a CNI error object: {:?}",
            self.output.stdout
        );
        self.json["code"].as_u64().expect("code")
    }

    pub fn msg(&self) -> &str {
        self.json["msg"].as_str().unwrap_or_default()
    }
}

/// The environment of one plugin run, as the runtime sets it.
pub type Env<'a> = Vec<(&'a str, &'a str)>;

/// The environment of an ADD, DEL or CHECK (`command`) of sandbox `id` whose namespace is the
/// file `netns`, its interface `eth0`, with `CNI_ARGS` `args`.
pub fn pod_env<'a>(command: &'a str, id: &'a str, netns: &'a str, args: &'a str) -> Env<'a> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args),
    ]
}

/// A network configuration for weft in `version`, with `extra` keys merged in.
pub fn weft_conf(version: &str, extra: Value) -> Value {
    let mut conf = json!({"cniVersion": version, "name": "weft-test", "type": "weft"});
    if let (Some(conf), Some(extra)) = (conf.as_object_mut(), extra.as_object()) {
        conf.extend(extra.clone());
    }
    conf
}

/// Runs `plugin` in `ns` with `env` and `conf` on stdin.
pub fn run_plugin(ns: &str, plugin: &Path, env: &[(&str, &str)], conf: &Value) -> CniRun {
    run_plugin_raw(ns, plugin, env, conf.to_string().as_bytes())
}

/// [`run_plugin`] with `stdin` as it is (broken JSON, say).
pub fn run_plugin_raw(ns: &str, plugin: &Path, env: &[(&str, &str)], stdin: &[u8]) -> CniRun {
    let mut cmd = in_netns(ns, plugin, &[]);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_PATH", CNI_PLUGIN_DIR)
        .envs(env.iter().copied());
    let output = cmd::run_with_input(cmd, stdin);
    let json = serde_json::from_str(output.stdout.trim()).unwrap_or(Value::Null);
    CniRun { output, json }
}

impl World {
    /// Runs weft's plugin on host `host` against its agent (the configuration's `socket` is
    /// set to it unless `conf` has one).
    pub fn cni(&self, host: usize, env: &[(&str, &str)], conf: &Value) -> CniRun {
        let mut conf = conf.clone();
        if conf.get("socket").is_none() {
            conf["socket"] = self.socket(host).to_str().expect("UTF-8").into();
        }
        run_plugin(
            &self.host_ns(host),
            &crate::locate_bin("weft-cni"),
            env,
            &conf,
        )
    }
}
