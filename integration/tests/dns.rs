//! weft's DNS as containers use it: `dig` against 127.0.0.11 inside a container resolves names
//! of containers on other hosts, several containers under one name, reverse names, and forgets
//! a detached container's name within a second; a container attached again at once is served
//! again; `ping NAME` works by short name; bad packets and floods do not stop it from answering.

use std::fs::File;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use weft_integration::{Background, CONTROLLER_IP, World, exec, listening, wait_until};

/// An address on the test world's underlay with nothing behind it: names outside the domain
/// are forwarded there and never answered, and no packet leaves the test's namespaces.
const SILENT_UPSTREAM: &str = "198.18.0.250";

/// `dig @127.0.0.11 ARGS` inside `container`: its answer lines, sorted, and the status; `None`
/// when dig got no answer at all.
fn try_dig(container: &str, args: &[&str]) -> Option<(Vec<String>, String)> {
    let mut argv = vec!["dig", "@127.0.0.11", "+tries=1", "+time=3"];
    argv.extend_from_slice(args);
    let out = exec(container, &argv);
    if !out.success() {
        return None;
    }
    let status = out
        .stdout
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("no answer")
        .to_string();
    let mut answers: Vec<String> = out
        .stdout
        .split(";; ANSWER SECTION:")
        .nth(1)
        .unwrap_or("")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(String::from))
        .collect();
    answers.sort();
    Some((answers, status))
}

/// [`try_dig`] that must get an answer.
fn dig(container: &str, args: &[&str]) -> (Vec<String>, String) {
    try_dig(container, args).unwrap_or_else(|| panic!("dig {args:?} in {container}: no answer"))
}

/// `/etc/netns/NS/resolv.conf`, which `ip netns exec NS` puts in place of `/etc/resolv.conf`:
/// the container's resolver, as `attach --rewrite-resolv` writes it for Docker containers.
struct NetnsResolvConf(PathBuf);

impl NetnsResolvConf {
    fn new(ns: &str, text: &str) -> NetnsResolvConf {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("creating /etc/netns/NS");
        std::fs::write(dir.join("resolv.conf"), text).expect("writing its resolv.conf");
        NetnsResolvConf(dir)
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `work` on a thread inside the namespace `ns`, so its sockets are that namespace's.
fn in_namespace<T: Send + 'static>(ns: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("opening the namespace");
        setns(&file, CloneFlags::CLONE_NEWNET).expect("entering the namespace");
        work()
    })
    .join()
    .expect("the namespace thread panicked")
}

#[test]
fn containers_resolve_each_other_across_hosts() {
    let mut world = World::with_agent_args(2, &["--dns-upstream", SILENT_UPSTREAM]);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    let c3 = world.container(2, "c3");
    let c4 = world.container(1, "c4");
    let attach = |host: usize, name: &str, cidr: &str, c: &str| {
        world.ctl(
            host,
            &["attach", "--name", name, cidr, &format!("netns:{c}")],
        );
    };
    attach(1, "bbox1", "10.2.0.2/24", &c1);
    attach(2, "bbox2.weave.local", "10.2.0.3/24", &c2);
    attach(2, "web", "10.2.0.4/24", &c3);
    attach(1, "web", "10.2.0.5/24", &c4);

    // A container on host2, by its full name and by its single label, from host1.
    assert_eq!(
        dig(&c1, &["bbox2.weave.local"]),
        (vec!["10.2.0.3".into()], "NOERROR".into())
    );
    assert_eq!(
        dig(&c1, &["bbox2"]),
        (vec!["10.2.0.3".into()], "NOERROR".into())
    );
    // Two containers under one name, on two hosts; both orders come back.
    assert_eq!(dig(&c2, &["web.weave.local"]).0, ["10.2.0.4", "10.2.0.5"]);
    // Reverse: the address of a container on the other host.
    assert_eq!(
        dig(&c2, &["-x", "10.2.0.2"]),
        (vec!["bbox1.weave.local.".into()], "NOERROR".into())
    );
    assert_eq!(world.ctl(1, &["dns-lookup", "bbox2"]), "10.2.0.3\n");

    // A detached container's name is gone everywhere within a second.
    world.ctl(2, &["detach", &format!("netns:{c2}")]);
    let detached = Instant::now();
    assert!(
        wait_until(Duration::from_secs(1), || dig(&c1, &["bbox2.weave.local"])
            .1
            == "NXDOMAIN"),
        "bbox2 still resolves {:?} after its detach",
        detached.elapsed()
    );
    println!("name gone {:?} after the detach", detached.elapsed());
    assert_eq!(dig(&c1, &["web"]).0, ["10.2.0.4", "10.2.0.5"]);

    // Records beside containers' names: an address under a name of its own, a container's
    // addresses under a second name; removed again, or with their container.
    world.ctl(1, &["dns-add", "10.2.0.99", "-h", "printer.weave.local"]);
    world.ctl(2, &["dns-add", &format!("netns:{c3}"), "-h", "www"]);
    // Host1's own record resolves there as soon as dns-add returns; host2's once the change has
    // reached host1 through the controller.
    assert_eq!(dig(&c1, &["printer"]).0, ["10.2.0.99"]);
    assert!(
        wait_until(Duration::from_secs(1), || dig(&c1, &["www.weave.local"]).0
            == ["10.2.0.4"]),
        "www (added on host2) does not resolve on host1: {:?}",
        dig(&c1, &["www.weave.local"])
    );
    let refused = world.weftctl(1, &["dns-remove", "10.2.0.98", "-h", "printer"]);
    assert_eq!(
        (refused.code, refused.stderr.as_str()),
        (
            Some(1),
            "weftctl: dns-remove 10.2.0.98: no DNS record printer.weave.local 10.2.0.98\n"
        )
    );
    world.ctl(1, &["dns-remove", "10.2.0.99", "-h", "printer"]);
    world.ctl(2, &["detach", &format!("netns:{c3}")]);
    for gone in ["printer", "www"] {
        assert!(
            wait_until(Duration::from_secs(1), || dig(&c1, &[gone]).1 == "NXDOMAIN"),
            "{gone} still resolves"
        );
    }

    // ping by short name, with the resolver a rewritten resolv.conf gives.
    let _conf = NetnsResolvConf::new(&c1, "search weave.local\nnameserver 127.0.0.11\n");
    let ping = exec(&c1, &["ping", "-c", "1", "-W", "2", "bbox1"]);
    assert!(ping.success(), "ping bbox1: {}{}", ping.stdout, ping.stderr);
    assert!(ping.stdout.contains("10.2.0.2"), "{}", ping.stdout);
}

