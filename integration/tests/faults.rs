//! Faults under traffic, each with a measured outcome: a controller crash and a host cut off
//! from the controller lose no packet of the flows already running and are caught up with
//! within seconds; a thousand attaches and detaches across controller and agent crashes (on redb, and on two
//! controllers on etcd) leave
//! the controller's tables, every host's kernel and every container in exact agreement.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle, sleep};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_integration::{
    Alone, CONTROLLER_IP, CONTROLLER_URL, Output, World, assert_rejected, exec, link, links, ping,
    ping_counts, ping_in_background, views, wait_until,
};

/// The pace of the pings that must lose nothing: ten a second, so a gap of 100 ms shows.
const PING_INTERVAL: Duration = Duration::from_millis(100);
/// How long a path between two containers gets to work after they are attached.
const CONVERGE: Duration = Duration::from_secs(5);
/// How soon an agent must be in sync again once the controller listens or the network heals.
const RESYNC: Duration = Duration::from_secs(2);
/// How soon attach and detach must give up on a controller that cannot be reached.
const GIVE_UP: Duration = Duration::from_secs(2);
/// How soon `weftctl status` must call a silently dead connection unreachable: the agent's
/// HTTP/2 keepalives (every second) notice it within about 3 s.
const NOTICE: Duration = Duration::from_secs(5);

/// `weftctl attach netns:CONTAINER` on `host` (the default network); returns the IP printed.
fn attach(world: &World, host: usize, container: &str) -> String {
    world
        .ctl(host, &["attach", &format!("netns:{container}")])
        .trim_end()
        .to_owned()
}

/// An attached container whose traffic a test watches.
struct Member {
    /// `c1`, `c2`, ...: how the report names it.
    name: String,
    ns: String,
    ip: String,
}

/// Containers `c1` on host1, `c2` on host2, ... up to `hosts`, each attached.
fn members(world: &mut World, hosts: usize) -> Vec<Member> {
    (1..=hosts)
        .map(|host| {
            let name = format!("c{host}");
            let ns = world.container(host, &name);
            let ip = attach(world, host, &ns);
            Member { name, ns, ip }
        })
        .collect()
}

/// Every ordered pair of `members`: the paths of a full mesh of flows.
fn mesh(members: &[Member]) -> Vec<(&Member, &Member)> {
    members
        .iter()
        .flat_map(|from| members.iter().map(move |to| (from, to)))
        .filter(|(from, to)| from.ns != to.ns)
        .collect()
}

/// The host-side veths weft made on `host`, by name.
fn host_veths(world: &World, host: usize) -> BTreeSet<String> {
    links(&world.host_ns(host))
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.starts_with("vethwepl"))
        .collect()
}

/// Waits until `from` reaches `ip`: the flows a test watches must work before it breaks things.
fn assert_reaches(from: &str, ip: &str) {
    assert!(
        wait_until(CONVERGE, || ping(from, ip)),
        "{from} cannot reach {ip}"
    );
}

/// A ping that runs while the test breaks something, labelled for the report.
struct Flow {
    label: String,
    run: JoinHandle<Output>,
}

/// Waits until every path works, then starts `count` pings along each at once.
fn start_flows(paths: &[(&Member, &Member)], count: u64) -> Vec<Flow> {
    for (from, to) in paths {
        assert_reaches(&from.ns, &to.ip);
    }
    paths
        .iter()
        .map(|(from, to)| Flow {
            label: format!("{} -> {}", from.name, to.name),
            run: ping_in_background(&from.ns, &to.ip, count, PING_INTERVAL),
        })
        .collect()
}

/// Fails unless every flow is still sending: one that ended before the fault was over proves
/// nothing about it.
fn assert_running(flows: &[Flow], what: &str) {
    let ended: Vec<&str> = flows
        .iter()
        .filter(|f| f.run.is_finished())
        .map(|f| f.label.as_str())
        .collect();
    assert!(
        ended.is_empty(),
        "pings {ended:?} ended before {what}: make them longer"
    );
}

