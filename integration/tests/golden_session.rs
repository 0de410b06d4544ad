//! Golden test of an operator's session: a fixed series of weftctl commands on two real hosts,
//! their exact output, error lines and exit codes compared with `golden/session.txt`. Only what
//! differs from run to run is masked: the world's name prefix and random MACs.
//! `UPDATE_GOLDEN=1` rewrites the file (review the diff before committing).

use std::path::PathBuf;

use weft_integration::World;

/// No Docker API here: container names fail the same way on every machine.
const NO_DOCKER: &str = "unix:///run/weft-test-no-docker.sock";

/// Masks random MACs (a:b:c:d:e:f in hex) as `<mac>`.
fn mask_macs(text: &str) -> String {
    text.split_inclusive([' ', '"', '\n'])
        .map(|word| {
            let bare = word.trim_end_matches([' ', '"', '\n']);
            let parts: Vec<&str> = bare.split(':').collect();
            let is_mac = parts.len() == 6
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
            if is_mac {
                word.replacen(bare, "<mac>", 1)
            } else {
                word.to_string()
            }
        })
        .collect()
}

#[test]
fn an_operators_session_prints_exactly_this() {
    let mut world = World::with_agent_args(2, &["--docker-host", NO_DOCKER]);
    for (host, name) in [(1, "c1"), (2, "c2"), (1, "c3"), (1, "c4")] {
        world.container(host, name);
    }
    let w = world.prefix().to_string();
    let script: &[(usize, &str)] = &[
        (1, "network create blue --subnet 10.9.0.0/24"),
        (1, "network create blue --subnet 10.9.0.0/24"),
        (1, "network create red --subnet 10.9.0.0/23"),
        (1, "network create tiny --subnet 10.8.0.0/31"),
        (1, "attach 192.168.0.2/24 netns:W-c1"),
        (2, "attach 192.168.0.2/24 netns:W-c2"),
        (
            2,
            "attach --name bbox2.weave.local 192.168.0.3/24 net:blue netns:W-c2",
        ),
        (1, "attach 192.168.0.300/24 netns:W-c1"),
        (1, "attach 192.168.0.0/24 netns:W-c1"),
        (1, "attach net:nosuch netns:W-c1"),
        (1, "attach --name a_b netns:W-c1"),
        (1, "attach netns:W-nosuch"),
        (1, "attach my-test1"),
        (1, "attach 10.2.0.2/30 netns:W-c3"),
        (1, "attach net:10.2.0.0/30 netns:W-c4"),
        (1, "ps"),
        (2, "ps --json"),
        (1, "network ls"),
        (1, "network ls --json"),
        (1, "status networks"),
        (1, "status ipam"),
        (1, "status peers"),
        (1, "network rm blue"),
        (1, "detach 192.168.0.9/24 netns:W-c1"),
        (1, "detach netns:W-c1"),
        (1, "detach netns:W-c1"),
        (1, "rmpeer host2"),
        (1, "expose"),
        (1, "ps"),
        (1, "hide"),
    ];
    let mut transcript = String::new();
    for (host, line) in script {
        let args: Vec<String> = line
            .split(' ')
            .map(|a| a.replace("W-", &format!("{w}-")))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = world.weftctl(*host, &args);
        transcript.push_str(&format!("host{host}$ weftctl {line}\n"));
        transcript.push_str(&out.stdout);
        transcript.push_str(&out.stderr);
        transcript.push_str(&format!("[exit {}]\n", out.code.unwrap_or(-1)));
    }
    let transcript = mask_macs(&transcript.replace(&format!("{w}-"), "W-"));

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/session.txt");
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, &transcript).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        transcript,
        expected,
        "the session differs from {}",
        path.display()
    );
}

#[test]
fn macs_are_masked_and_nothing_else() {
    assert_eq!(
        mask_macs("c1 8a:b0:dd:a2:58:c5 10.0.0.1/24\n{\"mac\":\"02:00:00:00:00:01\"}\n"),
        "c1 <mac> 10.0.0.1/24\n{\"mac\":\"<mac>\"}\n"
    );
    assert_eq!(mask_macs("at 10:20:30 a:b\n"), "at 10:20:30 a:b\n");
}