#[test]
fn an_unreachable_upstream_fails_fast_and_bad_queries_do_no_harm() {
    let mut world = World::with_agent_args(1, &["--dns-upstream", SILENT_UPSTREAM]);
    let c1 = world.container(1, "c1");
    world.ctl(
        1,
        &[
            "attach",
            "--name",
            "bbox1",
            "10.2.0.2/24",
            &format!("netns:{c1}"),
        ],
    );

    // Outside the domain: forwarded to an upstream that never answers.
    let asked = Instant::now();
    let (_, status) = dig(&c1, &["example.com"]);
    let took = asked.elapsed();
    println!("SERVFAIL after {took:?}");
    assert_eq!(status, "SERVFAIL");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // Garbage, an oversized datagram and a flood of queries.
    let log_lines = || {
        std::fs::read_to_string(world.agent_log(1))
            .expect("the agent's log")
            .lines()
            .count()
    };
    let logged_before = log_lines();
    let sent = in_namespace(&c1, || {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
        socket.connect("127.0.0.11:53").expect("connect");
        let mut sent = 0;
        for len in [0usize, 1, 11, 12, 13, 100, 512, 4096, 65_000] {
            let junk: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            sent += socket.send(&junk).map(|_| 1).unwrap_or(0);
        }
        // A header claiming 65535 questions and nothing after it.
        sent += socket
            .send(&[0x12, 0x34, 1, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0])
            .map(|_| 1)
            .unwrap_or(0);
        let query = [
            0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, b'b', b'b', b'o', b'x', b'1', 0, 0, 1, 0,
            1,
        ];
        for _ in 0..5_000 {
            sent += socket.send(&query).map(|_| 1).unwrap_or(0);
        }
        sent
    });
    println!("sent {sent} bad or flooding datagrams");
    assert!(sent > 5_000);
    // Still answering, and right, once the queued queries are worked off.
    let flooded = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || try_dig(&c1, &["bbox1"])
            .is_some_and(|(ips, _)| ips == ["10.2.0.2"])),
        "no answer within 15 s of the flood"
    );
    println!("answered {:?} after the flood", flooded.elapsed());
    // A host's log does not grow with its containers' queries (at the default level).
    let logged = log_lines() - logged_before;
    assert!(
        logged < 20,
        "the agent logged {logged} lines for {sent} datagrams"
    );
    // TCP too.
    assert_eq!(dig(&c1, &["+tcp", "bbox1"]).0, ["10.2.0.2"]);
}

/// The answer lines of `dig +noall +answer NAME` in `container`, in the order served.
fn answer_lines(container: &str, name: &str) -> Vec<String> {
    let out = exec(
        container,
        &[
            "dig",
            "@127.0.0.11",
            "+tries=1",
            "+time=3",
            "+noall",
            "+answer",
            name,
        ],
    );
    assert!(out.success(), "dig {name} in {container}: {}", out.stderr);
    out.stdout.lines().map(str::to_owned).collect()
}

