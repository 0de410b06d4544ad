//! The controller on a real three-member etcd (`--store etcd`): changes are durable in etcd, the
//! control plane rides out the loss of an etcd member and of etcd's leader, a restarted
//! controller loads its tables from etcd and agents resume on it, the log is folded into a
//! snapshot once it is longer than the changes kept, and backups move tables between etcd and
//! redb.

use std::collections::BTreeSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_integration::{
    Output, World, assert_reaches, exec_for, locate_bin, ping_counts, ping_in_background,
    wait_until,
};

/// Ten pings a second, so a gap of 100 ms shows.
const PING_INTERVAL: Duration = Duration::from_millis(100);
/// How long attaches may fail while etcd elects a new leader (its election timeout is 1 s).
const ELECTION: Duration = Duration::from_secs(10);
/// How soon agents must be connected to a restarted controller.
const NOTICE: Duration = Duration::from_secs(5);

/// `weftctl attach netns:CONTAINER` on `host`; returns the IP printed.
fn attach(world: &World, host: usize, container: &str) -> String {
    world
        .ctl(host, &["attach", &format!("netns:{container}")])
        .trim_end()
        .to_owned()
}

/// Every endpoint's (container, addresses), failing on an address held twice.
fn endpoints(tables: &Value) -> Vec<(String, String)> {
    let mut seen = BTreeSet::new();
    let rows: Vec<(String, String)> = tables["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|ep| {
            let cidrs = ep["cidrs"].to_string();
            assert!(
                seen.insert(cidrs.clone()),
                "{cidrs} is held twice: {tables}"
            );
            (ep["container_id"].as_str().unwrap().to_owned(), cidrs)
        })
        .collect();
    rows
}

/// `weftctl status controllers --json` on `host`: (address, serving, answering) of each.
fn controllers(world: &World, host: usize) -> Vec<(String, bool, bool)> {
    let out = world.ctl(host, &["status", "controllers", "--json"]);
    let members: Value = serde_json::from_str(&out).unwrap();
    members
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| {
            let address = m["address"].as_str().unwrap_or_default().to_string();
            (address, m["serving"] == true, m["answering"] == true)
        })
        .collect()
}

/// Waits until both agents show the controller connected at `revision`.
fn wait_connected(world: &World, revision: u64) {
    for host in 1..=2 {
        let connected = wait_until(NOTICE, || {
            let status = world.status(host);
            status["controller"]["connected"] == true
                && status["controller"]["revision"] == revision
        });
        assert!(
            connected,
            "host{host}: {}",
            world.status(host)["controller"]
        );
    }
}

/// `weft-controller COMMAND FILE` with the world's etcd and `flags`.
fn copy(world: &World, command: &str, file: &str, flags: &[&str]) -> Output {
    let mut args = vec![command, file];
    args.extend_from_slice(flags);
    on_etcd(world, &args)
}

/// `weft-controller ARGS` with the world's etcd as its store.
fn on_etcd(world: &World, args: &[&str]) -> Output {
    let endpoints = world.etcd().endpoints();
    let mut args = args.to_vec();
    args.extend(["--store", "etcd", "--etcd-endpoints", &endpoints]);
    world.weft_controller(&args)
}

