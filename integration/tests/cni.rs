//! weft's CNI plugin run exactly as a runtime runs it (environment + stdin) on two hosts: ADD,
//! a ping across, CHECK healthy and broken, DEL twice, DEL while the agent is down, GC, STATUS,
//! VERSION, chained `portmap`, and every kind of bad input, which must create nothing.

use serde_json::{Value, json};
use weft_integration::cni::{
    CNI_PLUGIN_DIR, CniRun, Env, pod_env, run_plugin, run_plugin_raw, weft_conf,
};
use weft_integration::podman_cni::PodmanCni;
use weft_integration::{World, assert_reaches, exec, ip, link};

/// A machine on the underlay that is no weft host.
const OUTSIDER: &str = "198.18.0.200";

/// A 64-hex-digit sandbox id, as runtimes make them, different per `n`.
fn sandbox_id(n: u32) -> String {
    format!("{n:08x}").repeat(8)
}

/// `weftctl ps` of host `host`, one line per entry.
fn ps(world: &World, host: usize) -> Vec<String> {
    world
        .ctl(host, &["ps"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The address (without prefix) of an ADD result's first IP.
fn address_of(result: &Value) -> String {
    let cidr = result["ips"][0]["address"].as_str().expect("an address");
    cidr.split('/').next().unwrap().to_string()
}

fn added(run: CniRun) -> Value {
    assert!(
        run.success(),
        "ADD failed: {} {}",
        run.output.stdout,
        run.output.stderr
    );
    run.json
}

#[test]
fn pods_on_two_hosts_talk_and_check_and_del_do_what_the_spec_says() {
    let mut world = World::new(2);
    let ns1 = world.container(1, "pod1");
    let ns2 = world.container(2, "pod2");
    let (path1, path2) = (format!("/run/netns/{ns1}"), format!("/run/netns/{ns2}"));
    let (id1, id2) = (sandbox_id(1), sandbox_id(2));
    let conf = weft_conf("1.0.0", json!({}));
    let args1 = "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop";
    let r1 = added(world.cni(1, &pod_env("ADD", &id1, &path1, args1), &conf));
    let r2 = added(world.cni(2, &pod_env("ADD", &id2, &path2, ""), &conf));

    // The result: the host veth, the pod's interface in its sandbox, its address, weft's DNS.
    assert_eq!(r1["cniVersion"], "1.0.0");
    let ifaces = r1["interfaces"].as_array().unwrap();
    assert!(ifaces[0]["name"].as_str().unwrap().starts_with("vethwepl"));
    assert_eq!(ifaces[1]["name"], "eth0");
    assert_eq!(ifaces[1]["sandbox"], path1.as_str());
    assert_eq!(r1["ips"][0]["interface"], 1);
    assert_eq!(r1["dns"]["nameservers"][0], "127.0.0.11");
    let (ip1, ip2) = (address_of(&r1), address_of(&r2));
    // The kernel holds what the result says.
    let held = ip(&ns1, &["-o", "addr", "show", "dev", "eth0"]).stdout;
    assert!(
        held.contains(r1["ips"][0]["address"].as_str().unwrap()),
        "{held}"
    );
    assert_reaches(&ns1, &ip2);
    assert_reaches(&ns2, &ip1);

    // weftctl shows the attachment by its sandbox id; the pod's name resolves.
    let short = format!("cni:{}/eth0", &id1[..12]);
    assert!(
        ps(&world, 1)
            .iter()
            .any(|l| l.starts_with(&short) && l.contains(&ip1)),
        "{:?}",
        ps(&world, 1)
    );
    let lookup = world.ctl(2, &["dns-lookup", "web.shop.weave.local"]);
    assert_eq!(lookup.trim(), ip1);

    // CHECK: healthy, then with the address taken away, then with a route that is not there.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = r1.clone();
    let check = world.cni(1, &pod_env("CHECK", &id1, &path1, args1), &check_conf);
    assert!(
        check.success() && check.output.stdout.trim().is_empty(),
        "{:?}",
        check.output
    );
    let cidr1 = r1["ips"][0]["address"].as_str().unwrap();
    assert!(ip(&ns1, &["addr", "del", cidr1, "dev", "eth0"]).success());
    let broken = world.cni(1, &pod_env("CHECK", &id1, &path1, args1), &check_conf);
    assert_eq!(broken.error_code(), 100);
    assert!(
        broken
            .msg()
            .contains(&format!("eth0 does not hold {cidr1}")),
        "{}",
        broken.msg()
    );
    let mut no_route = check_conf.clone();
    no_route["prevResult"]["routes"] = json!([{"dst": "192.0.2.0/24", "gw": ip2}]);
    no_route["prevResult"]["ips"] = json!([]);
    let broken = world.cni(1, &pod_env("CHECK", &id1, &path1, args1), &no_route);
    assert_eq!(broken.error_code(), 100);
    assert!(
        broken
            .msg()
            .contains(&format!("no route to 192.0.2.0/24 via {ip2} on eth0")),
        "{}",
        broken.msg()
    );

    // DEL releases; a second DEL, and one without a namespace, succeed with nothing to do.
    let del = world.cni(1, &pod_env("DEL", &id1, &path1, args1), &check_conf);
    assert!(
        del.success() && del.output.stdout.trim().is_empty(),
        "{:?}",
        del.output
    );
    assert!(!ps(&world, 1).iter().any(|l| l.contains(&ip1)));
    assert!(
        !exec(&ns1, &["ip", "link", "show", "eth0"]).success(),
        "eth0 is gone"
    );
    assert!(
        world
            .cni(1, &pod_env("DEL", &id1, &path1, args1), &conf)
            .success()
    );
    assert!(
        world
            .cni(1, &pod_env("DEL", &id1, "", args1), &conf)
            .success()
    );
    // The address went back to the pool: a static ADD of it works on the other host.
    let mut again = conf.clone();
    again["runtimeConfig"] = json!({"ips": [ip1]});
    let ns3 = world.container(2, "pod3");
    let path3 = format!("/run/netns/{ns3}");
    let r3 = added(world.cni(2, &pod_env("ADD", &sandbox_id(3), &path3, ""), &again));
    assert_eq!(address_of(&r3), ip1);
}

#[test]
fn version_status_and_gc() {
    let mut world = World::new(1);
    let version = world.cni(
        1,
        &[("CNI_COMMAND", "VERSION")],
        &weft_conf("1.1.0", json!({})),
    );
    assert!(version.success());
    assert_eq!(version.json["cniVersion"], "1.1.0");
    let supported = version.json["supportedVersions"].as_array().unwrap();
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(supported.iter().any(|s| s == v), "{v} in {supported:?}");
    }

    let conf = weft_conf("1.1.0", json!({}));
    let status = world.cni(1, &[("CNI_COMMAND", "STATUS")], &conf);
    assert!(status.success(), "{:?}", status.output);

    let (ns_a, ns_b) = (world.container(1, "gca"), world.container(1, "gcb"));
    let (id_a, id_b) = (sandbox_id(10), sandbox_id(11));
    let (path_a, path_b) = (format!("/run/netns/{ns_a}"), format!("/run/netns/{ns_b}"));
    let ip_a = address_of(&added(world.cni(
        1,
        &pod_env("ADD", &id_a, &path_a, ""),
        &conf,
    )));
    let ip_b = address_of(&added(world.cni(
        1,
        &pod_env("ADD", &id_b, &path_b, ""),
        &conf,
    )));
    // A container attached by weftctl is no CNI attachment: GC leaves it alone.
    let other = world.container(1, "byhand");
    world.ctl(1, &["attach", &format!("netns:{other}")]);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": id_a, "ifname": "eth0"}]);
    let run = world.cni(1, &[("CNI_COMMAND", "GC")], &gc);
    assert!(run.success(), "{:?}", run.output);
    let lines = ps(&world, 1);
    assert!(lines.iter().any(|l| l.contains(&ip_a)), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains(&ip_b)), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("netns:{other}"))),
        "{lines:?}"
    );
    assert!(
        !exec(&ns_b, &["ip", "link", "show", "eth0"]).success(),
        "GC unplugged eth0"
    );

    // The agent down: STATUS says not available, DEL says try again later; back up, the DEL
    // the runtime retries succeeds and nothing is left.
    world.stop_agent(1);
    let status = world.cni(1, &[("CNI_COMMAND", "STATUS")], &conf);
    assert_eq!(status.error_code(), 50);
    assert!(
        status.msg().starts_with("cannot reach weft-agent at "),
        "{}",
        status.msg()
    );
    let del = world.cni(1, &pod_env("DEL", &id_a, &path_a, ""), &conf);
    assert_eq!(del.error_code(), 11);
    world.start_agent(1);
    assert!(
        world
            .cni(1, &pod_env("DEL", &id_a, &path_a, ""), &conf)
            .success()
    );
    assert!(!ps(&world, 1).iter().any(|l| l.contains(&ip_a)));
    assert!(!exec(&ns_a, &["ip", "link", "show", "eth0"]).success());
}

