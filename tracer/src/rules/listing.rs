//! Rule texts as `nft` prints them, read once per table with `nft -a -s list table` (`-a`
//! adds each rule's `# handle N`, `-s` leaves out counter values) and again when a rule is not
//! found (the ruleset changed), at most once a second per table; with the comments of
//! iptables-nft's rules, which `nft` leaves out, read over netlink.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// Shortest time between two reads of one table.
const REREAD: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Chain {
    /// `filter`, `nat`, `route` for a base chain; none for a user chain.
    kind: Option<String>,
    /// `prerouting`, `input`, `forward`, `output`, `postrouting` for a base chain.
    hook: Option<String>,
    rules: HashMap<u64, String>,
}

#[derive(Debug, Default)]
struct Table {
    chains: HashMap<String, Chain>,
    read_at: Option<Instant>,
}

/// A table: the namespace's inode, its family and its name.
type TableKey = (u64, &'static str, String);

/// The tables read so far, and how to reach each namespace.
#[derive(Debug, Default)]
pub struct Texts {
    tables: HashMap<TableKey, Table>,
    /// A path that opens each namespace, none for tracer's own.
    paths: HashMap<u64, Option<PathBuf>>,
}

impl Texts {
    /// Rules of the namespace `inode` are read through `path` (none: tracer's own).
    pub fn add_namespace(&mut self, inode: u64, path: Option<PathBuf>) {
        self.paths.insert(inode, path);
    }

    /// The text of rule `handle` in `chain`.
    pub fn rule(
        &mut self,
        netns: u64,
        family: &'static str,
        table: &str,
        chain: &str,
        handle: u64,
    ) -> Option<String> {
        let key = (netns, family, table.to_owned());
        let found = |t: &Table| {
            t.chains
                .get(chain)
                .and_then(|c| c.rules.get(&handle))
                .cloned()
        };
        if let Some(text) = self.tables.get(&key).and_then(found) {
            return Some(text);
        }
        found(self.read(key))
    }

    /// The type (`nat`, `filter`, `route`) and hook (`prerouting`, ...) of a base chain;
    /// none for a user chain.
    pub fn base_chain(
        &mut self,
        netns: u64,
        family: &'static str,
        table: &str,
        chain: &str,
    ) -> Option<(&str, &str)> {
        let key = (netns, family, table.to_owned());
        let known = self
            .tables
            .get(&key)
            .is_some_and(|t| t.chains.contains_key(chain));
        let table = if known {
            &self.tables[&key]
        } else {
            self.read(key)
        };
        let chain = table.chains.get(chain)?;
        Some((chain.kind.as_deref()?, chain.hook.as_deref()?))
    }

    /// Reads a table again, unless it was read less than [`REREAD`] ago.
    fn read(&mut self, key: TableKey) -> &Table {
        let path = self.paths.get(&key.0).cloned().flatten();
        let table = self.tables.entry(key.clone()).or_default();
        if table.read_at.is_none_or(|at| at.elapsed() >= REREAD) {
            table.chains = list(path.as_deref(), key.1, &key.2)
                .as_deref()
                .map(parse)
                .unwrap_or_default();
            add_xt_comments(&mut table.chains, path.as_deref(), key.1, &key.2);
            table.read_at = Some(Instant::now());
        }
        table
    }
}

/// `nft -a -s list table FAMILY NAME`, in the namespace at `path` (tracer's own when none):
/// its output, or none when it failed.
fn list(path: Option<&Path>, family: &str, name: &str) -> Option<String> {
    let mut command = match path {
        // nsenter (util-linux) runs nft in the namespace.
        Some(path) => {
            let mut command = Command::new("nsenter");
            command.arg(format!("--net={}", path.display())).arg("nft");
            command
        }
        None => Command::new("nft"),
    };
    let out = command
        .args(["-a", "-s", "list", "table", family, name])
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds to each rule's text the comment iptables-nft keeps as an xtables match, which `nft`
/// does not print (kube-proxy names every Service rule so): `... dnat to 10.244.2.2:8080
/// comment "default/web:http"`, as newer `nft` prints it.
fn add_xt_comments(
    chains: &mut HashMap<String, Chain>,
    path: Option<&Path>,
    family: &str,
    name: &str,
) {
    let read = || super::netlink::xt_comments(family, name);
    let comments = match path {
        Some(path) => crate::netns::run_in(path, read).and_then(|read| read),
        None => read(),
    };
    for ((chain, handle), comment) in comments.unwrap_or_default() {
        if let Some(text) = chains
            .get_mut(&chain)
            .and_then(|chain| chain.rules.get_mut(&handle))
            && !text.contains(" comment \"")
        {
            text.push_str(&format!(" comment {comment:?}"));
        }
    }
}

/// The chains of `nft -a list table` output: each chain's type and its rules by handle.
fn parse(listing: &str) -> HashMap<String, Chain> {
    let mut chains = HashMap::new();
    let mut current: Option<(String, Chain)> = None;
    for line in listing.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("chain ") {
            if let Some((name, chain)) = current.take() {
                chains.insert(name, chain);
            }
            let name = rest
                .split(" # handle")
                .next()
                .unwrap_or(rest)
                .trim_end_matches('{')
                .trim()
                .trim_matches('"');
            current = Some((name.to_owned(), Chain::default()));
            continue;
        }
        let Some((_, chain)) = current.as_mut() else {
            continue;
        };
        if let Some(rest) = line.strip_prefix("type ") {
            // `type nat hook postrouting priority srcnat; policy accept;`
            let words: Vec<&str> = rest.split_whitespace().collect();
            chain.kind = words.first().map(|w| (*w).to_owned());
            chain.hook = words
                .iter()
                .position(|w| *w == "hook")
                .and_then(|at| words.get(at + 1))
                .map(|w| (*w).to_owned());
            continue;
        }
        if line == "}" {
            if let Some((name, chain)) = current.take() {
                chains.insert(name, chain);
            }
            continue;
        }
        if let Some((text, handle)) = line.rsplit_once(" # handle ")
            && let Ok(handle) = handle.trim().parse()
        {
            chain.rules.insert(handle, text.trim().to_owned());
        }
    }
    if let Some((name, chain)) = current {
        chains.insert(name, chain);
    }
    chains
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `nft -a -s` 1.0.6 lists Docker's nat table made by iptables-nft.
    const DOCKER_NAT: &str = r#"table ip nat { # handle 3
	chain DOCKER { # handle 1
		iifname "docker0" counter return # handle 7
		iifname != "docker0" meta l4proto tcp tcp dport 8080 counter dnat to 172.17.0.2:80 # handle 12
	}

	chain POSTROUTING { # handle 2
		type nat hook postrouting priority srcnat; policy accept;
		oifname != "docker0" ip saddr 172.17.0.0/16 counter masquerade # handle 8
	}

	chain PREROUTING { # handle 4
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local counter jump DOCKER # handle 10
	}
}
"#;

    #[test]
    fn chains_types_and_rules_by_handle() {
        let chains = parse(DOCKER_NAT);
        assert_eq!(chains.len(), 3);
        assert_eq!(chains["POSTROUTING"].kind.as_deref(), Some("nat"));
        assert_eq!(chains["POSTROUTING"].hook.as_deref(), Some("postrouting"));
        assert_eq!(chains["PREROUTING"].hook.as_deref(), Some("prerouting"));
        assert_eq!(chains["DOCKER"].kind, None);
        assert_eq!(
            chains["POSTROUTING"].rules[&8],
            "oifname != \"docker0\" ip saddr 172.17.0.0/16 counter masquerade"
        );
        assert_eq!(
            chains["DOCKER"].rules[&12],
            "iifname != \"docker0\" meta l4proto tcp tcp dport 8080 counter dnat to 172.17.0.2:80"
        );
        assert_eq!(chains["PREROUTING"].rules.len(), 1);
    }
}