#[test]
fn a_controller_on_etcd_rides_out_losing_a_member_then_the_leader_then_its_own_restart() {
    let mut world = World::on_etcd(2, 3);
    let (c1, c2) = (world.container(1, "c1"), world.container(2, "c2"));
    attach(&world, 1, &c1);
    let ip2 = attach(&world, 2, &c2);
    assert_reaches(&c1, &ip2);
    let keys = world.etcd().keys("/weft/");
    assert!(
        keys.iter().any(|k| k == "/weft/meta/revision")
            && keys.iter().any(|k| k.starts_with("/weft/log/")),
        "the tables are not in etcd: {keys:?}"
    );
    let pings = ping_in_background(&c1, &ip2, 120, PING_INTERVAL);

    // A follower of etcd dies: attaches go on as before.
    let leader = world.etcd().leader();
    let follower = if leader == 1 { 2 } else { 1 };
    world.etcd().kill(follower);
    let c3 = world.container(1, "c3");
    let ip3 = attach(&world, 1, &c3);
    assert_reaches(&c2, &ip3);
    world.etcd().restart(follower);

    // etcd's leader dies: attaches fail, each cleanly, until a new one is elected.
    world.etcd().kill(leader);
    let c4 = world.container(2, "c4");
    let started = Instant::now();
    let mut failures = Vec::new();
    let ip4 = loop {
        let out = world.weftctl(2, &["attach", &format!("netns:{c4}")]);
        if out.success() {
            break out.stdout.trim().to_owned();
        }
        failures.push(out.stderr.trim().to_owned());
        assert!(
            started.elapsed() < ELECTION,
            "attaches still fail {ELECTION:?} after etcd's leader died: {failures:#?}"
        );
        sleep(Duration::from_millis(200));
    };
    println!(
        "etcd's leader killed: {} attaches failed, one succeeded after {:?}: {failures:#?}",
        failures.len(),
        started.elapsed()
    );
    world.etcd().restart(leader);
    assert_reaches(&c1, &ip4);
    let tables = world.controller_tables();
    let held: BTreeSet<String> = endpoints(&tables).into_iter().map(|(c, _)| c).collect();
    let ours: BTreeSet<String> = [&c1, &c2, &c3, &c4]
        .iter()
        .map(|c| format!("netns:{c}"))
        .collect();
    assert_eq!(held, ours, "each container once, nothing else: {tables}");

    // The controller dies and comes back: its tables come from etcd, the agents resume.
    let snapshots = [world.agent_snapshots(1), world.agent_snapshots(2)];
    world.kill_controller();
    world.start_controller();
    assert_eq!(world.controller_tables(), tables);
    wait_connected(&world, tables["revision"].as_u64().unwrap());
    assert_eq!(
        [world.agent_snapshots(1), world.agent_snapshots(2)],
        snapshots,
        "the agents resumed"
    );
    let (sent, received) = ping_counts(&pings.join().expect("ping thread"));
    assert_eq!((sent, received), (120, 120), "no ping lost");
}

