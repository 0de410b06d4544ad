//! IP allocation and networks through weftctl: the lowest free address, release and reuse,
//! exhausted pools, named networks and their checks, containers in several networks, forgetting
//! a dead peer, and a storm of concurrent attaches across a controller crash after which every
//! address must still be held once, by the container that really has it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_integration::{Alone, Link, World, assert_rejected, link, links, wait_until};

/// The controller's default `--ipalloc-range`, the default network's subnet.
const RANGE: &str = "10.32.0.0/12";
/// Addresses of a /12 minus network, gateway and broadcast.
const RANGE_POOL: u64 = (1 << 20) - 3;
const CONVERGE: Duration = Duration::from_secs(5);

/// The rows under the header whose first column is `first_column`, up to the next blank line,
/// each split into its cells (weftctl's cells hold no spaces).
fn table(text: &str, first_column: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines();
    let header = lines.find(|l| l.split_whitespace().next() == Some(first_column));
    assert!(
        header.is_some(),
        "no table headed {first_column} in:\n{text}"
    );
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// `weftctl status ipam` as (range, network → [subnet, pool, used, free], (peer, network) → used).
type Ipam = (
    String,
    BTreeMap<String, [String; 4]>,
    BTreeMap<(String, String), String>,
);

fn status_ipam(world: &World, host: usize) -> Ipam {
    let text = world.ctl(host, &["status", "ipam"]);
    let range = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("Range: "))
        .unwrap_or_else(|| panic!("status ipam does not start with `Range: `:\n{text}"))
        .to_owned();
    let networks = table(&text, "NETWORK")
        .into_iter()
        .map(|r| match &r[..] {
            [name, subnet, pool, used, free] => (
                name.clone(),
                [subnet.clone(), pool.clone(), used.clone(), free.clone()],
            ),
            _ => panic!("network row {r:?} in:\n{text}"),
        })
        .collect();
    let peers = table(&text, "PEER")
        .into_iter()
        .map(|r| match &r[..] {
            [peer, network, used] => ((peer.clone(), network.clone()), used.clone()),
            _ => panic!("peer row {r:?} in:\n{text}"),
        })
        .collect();
    (range, networks, peers)
}

/// USED of the default network in `weftctl status ipam`.
fn default_used(world: &World, host: usize) -> u64 {
    let (_, networks, _) = status_ipam(world, host);
    let row = &networks["default"];
    row[2].parse().expect("USED is a number")
}

/// `weftctl ps` on `host` as container → its CIDRs (the MAC left out).
fn ps(world: &World, host: usize) -> BTreeMap<String, Vec<String>> {
    world
        .ctl(host, &["ps"])
        .lines()
        .map(|l| {
            let mut cells = l.split_whitespace().map(str::to_owned);
            let id = cells.next().expect("ps line has an id");
            (id, cells.skip(1).collect())
        })
        .collect()
}

/// `weftctl network ls --json`.
fn network_ls(world: &World) -> Value {
    serde_json::from_str(&world.ctl(1, &["network", "ls", "--json"]))
        .expect("network ls --json prints JSON")
}

/// One network as `weftctl network ls --json` lists it.
fn entry(name: &str, subnet: &str, vni: u64, endpoints: u64) -> Value {
    json!({"name": name, "subnet": subnet, "vni": vni, "endpoints": endpoints, "encrypted": false})
}

/// The host-side veths weft made on `host`, on whichever bridge.
fn host_veths(world: &World, host: usize) -> Vec<String> {
    links(&world.host_ns(host))
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.starts_with("vethwepl"))
        .collect()
}

/// The container's weft interfaces (`ethwe`, `ethwe1`, ...).
fn ethwes(container: &str) -> Vec<Link> {
    links(container)
        .into_iter()
        .filter(|l| l.name.starts_with("ethwe"))
        .collect()
}

