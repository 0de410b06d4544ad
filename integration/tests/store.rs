//! The controller's store under faults a user can cause: an emptied, removed or replaced
//! `weft.redb` (or `tokens.redb`) is refused rather than served as a new cluster, a full disk
//! fails changes naming it and stops doing so once there is room, a stop (SIGTERM) ends the
//! agents' watches and the process within seconds, a damaged store stops the controller at
//! start in one line, a backup taken while serving brings a lost store back, and the data dir
//! is root-only.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_integration::{
    CONTROLLER_URL, Output, VXLAN_DEV, World, assert_reaches, assert_rejected, fdb, neighbours,
    wait_until,
};

/// How long a stopped controller may take to exit: it should take about 2 s at most.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// How soon agents must stop showing a stopped controller as connected.
const NOTICE: Duration = Duration::from_secs(5);
/// How many networks each attach on a full disk makes.
const NETWORKS: usize = 16;
/// How many such attaches may still fit in the store's file before one must grow it.
const FILL_ROUNDS: usize = 20;
/// What every refusal of an emptied weft.redb says after naming the file and what was found.
const WAY_OUT: &str = "restore weft.redb from a backup, or start with --accept-empty-store to begin again with empty tables (agents keep their datapath and refuse the new store until told to follow it)";

/// `weftctl attach netns:CONTAINER` on `host`; returns the IP printed.
fn attach(world: &World, host: usize, container: &str) -> String {
    world
        .ctl(host, &["attach", &format!("netns:{container}")])
        .trim_end()
        .to_owned()
}

fn store_id(tables: &Value) -> String {
    let id = tables["store_id"].as_str().expect("dump has a store_id");
    assert!(
        id.len() == 32 && id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "store id {id:?} is not 32 lower-case hex digits"
    );
    id.to_owned()
}

fn marker(world: &World) -> String {
    fs::read_to_string(world.controller_dir().join("store-id")).expect("the store-id marker")
}

fn mode(path: &Path) -> u32 {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    meta.permissions().mode() & 0o777
}

/// Requires that the controller refused to start: exit status 1, its last line of stderr
/// exactly `weft-controller: {message}`, and it never served.
fn assert_refused(out: &Output, message: &str) {
    assert_eq!(out.code, Some(1), "exit status; stderr:\n{}", out.stderr);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!("weft-controller: {message}"),
        "stderr:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("serving"), "stderr:\n{}", out.stderr);
}

#[test]
fn an_emptied_or_removed_store_is_refused_until_it_is_restored_or_begun_again() {
    let mut world = World::new(1);
    let c1 = world.container(1, "c1");
    attach(&world, 1, &c1);
    let before = world.controller_tables();
    let id = store_id(&before);
    assert_eq!(marker(&world), format!("{id}\n"));
    let store = world.controller_dir().join("weft.redb");
    let found = format!("store-id names store {id}; ca.key is there; tokens.redb is not empty");

    world.kill_controller();
    let backup = fs::read(&store).unwrap();
    fs::File::create(&store).unwrap();
    let out = world.run_controller(&[]);
    assert_refused(
        &out,
        &format!(
            "{} is empty (0 bytes), but this data dir held a store ({found}): {WAY_OUT}",
            store.display()
        ),
    );
    assert_eq!(fs::metadata(&store).unwrap().len(), 0, "left as it was");
    assert_eq!(marker(&world), format!("{id}\n"));

    // The way out the message names: the backup brings back the same store.
    fs::write(&store, &backup).unwrap();
    world.start_controller();
    let restored = world.controller_tables();
    assert_eq!(store_id(&restored), id);
    assert_eq!(restored["endpoints"], before["endpoints"]);

    world.kill_controller();
    fs::remove_file(&store).unwrap();
    let out = world.run_controller(&[]);
    assert_refused(
        &out,
        &format!(
            "{} is missing, but this data dir held a store ({found}): {WAY_OUT}",
            store.display()
        ),
    );
    assert!(!store.exists(), "left as it was");

    // No agent, so the new tables stay as the controller makes them.
    world.stop_agent(1);
    world.start_controller_with(&["--accept-empty-store"]);
    let fresh = world.controller_tables();
    let new_id = store_id(&fresh);
    assert_ne!(new_id, id);
    assert_eq!(marker(&world), format!("{new_id}\n"));
    assert_eq!(fresh["revision"], 1, "{fresh}");
    assert_eq!(fresh["peers"], serde_json::json!([]));
    assert_eq!(fresh["endpoints"], serde_json::json!([]));
    assert_eq!(fresh["networks"][0]["name"], "default");
    let log = fs::read_to_string(world.controller_log()).unwrap();
    assert!(
        log.lines().any(|l| l.contains(" WARN ")
            && l.contains("--accept-empty-store: ")
            && l.contains("beginning again with empty tables as a new store")),
        "no warning of the new store in the log:\n{log}"
    );
}