/// A real resolver as the upstream (dnsmasq, in the controller's namespace on the underlay):
/// names outside the domain get its answer; names inside carry the --dns-ttl and come in
/// varying order when several containers share one.
#[test]
fn an_answering_upstream_is_forwarded_to_and_answers_carry_the_ttl_in_varying_order() {
    let mut world = World::with_agent_args(1, &["--dns-upstream", CONTROLLER_IP, "--dns-ttl", "7"]);
    let dir = tempfile::tempdir().unwrap();
    let ns = world.controller_ns();
    let _upstream = Background::start(
        &ns,
        "dnsmasq",
        &[
            "--keep-in-foreground",
            "--log-facility=-",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--pid-file=",
            "--bind-interfaces",
            &format!("--listen-address={CONTROLLER_IP}"),
            "--address=/upstream.test/192.0.2.77",
        ],
        dir.path().join("dnsmasq.log"),
    );
    assert!(
        wait_until(Duration::from_secs(5), || listening(&ns, 53)),
        "dnsmasq is not listening in {ns}"
    );
    let (a, b, asker) = (
        world.container(1, "a"),
        world.container(1, "b"),
        world.container(1, "asker"),
    );
    for (c, cidr) in [
        (&a, "10.2.0.2/24"),
        (&b, "10.2.0.3/24"),
        (&asker, "10.2.0.4/24"),
    ] {
        let name = if *c == asker { "asker" } else { "both" };
        world.ctl(1, &["attach", "--name", name, cidr, &format!("netns:{c}")]);
    }
    assert_eq!(
        dig(&asker, &["upstream.test"]),
        (vec!["192.0.2.77".to_string()], "NOERROR".to_string())
    );
    let mut orders = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let lines = answer_lines(&asker, "both.weave.local");
        let fields: Vec<Vec<&str>> = lines
            .iter()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(fields.len(), 2, "{lines:?}");
        for f in &fields {
            assert_eq!(f[..4], ["both.weave.local.", "7", "IN", "A"], "{lines:?}");
        }
        orders.insert(fields.iter().map(|f| f[4].to_owned()).collect::<Vec<_>>());
    }
    assert_eq!(
        orders.len(),
        2,
        "30 answers came in one order only: {orders:?}"
    );
}

#[test]
fn ipv6_addresses_answer_aaaa_and_ip6_arpa() {
    let mut world = World::with_agent_args(2, &["--dns-upstream", SILENT_UPSTREAM]);
    world.ctl(
        1,
        &[
            "network",
            "create",
            "blue",
            "--subnet",
            "10.9.0.0/24",
            "--subnet",
            "fd00:9::/64",
        ],
    );
    let (c1, c2) = (world.container(1, "c1"), world.container(2, "c2"));
    world.ctl(
        1,
        &[
            "attach",
            "--name",
            "one",
            "net:blue",
            &format!("netns:{c1}"),
        ],
    );
    world.ctl(
        2,
        &[
            "attach",
            "--name",
            "two",
            "net:blue",
            &format!("netns:{c2}"),
        ],
    );
    let aaaa = || dig(&c1, &["two", "AAAA"]);
    assert!(
        wait_until(Duration::from_secs(2), || aaaa().0 == ["fd00:9::3"]),
        "two.weave.local AAAA on host1: {:?}",
        aaaa()
    );
    assert_eq!(aaaa().1, "NOERROR");
    assert_eq!(dig(&c1, &["two"]).0, ["10.9.0.3"]);
    assert_eq!(
        dig(&c2, &["-x", "fd00:9::2"]),
        (vec!["one.weave.local.".into()], "NOERROR".into())
    );
    assert_eq!(world.ctl(1, &["dns-lookup", "two"]), "10.9.0.3 fd00:9::3\n");
    // A record of an IPv6 address alone: AAAA, and no A (the name exists: NOERROR, empty).
    world.ctl(1, &["dns-add", "fd00:9::99", "-h", "printer6"]);
    assert_eq!(
        dig(&c1, &["printer6", "AAAA"]),
        (vec!["fd00:9::99".into()], "NOERROR".into())
    );
    assert_eq!(dig(&c1, &["printer6", "A"]), (vec![], "NOERROR".into()));
    let mapped = world.weftctl(1, &["dns-add", "::ffff:10.9.0.7", "-h", "bad"]);
    assert_eq!(mapped.code, Some(1), "{}", mapped.stderr);
    assert!(
        mapped
            .stderr
            .contains("::ffff:10.9.0.7 is an IPv4-mapped IPv6 address; write 10.9.0.7"),
        "{}",
        mapped.stderr
    );
}

#[test]
fn a_container_attached_again_at_once_is_served_again() {
    let mut world = World::with_agent_args(1, &["--dns-upstream", SILENT_UPSTREAM]);
    let c1 = world.container(1, "c1");
    let target = format!("netns:{c1}");
    world.ctl(1, &["attach", "--name", "bbox1", "10.2.0.2/24", &target]);
    assert_eq!(dig(&c1, &["bbox1"]).0, ["10.2.0.2"]);
    // Detached: its listener goes once the agent sees the detach; the next attach must find
    // 127.0.0.11:53 free again, over UDP and TCP.
    world.ctl(1, &["detach", &target]);
    assert!(
        wait_until(Duration::from_secs(5), || !listening(&c1, 53)),
        "the listener of a detached container stays open"
    );
    world.ctl(1, &["attach", "--name", "bbox1", "10.2.0.3/24", &target]);
    assert_eq!(dig(&c1, &["bbox1"]).0, ["10.2.0.3"]);
    assert_eq!(dig(&c1, &["+tcp", "bbox1"]).0, ["10.2.0.3"]);
}