#[test]
fn allocation_and_release() {
    let mut world = World::new(1);
    let [c1, c2, c3, c4, c5] = ["c1", "c2", "c3", "c4", "c5"].map(|c| world.container(1, c));

    // The first host address (10.32.0.1) is the gateway's: allocation starts after it.
    assert_eq!(world.attach(1, &[], &c1), "10.32.0.2");
    assert_eq!(world.attach(1, &["net:default"], &c2), "10.32.0.3");
    assert_eq!(
        link(&c1, "ethwe").map(|l| l.addrs),
        Some(vec!["10.32.0.2/12".to_owned()])
    );
    assert_eq!(
        world.ctl(1, &["detach", &format!("netns:{c1}")]).trim_end(),
        "10.32.0.2"
    );
    assert_eq!(link(&c1, "ethwe"), None, "ethwe left in c1 after detach");
    assert_eq!(world.attach(1, &[], &c3), "10.32.0.2", "the freed address");

    // A /30 holds one address besides network, gateway and broadcast.
    assert_eq!(world.attach(1, &["net:10.2.0.0/30"], &c4), "10.2.0.2");
    assert_eq!(
        link(&c4, "ethwe").map(|l| l.addrs),
        Some(vec!["10.2.0.2/30".to_owned()])
    );
    let out = world.weftctl(1, &["attach", "net:10.2.0.0/30", &format!("netns:{c5}")]);
    assert_rejected(
        &out,
        "network 10.2.0.0/30 (10.2.0.0/30) has no free address: all 1 are in use",
    );
    assert_eq!(
        link(&c5, "ethwe"),
        None,
        "ethwe left in c5 by a failed attach"
    );
    assert_eq!(
        host_veths(&world, 1).len(),
        3,
        "host veths after the failed attach (c2, c3, c4 only)"
    );

    let (range, networks, peers) = status_ipam(&world, 1);
    assert_eq!(range, RANGE);
    let row = |subnet: &str, pool: u64, used: u64| {
        [
            subnet,
            &pool.to_string(),
            &used.to_string(),
            &(pool - used).to_string(),
        ]
        .map(str::to_owned)
    };
    let want: BTreeMap<String, [String; 4]> = [
        ("default".to_owned(), row(RANGE, RANGE_POOL, 2)),
        ("10.2.0.0/30".to_owned(), row("10.2.0.0/30", 1, 1)),
    ]
    .into();
    assert_eq!(networks, want, "status ipam networks");
    let want: BTreeMap<(String, String), String> = [
        (("host1".into(), "default".into()), "2".into()),
        (("host1".into(), "10.2.0.0/30".into()), "1".into()),
    ]
    .into();
    assert_eq!(peers, want, "status ipam peers");
}

