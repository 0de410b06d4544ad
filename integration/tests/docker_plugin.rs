//! weft as Docker's network and IPAM driver, driven by a real dockerd 20.10 in each test host
//! (see `integration/src/dockerd.rs`): networks made with `docker network create -d weft` on
//! two hosts are one network; containers get weft's addresses, reach each other across hosts by
//! address and by name, and leave the overlay through their host; everything is given back;
//! bad requests get `{"Err": ...}` and leave nothing behind.

use std::time::Duration;

use serde_json::Value;
use weft_integration::{DockerCli, DockerEngine, World, exec, wait_until};

/// The subnet every host's Docker network `blue` is made with.
const SUBNET: &str = "10.9.0.0/24";
/// A machine on the underlay that is no weft host.
const OUTSIDER: &str = "198.18.0.200";
/// weft's DNS inside a container on a weft network, given to Docker as `--dns` (Docker's own
/// DNS forwards what it does not know there).
const WEFT_DNS: &str = "127.0.0.12";
/// How long a name may take to reach the other host's DNS: the container's start event, then
/// the controller's delta.
const NAME_SPREADS: Duration = Duration::from_secs(10);

/// Two hosts, each with a dockerd whose network driver `weft` is its agent. The engines go
/// first (fields drop in order): removing their containers calls the agents.
struct Docker {
    engines: Vec<DockerEngine>,
    world: World,
}

impl Docker {
    fn new() -> Docker {
        let world = World::new(2);
        let engines = (1..=2)
            .map(|host| {
                let engine = DockerEngine::on(&world, host);
                // Container names come from this host's Docker.
                world.restart_agent_with(host, &["--docker-host", &engine.url()]);
                engine
            })
            .collect();
        Docker { engines, world }
    }

    fn on(&self, host: usize) -> &DockerEngine {
        &self.engines[host - 1]
    }

    /// `docker network create -d weft --ipam-driver weft ARGS... NAME` on `host`.
    fn create_network(&self, host: usize, name: &str, args: &[&str]) -> weft_integration::Output {
        let mut argv = vec!["network", "create", "-d", "weft", "--ipam-driver", "weft"];
        argv.extend_from_slice(args);
        argv.push(name);
        self.on(host).docker(&argv)
    }