/// Waits for every flow, prints each one's counts, and requires that none lost a packet.
fn assert_no_loss(flows: Vec<Flow>, count: u64) {
    let counts: Vec<(String, (u64, u64))> = flows
        .into_iter()
        .map(|f| (f.label, ping_counts(&f.run.join().expect("ping thread"))))
        .collect();
    for (label, (sent, received)) in &counts {
        println!("{label}: {sent} sent, {received} received");
    }
    let lossy: Vec<_> = counts
        .iter()
        .filter(|(_, c)| *c != (count, count))
        .collect();
    assert!(
        lossy.is_empty(),
        "flows that did not get all {count} answers, as (sent, received): {lossy:?}"
    );
}

/// Runs `weftctl VERB netns:CONTAINER` on `host` while the controller cannot be reached, and
/// checks it fails in time with the unreachable error and changes no link on the host or in the
/// container.
fn assert_refused(world: &World, host: usize, verb: &str, container: &str) {
    let (veths, ethwe) = (host_veths(world, host), link(container, "ethwe"));
    let target = format!("netns:{container}");
    let started = Instant::now();
    let out = world.weftctl(host, &[verb, &target]);
    let took = started.elapsed();
    println!("{verb} on host{host} without the controller: failed after {took:?}");
    assert_rejected(
        &out,
        &format!("{verb} {target}: controller {CONTROLLER_URL} is unreachable: "),
    );
    assert!(
        took <= GIVE_UP,
        "{verb} took {took:?} to fail, over {GIVE_UP:?}"
    );
    assert_eq!(
        host_veths(world, host),
        veths,
        "host{host}'s veths after the refused {verb}"
    );
    assert_eq!(
        link(container, "ethwe"),
        ethwe,
        "ethwe of {container} after the refused {verb}"
    );
}

/// The `Controller: ...` line of `weftctl status` on `host`, without the indent that aligns
/// the keys.
fn controller_line(world: &World, host: usize) -> String {
    let status = world.ctl(host, &["status"]);
    status
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with("Controller: "))
        .unwrap_or_else(|| panic!("no `Controller: ` line in host{host}'s status:\n{status}"))
        .to_owned()
}

/// Polls host `host`'s `Controller: ` status line for up to `limit` until `wanted` accepts it;
/// returns whether it did, and the last line seen.
fn await_controller_line(
    world: &World,
    host: usize,
    limit: Duration,
    wanted: impl Fn(&str) -> bool,
) -> (bool, String) {
    let mut last = String::new();
    let accepted = wait_until(limit, || {
        last = controller_line(world, host);
        wanted(&last)
    });
    (accepted, last)
}

/// Waits until host `host`'s status shows it connected at `revision`; fails showing what it
/// said instead.
fn assert_connected_at(world: &World, host: usize, revision: u64) {
    let want = format!("Controller: {CONTROLLER_URL} (connected, revision {revision})");
    let (connected, last) = await_controller_line(world, host, RESYNC, |l| l == want);
    assert!(connected, "host{host}'s status says {last:?}, not {want:?}");
}

/// How long after `since` each host was in sync, seen from outside ([`views::in_sync`]: its
/// agent connected at the controller's revision, kernels and `pool`'s containers agreeing with
/// the controller's tables); `None` for a host that was not within a few seconds. A look takes a
/// few hundred ms (the controller's tables, every kernel, weftctl on each host), so the figures
/// err late by about that.
fn resync_times(
    world: &World,
    pool: &[(usize, String)],
    since: Instant,
) -> Vec<(String, Option<Duration>)> {
    let mut times = vec![None; world.hosts()];
    wait_until(RESYNC * 3, || {
        for (time, synced) in times.iter_mut().zip(views::hosts_in_sync(world, pool)) {
            if time.is_none() && synced {
                *time = Some(since.elapsed());
            }
        }
        times.iter().all(Option::is_some)
    });
    (1..)
        .zip(times)
        .map(|(h, took)| {
            println!("host{h}: in sync {took:?} after the controller listened again");
            (format!("host{h}"), took)
        })
        .collect()
}

/// Fails naming each of `figures` (what, how long) that is missing or over [`RESYNC`].
fn assert_in_time(figures: &[(String, Option<Duration>)], what: &str) {
    let late: Vec<_> = figures
        .iter()
        .filter(|(_, took)| took.is_none_or(|t| t > RESYNC))
        .collect();
    assert!(
        late.is_empty(),
        "not {what} within {RESYNC:?} (None: not within {:?}): {late:?}",
        RESYNC * 3
    );
}

