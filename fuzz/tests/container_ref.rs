//! The container reference parser (`agent/src/container.rs`), fed what weftctl passes on: it
//! never panics, a namespace reference is canonical (parsing its id gives the same id) and
//! never leaves /var/run/netns by `netns:NAME`.

use proptest::prelude::*;
use weft_agent::container::parse_namespace;
use weft_fuzz::fuzz;

fn reference_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(netns:|pid:|/var/run/netns/|/run/netns/|/proc/)[a-z0-9./_-]{0,16}",
        "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}",
    ]
}

#[test]
fn container_references_parse_to_canonical_ids() {
    fuzz("container reference", reference_like(), |s| {
        if let Ok(Some(container)) = parse_namespace(&s) {
            let again = parse_namespace(&container.id)
                .ok()
                .flatten()
                .map(|c| (c.id, c.netns));
            prop_assert_eq!(again, Some((container.id.clone(), container.netns.clone())));
            if container.id.starts_with("netns:") {
                prop_assert_eq!(
                    container.netns.parent(),
                    Some(std::path::Path::new("/var/run/netns")),
                    "{:?}",
                    s
                );
            }
        }
        Ok(())
    });
}