#[test]
fn networks() {
    let mut world = World::new(1);
    let c1 = world.container(1, "c1");
    assert_eq!(network_ls(&world), json!([entry("default", RANGE, 1, 0)]));

    assert_eq!(
        world.ctl(1, &["network", "create", "blue", "--subnet", "10.9.0.0/24"]),
        "blue 10.9.0.0/24 vni=2\n"
    );
    let both = json!([
        entry("default", RANGE, 1, 0),
        entry("blue", "10.9.0.0/24", 2, 0)
    ]);
    assert_eq!(network_ls(&world), both);

    let refused = [
        (
            "red",
            "10.9.0.0/16",
            "subnet 10.9.0.0/16 overlaps network blue (10.9.0.0/24)",
        ),
        (
            "red",
            "10.32.1.0/24",
            "subnet 10.32.1.0/24 overlaps network default (10.32.0.0/12)",
        ),
        ("blue", "10.10.0.0/24", "network blue already exists"),
        ("red", "10.11.0.1/24", "host bits set"),
    ];
    for (name, subnet, needle) in refused {
        let out = world.weftctl(1, &["network", "create", name, "--subnet", subnet]);
        assert_rejected(&out, needle);
        assert_eq!(
            network_ls(&world),
            both,
            "networks after the refused `network create {name} --subnet {subnet}`"
        );
    }

    let table = world.ctl(1, &["network", "ls"]);
    assert_eq!(
        table.lines().next().map(|h| h.split_whitespace().collect()),
        Some(vec!["NAME", "SUBNET", "VNI", "ENDPOINTS", "ENCRYPTED"]),
        "network ls header:\n{table}"
    );

    assert_eq!(world.attach(1, &["net:blue"], &c1), "10.9.0.2");
    assert_eq!(
        network_ls(&world),
        json!([
            entry("default", RANGE, 1, 0),
            entry("blue", "10.9.0.0/24", 2, 1)
        ])
    );
    let h1 = world.host_ns(1);
    let eth = link(&c1, "ethwe").expect("ethwe in c1");
    assert_eq!(eth.addrs, ["10.9.0.2/24"]);
    assert!(
        link(&h1, "weave-2").is_some() && link(&h1, "vx-2").is_some(),
        "blue's bridge weave-2 and VXLAN device vx-2 on host1: {:?}",
        links(&h1).iter().map(|l| &l.name).collect::<Vec<_>>()
    );
    let veths: Vec<Link> = links(&h1)
        .into_iter()
        .filter(|l| l.name.starts_with("vethwepl"))
        .collect();
    assert_eq!(
        veths
            .iter()
            .map(|l| l.master.as_deref())
            .collect::<Vec<_>>(),
        [Some("weave-2")],
        "c1's host veth is on blue's bridge"
    );

    let out = world.weftctl(1, &["network", "rm", "blue"]);
    assert_rejected(&out, "network blue still has 1 endpoint(s)");
    world.ctl(1, &["detach", &format!("netns:{c1}")]);
    world.ctl(1, &["network", "rm", "blue"]);
    assert_eq!(network_ls(&world), json!([entry("default", RANGE, 1, 0)]));
    let gone = || link(&h1, "weave-2").is_none() && link(&h1, "vx-2").is_none();
    assert!(
        wait_until(CONVERGE, gone),
        "weave-2 / vx-2 still on host1 with no container of blue left"
    );
}

#[test]
fn several_addresses() {
    let mut world = World::new(1);
    let c1 = world.container(1, "c1");
    assert_eq!(
        world.attach(1, &["192.168.0.2/24", "192.168.0.3/24", "net:default"], &c1),
        "192.168.0.2 192.168.0.3 10.32.0.2"
    );

    // Which network gets `ethwe` and which `ethwe1` is not asserted: the addresses tell them apart.
    let by_subnet = |prefix: &str| -> Link {
        let all = ethwes(&c1);
        let mut found = all
            .iter()
            .filter(|l| l.addrs.iter().any(|a| a.starts_with(prefix)));
        let eth = found.next().cloned();
        assert!(
            found.next().is_none(),
            "{prefix}* on several interfaces: {all:?}"
        );
        eth.unwrap_or_else(|| panic!("no interface with {prefix}* in c1: {all:?}"))
    };
    let lan = by_subnet("192.168.0.");
    let default = by_subnet("10.32.");
    let names: BTreeSet<&str> = [lan.name.as_str(), default.name.as_str()].into();
    assert_eq!(names, ["ethwe", "ethwe1"].into(), "c1's interfaces");
    let mut lan_addrs = lan.addrs.clone();
    lan_addrs.sort();
    assert_eq!(lan_addrs, ["192.168.0.2/24", "192.168.0.3/24"]);
    assert_eq!(default.addrs, ["10.32.0.2/12"]);
    assert_eq!(ethwes(&c1).len(), 2, "one interface per network");

    assert_eq!(
        world
            .ctl(1, &["detach", "192.168.0.3/24", &format!("netns:{c1}")])
            .trim_end(),
        "192.168.0.3"
    );
    assert_eq!(
        link(&c1, &lan.name).map(|l| l.addrs),
        Some(vec!["192.168.0.2/24".to_owned()]),
        "{} after detaching 192.168.0.3",
        lan.name
    );
    assert_eq!(
        link(&c1, &default.name).map(|l| l.addrs),
        Some(vec!["10.32.0.2/12".to_owned()]),
        "{} after detaching 192.168.0.3",
        default.name
    );
    let listed: BTreeSet<String> = ps(&world, 1)
        .remove(&format!("netns:{c1}"))
        .unwrap_or_default()
        .into_iter()
        .collect();
    assert_eq!(
        listed,
        ["192.168.0.2/24".to_owned(), "10.32.0.2/12".to_owned()].into(),
        "c1's CIDRs in ps"
    );
}