#[test]
fn a_damaged_store_stops_the_controller_at_start_in_one_line() {
    let world = World::new(0);
    let store = world.controller_dir().join("weft.redb");
    world.kill_controller();
    let damaged = b"overwritten by something that is not a database ".repeat(200);
    fs::write(&store, &damaged).unwrap();
    let out = world.run_controller(&[]);
    assert_refused(
        &out,
        &format!(
            "store {} cannot be read (I/O error: Not a redb database: magic number mismatch): it is damaged or not a weft store; restore weft.redb from a backup",
            store.display()
        ),
    );
    assert!(
        !out.stderr.contains("backtrace") && !out.stderr.contains("panicked"),
        "stderr:\n{}",
        out.stderr
    );
    assert_eq!(fs::read(&store).unwrap(), damaged, "left as it was");
}

/// `weft-controller COMMAND FILE --data-dir` (the world's).
fn copy(world: &World, command: &str, file: &Path) -> Output {
    let dir = world.controller_dir();
    world.weft_controller(&[
        command,
        file.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
    ])
}

#[test]
fn a_backup_taken_while_serving_brings_a_lost_store_back_and_agents_resume_on_it() {
    let mut world = World::new(2);
    let (c1, c2) = (world.container(1, "c1"), world.container(2, "c2"));
    attach(&world, 1, &c1);
    attach(&world, 2, &c2);
    let before = world.controller_tables();
    let id = store_id(&before);
    let revision = before["revision"].as_u64().unwrap();
    let store = world.controller_dir().join("weft.redb");
    let file = world.controller_dir().with_file_name("weft.backup");
    let held = format!(
        "store {id} at revision {revision} (2 peers, 1 networks, 2 endpoints, 0 DNS records)"
    );

    let out = copy(&world, "backup", &file);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (
            Some(0),
            format!("backed up {held} to {}\n", file.display()).as_str()
        ),
        "stderr: {}",
        out.stderr
    );
    assert_eq!(mode(&file), 0o600, "a backup is root-only");

    // Into the store being served: refused, and it goes on serving.
    let out = copy(&world, "restore", &file);
    assert_refused(
        &out,
        &format!(
            "store {} is not empty (it holds store {id} at revision {revision}): a backup is restored into an empty store; give another --data-dir, or move this one aside",
            store.display()
        ),
    );
    assert!(world.controller_exited().is_none());
    // So is a second controller on the same data dir.
    assert_refused(
        &world.run_controller(&[]),
        &format!(
            "store {} is in use by another process (is a weft-controller running on this data dir?)",
            store.display()
        ),
    );

    // The disk holding the store is lost; the data dir's other files are not.
    let snapshots = [world.agent_snapshots(1), world.agent_snapshots(2)];
    world.kill_controller();
    fs::remove_file(&store).unwrap();
    let out = copy(&world, "restore", &file);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (
            Some(0),
            format!("restored {held} into {}\n", store.display()).as_str()
        ),
        "stderr: {}",
        out.stderr
    );
    world.start_controller();
    let restored = world.controller_tables();
    assert_eq!(restored, before, "the same tables, store id and revision");

    // The agents follow it as they did the old: resumed, no snapshot, nothing refused.
    let connected = format!("Controller: {CONTROLLER_URL} (connected, revision {revision}");
    for host in 1..=2 {
        let followed = wait_until(NOTICE, || {
            controller_line(&world, host).starts_with(&connected)
        });
        assert!(followed, "host{host}: {}", controller_line(&world, host));
    }
    assert_eq!(
        [world.agent_snapshots(1), world.agent_snapshots(2)],
        snapshots,
        "the agents resumed"
    );
    let c3 = world.container(2, "c3");
    let ip3 = attach(&world, 2, &c3);
    assert_reaches(&c1, &ip3);
}