#[test]
fn bad_input_gets_a_cni_error_naming_it_and_creates_nothing() {
    let mut world = World::new(1);
    let ns = world.container(1, "bad");
    let path = format!("/run/netns/{ns}");
    let id = sandbox_id(20);
    let conf = weft_conf("1.0.0", json!({}));
    let env = pod_env("ADD", &id, &path, "");
    let file = world.state_dir(1).join("not-a-netns");
    std::fs::write(&file, b"").unwrap();
    let file = file.to_str().unwrap().to_string();

    let cases: Vec<(Env, Value, u64, String)> = vec![
        (
            env[..3].to_vec(),
            conf.clone(),
            4,
            "CNI_IFNAME is not set".into(),
        ),
        (
            env.clone(),
            weft_conf("1.0.0", json!({"network": "nosuch"})),
            7,
            "unknown network nosuch".into(),
        ),
        (
            env.clone(),
            weft_conf("0.2.0", json!({})),
            1,
            "cniVersion 0.2.0 is not supported".into(),
        ),
        (
            pod_env("ADD", &id, "/proc/self/ns/uts", ""),
            conf.clone(),
            4,
            "CNI_NETNS /proc/self/ns/uts is a namespace, but not a network namespace".into(),
        ),
        (
            pod_env("ADD", &id, &file, ""),
            conf.clone(),
            4,
            format!("CNI_NETNS {file} is not a namespace"),
        ),
        (
            pod_env("ADD", &id, "/run/netns/weft-no-such-ns", ""),
            conf.clone(),
            3,
            "CNI_NETNS /run/netns/weft-no-such-ns does not exist".into(),
        ),
        (
            env.clone(),
            weft_conf("1.0.0", json!({"runtimeConfig": {"ips": ["192.0.2.7/24"]}})),
            7,
            "192.0.2.7/24 is not an address of network default".into(),
        ),
        (
            env.clone(),
            weft_conf("1.0.0", json!({"ipMasq": "yes"})),
            7,
            "key ipMasq".into(),
        ),
    ];
    let ipam_before = world.ctl(1, &["status", "ipam"]);
    let cni = weft_integration::locate_bin("weft-cni");
    let broken = run_plugin_raw(&world.host_ns(1), &cni, &env, b"{\"cniVersion\":");
    assert_eq!(broken.error_code(), 6);
    assert!(
        broken
            .msg()
            .starts_with("cannot decode the network configuration on stdin: ")
    );
    for (env, conf, code, needle) in cases {
        let run = world.cni(1, &env, &conf);
        assert_eq!(run.error_code(), code, "{needle}: {}", run.msg());
        assert!(
            run.msg().contains(&needle),
            "{:?} should name {needle:?}",
            run.msg()
        );
    }
    // Nothing was created: no endpoint, no interface, no address taken.
    assert!(ps(&world, 1).is_empty(), "{:?}", ps(&world, 1));
    let links = ip(&ns, &["-o", "link"]).stdout;
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    assert_eq!(world.ctl(1, &["status", "ipam"]), ipam_before);
}