#[test]
fn rmpeer() {
    let mut world = World::new(2);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    assert_eq!(world.attach(2, &[], &c2), "10.32.0.2");

    let out = world.weftctl(1, &["rmpeer", "host2"]);
    assert_rejected(&out, "is connected");
    assert_eq!(
        default_used(&world, 1),
        1,
        "a refused rmpeer released nothing"
    );

    world.stop_agent(2);
    // The controller learns of the agent's departure when its watch stream ends: poll.
    let mut last = None;
    let removed = wait_until(CONVERGE, || {
        let out = world.weftctl(1, &["rmpeer", "host2"]);
        let ok = out.success();
        last = Some(out);
        ok
    });
    let out = last.expect("rmpeer ran");
    assert!(
        removed,
        "rmpeer host2 after its agent stopped: {}",
        out.stderr
    );
    assert_eq!(out.stdout, "host2: 1 address(es) released\n");

    assert_eq!(world.attach(1, &["10.32.0.2/12"], &c1), "10.32.0.2");
    let (_, _, peers) = status_ipam(&world, 1);
    assert_eq!(
        peers,
        [(("host1".into(), "default".into()), "1".into())].into(),
        "status ipam peers after rmpeer"
    );
}

const STORM_HOSTS: usize = 3;
const STORM_PER_HOST: usize = 100;
const STORM_THREADS_PER_HOST: usize = 3;
/// Successful attaches before the controller is killed.
const STORM_CRASH_AFTER: usize = 100;
/// How long the agents get to settle their endpoints with the restarted controller.
const STORM_CONVERGE: Duration = Duration::from_secs(30);

/// What a storm attach reported: the printed IP, or weftctl's stderr.
type Attempt = (usize, String, Result<String, String>);

/// Attaches `containers` (host, namespace) with `net:default`, a few weftctl processes at a time
/// per host; `during` runs on the calling thread meanwhile, given the count of successes so far.
fn attach_all(
    world: &World,
    containers: &[(usize, String)],
    during: impl FnOnce(&AtomicUsize),
) -> Vec<Attempt> {
    let successes = AtomicUsize::new(0);
    thread::scope(|s| {
        let workers: Vec<_> = (1..=STORM_HOSTS)
            .flat_map(|host| (0..STORM_THREADS_PER_HOST).map(move |t| (host, t)))
            .map(|(host, t)| {
                let share = containers
                    .iter()
                    .filter(move |(h, _)| *h == host)
                    .skip(t)
                    .step_by(STORM_THREADS_PER_HOST);
                let successes = &successes;
                s.spawn(move || {
                    share
                        .map(|(host, ns)| {
                            let out = world
                                .weftctl(*host, &["attach", "net:default", &format!("netns:{ns}")]);
                            let result = if out.success() {
                                successes.fetch_add(1, Ordering::SeqCst);
                                Ok(out.stdout.trim_end().to_owned())
                            } else {
                                Err(out.stderr.trim_end().to_owned())
                            };
                            (*host, ns.clone(), result)
                        })
                        .collect::<Vec<Attempt>>()
                })
            })
            .collect();
        during(&successes);
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("attach worker panicked"))
            .collect()
    })
}