    /// A container `name` on network `blue` of `host`, with weft's DNS, that stops at once.
    fn run(&self, host: usize, name: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "--network",
            "blue",
            "--dns",
            WEFT_DNS,
            "--stop-timeout",
            "1",
        ];
        args.extend_from_slice(extra);
        self.on(host).run(name, &args, &["sleep", "600"])
    }

    /// The container's setting on network `blue`: IPAddress, Gateway, EndpointID, MacAddress.
    fn setting(&self, host: usize, container: &str, key: &str) -> String {
        self.on(host).inspect(
            container,
            &format!("{{{{.NetworkSettings.Networks.blue.{key}}}}}"),
        )
    }

    fn ping(&self, host: usize, container: &str, target: &str) -> bool {
        self.on(host)
            .exec(container, &["ping", "-c", "1", "-W", "2", target])
            .success()
    }

    /// `weftctl ps` of `host`, a line each.
    fn ps(&self, host: usize) -> Vec<String> {
        self.world
            .ctl(host, &["ps"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The containers of the controller's tables (endpoints' keys) on `host`.
    fn endpoints_on(&self, host: usize) -> Vec<String> {
        let tables = self.world.controller_tables();
        tables["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|ep| ep["peer"] == format!("host{host}"))
            .filter_map(|ep| ep["container_id"].as_str().map(str::to_string))
            .collect()
    }
}

#[test]
fn containers_on_a_weft_network_reach_each_other_across_hosts_and_give_everything_back() {
    let mut docker = Docker::new();
    for host in 1..=2 {
        let out = docker.create_network(host, "blue", &["--subnet", SUBNET]);
        assert!(
            out.success(),
            "network create on host{host}: {}",
            out.stderr
        );
    }
    let web1 = docker.run(1, "web1", &[]);
    let web2 = docker.run(2, "web2", &["--ip", "10.9.0.50"]);
    let ip1 = docker.setting(1, "web1", "IPAddress");
    assert_eq!(docker.setting(2, "web2", "IPAddress"), "10.9.0.50");
    assert!(ip1.starts_with("10.9.0."), "web1 got {ip1}");

    // One network: by address and by name, both ways.
    assert!(
        docker.ping(1, "web1", "10.9.0.50"),
        "web1 cannot reach web2"
    );
    assert!(docker.ping(2, "web2", &ip1), "web2 cannot reach web1");
    for (host, from, to) in [(1, "web1", "web2"), (2, "web2", "web1")] {
        let resolved = wait_until(NAME_SPREADS, || docker.ping(host, from, to));
        let lookup = docker.on(host).exec(from, &["nslookup", to, WEFT_DNS]);
        assert!(
            resolved,
            "{from} cannot reach {to} by name: {}",
            lookup.stdout
        );
    }

    // Each host's Docker has that host's own address on the network as gateway.
    let gateways: Vec<String> = (1..=2)
        .map(|host| {
            let name = ["web1", "web2"][host - 1];
            let gateway = docker.setting(host, name, "Gateway");
            let line = docker
                .ps(host)
                .into_iter()
                .find(|l| l.starts_with("weft:expose "));
            let line = line.unwrap_or_else(|| panic!("host{host} is not exposed"));
            assert!(
                line.ends_with(&format!(" {gateway}/24")),
                "{line} vs {gateway}"
            );
            gateway
        })
        .collect();
    assert_ne!(gateways[0], gateways[1]);

    // `weftctl ps` shows the container (by Docker's id, as for any Docker container; also
    // when asked for by name) with the MAC it has.
    let mac = docker.setting(1, "web1", "MacAddress");
    let inside = docker
        .on(1)
        .exec("web1", &["cat", "/sys/class/net/eth0/address"]);
    assert_eq!(inside.stdout.trim(), mac);
    let line = format!("{} {mac} {ip1}/24", &web1[..12]);
    let shown = wait_until(NAME_SPREADS, || docker.ps(1).contains(&line));
    assert!(shown, "{line} not in {:?}", docker.ps(1));
    assert_eq!(docker.world.ctl(1, &["ps", "web1"]), format!("{line}\n"));
    // A running container connected to another weft network is known there too.
    let out = docker.create_network(2, "red", &["--subnet", "10.10.0.0/24"]);
    assert!(out.success(), "{}", out.stderr);
    docker
        .on(2)
        .docker_ok(&["network", "connect", "--ip", "10.10.0.7", "red", "web2"]);
    let red_line = |l: &String| l.starts_with(&web2[..12]) && l.ends_with(" 10.10.0.7/24");
    let shown = wait_until(NAME_SPREADS, || docker.ps(2).iter().any(red_line));
    assert!(shown, "web2 on red not in {:?}", docker.ps(2));
    // A container on red alone reaches red, not blue, though both route through its host (and
    // web2, on both, would answer it on red: without the agent's forward rules it does).
    docker.on(2).run(
        "red1",
        &["--network", "red", "--stop-timeout", "1"],
        &["sleep", "600"],
    );
    assert!(
        docker.ping(2, "red1", "10.10.0.7"),
        "red1 cannot reach web2 on red"
    );
    assert!(
        !docker.ping(2, "red1", "10.9.0.50"),
        "red1 reached web2 on blue"
    );

    // Out of the overlay through the host, masqueraded to the host's address.
    let outside = docker.world.counting_outsider("outside", OUTSIDER, 1);
    assert!(
        docker.ping(1, "web1", OUTSIDER),
        "web1 cannot leave the overlay"
    );
    assert!(outside.from_host() >= 1);
    assert_eq!(outside.from_containers(), 0);
    // The host reaches its containers.
    assert!(weft_integration::ping(&docker.world.host_ns(1), &ip1));

    // docker rm gives the address back; it can be used on the other host.
    docker.on(1).docker_ok(&["rm", "-f", &web1]);
    assert_eq!(docker.endpoints_on(1), ["weft:expose"]);
    assert!(!docker.ps(1).iter().any(|l| l.contains(&ip1)));
    docker.run(2, "web3", &["--ip", &ip1]);
    assert!(docker.ping(2, "web3", "10.9.0.50"));

    // A network with no endpoints goes; the host keeps its address (as after weftctl expose).
    docker.on(1).docker_ok(&["network", "rm", "blue"]);
    assert_eq!(docker.endpoints_on(1), ["weft:expose"]);
    let networks = docker
        .on(1)
        .docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!networks.lines().any(|n| n == "blue"), "{networks}");
    // Docker refuses to remove a network with endpoints.
    let refused = docker.on(2).docker(&["network", "rm", "blue"]);
    assert!(!refused.success(), "removed a network in use");
    // web2 in blue and red, red1, web3, the host in blue and red: nothing was released.
    assert_eq!(
        docker.endpoints_on(2).len(),
        6,
        "{:?}",
        docker.endpoints_on(2)
    );
}

#[test]
fn a_restarted_agent_keeps_containers_talking_and_serves_new_ones() {
    let docker = Docker::new();
    for host in 1..=2 {
        let out = docker.create_network(host, "blue", &["--subnet", SUBNET]);
        assert!(out.success(), "{}", out.stderr);
    }
    let a1 = docker.run(1, "a1", &[]);
    docker.run(2, "b1", &["--ip", "10.9.0.60"]);
    assert!(docker.ping(1, "a1", "10.9.0.60"));
    docker
        .world
        .restart_agent_with(1, &["--docker-host", &docker.on(1).url()]);
    assert!(
        docker.ping(1, "a1", "10.9.0.60"),
        "a1 lost b1 across the restart"
    );
    // It finds the container of each endpoint again, from the Docker API.
    let shown = wait_until(NAME_SPREADS, || {
        docker.ps(1).iter().any(|l| l.starts_with(&a1[..12]))
    });
    assert!(shown, "a1 not in {:?}", docker.ps(1));
    // Docker asks the restarted agent, on the capabilities it cached.
    docker.run(1, "a2", &[]);
    assert!(
        docker.ping(1, "a2", "10.9.0.60"),
        "a new container cannot reach b1"
    );
    docker.on(1).docker_ok(&["rm", "-f", "a1", "a2"]);
    assert_eq!(docker.endpoints_on(1), ["weft:expose"]);
}

/// `{"Err": ...}` of a call to host1's driver with `body`.
fn call(docker: &Docker, method: &str, body: &str) -> String {
    let socket = docker.world.docker_plugin_dir(1).join("weft.sock");
    let out = exec(
        &docker.world.host_ns(1),
        &[
            "curl",
            "-s",
            "--unix-socket",
            socket.to_str().unwrap(),
            "-d",
            body,
            &format!("http://plugin/{method}"),
        ],
    );
    let answer: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{method} answered {:?}: {e}", out.stdout));
    answer["Err"].as_str().unwrap_or_default().to_string()
}

#[test]
fn bad_requests_are_refused_by_name_and_leave_nothing() {
    let docker = Docker::new();
    assert!(
        docker
            .create_network(1, "blue", &["--subnet", SUBNET])
            .success()
    );
    let before = docker.world.controller_tables();

    for (args, why) in [
        (
            vec!["--subnet", "10.9.0.0/25"],
            "pool 10.9.0.0/25: overlaps weft network 10.9.0.0/24 (10.9.0.0/24)",
        ),
        (
            vec!["--subnet", "10.9.0.0/24", "-o", "weft.masquerade=maybe"],
            "weft.masquerade=maybe: expected true or false",
        ),
        (
            vec!["--subnet", "10.8.0.0/24", "--ip-range", "10.8.0.128/25"],
            "pool 10.8.0.0/24: --ip-range 10.8.0.128/25 is not supported",
        ),
        (
            vec!["--subnet", "10.9.0.0/24", "-o", "weft.network=red"],
            "weft.network=red: the pool 10.9.0.0/24 is weft network 10.9.0.0/24's",
        ),
    ] {
        let out = docker.create_network(1, "bad", &args);
        assert!(!out.success(), "{args:?} was accepted");
        assert!(out.stderr.contains(why), "{args:?}: {}", out.stderr);
    }
    let foreign = docker.on(1).docker(&[
        "network",
        "create",
        "-d",
        "weft",
        "--subnet",
        SUBNET,
        "other-ipam",
    ]);
    assert!(
        foreign.stderr.contains("is not weft's (address space \"LocalDefault\"): create the network with --ipam-driver weft"),
        "{}",
        foreign.stderr
    );
    let published = docker.on(1).docker(&[
        "run",
        "-d",
        "--name",
        "pub",
        "--network",
        "blue",
        "-p",
        "8080:80",
        docker.on(1).image(),
        "sleep",
        "600",
    ]);
    assert!(!published.success());
    assert!(
        published
            .stderr
            .contains("publishing ports (-p) is not supported on weft networks"),
        "{}",
        published.stderr
    );
    // Straight at the socket: a MAC address weft did not choose (`docker run --mac-address`),
    // a body Docker lost on a retry, a key of the wrong type, an unknown call.
    assert_eq!(
        call(
            &docker,
            "NetworkDriver.CreateEndpoint",
            r#"{"EndpointID":"0123abcd","Interface":{"Address":"10.9.0.7/24","MacAddress":"02:42:0a:09:00:07"}}"#
        ),
        "endpoint 0123abcd: weft chooses each endpoint's MAC address: leave out --mac-address"
    );
    assert_eq!(
        call(&docker, "NetworkDriver.Join", ""),
        "the request has no body (Docker resends a dropped call without one)"
    );
    assert_eq!(
        call(&docker, "IpamDriver.RequestAddress", r#"{"PoolID":7}"#),
        "the request's PoolID is not valid: invalid type: integer `7`, expected a string at line \
         1 column 11"
    );
    assert_eq!(
        call(
            &docker,
            "NetworkDriver.Join",
            r#"{"EndpointID":"0123abcd"}"#
        ),
        "endpoint 0123abcd: docker-ep:0123abcd is not an endpoint of this host"
    );
    assert_eq!(
        call(&docker, "NetworkDriver.Nope", "{}"),
        "NetworkDriver.Nope: weft's plugin does not implement this call"
    );
    // Nothing of it stayed.
    assert_eq!(
        docker.world.controller_tables()["endpoints"],
        before["endpoints"]
    );
    assert_eq!(
        docker.world.controller_tables()["networks"],
        before["networks"]
    );

    // A network refused on a new subnet: the host gives back the address it took there for
    // Docker's gateway (the weft network the address request made stays, empty).
    let out = docker.create_network(1, "bad", &["--subnet", "10.11.0.0/24", "-o", "weft.nope=1"]);
    assert!(
        out.stderr
            .contains("unknown option weft.nope: weft's are weft.network and weft.masquerade"),
        "{}",
        out.stderr
    );
    assert_eq!(
        docker.world.controller_tables()["endpoints"],
        before["endpoints"]
    );
}
