//! `make demo`: the walkthrough an operator would do on two hosts, played in a throwaway world of
//! network namespaces with the real weft binaries, each command printed with its output.

use std::process::ExitCode;
use std::time::Duration;

use weft_integration::{World, exec, exit_code_of, ping, wait_until};

fn main() -> ExitCode {
    exit_code_of("weft-demo", demo)
}

fn demo() {
    note(
        "building a world: an underlay bridge, weft-controller at 198.18.0.100, host1 at 198.18.0.1 and host2 at 198.18.0.2, one weft-agent on each",
    );
    let mut world = World::new(2);
    note(
        "the controller made its CA in its data dir; each agent joined once with a token from `weftctl token create` and talks to it over mutual TLS",
    );
    println!("controller$ weftctl token create");
    println!("{}", world.token("1h"));
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    let c3 = world.container(2, "c3");
    note(&format!(
        "containers: {c1} on host1, {c2} and {c3} on host2"
    ));

    weftctl(
        &world,
        1,
        &["attach", "192.168.0.2/24", &format!("netns:{c1}")],
    );
    weftctl(
        &world,
        2,
        &["attach", "192.168.0.3/24", &format!("netns:{c2}")],
    );

    note("waiting for host2's endpoint to reach host1");
    assert!(
        wait_until(Duration::from_secs(10), || ping(&c1, "192.168.0.3")),
        "c1 cannot reach 192.168.0.3"
    );
    shell("c1", &c1, &["ping", "-c", "3", "192.168.0.3"]);

    note("no address given: one is allocated in the default network (--ipalloc-range)");
    weftctl(&world, 2, &["attach", &format!("netns:{c3}")]);

    weftctl(&world, 1, &["ps"]);
    weftctl(&world, 2, &["ps"]);
    weftctl(&world, 1, &["status"]);
    note(
        "the data path to each peer, probed through the VXLAN path itself (no container involved)",
    );
    weftctl(&world, 1, &["status", "connections"]);
    weftctl(&world, 1, &["network", "ls"]);
    weftctl(&world, 1, &["status", "ipam"]);
    note("192.168.0.0/24 became a network of its own, VNI 2: bridge weave-2, VXLAN device vx-2");
    shell(
        "host1",
        &world.host_ns(1),
        &["bridge", "fdb", "show", "dev", "vx-2"],
    );

    note("tearing the world down");
    drop(world);
    note("done");
}

fn note(text: &str) {
    println!("\n# {text}");
}

/// Runs weftctl on host `host` as an operator there would, and shows what it printed.
fn weftctl(world: &World, host: usize, args: &[&str]) {
    println!("host{host}$ weftctl {}", args.join(" "));
    let out = world.weftctl(host, args);
    print!("{}", out.stdout);
    assert!(
        out.success(),
        "weftctl {} on host{host}: {}",
        args.join(" "),
        out.stderr.trim()
    );
}

/// Runs `argv` in namespace `ns`, shown at a prompt named `who`, and shows its output.
fn shell(who: &str, ns: &str, argv: &[&str]) {
    println!("{who}$ {}", argv.join(" "));
    let out = exec(ns, argv);
    print!("{}", out.stdout);
    assert!(
        out.success(),
        "{} in {who}: {}",
        argv.join(" "),
        out.stderr.trim()
    );
}