fn revision_of(tables: &Value) -> u64 {
    tables["revision"]
        .as_u64()
        .unwrap_or_else(|| panic!("no revision in {tables}"))
}

#[test]
fn a_controller_crash_under_traffic_loses_no_packet() {
    /// 20 s of pings: the crash, the restart and the agents' return all fall inside.
    const PINGS: u64 = 200;
    let mut world = World::new(3);
    let members = members(&mut world, 3);
    let late = world.container(1, "late");
    let flows = start_flows(&mesh(&members), PINGS);
    sleep(Duration::from_secs(3));
    world.kill_controller();
    let killed = Instant::now();
    assert_refused(&world, 1, "attach", &late);
    sleep(Duration::from_secs(3).saturating_sub(killed.elapsed()));
    world.start_controller();
    let listening = Instant::now();
    println!("controller down for {:?}", killed.elapsed());
    let pool: Vec<(usize, String)> = (1..).zip(members.iter().map(|m| m.ns.clone())).collect();
    let resync = resync_times(&world, &pool, listening);
    assert_running(&flows, "the agents were in sync again");

    assert_no_loss(flows, PINGS);
    assert_in_time(&resync, "in sync after the controller listened again");
    // Nothing of the refused attach is in the way, and no agent needed a restart.
    let ip = attach(&world, 1, &late);
    assert_eq!(
        link(&late, "ethwe").map(|l| l.addrs),
        Some(vec![format!("{ip}/12")]),
        "ethwe of {late} after attaching it with the controller back"
    );
    let revision = revision_of(&world.controller_tables());
    for h in 1..=3 {
        assert_connected_at(&world, h, revision);
    }
}

/// Time from now until a ping from `from` to `ip` is answered, trying again at once after each
/// failure (a second without answer, or sooner if ARP goes unanswered) for at most `limit`;
/// `None` if none was.
fn first_reply(from: &str, ip: &str, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if ping(from, ip) {
            return Some(started.elapsed());
        }
        // Not to spin should ping fail at once for another reason.
        sleep(Duration::from_millis(20));
    }
    None
}

/// [`first_reply`] from `from` to each of `targets` (label, IP) at once, printed.
fn first_replies(from: &str, targets: &[(&str, &str)]) -> Vec<(String, Option<Duration>)> {
    let firsts: Vec<(String, Option<Duration>)> = thread::scope(|s| {
        let probes: Vec<_> = targets
            .iter()
            .map(|&(label, ip)| (label, s.spawn(move || first_reply(from, ip, RESYNC * 3))))
            .collect();
        probes
            .into_iter()
            .map(|(label, probe)| (label.to_owned(), probe.join().expect("probe thread")))
            .collect()
    });
    for (label, took) in &firsts {
        println!("{label}: first reply {took:?} after the healing");
    }
    firsts
}

/// Checks that host `host`, just cut off from the controller, still answers `ps` (listing
/// `member`) and, within [`NOTICE`], shows the controller as unreachable in `status`.
fn assert_answers_cut_off(world: &World, host: usize, member: &Member) {
    let ps = world.ctl(host, &["ps"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&format!("netns:{} ", member.ns)) && l.contains(&member.ip)),
        "host{host}'s ps while cut off does not list {} with {}:\n{ps}",
        member.name,
        member.ip
    );
    let unreachable = format!("Controller: {CONTROLLER_URL} (unreachable for ");
    let (noticed, line) =
        await_controller_line(world, host, NOTICE, |l| l.starts_with(&unreachable));
    println!("host{host}'s status while cut off: {line}");
    assert!(
        noticed,
        "host{host}'s status {NOTICE:?} after the cut: {line:?}"
    );
}

/// Makes `container` repeat an unanswered ARP request every 100 ms instead of every second, so
/// the time to its first reply measures weft, not the kernel's ARP timer. The shell writes the
/// container's own /proc/sys.
fn ask_arp_often(container: &str) {
    let script = "echo 100 > /proc/sys/net/ipv4/neigh/ethwe/retrans_time_ms";
    let out = exec(container, &["sh", "-c", script]);
    assert!(
        out.success(),
        "{script} in {container}: {}",
        out.stderr.trim()
    );
}