/// A host's VXLAN FDB entries (MAC, VTEP) and neighbour entries (IP, MAC).
type Entries = (BTreeSet<(String, String)>, BTreeSet<(String, String)>);

/// Host `host`'s VXLAN FDB and neighbour entries.
fn entries(world: &World, host: usize) -> Entries {
    let ns = world.host_ns(host);
    (fdb(&ns, VXLAN_DEV), neighbours(&ns, VXLAN_DEV))
}

/// The revision of host `host`'s tables, as `weftctl status --json` says.
fn agent_revision(world: &World, host: usize) -> u64 {
    let status: Value = serde_json::from_str(&world.ctl(host, &["status", "--json"])).unwrap();
    status["controller"]["revision"]
        .as_u64()
        .expect("a revision")
}

#[test]
fn agents_refuse_a_store_begun_again_and_keep_their_datapath_until_told() {
    let mut world = World::new(2);
    let (c1, c2) = (world.container(1, "c1"), world.container(2, "c2"));
    let (_, ip2) = (attach(&world, 1, &c1), attach(&world, 2, &c2));
    assert_reaches(&c1, &ip2);
    let old = store_id(&world.controller_tables());
    let before = [entries(&world, 1), entries(&world, 2)];
    let revisions = [agent_revision(&world, 1), agent_revision(&world, 2)];

    world.kill_controller();
    fs::File::create(world.controller_dir().join("weft.redb")).unwrap();
    world.start_controller_with(&["--accept-empty-store"]);
    let new = store_id(&world.controller_tables());
    let refusal = |host: usize| {
        format!(
            "is not the store {} this agent follows (revision {}): the controller's store was \
             emptied or replaced",
            &old[..12],
            revisions[host - 1]
        )
    };
    for host in 1..=2 {
        let refused = wait_until(NOTICE, || {
            world
                .ctl(host, &["status"])
                .replace("\n            ", " ")
                .contains(&refusal(host))
        });
        assert!(refused, "host{host}: {}", world.ctl(host, &["status"]));
        let status: Value = serde_json::from_str(&world.ctl(host, &["status", "--json"])).unwrap();
        let why = status["controller"]["refused"].as_str().unwrap();
        assert!(
            why.starts_with(&format!("its store {} (revision ", &new[..12]))
                && why.contains(&refusal(host)),
            "host{host}: {why}"
        );
    }
    // Nothing of the datapath changed, traffic flows, and nothing is asked of the new store.
    assert_eq!([entries(&world, 1), entries(&world, 2)], before);
    assert_reaches(&c1, &ip2);
    let c3 = world.container(1, "c3");
    let out = world.weftctl(1, &["attach", &format!("netns:{c3}")]);
    assert_rejected(
        &out,
        &format!("the agent refuses the controller at {CONTROLLER_URL}: its store"),
    );

    // A restarted agent keeps the rule: it remembers the store it followed.
    world.kill_agent(2);
    world.launch_agent(2);
    let refused = wait_until(NOTICE, || {
        world
            .ctl(2, &["status"])
            .replace("\n            ", " ")
            .contains(&refusal(2))
    });
    assert!(refused, "restarted host2: {}", world.ctl(2, &["status"]));
    assert_eq!(entries(&world, 2), before[1]);

    // Told to, host1 follows the new store, whose tables know no container of before.
    let out = world.ctl(1, &["accept-controller"]);
    assert!(
        out.starts_with(&format!("following store {new} at revision ")),
        "{out}"
    );
    assert!(!world.ctl(1, &["status"]).contains("(refused)"));
    let (fdb1, neigh1) = (
        wait_until(NOTICE, || entries(&world, 1).0.is_empty()),
        entries(&world, 1).1,
    );
    assert!(
        fdb1,
        "host1 FDB after following the new store: {:?}",
        entries(&world, 1)
    );
    assert_eq!(neigh1, BTreeSet::new());
    assert_eq!(attach(&world, 1, &c3), "10.32.0.2");
    // host2 still refuses, with its entries as they were.
    assert!(world.ctl(2, &["status"]).contains("(refused)"));
}