#[test]
fn a_static_address_a_default_route_and_chained_portmap_and_tuning() {
    let mut world = World::new(1);
    // Encrypted: the pod's interface has its smaller MTU (WireGuard's headers).
    world.ctl(
        1,
        &[
            "network",
            "create",
            "blue",
            "--subnet",
            "10.9.0.0/24",
            "--encrypt",
        ],
    );
    let ns = world.container(1, "web");
    let path = format!("/run/netns/{ns}");
    let id = sandbox_id(30);
    let conf = weft_conf(
        "1.0.0",
        json!({"network": "blue", "default_route": true,
               "runtimeConfig": {"ips": ["10.9.0.5"]}}),
    );
    let result = added(world.cni(1, &pod_env("ADD", &id, &path, ""), &conf));
    assert_eq!(result["ips"][0]["address"], "10.9.0.5/24");
    assert_eq!(link(&ns, "eth0").map(|l| l.mtu), Some(1350));
    // The host took its own address on the network, and the pod routes through it.
    let gateway = result["ips"][0]["gateway"]
        .as_str()
        .expect("a gateway")
        .to_string();
    assert!(
        world
            .ctl(1, &["ps"])
            .lines()
            .any(|l| l.starts_with("weft:expose") && l.contains(&gateway))
    );
    let routes = ip(&ns, &["route", "show", "default"]).stdout;
    assert!(
        routes.contains(&format!("default via {gateway} dev eth0")),
        "{routes}"
    );
    assert!(
        result["routes"]
            .as_array()
            .unwrap()
            .contains(&json!({"dst": "0.0.0.0/0", "gw": gateway}))
    );
    // The host reaches its pod (kubelet's probes).
    assert_reaches(&world.host_ns(1), "10.9.0.5");

    // portmap, chained after weft with weft's result, maps the host's port 8080 to the pod's 80:
    // a client on the underlay reaches a server in the pod through the host's address.
    let portmap = json!({
        "type": "portmap",
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
    });
    let chain = |command: &str, conf: &Value| {
        let env = pod_env(command, &id, &path, "");
        let run = chained(&world, &env, conf, &result);
        assert!(
            run.success(),
            "{} {command}: {:?}",
            conf["type"],
            run.output
        );
    };
    chain("ADD", &portmap);
    assert!(
        exec(
            &world.host_ns(1),
            &["sysctl", "-qw", "net.ipv4.ip_forward=1"]
        )
        .success()
    );
    let log = world.state_dir(1).join("nc.log");
    let server = weft_integration::Background::start(
        &ns,
        "busybox",
        &["nc", "-l", "-p", "80", "-e", "echo", "hello from the pod"],
        log,
    );
    assert!(
        weft_integration::wait_until(std::time::Duration::from_secs(5), || {
            weft_integration::listening(&ns, 80)
        }),
        "the server in the pod is not listening"
    );
    let host = weft_integration::host_addr(1);
    let reply = weft_integration::exec_for(
        &world.controller_ns(),
        &["busybox", "nc", "-w", "3", &host, "8080"],
        std::time::Duration::from_secs(10),
    );
    drop(server);
    assert!(reply.stdout.contains("hello from the pod"), "{:?}", reply);
    // tuning, chained the same way, changes the interface weft's result names.
    chain("ADD", &json!({"type": "tuning", "promisc": true}));
    let link = ip(&ns, &["link", "show", "eth0"]).stdout;
    assert!(link.contains("PROMISC"), "{link}");
    chain("DEL", &portmap);
    assert!(
        world
            .cni(1, &pod_env("DEL", &id, &path, ""), &conf)
            .success()
    );
}