/// The route in host `host`'s namespace that drops everything it sends to the controller,
/// while its underlay to the other hosts stays up.
fn controller_route(world: &World, host: usize, verb: &str) {
    let out = exec(
        &world.host_ns(host),
        &[
            "ip",
            "route",
            verb,
            "blackhole",
            &format!("{CONTROLLER_IP}/32"),
        ],
    );
    assert!(
        out.success(),
        "ip route {verb} blackhole: {}",
        out.stderr.trim()
    );
}

#[test]
fn a_host_cut_off_from_the_controller_keeps_its_flows_and_catches_up() {
    /// The cut lasts 10 s; the pings start a second before it and run on past the healing.
    const CUT: Duration = Duration::from_secs(10);
    const PINGS: u64 = 140;
    let mut world = World::new(3);
    let members = members(&mut world, 3);
    let c3 = &members[2];
    let (c4, c5, c6) = (
        world.container(1, "c4"),
        world.container(2, "c5"),
        world.container(3, "c6"),
    );
    ask_arp_often(&c3.ns);
    let paths: Vec<_> = mesh(&members)
        .into_iter()
        .filter(|(from, to)| from.ns == c3.ns || to.ns == c3.ns)
        .collect();
    let line = controller_line(&world, 3);
    assert!(
        line.starts_with(&format!(
            "Controller: {CONTROLLER_URL} (connected, revision "
        )),
        "host3's status before the cut: {line:?}"
    );

    let flows = start_flows(&paths, PINGS);
    sleep(Duration::from_secs(1));
    controller_route(&world, 3, "add");
    let cut = Instant::now();
    // Refused both before host3 has noticed the cut (its connection looks alive) and after.
    assert_refused(&world, 3, "attach", &c6);
    assert_answers_cut_off(&world, 3, c3);
    println!("host3 knew it was cut off after {:?}", cut.elapsed());
    assert_refused(&world, 3, "detach", &c3.ns);
    let ip4 = attach(&world, 1, &c4);
    let ip5 = attach(&world, 2, &c5);
    sleep(CUT.saturating_sub(cut.elapsed()));
    assert_running(&flows, "the cut was healed");

    controller_route(&world, 3, "del");
    let firsts = first_replies(&c3.ns, &[("c3 -> c4", &ip4), ("c3 -> c5", &ip5)]);
    assert_no_loss(flows, PINGS);
    assert_in_time(&firsts, "answered after the healing");
    // The refused attach left nothing in the way, and host3's agent needed no restart.
    attach(&world, 3, &c6);
}

const HOSTS: usize = 3;
const POOL_PER_HOST: usize = 10;
const DRIVERS_PER_HOST: usize = 2;
const OPERATIONS: usize = 1000;
/// How long a driver waits after a failed operation, as a person or script retrying would;
/// without it, a driver facing a restarting agent would spend its share in a few milliseconds.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a crashed process stays down before it is started again.
const DOWN: Duration = Duration::from_secs(1);
/// How long the hosts get to agree with the controller once the operations are over.
const SETTLE: Duration = Duration::from_secs(30);

/// A crash during the operations: controller `k`, or host `h`'s agent.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Controller(usize),
    Agent(usize),
}

/// Each fault, after how many operations have started.
type Faults = [(usize, Fault)];

/// The one controller on redb, twice, and an agent between.
const FAULTS: [(usize, Fault); 3] = [
    (150, Fault::Controller(1)),
    (400, Fault::Agent(2)),
    (650, Fault::Controller(1)),
];

/// On etcd, each of two controllers in turn while the other serves (their agents move over),
/// and an agent between.
const FAULTS_ON_ETCD: [(usize, Fault); 3] = [
    (150, Fault::Controller(1)),
    (400, Fault::Agent(2)),
    (650, Fault::Controller(2)),
];

impl Fault {
    /// SIGKILL, [`DOWN`], start again (and wait until it serves).
    fn strike(self, world: &World) {
        match self {
            Fault::Controller(k) => world.kill_controller_at(k),
            Fault::Agent(host) => world.kill_agent(host),
        }
        sleep(DOWN);
        match self {
            Fault::Controller(k) => world.start_controller_at(k, &[]),
            Fault::Agent(host) => world.start_agent(host),
        }
    }
}