#[test]
fn an_empty_token_store_is_refused_unless_told_to_begin_again() {
    let world = World::new(1);
    let id = store_id(&world.controller_tables());
    world.kill_controller();
    let tokens = world.controller_dir().join("tokens.redb");
    fs::File::create(&tokens).unwrap();
    let out = world.run_controller(&[]);
    assert_refused(
        &out,
        &format!(
            "{} is empty (0 bytes): the join tokens made before are lost; remove it, or start with --accept-empty-store, to begin again with no join tokens",
            tokens.display()
        ),
    );
    assert_eq!(fs::metadata(&tokens).unwrap().len(), 0, "left as it was");

    world.start_controller_with(&["--accept-empty-store"]);
    // The tables are the same store's; tokens can be made again.
    assert_eq!(store_id(&world.controller_tables()), id);
    assert!(!world.token("1h").is_empty());
}

/// A tmpfs mounted on a dir of a world's, unmounted when dropped (lazily if a process still
/// holds it), also when the test fails.
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount tmpfs on {}: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { at: at.to_owned() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("--lazy");
            }
            cmd.arg(&self.at).output().is_ok_and(|o| o.status.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("cannot unmount the tmpfs on {}", self.at.display());
        }
    }
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) {
    let mut file = fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// The containers attached on host1 with their addresses, as its agent lists them and as the
/// controller's tables hold them.
type Attached = BTreeMap<String, BTreeSet<String>>;

fn views(world: &World) -> (Attached, Attached) {
    let cidrs = |v: &Value| -> Vec<String> {
        let cidrs = v["cidrs"].as_array().unwrap().iter();
        cidrs.map(|c| c.as_str().unwrap().to_owned()).collect()
    };
    let mut agent = Attached::new();
    let ps: Value = serde_json::from_str(&world.ctl(1, &["ps", "--json"])).unwrap();
    for c in ps.as_array().unwrap() {
        let id = c["container_id"].as_str().unwrap().to_owned();
        agent.entry(id).or_default().extend(cidrs(c));
    }
    let mut controller = Attached::new();
    let tables = world.controller_tables();
    for ep in tables["endpoints"].as_array().unwrap() {
        if ep["peer"] == "host1" {
            let id = ep["container_id"].as_str().unwrap().to_owned();
            controller.entry(id).or_default().extend(cidrs(ep));
        }
    }
    (agent, controller)
}

#[test]
fn a_full_disk_fails_attaches_naming_it_until_there_is_room_again() {
    let mut world = World::new(1);
    // The controller's data dir onto a small file system of its own, its files kept.
    world.kill_controller();
    let dir = world.controller_dir();
    let saved = dir.with_file_name("controller.saved");
    fs::rename(&dir, &saved).unwrap();
    fs::create_dir(&dir).unwrap();
    let _tmpfs = Tmpfs::mount(&dir, "8m");
    // Sparse: pages redb has not written yet take no room, as in the file it made.
    let copied = Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(saved.join("."))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(copied.success(), "copying the data dir onto the tmpfs");
    world.start_controller();
    let pid = world.controller_pid();
    let c1 = world.container(1, "c1");
    attach(&world, 1, &c1);

    let filler = dir.join("filler");
    fill(&filler);
    // Attaches in many new networks each, until one must grow redb's file: how many still fit
    // in the pages earlier commits freed depends on the file, so each success is kept and the
    // views include it.
    let full = |target: &str| {
        format!(
            "weftctl: attach {target}: persisting failed: store {}: I/O error: No space left on device (os error 28)",
            dir.join("weft.redb").display()
        )
    };
    let mut attached = vec![format!("netns:{c1}")];
    let mut refused = None;
    for round in 0..FILL_ROUNDS {
        let c = world.container(1, &format!("f{round}"));
        let target = format!("netns:{c}");
        let mut args: Vec<String> = (0..NETWORKS)
            .map(|i| format!("net:10.{}.{i}.0/24", 100 + round))
            .collect();
        args.insert(0, "attach".into());
        args.push(target.clone());
        let out = world.weftctl(1, &args.iter().map(String::as_str).collect::<Vec<_>>());
        if out.success() {
            attached.push(target);
            continue;
        }
        println!("attach {round} on a full disk: {}", out.stderr.trim());
        assert_rejected(&out, "No space left on device");
        assert_eq!(out.stderr.trim_end(), full(&target));
        refused = Some((target, args));
        break;
    }
    let (target, args) = refused.expect("no attach failed on the full disk");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The next one too, where redb alone would say "Previous I/O error occurred".
    let out = world.weftctl(1, &args);
    assert_eq!(out.stderr.trim_end(), full(&target));

    fs::remove_file(&filler).unwrap();
    let ips = world.ctl(1, &args);
    assert_eq!(ips.split_whitespace().count(), NETWORKS, "{ips}");
    assert_eq!(
        world.controller_pid(),
        pid,
        "the controller was not restarted"
    );
    let (agent, controller) = views(&world);
    assert_eq!(agent, controller);
    attached.push(target.clone());
    attached.sort();
    assert_eq!(agent.keys().cloned().collect::<Vec<_>>(), attached);
    assert_eq!(agent[&target].len(), NETWORKS);
    let log = fs::read_to_string(world.controller_log()).unwrap();
    assert!(
        log.contains("store opened again after a failed commit"),
        "{log}"
    );
}

/// The `Controller: ...` line of `weftctl status` on `host`.
fn controller_line(world: &World, host: usize) -> String {
    let status = world.ctl(host, &["status"]);
    status
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with("Controller: "))
        .unwrap_or_else(|| panic!("no `Controller: ` line in host{host}'s status:\n{status}"))
        .to_owned()
}