/// What the kernel, the agents and the controller say about the storm's containers.
struct Observed {
    /// Container → the addresses on its `ethwe`, for each container that has one.
    kernel: BTreeMap<String, Vec<String>>,
    /// Host → its `weftctl ps`, keyed by container namespace.
    ps: BTreeMap<usize, BTreeMap<String, Vec<String>>>,
    /// USED of the default network in `status ipam`.
    used: u64,
    /// Host → USED of the default network by that peer in `status ipam` (0 when not listed).
    used_by: BTreeMap<usize, u64>,
}

impl Observed {
    fn take(world: &World, containers: &[(usize, String)]) -> Observed {
        let kernel = containers
            .iter()
            .filter_map(|(_, ns)| Some((ns.clone(), link(ns, "ethwe")?.addrs)))
            .collect();
        let ps = (1..=STORM_HOSTS)
            .map(|host| {
                let listed = ps(world, host)
                    .into_iter()
                    .map(|(id, cidrs)| (id.strip_prefix("netns:").unwrap_or(&id).to_owned(), cidrs))
                    .collect();
                (host, listed)
            })
            .collect();
        let (_, networks, peers) = status_ipam(world, 1);
        let count = |n: &str| n.parse::<u64>().expect("USED is a number");
        let used_by = (1..=STORM_HOSTS)
            .map(|h| {
                let key = (format!("host{h}"), "default".to_owned());
                (h, peers.get(&key).map_or(0, |n| count(n)))
            })
            .collect();
        Observed {
            kernel,
            ps,
            used: count(&networks["default"][2]),
            used_by,
        }
    }

    /// The containers of `host` that hold an address in the kernel, as `ps` should list them.
    fn kernel_on(
        &self,
        containers: &[(usize, String)],
        host: usize,
    ) -> BTreeMap<String, Vec<String>> {
        containers
            .iter()
            .filter(|(h, _)| *h == host)
            .filter_map(|(_, ns)| Some((ns.clone(), self.kernel.get(ns)?.clone())))
            .collect()
    }

    /// Where the controller or the agents disagree with the kernel; none once they agree. They
    /// must count as many addresses used as containers hold, in all and by each peer, and each
    /// host's `ps` must list exactly its containers that hold one, with those addresses.
    fn disagreements(&self, containers: &[(usize, String)]) -> Vec<String> {
        let mut found = Vec::new();
        if self.used != self.kernel.len() as u64 {
            found.push(format!(
                "status ipam: USED {}, but {} containers hold an address",
                self.used,
                self.kernel.len()
            ));
        }
        for host in 1..=STORM_HOSTS {
            let held = self.kernel_on(containers, host);
            let listed = &self.ps[&host];
            if self.used_by[&host] != held.len() as u64 {
                found.push(format!(
                    "status ipam: host{host} USED {}, but {} of its containers hold an address",
                    self.used_by[&host],
                    held.len()
                ));
            }
            for (ns, cidrs) in &held {
                if listed.get(ns) != Some(cidrs) {
                    found.push(format!(
                        "host{host}'s ps has {ns} with {:?}, its ethwe holds {cidrs:?}",
                        listed.get(ns)
                    ));
                }
            }
            for ns in listed.keys().filter(|ns| !held.contains_key(*ns)) {
                found.push(format!(
                    "host{host}'s ps lists {ns}, which holds no address"
                ));
            }
        }
        found
    }

    /// Fails the test naming every address on more than one container's `ethwe`.
    fn assert_unique(&self) {
        let mut holders: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (ns, addrs) in &self.kernel {
            for addr in addrs {
                holders.entry(addr).or_default().push(ns);
            }
        }
        let shared: Vec<_> = holders.iter().filter(|(_, h)| h.len() > 1).collect();
        assert!(shared.is_empty(), "addresses held twice: {shared:?}");
    }
}

#[test]
fn storm_across_a_controller_crash() {
    // Heavy: no other test of this binary runs beside it, nor its tight time bounds.
    let _alone = Alone::take();
    let started = Instant::now();
    storm(World::new(STORM_HOSTS), started, |world| {
        world.kill_controller();
        world.start_controller();
    });
}

