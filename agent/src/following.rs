//! Which controller store the agent follows, and the rule that keeps it from following another
//! one or an older revision of its own: a controller whose store was emptied or replaced would
//! otherwise send a snapshot that wipes every host's forwarding entries, and hand out addresses
//! that running containers hold. The store and revision followed are kept in the state dir, so a
//! restarted agent keeps the rule; the operator lifts it once with `weftctl accept-controller`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::warn;

use crate::state_file;

/// The file in the state dir: `STORE_ID REVISION`, and on a second line why the controller's
/// tables are refused, while they are.
const FILE: &str = "controller-store";

/// A store and a revision of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub store_id: String,
    pub revision: u64,
}

/// Why a controller's tables are not followed.
pub fn judge(followed: Option<&Position>, offered: &Position) -> Result<(), String> {
    let Some(followed) = followed else {
        return Ok(());
    };
    // A controller from before store identities says none: only revisions can be compared.
    let same_store = followed.store_id.is_empty()
        || offered.store_id.is_empty()
        || followed.store_id == offered.store_id;
    if !same_store {
        return Err(format!(
            "its store {} (revision {}) is not the store {} this agent follows (revision {}): \
             the controller's store was emptied or replaced",
            short(&offered.store_id),
            offered.revision,
            short(&followed.store_id),
            followed.revision
        ));
    }
    if offered.revision < followed.revision {
        return Err(format!(
            "it is at revision {} of store {}, behind the revision {} this agent has: its \
             store went back in time (restored from an older copy?)",
            offered.revision,
            short(&offered.store_id),
            followed.revision
        ));
    }
    Ok(())
}

fn short(store_id: &str) -> &str {
    store_id.get(..12).unwrap_or(store_id)
}

#[derive(Debug, Default)]
struct State {
    /// The store and revision of the tables, or as the state dir had them at start.
    followed: Option<Position>,
    /// What was last written to the state dir.
    written: Option<(Position, Option<String>)>,
    /// Why the controller's tables are refused now.
    refused: Option<String>,
    /// The operator said to follow whatever the controller offers next.
    accept_next: bool,
}

pub struct Following {
    path: PathBuf,
    state: Mutex<State>,
}