/// A reference plugin (`conf` names its type and keys) chained after weft on host1, as a
/// runtime runs it: weft's `result` as its `prevResult`.
fn chained(world: &World, env: &[(&str, &str)], conf: &Value, result: &Value) -> CniRun {
    let mut conf = weft_conf("1.0.0", conf.clone());
    conf["prevResult"] = result.clone();
    let plugin = std::path::Path::new(CNI_PLUGIN_DIR).join(conf["type"].as_str().unwrap());
    run_plugin(&world.host_ns(1), &plugin, env, &conf)
}

#[test]
fn ip_masq_takes_pods_out_through_their_host_and_keeps_networks_apart() {
    let mut world = World::new(1);
    world.ctl(1, &["network", "create", "blue", "--subnet", "10.9.0.0/24"]);
    world.ctl(1, &["network", "create", "red", "--subnet", "10.10.0.0/24"]);
    let host = world.host_ns(1);
    let (blue, red) = (world.container(1, "mblue"), world.container(1, "mred"));
    let add = |ns: &str, id: u32, network: &str| {
        let conf = weft_conf("1.0.0", json!({"network": network, "ipMasq": true}));
        let path = format!("/run/netns/{ns}");
        address_of(&added(world.cni(
            1,
            &pod_env("ADD", &sandbox_id(id), &path, ""),
            &conf,
        )))
    };
    let (ip_blue, ip_red) = (add(&blue, 40, "blue"), add(&red, 41, "red"));

    // A machine on the underlay that is no weft host, with no route to the pods' networks: it
    // answers only what comes from the host's own address.
    let outside = world.counting_outsider("outside", OUTSIDER, 1);
    assert_reaches(&blue, OUTSIDER);
    assert!(outside.from_host() >= 3);
    assert_eq!(outside.from_containers(), 0);
    // The host reaches its pods; a pod of one network still cannot reach the other's, though
    // both route through the host.
    assert_reaches(&host, &ip_blue);
    assert_reaches(&host, &ip_red);
    assert!(!weft_integration::ping(&blue, &ip_red), "blue reached red");
    assert!(!weft_integration::ping(&red, &ip_blue), "red reached blue");

    // The kernel holds the table; a restarted agent changes nothing in it (same rule handles),
    // one deleted by hand comes back, and reset removes it.
    let table = || exec(&host, &["nft", "-a", "list", "table", "ip", "weft"]);
    let before = table();
    assert!(
        before.success() && before.stdout.contains("masquerade"),
        "{}",
        before.stdout
    );
    assert!(
        weft_integration::listening(&blue, 53),
        "weft's DNS in the pod"
    );
    world.stop_agent(1);
    world.start_agent(1);
    assert_eq!(table().stdout, before.stdout);
    // The restarted agent found the pod's namespace (only the ADD named it) and serves DNS
    // there again.
    assert!(
        weft_integration::wait_until(std::time::Duration::from_secs(5), || {
            weft_integration::listening(&blue, 53)
        }),
        "no DNS in the pod after the agent's restart"
    );
    assert!(exec(&host, &["nft", "delete", "table", "ip", "weft"]).success());
    // Any change to the tables makes a pass; a periodic one comes within 30 s anyway.
    world.ctl(
        1,
        &["network", "create", "green", "--subnet", "10.11.0.0/24"],
    );
    assert!(
        weft_integration::wait_until(std::time::Duration::from_secs(5), || table().success()),
        "the table came back"
    );
    assert_reaches(&blue, "198.18.0.200");
    let reset = world.ctl(1, &["reset"]);
    assert!(
        reset.contains(" links and table weft, released "),
        "{reset}"
    );
    assert!(!table().success(), "reset removed the table");
}

