//! The ADDR parser (`proto/src/addr.rs`), which weftctl, the agent and the controller all run on
//! what operators and agents send: it never panics, what it accepts prints back as itself, and
//! what it refuses is named.

use proptest::prelude::*;
use weft_fuzz::{addr_like, fuzz};
use weft_proto::addr::AddrSpec;

#[test]
fn the_addr_parser_accepts_only_what_prints_back_as_itself() {
    fuzz("addr", addr_like(), |s| {
        match s.parse::<AddrSpec>() {
            Ok(spec) => {
                let printed = spec.to_string();
                prop_assert_eq!(
                    printed.parse::<AddrSpec>(),
                    Ok(spec),
                    "{:?} -> {:?}",
                    s,
                    printed
                );
            }
            Err(e) => {
                let prefix = format!("invalid address \"{s}\": ");
                prop_assert!(e.to_string().starts_with(&prefix), "{}", e);
            }
        }
        Ok(())
    });
}
