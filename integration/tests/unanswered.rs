//! The controller dies after making a change durable and before answering it, at a failpoint
//! (`--failpoint crash-after-commit:attach|detach`), not wherever a kill happens to land: the
//! README's recovery for an attach and a detach recorded but never answered, shown exactly.

use std::time::Duration;

use weft_integration::{CONTROLLER_URL, World, assert_rejected, link, views, wait_until};

/// The controller's exit status at a failpoint (controller/src/failpoint.rs).
const EXIT_FAILPOINT: i32 = 86;
/// How long the agent gets, once the controller is back, to make the kernel and the tables
/// agree again.
const RECOVER: Duration = Duration::from_secs(10);

/// Restarts the controller with the failpoint armed for `rpc`.
fn arm(world: &World, rpc: &str) {
    world.kill_controller();
    world.start_controller_with(&["--failpoint", &format!("crash-after-commit:{rpc}")]);
}

/// Requires that the controller ended at its failpoint, and starts it again without one.
fn crashed_and_restart(world: &World) {
    let ended = wait_until(Duration::from_secs(5), || {
        world.controller_exited().is_some()
    });
    assert!(ended, "the controller did not reach its failpoint");
    let status = world.controller_exited().expect("it ended");
    assert_eq!(status.code(), Some(EXIT_FAILPOINT), "{status}");
    world.kill_controller();
    world.start_controller();
}

/// The tables hold no endpoint of `ns`, and the views agree.
fn assert_released(world: &World, ns: &str) {
    let pool = [(1, ns.to_owned())];
    let mut found = Vec::new();
    let recovered = wait_until(RECOVER, || {
        let (disagree, endpoints) = views::disagreements(world, &pool);
        found = disagree;
        found.is_empty() && endpoints == 0
    });
    assert!(recovered, "after {RECOVER:?}: {found:#?}");
}

#[test]
fn an_attach_recorded_but_never_answered_is_released_and_can_be_retried() {
    let mut world = World::new(1);
    let c1 = world.container(1, "c1");
    let c1_ref = format!("netns:{c1}");
    arm(&world, "attach");
    let out = world.weftctl(1, &["attach", &c1_ref]);
    assert_rejected(&out, &format!("controller {CONTROLLER_URL} is unreachable"));
    assert_eq!(link(&c1, "ethwe"), None, "a failed attach plugs nothing");
    // With the agent away, the controller's tables show the attach was durable.
    world.stop_agent(1);
    crashed_and_restart(&world);
    let tables = world.controller_tables();
    let recorded = views::table_endpoints(&tables);
    assert_eq!(
        recorded
            .iter()
            .map(|ep| ep.container.as_str())
            .collect::<Vec<_>>(),
        [c1_ref.as_str()],
        "the attach's endpoint, durable before the crash"
    );
    // Back, the agent finds that endpoint without a veth and gives it back.
    world.start_agent(1);
    assert_released(&world, &c1);
    assert_eq!(world.ctl(1, &["attach", &c1_ref]), "10.32.0.2\n");
    assert_eq!(
        link(&c1, "ethwe").map(|l| l.addrs),
        Some(vec!["10.32.0.2/12".to_string()])
    );
}

#[test]
fn a_detach_recorded_but_never_answered_takes_the_interface_once_the_controller_is_back() {
    let mut world = World::new(1);
    let c1 = world.container(1, "c1");
    let c1_ref = format!("netns:{c1}");
    world.ctl(1, &["attach", &c1_ref]);
    arm(&world, "detach");
    let out = world.weftctl(1, &["detach", &c1_ref]);
    assert_rejected(&out, &format!("controller {CONTROLLER_URL} is unreachable"));
    assert!(
        link(&c1, "ethwe").is_some(),
        "a failed detach leaves the interface until the controller says otherwise"
    );
    crashed_and_restart(&world);
    // The detach was durable; the watch brings it, and the veth goes.
    assert_released(&world, &c1);
    let out = world.weftctl(1, &["detach", &c1_ref]);
    assert_rejected(&out, &format!("{c1_ref} is not attached on host1"));
    // The address is free again.
    assert_eq!(world.ctl(1, &["attach", &c1_ref]), "10.32.0.2\n");
}
