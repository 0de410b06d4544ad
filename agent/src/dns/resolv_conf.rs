//! Pointing a container's resolver at weft's DNS, as Weave did: `nameserver 127.0.0.11` and the
//! DNS domain first in the search list. The container's own search domains and options stay,
//! and names outside the domain still resolve (weft forwards them), so nothing else breaks.

use std::path::Path;

use anyhow::Context;

use super::LISTEN_ADDR;

/// The first line of a resolv.conf weft wrote.
const MARK: &str = "# written by weft-agent";

/// The new resolv.conf for a container that had `old`.
pub fn rewrite(old: &str, domain: &str) -> String {
    let mut search: Vec<&str> = vec![domain];
    let mut kept = Vec::new();
    for line in old.lines().filter(|line| *line != MARK) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") | None => {}
            Some("search" | "domain") => {
                search.extend(words.filter(|w| *w != domain));
            }
            Some(_) => kept.push(line),
        }
    }
    let mut out = format!(
        "{MARK}\nsearch {}\nnameserver {LISTEN_ADDR}\n",
        search.join(" ")
    );
    for line in kept {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Rewrites the resolv.conf of the container whose root is `root` (`/proc/PID/root`), in place:
/// Docker bind-mounts that file, so it must stay the same file.
pub fn point_to_weft(root: &Path, domain: &str) -> anyhow::Result<()> {
    let path = root.join("etc/resolv.conf");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = rewrite(&old, domain);
    if new != old {
        std::fs::write(&path, new).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_comes_first_and_the_rest_stays() {
        let old = "search example.com\nnameserver 192.0.2.53\noptions ndots:2\n";
        let new = rewrite(old, "weave.local");
        assert_eq!(
            new,
            "# written by weft-agent\nsearch weave.local example.com\nnameserver 127.0.0.11\n\
             options ndots:2\n"
        );
        // Again changes nothing.
        assert_eq!(rewrite(&new, "weave.local"), new);
    }
}