#[test]
fn podman_on_its_cni_backend_puts_containers_on_weft() {
    let world = World::new(2);
    let (p1, p2) = (PodmanCni::on(&world, 1), PodmanCni::on(&world, 2));
    let server = "while true; do nc -l -p 80 -e echo hello from podman; done";
    let web = p1.run("web", &["-p", "8080:80"], &["sh", "-c", server]);
    let client = p2.run("client", &[], &["sleep", "1d"]);
    let (ip_web, ip_client) = (p1.ip(&web), p2.ip(&client));
    let ping = |from: &PodmanCni, c: &str, ip: &str| {
        from.podman(&["exec", c, "ping", "-c", "1", "-W", "1", ip])
            .success()
    };
    assert!(
        weft_integration::wait_until(std::time::Duration::from_secs(5), || ping(
            &p2, &client, &ip_web
        )),
        "{client} cannot reach {ip_web}"
    );
    assert!(ping(&p1, &web, &ip_client));
    // weftctl knows the container by Podman's id, which was its CNI_CONTAINERID.
    let short = format!("cni:{}/eth0", &p1.id(&web)[..12]);
    assert!(
        ps(&world, 1)
            .iter()
            .any(|l| l.starts_with(&short) && l.contains(&ip_web)),
        "{:?}",
        ps(&world, 1)
    );
    // -p 8080:80 went to portmap, chained after weft: the host's port reaches the container
    // (once its server listens: the container may still be starting it).
    let host = weft_integration::host_addr(1);
    let ask = || {
        let argv = ["busybox", "nc", "-w", "3", &host, "8080"];
        let reply = exec(&world.controller_ns(), &argv);
        reply.stdout.contains("hello from podman")
    };
    assert!(
        weft_integration::wait_until(std::time::Duration::from_secs(5), ask),
        "host1:8080 does not reach the container"
    );
    // podman rm releases the address (the plugin's DEL).
    p1.podman_ok(&["rm", "-f", "-t", "0", &web]);
    assert!(!ps(&world, 1).iter().any(|l| l.contains(&ip_web)));
}