/// One attach or detach, and how it ended: what weftctl printed, or its error.
struct Operation {
    container: String,
    verb: &'static str,
    /// How many faults were over (the process back) when it started.
    faults_before: usize,
    result: Result<String, String>,
}

/// Shared by the drivers: operations started so far, and faults over so far.
#[derive(Default)]
struct Progress {
    started: AtomicUsize,
    faults: AtomicUsize,
}

/// Runs operations on `host`'s containers `share`, in turn, until [`OPERATIONS`] have started
/// across all drivers: a detach if the container has an `ethwe`, an attach if not. One driver
/// owns each container, so the last operation on it says what it must hold in the end.
fn drive(world: &World, host: usize, share: &[String], progress: &Progress) -> Vec<Operation> {
    let mut done = Vec::new();
    for container in share.iter().cycle() {
        if progress.started.fetch_add(1, Ordering::SeqCst) >= OPERATIONS {
            break;
        }
        let faults_before = progress.faults.load(Ordering::SeqCst);
        let verb = match link(container, "ethwe") {
            Some(_) => "detach",
            None => "attach",
        };
        let out = world.weftctl(host, &[verb, &format!("netns:{container}")]);
        // A detach that failed unanswered may have been made: the agent then removes the
        // interface once the watch brings it, which can be between this driver's look and the
        // retried detach. "Not attached" is that retry's right answer, and the container is
        // detached as asked.
        let unanswered_detach = done
            .iter()
            .rev()
            .find(|o: &&Operation| o.container == *container)
            .is_some_and(|o| o.verb == "detach" && o.result.is_err());
        let result = if out.success() {
            Ok(out.stdout.trim_end().to_owned())
        } else if verb == "detach"
            && unanswered_detach
            && out
                .stderr
                .trim_end()
                .ends_with(&format!("netns:{container} is not attached on host{host}"))
        {
            Ok(String::new())
        } else {
            sleep(RETRY_PAUSE);
            Err(out.stderr.trim_end().to_owned())
        };
        done.push(Operation {
            container: container.clone(),
            verb,
            faults_before,
            result,
        });
    }
    done
}

/// Runs every driver, and `faults` meanwhile on this thread; returns every operation.
fn operate(world: &World, pool: &[(usize, String)], faults: &Faults) -> Vec<Operation> {
    let progress = Progress::default();
    thread::scope(|s| {
        let drivers: Vec<_> = (1..=HOSTS)
            .flat_map(|host| (0..DRIVERS_PER_HOST).map(move |d| (host, d)))
            .map(|(host, d)| {
                let share: Vec<String> = pool
                    .iter()
                    .filter(|(h, _)| *h == host)
                    .skip(d)
                    .step_by(DRIVERS_PER_HOST)
                    .map(|(_, ns)| ns.clone())
                    .collect();
                let progress = &progress;
                s.spawn(move || drive(world, host, &share, progress))
            })
            .collect();
        for &(at, fault) in faults {
            let reached = wait_until(Duration::from_secs(120), || {
                progress.started.load(Ordering::SeqCst) >= at
            });
            assert!(reached, "not {at} operations started within 120 s");
            let following: Vec<String> = (1..=HOSTS)
                .map(|h| format!("host{h} -> {}", world.status(h)["controller"]["url"]))
                .collect();
            let struck = Instant::now();
            fault.strike(world);
            println!(
                "after {at} operations ({}): {fault:?} killed and back in {:?}",
                following.join(", "),
                struck.elapsed()
            );
            progress.faults.fetch_add(1, Ordering::SeqCst);
        }
        drivers
            .into_iter()
            .flat_map(|d| d.join().expect("driver panicked"))
            .collect()
    })
}