#[test]
fn the_log_folds_into_a_snapshot_and_backups_move_tables_between_etcd_and_redb() {
    let mut world = World::on_etcd(2, 3);
    world.kill_controller();
    world.start_controller_with(&["--history", "4"]);
    let mut containers = Vec::new();
    for i in 0..6 {
        let c = world.container(1 + i % 2, &format!("c{i}"));
        attach(&world, 1 + i % 2, &c);
        containers.push(c);
    }
    let tables = world.controller_tables();
    let revision = tables["revision"].as_u64().unwrap();
    let keys = world.etcd().keys("/weft/");
    let snapshots: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with("/weft/snapshot/"))
        .collect();
    let log: Vec<u64> = keys
        .iter()
        .filter_map(|k| k.strip_prefix("/weft/log/")?.parse().ok())
        .collect();
    assert!(
        !snapshots.is_empty()
            && snapshots
                .iter()
                .all(|k| !k.contains("/00000000000000000000/")),
        "no snapshot after {revision} revisions with 4 kept: {keys:?}"
    );
    // What is left of the log: at most the changes kept before the snapshot, and those after.
    assert!(
        !log.contains(&1) && log.len() <= 2 * 4,
        "the log before the changes kept is left: {log:?} at revision {revision}"
    );
    let snapshots_taken = [world.agent_snapshots(1), world.agent_snapshots(2)];
    world.kill_controller();
    world.start_controller_with(&["--history", "4"]);
    assert_eq!(
        world.controller_tables(),
        tables,
        "snapshot and log make the same tables"
    );
    wait_connected(&world, revision);
    assert_eq!(
        [world.agent_snapshots(1), world.agent_snapshots(2)],
        snapshots_taken,
        "the agents resumed from the kept changes"
    );

    // A backup of the store in etcd, taken while it serves, restores into redb and into
    // another prefix of etcd; the controller serves either as the same store.
    let file = world.controller_dir().with_file_name("etcd.backup");
    let file = file.to_str().unwrap();
    let held = format!(
        "store {} at revision {revision} (2 peers, 1 networks, 6 endpoints, 0 DNS records)",
        tables["store_id"].as_str().unwrap()
    );
    let out = copy(&world, "backup", file, &[]);
    assert_eq!(
        (out.code, out.stdout.trim()),
        (Some(0), format!("backed up {held} to {file}").as_str()),
        "{}",
        out.stderr
    );
    let redb = world.controller_dir().with_file_name("restored");
    let out = world.weft_controller(&["restore", file, "--data-dir", redb.to_str().unwrap()]);
    assert_eq!(
        (out.code, out.stdout.trim()),
        (
            Some(0),
            format!("restored {held} into {}/weft.redb", redb.display()).as_str()
        ),
        "{}",
        out.stderr
    );
    let etcd_at = format!("etcd {} /moved/", world.etcd().endpoints());
    let out = copy(&world, "restore", file, &["--etcd-prefix", "/moved/"]);
    assert_eq!(
        (out.code, out.stdout.trim()),
        (Some(0), format!("restored {held} into {etcd_at}").as_str()),
        "{}",
        out.stderr
    );
    let out = copy(&world, "restore", file, &["--etcd-prefix", "/moved/"]);
    assert_eq!(
        out.stderr.lines().last().unwrap_or_default(),
        format!(
            "weft-controller: store {etcd_at} is not empty (it holds {}): a backup is restored into an empty store; give another --etcd-prefix, or remove this one's keys first",
            held.split(" (").next().unwrap()
        ),
    );
    world.kill_controller();
    world.start_controller_with(&["--etcd-prefix", "/moved/"]);
    assert_eq!(world.controller_tables(), tables);
    wait_connected(&world, revision);
    let c = world.container(2, "after");
    let ip = attach(&world, 2, &c);
    assert_reaches(&containers[0], &ip);
    assert!(
        world.etcd().keys("/weft/").len() < world.etcd().keys("/").len(),
        "the new change went under /moved/"
    );
}