#[test]
fn sigterm_stops_a_controller_with_connected_agents_within_seconds() {
    let world = World::new(2);
    let connected = format!("Controller: {CONTROLLER_URL} (connected, revision ");
    for host in 1..=2 {
        assert!(
            wait_until(NOTICE, || controller_line(&world, host)
                .starts_with(&connected)),
            "host{host} is not connected: {}",
            controller_line(&world, host)
        );
    }
    let started = Instant::now();
    let status = world.terminate_controller(STOP_LIMIT);
    let took = started.elapsed();
    println!("the controller exited {took:?} after SIGTERM: {status:?}");
    let status =
        status.unwrap_or_else(|| panic!("the controller runs {STOP_LIMIT:?} after SIGTERM"));
    assert_eq!(status.code(), Some(0), "{status}");
    let log = fs::read_to_string(world.controller_log()).unwrap();
    assert!(
        log.lines().last().is_some_and(|l| l.ends_with(" stopped")),
        "{log}"
    );

    let unreachable = format!("Controller: {CONTROLLER_URL} (unreachable for ");
    for host in 1..=2 {
        let mut last = String::new();
        let noticed = wait_until(NOTICE, || {
            last = controller_line(&world, host);
            last.starts_with(&unreachable)
        });
        assert!(
            noticed,
            "host{host}'s status {NOTICE:?} after the stop: {last:?}"
        );
        // Its stream was ended by the controller, not left open on a closed port.
        let log = fs::read_to_string(world.agent_log(host)).unwrap();
        assert!(
            log.contains("watch stream broke: the controller is stopping"),
            "host{host}'s log:\n{log}"
        );
    }
}

#[test]
fn the_data_dir_and_its_stores_are_root_only() {
    let world = World::new(1);
    let dir = world.controller_dir();
    let private = |world: &World| {
        assert_eq!(mode(&world.controller_dir()), 0o700);
        for file in ["weft.redb", "tokens.redb", "store-id", "ca.key"] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
    };
    private(&world);
    // Those of an older controller are restricted when it starts.
    world.kill_controller();
    for (path, mode) in [
        (dir.clone(), 0o755),
        (dir.join("weft.redb"), 0o644),
        (dir.join("tokens.redb"), 0o644),
    ] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    world.start_controller();
    private(&world);
}
