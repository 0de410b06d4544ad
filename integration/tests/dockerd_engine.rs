//! The harness's Docker Engine: a real dockerd in a test host's namespace runs a container in a
//! namespace of its own, and leaves nothing behind (mount, process, file) once dropped.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use weft_integration::dockerd::processes_naming;
use weft_integration::{DockerCli, DockerEngine, World};

/// `readlink /proc/PID/ns/net`: `net:[INODE]`.
fn netns_of(pid: u32) -> String {
    let link = fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("cannot read process {pid}'s netns: {e}"));
    link.display().to_string()
}

/// How [`netns_of`] names the namespace mounted at /run/netns/NS.
fn named_netns(ns: &str) -> String {
    let path = Path::new("/run/netns").join(ns);
    let meta =
        fs::metadata(&path).unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
    format!("net:[{}]", meta.ino())
}

/// The root mount namespace's mounts (this process's) whose line names `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .expect("reading mountinfo")
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_owned)
        .collect()
}

#[test]
fn dockerd_runs_containers_in_a_host_and_leaves_nothing_behind() {
    let world = World::new(1);
    let mut engine = DockerEngine::on(&world, 1);
    let host = named_netns(engine.host_ns());
    let dockerd = engine.daemon_pid().expect("dockerd runs");
    assert_eq!(
        netns_of(dockerd),
        host,
        "dockerd must run in the host's namespace"
    );

    let id = engine.run("sleeper", &["--network", "none"], &["sleep", "600"]);
    assert!(
        id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "docker run printed {id:?}, not an ID"
    );
    let hi = engine.exec("sleeper", &["echo", "hi"]);
    assert!(hi.success(), "docker exec failed: {}", hi.stderr);
    assert_eq!(hi.stdout, "hi\n");
    let pid = engine.pid("sleeper");
    assert_ne!(
        netns_of(pid),
        host,
        "the container must have a namespace of its own"
    );

    // dockerd's /run/docker/plugins is the directory the host's agent serves weft's driver in.
    assert_eq!(
        engine.plugin_socket(),
        world.docker_plugin_dir(1).join("weft.sock")
    );
    let seen = Command::new("nsenter")
        .arg(format!("--mount=/proc/{dockerd}/ns/mnt"))
        .args(["ls", "/run/docker/plugins"])
        .output()
        .expect("nsenter runs");
    assert_eq!(String::from_utf8_lossy(&seen.stdout), "weft.sock\n");

    let dir = engine.dir().to_path_buf();
    drop(engine);
    assert!(!dir.exists(), "{} is left", dir.display());
    assert_eq!(mounts_under(&dir), Vec::<String>::new(), "mounts left");
    assert_eq!(processes_naming(&dir), [], "processes left");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the container's process {pid} is left"
    );
    assert!(
        !Path::new(&format!("/proc/{dockerd}")).exists(),
        "dockerd ({dockerd}) is left"
    );
}
