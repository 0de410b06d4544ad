//! `deploy/kubernetes/` as a cluster would take it: the YAML parses; every weft program a
//! container runs is one of the workspace's, given only flags its `--help` lists; every path a
//! container is given lies on a volume it mounts; and the conflist the DaemonSet installs works
//! with the real plugin and agent (an ADD with it gets an address and the masquerading it asks
//! for).

use std::path::Path;

use serde_json::Value;
use weft_integration::cni::weft_conf;
use weft_integration::{World, exec, locate_bin};
use yaml_rust2::{Yaml, YamlLoader};

const WEFT_BINS: &str = "/usr/local/bin/";

fn manifests() -> Vec<(String, Yaml)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed = YamlLoader::load_from_str(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            docs.extend(parsed.into_iter().map(|d| (name.clone(), d)));
        }
    }
    assert!(
        docs.len() >= 5,
        "the controller's and the agent's manifests"
    );
    docs
}

fn strs(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Every container (init containers too) of the workloads, with the file it is in.
fn containers(docs: &[(String, Yaml)]) -> Vec<(String, Yaml)> {
    docs.iter()
        .flat_map(|(file, doc)| {
            let spec = &doc["spec"]["template"]["spec"];
            ["initContainers", "containers"]
                .into_iter()
                .flat_map(|k| spec[k].as_vec().cloned().unwrap_or_default())
                .map(|c| (file.clone(), c))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The words of a container's command, scripts (`sh -c ...`) split, quotes dropped.
fn words(container: &Yaml) -> Vec<String> {
    strs(&container["command"])
        .iter()
        .flat_map(|part| {
            part.split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
        })
        .collect()
}

/// Each weft program the words run, with the flags and values given to it.
fn invocations(words: &[String]) -> Vec<(String, Vec<(String, String)>)> {
    let mut runs: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (i, word) in words.iter().enumerate() {
        if let Some(bin) = word.strip_prefix(WEFT_BINS) {
            runs.push((bin.to_string(), Vec::new()));
        } else if let (Some(flag), Some((_, flags))) = (word.strip_prefix("--"), runs.last_mut()) {
            let (flag, value) = match flag.split_once('=') {
                Some((f, v)) => (f.to_string(), v.to_string()),
                None => {
                    let next = words.get(i + 1).filter(|w| !w.starts_with("--"));
                    (flag.to_string(), next.cloned().unwrap_or_default())
                }
            };
            flags.push((flag, value));
        }
    }
    runs
}

#[test]
fn the_kubernetes_manifests_name_what_the_binaries_take() {
    let docs = manifests();
    let mut programs = 0;
    for (file, container) in containers(&docs) {
        let name = container["name"].as_str().unwrap_or_default().to_string();
        let mounts: Vec<String> = container["volumeMounts"]
            .as_vec()
            .into_iter()
            .flatten()
            .filter_map(|m| m["mountPath"].as_str().map(str::to_string))
            .collect();
        let words = words(&container);
        for (bin, flags) in invocations(&words) {
            programs += 1;
            let out = std::process::Command::new(locate_bin(&bin))
                .arg("--help")
                .output()
                .unwrap_or_else(|e| panic!("{file}: {name} runs {bin}, which cannot run: {e}"));
            let help = String::from_utf8_lossy(&out.stdout).into_owned();
            for (flag, value) in flags {
                let listed = help.lines().any(|l| {
                    let l = l.trim_start();
                    l.strip_prefix(&format!("--{flag}"))
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '<', ',']))
                });
                assert!(
                    listed,
                    "{file}: {name} gives {bin} --{flag}, which its --help lacks"
                );
                // A path a program is given is on a volume of its container.
                if value.starts_with('/') {
                    assert!(
                        mounts.iter().any(|m| value.starts_with(m.as_str())),
                        "{file}: {name}'s --{flag} {value} is on no volume it mounts ({mounts:?})"
                    );
                }
            }
        }
        // The other paths a script names (what the init container copies where) too.
        for word in words.iter().filter(|w| w.starts_with('/')) {
            if let Some(bin) = word.strip_prefix(WEFT_BINS) {
                locate_bin(bin);
            } else if !word.starts_with("/bin/") && words.iter().any(|w| w == "-c") {
                assert!(
                    mounts.iter().any(|m| word.starts_with(m.as_str())),
                    "{file}: {name} uses {word}, on no volume it mounts ({mounts:?})"
                );
            }
        }
    }
    assert!(
        programs >= 2,
        "the manifests run the controller and the agent"
    );
}

#[test]
fn the_conflist_the_daemonset_installs_works_with_the_plugin() {
    let docs = manifests();
    let configmap = docs
        .iter()
        .find(|(_, d)| d["kind"].as_str() == Some("ConfigMap"))
        .expect("a ConfigMap");
    let data = configmap.1["data"].as_hash().expect("data");
    let (key, text) = data.iter().next().expect("a conflist");
    assert!(key.as_str().unwrap().ends_with(".conflist"));
    let conflist: Value = serde_json::from_str(text.as_str().unwrap()).expect("JSON");
    let weft = conflist["plugins"][0].clone();
    assert_eq!(weft["type"], "weft");
    // The socket the plugin is told is the one the agent serves.
    let agent_socket = containers(&docs)
        .into_iter()
        .flat_map(|(_, c)| invocations(&words(&c)))
        .filter(|(bin, _)| bin == "weft-agent")
        .flat_map(|(_, flags)| flags)
        .find(|(f, _)| f == "socket")
        .map(|(_, v)| v)
        .expect("the agent's --socket");
    assert_eq!(weft["socket"], agent_socket.as_str());

    let mut world = World::new(1);
    let mut conf = weft_conf(conflist["cniVersion"].as_str().unwrap(), weft);
    conf["socket"] = world.socket(1).to_str().unwrap().into();
    let ns = world.container(1, "pod");
    let path = format!("/run/netns/{ns}");
    let id = "d".repeat(64);
    let env = |command| {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", path.as_str()),
            ("CNI_IFNAME", "eth0"),
        ]
    };
    let added = world.cni(1, &env("ADD"), &conf);
    assert!(added.success(), "{:?}", added.output);
    assert!(
        added.json["ips"][0]["gateway"].is_string(),
        "{}",
        added.json
    );
    let table = exec(&world.host_ns(1), &["nft", "list", "table", "ip", "weft"]);
    assert!(table.stdout.contains("masquerade"), "{}", table.stdout);
    assert!(world.cni(1, &env("DEL"), &conf).success());
}
