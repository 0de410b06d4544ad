//! weftctl with real containers, made and driven with the Docker CLI as in the seeds'
//! walkthrough; Podman's Docker-compatible API stands in for a Docker engine.

use std::thread::sleep;
use std::time::{Duration, Instant};

use weft_integration::{
    CONTAINER_IMAGE, DockerCli, Netns, Output, Podman, World, assert_rejected, links, wait_until,
};

// What weftctl's error line must say, besides naming the culprit, for each reason an attach by
// name can fail. Each reason must be told apart: a line may contain its own needle only.
const NO_SUCH_CONTAINER: &str = "no container has the name or ID";
const NOT_RUNNING: &str = "is not running: it is";
const AMBIGUOUS: &str = " matches ";
const DOCKER_UNREACHABLE: &str = "cannot reach the Docker API";
const REASONS: [&str; 4] = [
    NO_SUCH_CONTAINER,
    NOT_RUNNING,
    AMBIGUOUS,
    DOCKER_UNREACHABLE,
];

/// How soon after `docker rm -f` the container must be gone from `weftctl ps` and its address
/// free again.
const RELEASE: Duration = Duration::from_secs(2);
/// The agent tries a Docker API that went away again at most every 10 s, then releases within
/// [`RELEASE`].
const API_BACK_RELEASE: Duration = Duration::from_secs(12);
/// How long the Docker API stays down after the removal.
const OUTAGE: Duration = Duration::from_secs(3);

/// The address an attach of `cidr` prints.
fn ip_of(cidr: &str) -> &str {
    cidr.split('/').next().expect("a CIDR")
}

/// The `weftctl ps` line of a container attached with `cidr`: its 12-character ID, the MAC of
/// its `ethwe` as the container itself sees it, the CIDR.
fn ps_line(podman: &Podman, container: &str, cidr: &str) -> String {
    let id = podman.id(container);
    let mac = podman.exec(container, &["cat", "/sys/class/net/ethwe/address"]);
    assert!(mac.success(), "ethwe's MAC in {container}: {}", mac.stderr);
    format!("{} {} {cidr}\n", &id[..12], mac.stdout.trim())
}

/// The failure an attach by name must give: weftctl's error shape, the culprit named, and
/// `reason` and no other reason given.
fn assert_reason(out: &Output, culprit: &str, reason: &str) {
    assert_rejected(out, reason);
    assert!(
        out.stderr.contains(culprit),
        "the error must name {culprit:?}: {:?}",
        out.stderr
    );
    for other in REASONS.iter().filter(|r| **r != reason) {
        assert!(
            !out.stderr.contains(other),
            "the error gives {other:?} as well as {reason:?}: {:?}",
            out.stderr
        );
    }
}

/// Starts containers until two have IDs that begin alike, and returns that first hex digit: an
/// ID prefix that is ambiguous whatever other containers exist. 17 containers always do.
fn ambiguous_id_prefix(podman: &Podman) -> String {
    let mut firsts = Vec::new();
    for n in 0..17 {
        let container = podman.run_detached(&format!("amb{n}"), &[]);
        let first = podman.id(&container)[..1].to_owned();
        if firsts.contains(&first) {
            return first;
        }
        firsts.push(first);
    }
    unreachable!("17 IDs share no first hex digit: {firsts:?}")
}

/// The harness itself, on what weft does today: containers run with the Docker CLI, attached by
/// the pid Docker reports, reach each other across hosts with `docker exec ... ping`.
#[test]
fn docker_containers_attached_by_pid_reach_each_other() {
    let podman = Podman::start();
    let world = World::new(2);
    let c1 = podman.run_detached("c1", &[]);
    let c2 = podman.run_detached("c2", &[]);
    for (host, container, cidr) in [(1, &c1, "10.2.0.2/24"), (2, &c2, "10.2.0.3/24")] {
        let target = format!("pid:{}", podman.pid(container));
        assert_eq!(
            world.ctl(host, &["attach", cidr, &target]),
            format!("{}\n", ip_of(cidr))
        );
        let addrs = podman.exec(
            container,
            &["ip", "-o", "-4", "addr", "show", "dev", "ethwe"],
        );
        assert!(
            addrs.stdout.contains(&format!("inet {cidr} ")),
            "ethwe in {container} lacks {cidr}: {}{}",
            addrs.stdout,
            addrs.stderr
        );
    }
    podman.assert_reaches(&c1, "10.2.0.3");
    podman.assert_reaches(&c2, "10.2.0.2");
}

