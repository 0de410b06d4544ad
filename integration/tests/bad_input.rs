//! weftctl's answers to bad input: exit status, a single `weftctl: ` line naming the culprit,
//! and no trace left behind, neither kernel objects nor a claimed address.

use std::path::Path;
use std::time::{Duration, Instant};

use weft_integration::{CONTROLLER_URL, World, assert_rejected, link, links, wait_until};

/// The failed attach created no host veth on `host` and no interface in `container`.
fn assert_untouched(world: &World, host: usize, container: &str) {
    let veths: Vec<String> = links(&world.host_ns(host))
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.starts_with("vethwepl"))
        .collect();
    assert_eq!(veths, Vec::<String>::new(), "veths left on host{host}");
    assert_eq!(link(container, "ethwe"), None, "ethwe left in {container}");
}

/// The address was not claimed by the failed call: it attaches now.
fn assert_attaches(world: &World, host: usize, cidr: &str, container: &str) {
    let out = world.weftctl(host, &["attach", cidr, &format!("netns:{container}")]);
    assert!(
        out.success(),
        "attach {cidr} to {container}: {}",
        out.stderr
    );
}

/// A world with one host and container c1, trying one bad attach on it.
fn reject_attach(addr: &str, needle: &str) {
    let mut world = World::new(1);
    let c1 = world.container(1, "c1");
    let out = world.weftctl(1, &["attach", addr, &format!("netns:{c1}")]);
    assert_rejected(&out, needle);
    assert_untouched(&world, 1, &c1);
    assert_attaches(&world, 1, "192.168.0.2/24", &c1);
}

#[test]
fn invalid_cidr() {
    reject_attach("192.168.0.300/24", r#"invalid address "192.168.0.300/24""#);
}

#[test]
fn missing_prefix_length() {
    reject_attach("192.168.0.2", r#"invalid address "192.168.0.2""#);
}

#[test]
fn unknown_namespace() {
    let mut world = World::new(1);
    let c1 = world.container(1, "c1");
    let missing = format!("{}-nosuch", world.prefix());
    let out = world.weftctl(
        1,
        &["attach", "192.168.0.2/24", &format!("netns:{missing}")],
    );
    assert_rejected(
        &out,
        &format!("network namespace /var/run/netns/{missing} does not exist"),
    );
    assert_untouched(&world, 1, &c1);
    assert_attaches(&world, 1, "192.168.0.2/24", &c1);
}

#[test]
fn address_in_use_on_another_host() {
    let mut world = World::new(2);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    assert_attaches(&world, 1, "192.168.0.2/24", &c1);
    let out = world.weftctl(2, &["attach", "192.168.0.2/24", &format!("netns:{c2}")]);
    assert_rejected(
        &out,
        &format!("address 192.168.0.2 already in use by netns:{c1} on host1"),
    );
    assert_untouched(&world, 2, &c2);
    // Once c1 lets go, the address is free for c2: the refused attach kept no claim on it.
    let out = world.weftctl(1, &["detach", &format!("netns:{c1}")]);
    assert!(out.success(), "detach c1: {}", out.stderr);
    assert_attaches(&world, 2, "192.168.0.2/24", &c2);
}

#[test]
fn controller_unreachable() {
    let mut world = World::new(1);
    let c1 = world.container(1, "c1");
    world.kill_controller();
    let started = Instant::now();
    let out = world.weftctl(1, &["attach", "192.168.0.2/24", &format!("netns:{c1}")]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "attach took {:?}",
        started.elapsed()
    );
    assert_rejected(&out, &format!("controller {CONTROLLER_URL} is unreachable"));
    assert_untouched(&world, 1, &c1);
    // Back up, the controller hands out the address: the failed attach claimed nothing.
    world.start_controller();
    let attach = || world.weftctl(1, &["attach", "192.168.0.2/24", &format!("netns:{c1}")]);
    assert!(
        wait_until(Duration::from_secs(20), || attach().success()),
        "attach after the controller restarted: {}",
        attach().stderr
    );
}

#[test]
fn agent_unreachable() {
    let world = World::new(1);
    let out = world.weftctl_at(1, Path::new("/nonexistent/path.sock"), &["ps"]);
    assert_rejected(&out, "");
    assert!(
        out.stderr
            .starts_with("weftctl: cannot reach weft-agent at /nonexistent/path.sock"),
        "stderr: {:?}",
        out.stderr
    );
}

#[test]
fn usage_error() {
    let world = World::new(1);
    let out = world.weftctl(1, &["attach"]);
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    assert_eq!(
        out.stderr,
        "error: the following required arguments were not provided:\n  <ARG>...\n\n\
         Usage: weftctl attach [--name FQDN] [--[no-]rewrite-resolv] [ADDR...] CONTAINER\n\n\
         For more information, try '--help'.\n"
    );
    assert_eq!(out.stdout, "", "nothing on stdout");
}