/// Prints how the operations went: successes and failures per kind and per phase between
/// `faults`, and the failures grouped by reason.
fn report(ops: &[Operation], faults: &Faults) {
    for phase in 0..=faults.len() {
        let of_phase: Vec<&Operation> = ops.iter().filter(|o| o.faults_before == phase).collect();
        let count = |verb: &str, ok: bool| {
            of_phase
                .iter()
                .filter(|o| o.verb == verb && o.result.is_ok() == ok)
                .count()
        };
        println!(
            "started with {phase} fault(s) over: attach {} ok {} failed, detach {} ok {} failed",
            count("attach", true),
            count("attach", false),
            count("detach", true),
            count("detach", false)
        );
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for op in ops {
        if let Err(why) = &op.result {
            // `weftctl: attach netns:X: <why>`: grouped by the why alone.
            let prefix = format!("weftctl: {} netns:{}: ", op.verb, op.container);
            let why = why.strip_prefix(&prefix).unwrap_or(why);
            *reasons.entry(format!("{} {why}", op.verb)).or_default() += 1;
        }
    }
    println!("failures by reason: {reasons:#?}");
}

/// What the last operation on each container says it must hold in the end: the address a
/// successful attach printed, or nothing after a successful detach. A failed last operation
/// says nothing (the controller may have made the change without answering).
fn expected(ops: &[Operation]) -> BTreeMap<&str, Option<String>> {
    let mut last: BTreeMap<&str, &Operation> = BTreeMap::new();
    for op in ops {
        last.insert(&op.container, op);
    }
    last.into_iter()
        .filter_map(|(container, op)| match (&op.result, op.verb) {
            (Ok(ip), "attach") => Some((container, Some(format!("{ip}/12")))),
            (Ok(_), _) => Some((container, None)),
            (Err(_), _) => None,
        })
        .collect()
}

#[test]
fn a_thousand_operations_across_crashes_leave_every_view_equal() {
    // Heavy: no other test of this binary runs beside it, nor its tight time bounds.
    let _alone = Alone::take();
    check_across(World::new(HOSTS), &FAULTS);
}

#[test]
fn a_thousand_operations_across_controller_crashes_on_etcd_leave_every_view_equal() {
    let _alone = Alone::take();
    check_across(World::on_etcd_controllers(HOSTS, 3, 2), &FAULTS_ON_ETCD);
}

/// [`OPERATIONS`] attaches and detaches on every host's containers while `faults` strike;
/// then every view agrees (each controller's tables, each host's kernel, each container), each
/// container holds what its last successful operation says, and nothing after the last fault
/// failed.
fn check_across(mut world: World, faults: &Faults) {
    let started = Instant::now();
    let pool: Vec<(usize, String)> = (1..=HOSTS)
        .flat_map(|host| (0..POOL_PER_HOST).map(move |i| (host, i)))
        .map(|(host, i)| (host, world.container(host, &format!("p{host}-{i}"))))
        .collect();

    let run = Instant::now();
    let ops = operate(&world, &pool, faults);
    println!("{} operations in {:?}", ops.len(), run.elapsed());
    report(&ops, faults);
    assert_eq!(ops.len(), OPERATIONS, "operations run");
    let settle = Instant::now();
    let mut last = (Vec::new(), 0);
    let agreed = wait_until(SETTLE, || {
        last = views::disagreements(&world, &pool);
        last.0.is_empty()
    });
    let (found, endpoints) = last;
    println!(
        "{endpoints} endpoints at the end; views {} after {:?}; whole test {:?}",
        if agreed { "agree" } else { "still disagree" },
        settle.elapsed(),
        started.elapsed()
    );
    assert!(
        agreed,
        "after {SETTLE:?} the views disagree:\n{}",
        found.join("\n")
    );
    // Every controller serves the same tables (host h asks controller (h - 1) % n + 1).
    let tables = world.tables_via(1);
    for host in 2..=HOSTS {
        assert_eq!(
            world.tables_via(host),
            tables,
            "tables via host{host}'s controller"
        );
    }
    // Once every process is back, weft works again without anything restarted by hand.
    let last_phase: Vec<&Operation> = ops
        .iter()
        .filter(|o| o.faults_before == faults.len())
        .collect();
    let failed: Vec<&String> = last_phase
        .iter()
        .filter_map(|o| o.result.as_ref().err())
        .collect();
    assert!(
        !last_phase.is_empty() && failed.is_empty(),
        "of {} operations after the last fault, these failed: {failed:#?}",
        last_phase.len()
    );

    for (container, want) in expected(&ops) {
        let have = link(container, "ethwe").map(|l| l.addrs);
        assert_eq!(
            have,
            want.map(|cidr| vec![cidr]),
            "{container}'s ethwe, by its last successful operation"
        );
    }
}
