//! How an agent catches up with a controller that restarted, told apart from outside: one that
//! missed nothing resumes with no delta, one that missed a few resumes with just those, also
//! when they were made before the controller restarted (it keeps them in its store), one
//! further behind than the controller's `--history` gets a snapshot. Each is in sync when its
//! tables are at the controller's revision and its kernel holds what they call for.

use std::time::{Duration, Instant};

use serde_json::Value;
use weft_integration::{Paused, World, views, wait_until};

/// The changes the controller keeps in these tests.
const HISTORY: &str = "5";
/// A generous bound on catching up once the agent runs again.
const RESYNC: Duration = Duration::from_secs(5);

/// How host `host`'s latest watch started, and the deltas it missed.
fn watch_start(world: &World, host: usize) -> (String, u64) {
    let watch = &world.status(host)["controller"]["watch"];
    (
        watch["start"].as_str().unwrap_or_default().to_owned(),
        watch["missed"].as_u64().unwrap_or_default(),
    )
}

fn revision(world: &World, host: usize) -> u64 {
    world.status(host)["controller"]["revision"]
        .as_u64()
        .expect("a revision")
}

/// Restarts the controller, as a crash would, keeping HISTORY changes.
fn restart_controller(world: &World) {
    world.kill_controller();
    world.start_controller_with(&["--history", HISTORY]);
}

/// Waits until host `host` is in sync; returns how long that took.
fn resync(world: &World, host: usize, pool: &[(usize, String)]) -> Duration {
    let started = Instant::now();
    assert!(
        wait_until(RESYNC, || views::in_sync(world, host, pool)),
        "host{host} not in sync after {RESYNC:?}: {}",
        world.status(host)
    );
    started.elapsed()
}

#[test]
fn agents_resume_from_the_controllers_history_across_its_restart_or_get_a_snapshot() {
    let mut world = World::new(2);
    let (c1, c2) = (world.container(1, "c1"), world.container(2, "c2"));
    let pool = [(1, c1.clone()), (2, c2.clone())];
    let c1_ref = format!("netns:{c1}");
    world.ctl(2, &["attach", &format!("netns:{c2}")]);
    restart_controller(&world);

    // Missed nothing: each agent resumes with no delta.
    restart_controller(&world);
    for host in 1..=2 {
        let took = resync(&world, host, &pool);
        assert_eq!(
            watch_start(&world, host),
            ("resume".to_owned(), 0),
            "host{host}"
        );
        println!("host{host} missed nothing: in sync {took:?} after the restart");
    }

    // Missed a few, made before the controller restarted: host2 gets just those, from the
    // history the restarted controller read from its store.
    let before = revision(&world, 2);
    let hung = Paused::new(world.agent_pid(2).expect("agent runs"));
    // Its connection must be gone first, or the changes would wait in its socket.
    let gone = wait_until(Duration::from_secs(10), || {
        let peers = world.ctl(1, &["status", "peers", "--json"]);
        let peers: Value = serde_json::from_str(&peers).unwrap();
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "host2" && p["connected"] == false)
    });
    assert!(gone, "the controller never saw host2's agent go");
    world.ctl(1, &["attach", &c1_ref]);
    let missed = world.controller_tables()["revision"].as_u64().unwrap() - before;
    restart_controller(&world);
    assert!(
        (1..=5).contains(&missed),
        "{missed} changes for host2 to miss"
    );
    drop(hung);
    let took = resync(&world, 2, &pool);
    assert_eq!(watch_start(&world, 2), ("resume".to_owned(), missed));
    println!("host2 missed {missed} deltas: in sync {took:?} after it ran again");

    // Further behind than the history: a snapshot.
    let hung = Paused::new(world.agent_pid(2).expect("agent runs"));
    restart_controller(&world);
    for _ in 0..3 {
        world.ctl(1, &["detach", &c1_ref]);
        world.ctl(1, &["attach", &c1_ref]);
    }
    drop(hung);
    let took = resync(&world, 2, &pool);
    assert_eq!(watch_start(&world, 2), ("snapshot".to_owned(), 0));
    println!("host2 missed more than {HISTORY}: in sync {took:?} after a snapshot");
}