#[test]
fn two_controllers_on_one_prefix_give_each_address_once_and_serve_the_same_tables() {
    let mut world = World::on_etcd_controllers(2, 3, 2);
    // host2 joined controller 2 with a token controller 1 made: the CA and the tokens are in
    // etcd.
    assert_eq!((world.controller_of(1), world.controller_of(2)), (1, 2));
    let keys = world.etcd().keys("/weft/");
    let used: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with("/weft/tokens/"))
        .collect();
    assert!(
        keys.iter().any(|k| k == "/weft/ca/key.pem") && used.len() == 2,
        "the CA and both hosts' tokens are not in etcd: {keys:?}"
    );
    // Used up on one controller is used up on all.
    let token = world.join_token(1).to_string();
    assert_eq!(
        world.join_failure(2, &token),
        format!(
            "weft-agent: joining {} refused: join token {} was already used (by host1)",
            world.url_of(2),
            token.split('.').next().unwrap()
        )
    );
    let containers: Vec<(usize, String)> = (0..12)
        .map(|i| {
            let host = 1 + i % 2;
            (host, world.container(host, &format!("c{i}")))
        })
        .collect();

    // Attaches through both controllers at once: they race for the same free addresses.
    let ips: Vec<String> = std::thread::scope(|s| {
        let world = &world;
        let attaching: Vec<_> = containers
            .iter()
            .map(|(host, c)| s.spawn(move || attach(world, *host, c)))
            .collect();
        attaching.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let distinct: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), ips.len(), "an address given twice: {ips:?}");

    // Each controller follows the other's commits: the same tables at the same revision.
    let same = wait_until(NOTICE, || {
        world.tables_via(1)["revision"] == world.tables_via(2)["revision"]
    });
    let tables = world.tables_via(1);
    assert!(
        same,
        "controller 1: {tables}\ncontroller 2: {}",
        world.tables_via(2)
    );
    assert_eq!(world.tables_via(2), tables);
    let held: BTreeSet<String> = endpoints(&tables).into_iter().map(|(c, _)| c).collect();
    let ours: BTreeSet<String> = containers
        .iter()
        .map(|(_, c)| format!("netns:{c}"))
        .collect();
    assert_eq!(held, ours, "each container once: {tables}");
    wait_connected(&world, tables["revision"].as_u64().unwrap());
    // Each host learned the other's endpoints from its own controller.
    assert_reaches(&containers[0].1, &ips[1]);
    assert_reaches(&containers[1].1, &ips[0]);

    // Each controller knows the other, and where each peer's agent is connected.
    let addresses = [world.url_of(1), world.url_of(2)].map(|u| u.replace("https://", ""));
    let members = controllers(&world, 1);
    assert_eq!(
        members,
        vec![
            (addresses[0].clone(), true, true),
            (addresses[1].clone(), true, false)
        ],
        "controllers as host1 sees them"
    );
    let peers = world.ctl(1, &["status", "peers", "--json"]);
    let peers: Value = serde_json::from_str(&peers).unwrap();
    let connected: Vec<bool> = (0..2).map(|i| peers[i]["connected"] == true).collect();
    assert_eq!(
        connected,
        [true, true],
        "host2 watches controller 2: {peers}"
    );
    let out = world.weftctl(1, &["rmpeer", "host2"]);
    assert!(
        !out.success() && out.stderr.contains("is connected"),
        "rmpeer of a peer connected to another controller: {:?} {}",
        out.code,
        out.stderr
    );

    // Controller 1 dies: host1's agent moves on to controller 2 and resumes there, without a
    // snapshot; attaches on host1 go on through controller 2.
    let snapshots = world.agent_snapshots(1);
    world.kill_controller_at(1);
    let moved = wait_until(NOTICE, || {
        let link = &world.status(1)["controller"];
        link["connected"] == true && link["url"] == world.url_of(2)
    });
    assert!(moved, "host1: {}", world.status(1)["controller"]);
    let late = world.container(1, "late");
    let ip = attach(&world, 1, &late);
    assert_reaches(&containers[1].1, &ip);
    assert_eq!(world.agent_snapshots(1), snapshots, "host1 resumed");
    // Controller 2 sees controller 1 gone once it missed its beats.
    let gone = wait_until(Duration::from_secs(15), || {
        controllers(&world, 1)
            == vec![
                (addresses[1].clone(), true, true),
                (addresses[0].clone(), false, false),
            ]
    });
    assert!(gone, "{:?}", controllers(&world, 1));

    // Controller 1 comes back with that change, read from etcd.
    world.start_controller_at(1, &[]);
    let tables = world.tables_via(2);
    let revision = tables["revision"].as_u64().unwrap();
    assert!(
        wait_until(NOTICE, || world.tables_via(1)["revision"] == revision),
        "controller 1 after its restart: {}",
        world.tables_via(1)
    );
    assert_eq!(world.tables_via(1), tables);

    // A controller whose data dir holds a CA of its own is not let into the control plane:
    // agents it signed would not be trusted by the others.
    let dir = world.controller_dir().with_file_name("stranger");
    let (dir, admin) = (
        dir.to_str().unwrap(),
        format!("{}/admin.sock", dir.display()),
    );
    // Not an address of the controller's namespace: the controller stops once it made its CA.
    let stranger = [
        "--data-dir",
        dir,
        "--admin-socket",
        &admin,
        "--listen",
        "198.18.0.250:6786",
    ];
    let out = world.weft_controller(&stranger);
    assert!(out.stderr.contains("cannot listen on"), "{}", out.stderr);
    let out = on_etcd(&world, &stranger);
    assert_eq!(
        (out.code, out.stderr.lines().last().unwrap_or_default()),
        (
            Some(1),
            format!(
                "weft-controller: {dir}/ca.pem is not the CA of the control plane in etcd {} /weft/: agents joined with it would not be trusted by the other controllers; remove ca.pem and ca.key from {dir} to use the control plane's",
                world.etcd().endpoints()
            )
            .as_str()
        )
    );
}