/// The seeds' walkthrough: containers attached by name on two hosts ping across, `weftctl ps`
/// lists them by ID, and a removed container's address is free at once for another.
#[test]
fn walkthrough_with_container_names() {
    let podman = Podman::start();
    let world = World::with_agent_args(2, &["--docker-host", &podman.url()]);
    let c1 = podman.run_detached("my-test1", &[]);
    let c2 = podman.run_detached("my-test2", &["--hostname", "bbox2.weave.local"]);
    let c3 = podman.run_detached("my-test3", &[]);

    assert_eq!(
        world.ctl(1, &["attach", "192.168.0.2/24", &c1]),
        "192.168.0.2\n"
    );
    assert_eq!(
        world.ctl(2, &["attach", "192.168.0.3/24", &c2]),
        "192.168.0.3\n"
    );
    podman.assert_reaches(&c1, "192.168.0.3");
    podman.assert_reaches(&c2, "192.168.0.2");
    assert_eq!(
        world.ctl(1, &["ps"]),
        ps_line(&podman, &c1, "192.168.0.2/24")
    );
    assert_eq!(
        world.ctl(2, &["ps"]),
        ps_line(&podman, &c2, "192.168.0.3/24")
    );
    // Its hostname is the DNS name it is recorded under.
    let ps2 = world.ctl(2, &["ps", &c2, "--json"]);
    assert!(ps2.contains(r#""dns_name":"bbox2.weave.local""#), "{ps2}");

    podman.docker_ok(&["rm", "-f", &c1]);
    let removed = Instant::now();
    assert!(
        wait_until(RELEASE, || world.ctl(1, &["ps"]).is_empty()),
        "host1 still lists {c1} {RELEASE:?} after docker rm -f: {:?}",
        world.ctl(1, &["ps"])
    );
    // By a unique ID prefix this time; the address may take what is left of RELEASE to be free.
    let id3 = podman.id(&c3);
    let mut attach3 = None;
    let freed = wait_until(RELEASE.saturating_sub(removed.elapsed()), || {
        let out = world.weftctl(1, &["attach", "192.168.0.2/24", &id3[..12]]);
        let ok = out.success();
        attach3 = Some(out);
        ok
    });
    let attach3 = attach3.expect("at least one attempt");
    assert!(
        freed,
        "192.168.0.2 not free {RELEASE:?} after docker rm -f {c1}: {}",
        attach3.stderr.trim()
    );
    assert_eq!(attach3.stdout, "192.168.0.2\n");
    assert_eq!(
        world.ctl(1, &["ps"]),
        ps_line(&podman, &c3, "192.168.0.2/24")
    );
    podman.assert_reaches(&c2, "192.168.0.2");

    assert_eq!(world.ctl(1, &["detach", &id3]).trim_end(), "192.168.0.2");
    assert_eq!(world.ctl(1, &["ps"]), "");
}

/// What an attach by name cannot resolve, it refuses, naming the container and why.
#[test]
fn attach_names_the_container_it_cannot_resolve() {
    let podman = Podman::start();
    let world = World::with_agent_args(1, &["--docker-host", &podman.url()]);
    let attach = |container: &str| world.weftctl(1, &["attach", "192.168.0.2/24", container]);

    let unknown = podman.name("no-such");
    assert_reason(&attach(&unknown), &unknown, NO_SUCH_CONTAINER);

    let created = podman.name("created");
    podman.docker_ok(&[
        "create",
        "--network",
        "none",
        "--name",
        &created,
        CONTAINER_IMAGE,
        "sleep",
        "1d",
    ]);
    assert_reason(&attach(&created), &created, NOT_RUNNING);

    let stopped = podman.run_detached("stopped", &[]);
    podman.docker_ok(&["stop", "-t", "0", &stopped]);
    assert_reason(&attach(&stopped), &stopped, NOT_RUNNING);

    let prefix = ambiguous_id_prefix(&podman);
    assert_reason(&attach(&prefix), &prefix, AMBIGUOUS);

    assert_eq!(
        world.ctl(1, &["ps"]),
        "",
        "a refused attach left an endpoint"
    );
}

/// Without a Docker API a name cannot be resolved, and the error names the address tried; a
/// namespace needs no Docker API.
#[test]
fn attach_by_name_without_docker_api_names_the_api() {
    let nowhere = tempfile::tempdir().expect("temp dir");
    let socket = nowhere.path().join("docker.sock");
    let url = format!("unix://{}", socket.display());
    let mut world = World::with_agent_args(1, &["--docker-host", &url]);

    let out = world.weftctl(1, &["attach", "192.168.0.2/24", "my-test1"]);
    assert_reason(&out, &socket.display().to_string(), DOCKER_UNREACHABLE);

    let c1 = world.container(1, "c1");
    let target = format!("netns:{c1}");
    assert_eq!(
        world.ctl(1, &["attach", "192.168.0.2/24", &target]),
        "192.168.0.2\n"
    );
}

/// Host `host`'s weft veths.
fn host_veths(world: &World, host: usize) -> Vec<String> {
    links(&world.host_ns(host))
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.starts_with("vethwepl"))
        .collect()
}

/// A container attached by `pid:` whose namespace goes away (`docker rm -f`): the agent closes
/// its DNS listener, which kept the namespace alive, so the veth goes with the namespace, and
/// the agent releases the address.
#[test]
fn a_removed_container_attached_by_pid_loses_its_veth_and_its_address() {
    let podman = Podman::start();
    let world = World::new(1);
    let c1 = podman.run_detached("c1", &[]);
    let target = format!("pid:{}", podman.pid(&c1));
    assert_eq!(world.ctl(1, &["attach", &target]), "10.32.0.2\n");
    assert_eq!(host_veths(&world, 1).len(), 1);
    podman.docker_ok(&["rm", "-f", &c1]);
    let removed = Instant::now();
    // Only a closed listener lets the namespace, and so the veth, go.
    assert!(
        wait_until(RELEASE, || host_veths(&world, 1).is_empty()),
        "the veth is still there {RELEASE:?} after docker rm -f: {:?}",
        host_veths(&world, 1)
    );
    assert!(
        wait_until(RELEASE, || world.ctl(1, &["ps"]).is_empty()),
        "host1 still lists {target}: {}",
        world.ctl(1, &["ps"])
    );
    println!(
        "veth gone and address released {:?} after docker rm -f",
        removed.elapsed()
    );
    let tables = world.controller_tables();
    assert_eq!(tables["endpoints"], serde_json::json!([]), "{tables}");
}

/// Containers that stop while the agent is down are released when it starts again.
#[test]
fn a_container_removed_while_the_agent_was_down_is_released_when_it_is_back() {
    let podman = Podman::start();
    let world = World::with_agent_args(1, &["--docker-host", &podman.url()]);
    let c1 = podman.run_detached("my-test1", &[]);
    let c2 = podman.run_detached("my-test2", &[]);
    world.ctl(1, &["attach", "192.168.0.2/24", &c1]);
    world.ctl(1, &["attach", "192.168.0.3/24", &c2]);
    world.stop_agent(1);
    podman.docker_ok(&["rm", "-f", &c1]);
    world.start_agent(1);
    let started = Instant::now();
    assert!(
        wait_until(RELEASE, || world.ctl(1, &["ps"])
            == ps_line(&podman, &c2, "192.168.0.3/24")),
        "host1 lists {}",
        world.ctl(1, &["ps"])
    );
    println!("released {:?} after the agent was back", started.elapsed());
    // The address is free for another container.
    let c3 = podman.run_detached("my-test3", &[]);
    assert_eq!(
        world.ctl(1, &["attach", "192.168.0.2/24", &c3]),
        "192.168.0.2\n"
    );
}

/// A container removed while the Docker API is down (its service stopped, the agent running, so
/// no event can come) is released once the API answers again: the agent catches up on
/// reconnecting, trying again at most every 10 s. Its namespace is held open, as a pod's is by
/// its runtime, so its veth stays and only the catch-up can tell the agent it is gone (a
/// container whose namespace goes loses its veth, and the reconcile releases it).
#[test]
fn a_container_removed_while_the_docker_api_was_down_is_released_when_it_answers_again() {
    let mut podman = Podman::start();
    let world = World::with_agent_args(1, &["--docker-host", &podman.url()]);
    let c1 = podman.run_detached("api-down1", &[]);
    let c2 = podman.run_detached("api-down2", &[]);
    let _held = Netns::of_process(&podman.name("held"), podman.pid(&c1));
    world.ctl(1, &["attach", "192.168.0.2/24", &c1]);
    world.ctl(1, &["attach", "192.168.0.3/24", &c2]);
    let both = world.ctl(1, &["ps"]);
    podman.stop_service();
    podman.podman_ok(&["rm", "--force", "--time", "0", &c1]);
    // An outage, not a blip: the agent asks for events from a second before it reconnects, so
    // a removal this long before is not among them.
    sleep(OUTAGE);
    assert_eq!(world.ctl(1, &["ps"]), both, "with the Docker API down");
    assert_eq!(host_veths(&world, 1).len(), 2, "with the Docker API down");
    podman.start_service();
    let answering = Instant::now();
    assert!(
        wait_until(API_BACK_RELEASE, || world.ctl(1, &["ps"])
            == ps_line(&podman, &c2, "192.168.0.3/24")),
        "host1 lists {} {API_BACK_RELEASE:?} after the Docker API answered again",
        world.ctl(1, &["ps"])
    );
    assert_eq!(host_veths(&world, 1).len(), 1, "veths once released");
    println!(
        "released {:?} after the Docker API answered again",
        answering.elapsed()
    );
    let c3 = podman.run_detached("api-down3", &[]);
    assert_eq!(
        world.ctl(1, &["attach", "192.168.0.2/24", &c3]),
        "192.168.0.2\n"
    );
}

/// `attach` points a Docker container's resolv.conf at weft's DNS, with the domain first in its
/// search list; `--no-rewrite-resolv` leaves it alone; `--rewrite-resolv` is refused for a
/// namespace, before anything is attached.
#[test]
fn attach_points_a_containers_resolv_conf_at_weft_unless_told_not_to() {
    let podman = Podman::start();
    let mut world = World::with_agent_args(1, &["--docker-host", &podman.url()]);
    let (c1, c2) = (
        podman.run_detached("my-test1", &[]),
        podman.run_detached("my-test2", &[]),
    );
    let resolv = |c: &str| podman.exec(c, &["cat", "/etc/resolv.conf"]).stdout;
    let untouched = resolv(&c2);
    world.ctl(1, &["attach", &c1]);
    let rewritten = resolv(&c1);
    let nameservers: Vec<&str> = rewritten
        .lines()
        .filter(|l| l.starts_with("nameserver"))
        .collect();
    assert_eq!(nameservers, ["nameserver 127.0.0.11"], "{rewritten}");
    let search = rewritten.lines().find(|l| l.starts_with("search "));
    assert!(
        search.is_some_and(|l| l.starts_with("search weave.local")),
        "{rewritten}"
    );
    world.ctl(1, &["attach", "--no-rewrite-resolv", &c2]);
    assert_eq!(resolv(&c2), untouched);

    let ns = world.container(1, "n1");
    let target = format!("netns:{ns}");
    let out = world.weftctl(1, &["attach", "--rewrite-resolv", &target]);
    assert_rejected(
        &out,
        &format!(
            "{target} has no file system of its own to write a resolv.conf in; \
             --rewrite-resolv is for Docker containers"
        ),
    );
    let ps = world.ctl(1, &["ps", &target]);
    assert_eq!(ps, "", "a refused attach attaches nothing");
}
