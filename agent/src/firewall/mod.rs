//! The agent's nftables table `weft`: masquerading for the networks whose pods go out through
//! their host (CNI `ipMasq`), and no forwarding between networks. Kept like the devices: the
//! wanted rules ([`rules::wanted`]) are compared with a listing of the table and, when they
//! differ, the table is replaced in one transaction; `weftctl reset` removes it.
//!
//! nftables is driven through its JSON API (`nft -j`, the `nftables` crate's types): the only
//! pure-Rust nf_tables netlink library is GPL-licensed.

pub mod rules;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use nftables::helper::{self, NftablesError};
use tracing::info;

use crate::state_file;
use crate::tables::TablesCopy;
use rules::Rule;

/// The file in the state dir that lists the masqueraded networks, one name a line: a restarted
/// agent keeps masquerading them.
const FILE: &str = "masquerade";
/// Forwarding must be on for a host to pass its pods' traffic on.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

pub struct Firewall {
    path: PathBuf,
    masqueraded: Mutex<BTreeSet<String>>,
    /// What the table held at the last look, if the agent knows (for skipping a look while
    /// there is nothing to hold and nothing was held).
    held: tokio::sync::Mutex<Option<BTreeSet<(String, String)>>>,
}

impl Firewall {
    pub fn load(state_dir: &Path) -> Firewall {
        let path = state_dir.join(FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        Firewall {
            masqueraded: Mutex::new(text.lines().map(str::to_string).collect()),
            path,
            held: tokio::sync::Mutex::new(None),
        }
    }

    fn masqueraded(&self) -> BTreeSet<String> {
        self.masqueraded.lock().expect("masquerade lock").clone()
    }

    /// Masquerades `network` from now on (kept in the state dir) and sets the table now; if it
    /// cannot be set, the network is not masqueraded after all. `tables` must hold the host's
    /// address on the network.
    pub async fn masquerade(&self, network: &str, tables: &TablesCopy) -> anyhow::Result<()> {
        let added = self.change(|set| set.insert(network.to_string()))?;
        if let Err(e) = self.settle(tables).await {
            if added {
                self.change(|set| set.remove(network))?;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Changes the set of masqueraded networks and keeps it in the state dir; returns what
    /// `change` says (whether it changed).
    fn change(&self, change: impl FnOnce(&mut BTreeSet<String>) -> bool) -> anyhow::Result<bool> {
        let mut set = self.masqueraded.lock().expect("masquerade lock");
        let changed = change(&mut set);
        if changed {
            self.save(&set)?;
        }
        Ok(changed)
    }

    fn save(&self, set: &BTreeSet<String>) -> anyhow::Result<()> {
        let mut text = String::new();
        for name in set {
            text.push_str(name);
            text.push('\n');
        }
        state_file::replace(&self.path, &text)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Makes the table hold what the tables call for now; returns whether it changed.
    pub async fn settle(&self, tables: &TablesCopy) -> anyhow::Result<bool> {
        // What is wanted is read under the lock: a pass that read older tables must not undo
        // what a newer one (an ADD's) set.
        let mut held = self.held.lock().await;
        let masqueraded = self.masqueraded();
        let Some(wanted) = tables.read(|t| rules::wanted(t, tables.me(), &masqueraded)) else {
            return Ok(false);
        };
        reconcile(&mut held, &wanted).await
    }

    /// Removes the table and forgets the masqueraded networks (`weftctl reset`); returns
    /// whether there was a table.
    pub async fn reset(&self) -> anyhow::Result<bool> {
        let had = reconcile(&mut *self.held.lock().await, &BTreeSet::new()).await?;
        let mut set = self.masqueraded.lock().expect("masquerade lock");
        set.clear();
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", self.path.display()));
            }
            _ => {}
        }
        Ok(had)
    }
}

/// Makes the table hold `wanted`, `held` being what it held at the last look (None: unknown);
/// returns whether it changed.
async fn reconcile(
    held: &mut Option<BTreeSet<(String, String)>>,
    wanted: &BTreeSet<Rule>,
) -> anyhow::Result<bool> {
    let expected = rules::expected(wanted);
    // With nothing to hold and nothing held at the last look, no `nft` is run: most hosts
    // masquerade nothing, and may have no nft at all.
    if expected.is_empty() && held.as_ref().is_some_and(BTreeSet::is_empty) {
        return Ok(false);
    }
    if !wanted.is_empty() {
        // Kept on while there are rules: something may have turned it off.
        std::fs::write(IP_FORWARD, "1").with_context(|| format!("cannot write {IP_FORWARD}"))?;
    }
    let now = listing().await.or_else(|e| match e {
        // No nft, or one that cannot list: nothing is wanted, and nothing of weft's can be
        // there to remove.
        NftablesError::NftExecution { .. } | NftablesError::NftFailed { .. }
            if expected.is_empty() =>
        {
            Ok(BTreeSet::new())
        }
        e => Err(e),
    });
    let now =
        now.map_err(|e| anyhow::anyhow!("cannot read nftables table {}: {e}", rules::TABLE))?;
    if now == expected {
        *held = Some(now);
        return Ok(false);
    }
    helper::apply_ruleset_async(&rules::replace(wanted))
        .await
        .map_err(|e| anyhow::anyhow!("cannot set nftables table {}: {e}", rules::TABLE))?;
    info!(rules = wanted.len(), "nftables table {} set", rules::TABLE);
    *held = Some(expected);
    Ok(true)
}

/// The table as it is, as (chain, comment) pairs; none if there is no table.
async fn listing() -> Result<BTreeSet<(String, String)>, NftablesError> {
    let args = ["list", "table", "ip", rules::TABLE];
    match helper::get_current_ruleset_with_args_async(helper::DEFAULT_NFT, args).await {
        Ok(listing) => Ok(rules::held(&listing)),
        Err(NftablesError::NftFailed { stderr, .. }) if stderr.contains("No such file") => {
            Ok(BTreeSet::new())
        }
        // A table nft cannot put in its JSON schema is no table of ours: replace it.
        Err(NftablesError::NftInvalidJson(_)) => Ok([(String::new(), String::new())].into()),
        Err(e) => Err(e),
    }
}