#[test]
fn a_controller_cut_off_from_etcd_commits_nothing_stale_and_hands_its_agents_over() {
    let mut world = World::on_etcd_controllers(2, 3, 2);
    let (a, b) = (world.container(1, "a"), world.container(2, "b"));
    attach(&world, 1, &a);
    let ip_b = attach(&world, 2, &b);
    assert_reaches(&a, &ip_b);
    let pings = ping_in_background(&a, &ip_b, 300, PING_INTERVAL);

    // A short cut, healed before controller 1 gives up on etcd. An attach on host1 is planned
    // there from tables that go stale while its commit waits for etcd: controller 2 gives the
    // same free addresses to host2 meanwhile. Once the commit reaches etcd it is refused (the
    // store moved on), and planned again from what etcd holds, or dropped if host1 gave up.
    world.cut_from_etcd(1, true);
    let stale = world.container(1, "stale");
    let fresh: Vec<String> = (0..2)
        .map(|i| world.container(2, &format!("f{i}")))
        .collect();
    let (stale_attach, fresh_ips) = std::thread::scope(|s| {
        let world = &world;
        let stale_attach = s.spawn(|| world.weftctl(1, &["attach", &format!("netns:{stale}")]));
        sleep(Duration::from_millis(300));
        let ips: Vec<String> = fresh.iter().map(|c| attach(world, 2, c)).collect();
        world.cut_from_etcd(1, false);
        (stale_attach.join().unwrap(), ips)
    });
    let stale_held = stale_attach
        .success()
        .then(|| stale_attach.stdout.trim().to_owned());
    println!("the attach planned from stale tables: {stale_attach:?}");
    if let Some(ip) = &stale_held {
        assert!(!fresh_ips.contains(ip), "{ip} given twice: {fresh_ips:?}");
    }
    // Both controllers hold the same tables, each address once; the stale attach is there
    // only if host1 was told it succeeded (else host1 releases what landed for it).
    let mut ours: BTreeSet<String> = [&a, &b].into_iter().chain(&fresh).cloned().collect();
    if stale_held.is_some() {
        ours.insert(stale.clone());
    }
    let ours: BTreeSet<String> = ours.iter().map(|c| format!("netns:{c}")).collect();
    let agreed = wait_until(NOTICE, || {
        let tables = world.tables_via(1);
        tables == world.tables_via(2)
            && endpoints(&tables)
                .into_iter()
                .map(|(c, _)| c)
                .collect::<BTreeSet<_>>()
                == ours
    });
    let tables = world.tables_via(2);
    assert!(
        agreed,
        "want {ours:?}\ncontroller 1: {}\ncontroller 2: {tables}",
        world.tables_via(1)
    );

    // A long cut: controller 1 ends its watches and refuses new ones, naming etcd, and host1
    // moves on to controller 2, where its attaches go on.
    world.cut_from_etcd(1, true);
    let moved = wait_until(Duration::from_secs(15), || {
        let link = &world.status(1)["controller"];
        link["connected"] == true && link["url"] == world.url_of(2)
    });
    assert!(moved, "host1: {}", world.status(1)["controller"]);
    let refused = world.dump_via(1);
    let why = format!(
        "the controller cannot reach its store etcd {} /weft/",
        world.etcd().endpoints()
    );
    assert!(
        !refused.success() && refused.stderr.contains(&why),
        "a watch of controller 1 while it is cut off: {refused:?}"
    );
    let late = world.container(1, "late");
    let ip_late = attach(&world, 1, &late);
    assert_reaches(&b, &ip_late);
    let address = world.url_of(1).replace("https://", "");
    let gone = wait_until(Duration::from_secs(15), || {
        controllers(&world, 1).contains(&(address.clone(), false, false))
    });
    assert!(gone, "{:?}", controllers(&world, 1));

    // Healed: controller 1 follows what it missed and serves the same tables again.
    world.cut_from_etcd(1, false);
    let revision = world.tables_via(2)["revision"].clone();
    let back = wait_until(Duration::from_secs(15), || {
        let out = world.dump_via(1);
        out.success() && serde_json::from_str::<Value>(&out.stdout).unwrap()["revision"] == revision
    });
    assert!(
        back,
        "controller 1 after the cut: {}",
        world.dump_via(1).stderr
    );
    let tables = world.tables_via(2);
    assert_eq!(world.tables_via(1), tables);
    endpoints(&tables);
    let (sent, received) = ping_counts(&pings.join().expect("ping thread"));
    assert_eq!((sent, received), (300, 300), "no ping lost");
}