/// The storm on two controllers on etcd, the first SIGKILLed in the middle: its agents move to
/// the second, which goes on giving addresses, each once; then it comes back.
#[test]
fn storm_across_a_controller_crash_on_etcd() {
    let _alone = Alone::take();
    let started = Instant::now();
    storm(
        World::on_etcd_controllers(STORM_HOSTS, 3, 2),
        started,
        |world| {
            world.kill_controller_at(1);
            thread::sleep(Duration::from_secs(2));
            world.start_controller_at(1, &[]);
        },
    );
}

/// STORM_PER_HOST attaches on each host of `world`, `crash` called once STORM_CRASH_AFTER
/// succeeded; every address held once, each success's on its container, each failure leaving
/// nothing, and the failed ones attaching on retry.
fn storm(mut world: World, started: Instant, crash: impl FnOnce(&World)) {
    let containers: Vec<(usize, String)> = (1..=STORM_HOSTS)
        .flat_map(|host| (0..STORM_PER_HOST).map(move |i| (host, i)))
        .map(|(host, i)| (host, world.container(host, &format!("s{host}-{i}"))))
        .collect();
    let setup = started.elapsed();

    let storm = Instant::now();
    let attempts = attach_all(&world, &containers, |successes| {
        let reached = wait_until(Duration::from_secs(60), || {
            successes.load(Ordering::SeqCst) >= STORM_CRASH_AFTER
        });
        assert!(
            reached,
            "not {STORM_CRASH_AFTER} successful attaches within 60 s"
        );
        crash(&world);
    });
    let storm = storm.elapsed();
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.2.is_err()).collect();
    println!(
        "storm: {} attaches succeeded, {} failed, in {storm:?} (setup {setup:?})",
        attempts.len() - failed.len(),
        failed.len()
    );
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, result) in &failed {
        let why = result.as_ref().unwrap_err();
        // `weftctl: attach netns:X: <why>`: group by the why, the container name left out.
        *reasons
            .entry(why.splitn(3, ": ").nth(2).unwrap_or(why))
            .or_default() += 1;
    }
    println!("storm failures by reason: {reasons:#?}");

    let settle = Instant::now();
    let mut observed = None;
    let mut rounds = 0;
    wait_until(STORM_CONVERGE, || {
        rounds += 1;
        let now = Observed::take(&world, &containers);
        let agrees = now.disagreements(&containers).is_empty();
        observed = Some(now);
        agrees
    });
    let observed = observed.expect("observed at least once");
    println!(
        "storm: converged check after {:?}, {rounds} rounds",
        settle.elapsed()
    );
    observed.assert_unique();
    for (_, ns, result) in &attempts {
        let held = observed.kernel.get(ns);
        match result {
            Ok(ip) => assert_eq!(
                held,
                Some(&vec![format!("{ip}/12")]),
                "{ns}'s ethwe after its attach printed {ip}"
            ),
            Err(why) => assert_eq!(
                held, None,
                "{ns} has an ethwe though its attach failed: {why}"
            ),
        }
    }
    assert_eq!(
        observed.disagreements(&containers),
        Vec::<String>::new(),
        "after {STORM_CONVERGE:?}"
    );

    // The failed ones attach now: their failed attempts kept no claim and left nothing in the way.
    let retry: Vec<(usize, String)> = failed.iter().map(|(h, ns, _)| (*h, ns.clone())).collect();
    let retried = attach_all(&world, &retry, |_| {});
    let still: Vec<_> = retried.iter().filter(|a| a.2.is_err()).collect();
    assert!(
        still.is_empty(),
        "retried attaches failed again: {still:#?}"
    );
    let observed = Observed::take(&world, &containers);
    observed.assert_unique();
    assert_eq!(
        observed.kernel.len(),
        containers.len(),
        "containers holding an address"
    );
    assert_eq!(
        observed.disagreements(&containers),
        Vec::<String>::new(),
        "after the retries"
    );
    println!("storm: whole test {:?}", started.elapsed());
}