impl Following {
    /// The rule as the state dir left it (nothing followed yet if it holds no record).
    pub fn load(state_dir: &Path) -> Following {
        let path = state_dir.join(FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines = text.lines();
        let followed = lines.next().and_then(|line| {
            let (store_id, revision) = line.rsplit_once(' ')?;
            Some(Position {
                store_id: store_id.to_string(),
                revision: revision.parse().ok()?,
            })
        });
        let refused = lines.next().filter(|why| !why.is_empty()).map(String::from);
        Following {
            path,
            state: Mutex::new(State {
                written: followed.clone().map(|p| (p, refused.clone())),
                followed,
                refused,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("following lock poisoned")
    }

    /// The store the agent follows, for the controller to resume a watch of it only.
    pub fn store_id(&self) -> String {
        self.lock()
            .followed
            .as_ref()
            .map(|p| p.store_id.clone())
            .unwrap_or_default()
    }

    /// The store and revision followed.
    pub fn position(&self) -> Option<Position> {
        self.lock().followed.clone()
    }

    /// Whether the controller's tables at `offered` may be taken; records the refusal if not.
    /// A refusal stands until the operator lifts it: a controller restored to an older revision
    /// of the same store would otherwise be followed again once it passed the agent's revision,
    /// with changes of another history.
    pub fn admit(&self, offered: &Position) -> Result<(), String> {
        let mut state = self.lock();
        if state.accept_next {
            warn!(store = %offered.store_id, revision = offered.revision,
                "following the controller's store, as the operator said");
            state.accept_next = false;
        } else if let Some(why) = &state.refused {
            return Err(why.clone());
        } else if let Err(why) = judge(state.followed.as_ref(), offered) {
            state.refused = Some(why.clone());
            return Err(why);
        }
        state.refused = None;
        // A controller from before store identities names none: the one followed stays.
        let store_id = match (&state.followed, offered.store_id.as_str()) {
            (Some(followed), "") => followed.store_id.clone(),
            _ => offered.store_id.clone(),
        };
        state.followed = Some(Position {
            store_id,
            revision: offered.revision,
        });
        Ok(())
    }

    /// Notes that the tables are at `revision` now (a delta of the store followed).
    pub fn advance(&self, revision: u64) {
        if let Some(followed) = self.lock().followed.as_mut() {
            followed.revision = revision;
        }
    }

    /// Why the controller's tables are refused, if they are.
    pub fn refused(&self) -> Option<String> {
        self.lock().refused.clone()
    }

    /// Follows what the controller offers next, whatever its store and revision. False if
    /// nothing is refused now (nothing to lift).
    pub fn accept_next(&self) -> bool {
        let mut state = self.lock();
        state.accept_next = state.refused.is_some();
        state.accept_next
    }

    /// The operator's word is given and not yet acted on.
    pub fn accept_pending(&self) -> bool {
        self.lock().accept_next
    }

    /// Keeps the position followed in the state dir, if it moved since it was last written.
    /// Written through a temporary file and a rename, so a crash leaves the old record or the
    /// new one.
    pub fn save(&self) -> std::io::Result<()> {
        let (position, refused) = {
            let state = self.lock();
            let Some(position) = state.followed.clone() else {
                return Ok(());
            };
            let now = (position, state.refused.clone());
            if state.written.as_ref() == Some(&now) {
                return Ok(());
            }
            now
        };
        let mut text = format!("{} {}\n", position.store_id, position.revision);
        if let Some(why) = &refused {
            text.push_str(&format!("{why}\n"));
        }
        // Durable before it replaces the old record: a refusal must survive a power loss.
        state_file::replace(&self.path, &text)?;
        self.lock().written = Some((position, refused));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(store_id: &str, revision: u64) -> Position {
        Position {
            store_id: store_id.into(),
            revision,
        }
    }

    #[test]
    fn another_store_or_an_older_revision_is_refused() {
        let followed = at("8a1c00000000aaaa", 5);
        assert_eq!(judge(None, &at("5e3f", 0)), Ok(()));
        assert_eq!(judge(Some(&followed), &at("8a1c00000000aaaa", 5)), Ok(()));
        assert_eq!(judge(Some(&followed), &at("8a1c00000000aaaa", 9)), Ok(()));
        assert_eq!(
            judge(Some(&followed), &at("5e3f00000000bbbb", 0)),
            Err(
                "its store 5e3f00000000 (revision 0) is not the store 8a1c00000000 this agent \
                 follows (revision 5): the controller's store was emptied or replaced"
                    .into()
            )
        );
        assert_eq!(
            judge(Some(&followed), &at("8a1c00000000aaaa", 3)),
            Err(
                "it is at revision 3 of store 8a1c00000000, behind the revision 5 this agent \
                 has: its store went back in time (restored from an older copy?)"
                    .into()
            )
        );
        // A controller without identities: revisions still count.
        assert_eq!(judge(Some(&followed), &at("", 7)), Ok(()));
        assert!(judge(Some(&followed), &at("", 4)).is_err());
    }

    #[test]
    fn the_rule_survives_a_restart_and_is_lifted_once() {
        let dir = tempfile::tempdir().unwrap();
        let following = Following::load(dir.path());
        assert!(!following.accept_next(), "nothing refused, nothing to lift");
        following.admit(&at("aaaa", 4)).unwrap();
        following.advance(6);
        following.save().unwrap();

        let restarted = Following::load(dir.path());
        assert_eq!(restarted.store_id(), "aaaa");
        let why = restarted.admit(&at("bbbb", 1)).unwrap_err();
        assert_eq!(restarted.refused(), Some(why));
        // Refused until lifted: even the store followed, ahead of the agent now.
        assert!(restarted.admit(&at("aaaa", 9)).is_err());
        // The refusal is kept in the state dir too.
        restarted.save().unwrap();
        let again = Following::load(dir.path());
        assert_eq!(again.refused(), restarted.refused());
        assert!(again.admit(&at("aaaa", 9)).is_err());
        assert!(restarted.accept_next());
        restarted.admit(&at("bbbb", 1)).unwrap();
        assert_eq!(restarted.refused(), None);
        // Lifted once: going back again is refused again.
        assert!(restarted.admit(&at("bbbb", 0)).is_err());
    }

    #[test]
    fn a_controller_without_identities_leaves_the_store_followed() {
        let dir = tempfile::tempdir().unwrap();
        let following = Following::load(dir.path());
        following.admit(&at("aaaa", 4)).unwrap();
        following.admit(&at("", 5)).unwrap();
        assert_eq!(following.store_id(), "aaaa");
        following.save().unwrap();
        assert!(Following::load(dir.path()).admit(&at("bbbb", 9)).is_err());
        // One that never had an identity is recorded and read back too.
        let other = tempfile::tempdir().unwrap();
        let plain = Following::load(other.path());
        plain.admit(&at("", 3)).unwrap();
        plain.save().unwrap();
        assert!(Following::load(other.path()).admit(&at("", 2)).is_err());
    }
}