/// A fleet asking both controllers at once, as fast as it can: they collide on nearly every
/// commit. One that loses a race commits next (it holds `meta/turn`), so no request fails
/// however often they collide; every new agent, on either controller, gets every endpoint, and
/// every watcher on either gets every change. Keeping 100 changes, they fold the log into
/// snapshots as they go, and seldom write one in vain (each writes all the tables into etcd's
/// history, which only compaction shrinks).
#[test]
fn a_fleet_attaching_through_two_controllers_at_once_loses_no_request_to_their_races() {
    let world = World::on_etcd_controllers(0, 3, 2);
    for k in 1..=2 {
        world.kill_controller_at(k);
        world.start_controller_at(k, &["--history", "100"]);
    }
    let load = locate_bin("weft-load");
    let (pid, dir) = (
        world
            .controller_pid()
            .expect("controller 1 runs")
            .to_string(),
        world.controller_dir().display().to_string(),
    );
    let (first, second) = (world.url_of(1), world.url_of(2));
    let argv = [
        load.to_str().unwrap(),
        "--controller",
        &first,
        "scale",
        "--spread-over",
        &second,
        "--controller-pid",
        &pid,
        "--sign-with",
        &dir,
        "--agents",
        "40",
        "--endpoints-per-agent",
        "50",
        "--concurrency",
        "64",
        "--syncs",
        "2",
        "--changes",
        "10",
        "--idle-secs",
        "0",
    ];
    let out = exec_for(&world.controller_ns(), &argv, Duration::from_secs(120));
    assert!(
        out.success(),
        "weft-load scale failed: {}\n{}",
        out.stderr.trim(),
        out.stdout
    );
    assert!(
        out.stdout
            .contains("populate: 40 peers registered, 2000 endpoints attached"),
        "{}",
        out.stdout
    );
    let written = world.etcd().keys_ever_put("/weft/snapshot/");
    let tried: BTreeSet<&str> = written
        .iter()
        .filter_map(|k| k.strip_prefix("/weft/snapshot/")?.split('/').next())
        .collect();
    let kept = world.etcd().keys("/weft/snapshot/");
    // Where the last commit starts: the store's revision, give or take one batch.
    let revision = world
        .etcd()
        .keys("/weft/log/")
        .iter()
        .filter_map(|k| k.strip_prefix("/weft/log/")?.parse::<u64>().ok())
        .max()
        .expect("a log after the last snapshot");
    // One snapshot each 100 changes, and at times the other controller's at the same moment:
    // not one each commit once the log is long (measured: 34-36 for 2,050 revisions; 68-75
    // when a try that lost to the other controller's commits was made again at the next).
    let bound = 2 * revision / 100 + 5;
    assert!(
        !kept.is_empty() && tried.len() as u64 <= bound,
        "{} snapshots written (at most {bound} for {revision} revisions), {} keys in the store now: {tried:?}",
        tried.len(),
        kept.len()
    );
}
