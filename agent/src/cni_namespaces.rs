//! The namespaces of CNI attachments, as their ADD named them: only the runtime knows a pod's
//! namespace otherwise, and a restarted agent needs it to serve DNS in the pod and to find the
//! pod's end of a veth. Kept in the state dir (`cni-netns`: one `ID<TAB>NETNS` a line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;

use crate::state_file;

const FILE: &str = "cni-netns";

pub struct CniNamespaces {
    path: PathBuf,
    map: Mutex<BTreeMap<String, PathBuf>>,
}

impl CniNamespaces {
    pub fn load(state_dir: &Path) -> CniNamespaces {
        let path = state_dir.join(FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let map = text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(id, netns)| (id.to_string(), PathBuf::from(netns)))
            .collect();
        CniNamespaces {
            path,
            map: Mutex::new(map),
        }
    }

    /// The namespace of attachment `id`, if its ADD was seen.
    pub fn get(&self, id: &str) -> Option<PathBuf> {
        self.lock().get(id).cloned()
    }

    pub fn insert(&self, id: &str, netns: &Path) -> anyhow::Result<()> {
        let mut map = self.lock();
        if map.get(id).map(PathBuf::as_path) == Some(netns) {
            return Ok(());
        }
        map.insert(id.to_string(), netns.to_path_buf());
        self.save(&map)
    }

    pub fn remove(&self, id: &str) -> anyhow::Result<()> {
        let mut map = self.lock();
        if map.remove(id).is_some() {
            self.save(&map)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PathBuf>> {
        self.map.lock().expect("cni namespaces lock")
    }

    fn save(&self, map: &BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
        let mut text = String::new();
        for (id, netns) in map {
            text.push_str(&format!("{id}\t{}\n", netns.display()));
        }
        state_file::replace(&self.path, &text)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_agent_finds_what_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let kept = CniNamespaces::load(dir.path());
        kept.insert("cni:a/eth0", Path::new("/run/netns/p1"))
            .unwrap();
        kept.insert("cni:b/eth0", Path::new("/run/netns/p2"))
            .unwrap();
        kept.remove("cni:b/eth0").unwrap();
        let again = CniNamespaces::load(dir.path());
        assert_eq!(
            again.get("cni:a/eth0"),
            Some(PathBuf::from("/run/netns/p1"))
        );
        assert_eq!(again.get("cni:b/eth0"), None);
    }
}
