//! The machine's firewall as the tools that wrote it see it: read, compared and put back.
//!
//! Docker, Podman (netavark or the CNI plugins) and the CNI plugins of a pod write their rules
//! through iptables, which on Debian is iptables-nft: nf_tables tables (`ip nat`, `ip filter`,
//! ...) holding iptables' own expressions. Such a table listed with `nft` and loaded again
//! with `nft -f` is no longer iptables': `iptables -L` fails on it ("table `nat' is
//! incompatible") and so do the runtimes (netavark: "Chain already exists"). So the tables
//! iptables wrote are read with `iptables-save` / `ip6tables-save` and put back with
//! `iptables-restore` / `ip6tables-restore`, only those that changed; an iptables table that
//! was not there before is deleted; every other nf_tables table (a firewall's, a running
//! tracer's) is read, to be compared, but never changed.

use std::{
    collections::BTreeMap,
    fmt,
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::netns::run;

/// The families whose tables iptables writes, with its tools for them.
const IPTABLES: [Family; 2] = [
    Family {
        name: "ip",
        save: "iptables-save",
        restore: "iptables-restore",
    },
    Family {
        name: "ip6",
        save: "ip6tables-save",
        restore: "ip6tables-restore",
    },
];

#[derive(Debug, Clone, Copy)]
struct Family {
    /// The nf_tables family (`nft list tables` prints it).
    name: &'static str,
    save: &'static str,
    restore: &'static str,
}

/// An nf_tables table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Table {
    /// `ip`, `ip6`, `inet`, ...
    pub family: String,
    pub name: String,
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.family, self.name)
    }
}

/// Every nf_tables table of the machine's own namespace at one moment, each as the tool that
/// wrote it prints it: iptables' tables as an `iptables-save` section (`*nat` to `COMMIT`,
/// without counters), the others as `nft -s list table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    iptables: BTreeMap<Table, String>,
    others: BTreeMap<Table, String>,
}

impl Ruleset {
    /// Reads the ruleset. Fails where iptables cannot read one of its tables (one that was
    /// loaded with `nft -f`, for example): that is a broken machine, not a state to keep.
    pub fn read() -> anyhow::Result<Ruleset> {
        let mut iptables = BTreeMap::new();
        for family in IPTABLES {
            let (sections, unreadable) = saved(family)?;
            if let Some(name) = unreadable.first() {
                bail!(
                    "iptables cannot read the table {} {name} (`{}` calls it incompatible): it \
                     was loaded by another tool than iptables; put it back with {} or delete it",
                    family.name,
                    family.save,
                    family.restore
                );
            }
            iptables.extend(sections.into_iter().map(|(name, text)| {
                let table = Table {
                    family: family.name.to_owned(),
                    name,
                };
                (table, text)
            }));
        }
        let mut others = BTreeMap::new();
        for table in tables()? {
            if iptables.contains_key(&table) {
                continue;
            }
            // A table that cannot be listed a moment after it was seen is gone (a tracer's,
            // with the process that owned it): it is not part of the ruleset any more.
            if let Ok(text) = run("nft", &["-s", "list", "table", &table.family, &table.name]) {
                others.insert(table, text);
            }
        }
        Ok(Ruleset { iptables, others })
    }

    /// Puts back what iptables wrote as it was when `self` was read: each of its tables that
    /// is different now, or unreadable, or gone, is restored with the tool that saved it, and
    /// each of its tables that was not there is deleted. Other tables are left as they are.
    pub fn restore(&self) -> anyhow::Result<()> {
        for family in IPTABLES {
            let before: BTreeMap<&str, &str> = self
                .iptables
                .iter()
                .filter(|(table, _)| table.family == family.name)
                .map(|(table, text)| (table.name.as_str(), text.as_str()))
                .collect();
            let (now, unreadable) = saved(family)?;
            let changed: String = before
                .iter()
                .filter(|(name, text)| now.get(**name).map(String::as_str) != Some(**text))
                .map(|(_, text)| *text)
                .collect();
            if !changed.is_empty() {
                restore(family, &changed)?;
            }
            let created = now.keys().chain(&unreadable);
            for name in created.filter(|name| !before.contains_key(name.as_str())) {
                run("nft", &["delete", "table", family.name, name]).with_context(|| {
                    format!("failed to delete the table {} {name}", family.name)
                })?;
            }
        }
        Ok(())
    }

    /// How this (later) ruleset differs from `before`, one entry per table; empty when every
    /// table is as it was.
    pub fn changes_since(&self, before: &Ruleset) -> Vec<String> {
        let (now, then) = (self.all(), before.all());
        let mut changes = Vec::new();
        for (table, text) in &now {
            match then.get(table) {
                None => changes.push(format!("table {table} was added:\n{text}")),
                Some(old) if old != text => changes.push(format!(
                    "table {table} differs:\n--- before\n{old}\n--- after\n{text}"
                )),
                Some(_) => {}
            }
        }
        for table in then.keys().filter(|table| !now.contains_key(*table)) {
            changes.push(format!("table {table} was removed"));
        }
        changes
    }

    fn all(&self) -> BTreeMap<&Table, &String> {
        self.iptables.iter().chain(&self.others).collect()
    }
}

/// The machine's nf_tables tables.
fn tables() -> anyhow::Result<Vec<Table>> {
    Ok(run("nft", &["list", "tables"])?
        .lines()
        .filter_map(|line| line.strip_prefix("table "))
        .filter_map(|rest| {
            let (family, name) = rest.trim().split_once(' ')?;
            Some(Table {
                family: family.to_owned(),
                name: name.to_owned(),
            })
        })
        .collect())
}

/// The tables of `family` as `iptables-save` prints them, by name, each a section from
/// `*NAME` to `COMMIT` with the counters left out; and the names of those it calls
/// incompatible.
fn saved(family: Family) -> anyhow::Result<(BTreeMap<String, String>, Vec<String>)> {
    let output = run(family.save, &[]).with_context(|| {
        format!(
            "{} is needed to save the machine's firewall (cargo xtask setup installs iptables)",
            family.save
        )
    })?;
    Ok(sections(&output))
}

/// Splits `iptables-save` output into its tables (see [`saved`]).
fn sections(output: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut tables = BTreeMap::new();
    let mut unreadable = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in output.lines() {
        // "# Table `nat' is incompatible, use 'nft' tool."
        if let Some(rest) = line.strip_prefix("# Table `")
            && let Some((name, _)) = rest.split_once('\'')
        {
            unreadable.push(name.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            current = Some((name.to_owned(), String::new()));
        }
        let Some((name, text)) = current.as_mut() else {
            continue;
        };
        // `:CHAIN POLICY [packets:bytes]`: what a chain counted is not what a test changed.
        let line = if line.starts_with(':') {
            line.rsplit_once(" [").map_or(line, |(kept, _)| kept)
        } else {
            line
        };
        text.push_str(line);
        text.push('\n');
        if line == "COMMIT" {
            tables.insert(std::mem::take(name), std::mem::take(text));
            current = None;
        }
    }
    (tables, unreadable)
}

/// Feeds `input` (`iptables-save` sections) to the family's restore tool, which replaces the
/// tables it names and leaves the others alone.
fn restore(family: Family, input: &str) -> anyhow::Result<()> {
    let mut child = Command::new(family.restore)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to run {}", family.restore))?;
    child
        .stdin
        .take()
        .context("the restore tool has no stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("failed to give {} its input", family.restore))?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}\n{input}",
            family.restore,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The machine's firewall (see [`Ruleset`]) and IPv4 forwarding as they were when saved, put
/// back when dropped: what a runtime or a test left behind is removed, and what iptables
/// wrote stays readable by iptables.
pub struct RulesetGuard {
    ruleset: Ruleset,
    forwarding: String,
}

/// IPv4 forwarding in the machine's own namespace.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl RulesetGuard {
    /// Saves the ruleset and forwarding now.
    pub fn save() -> anyhow::Result<RulesetGuard> {
        Ok(RulesetGuard {
            ruleset: Ruleset::read().context("failed to save the machine's firewall")?,
            forwarding: std::fs::read_to_string(IP_FORWARD)
                .with_context(|| format!("failed to read {IP_FORWARD}"))?,
        })
    }
}

impl Drop for RulesetGuard {
    fn drop(&mut self) {
        if let Err(err) = std::fs::write(IP_FORWARD, &self.forwarding) {
            eprintln!("failed to restore {IP_FORWARD}: {err}");
        }
        if let Err(err) = self.ruleset.restore() {
            eprintln!("failed to restore the machine's firewall: {err:#}");
        }
    }
}

/// Rules of a test's own in the machine's FORWARD chain that let a subnet's traffic through,
/// both ways, as a CNI `firewall` plugin or flannel adds them for its pods on a machine whose
/// FORWARD policy is DROP (Docker sets it so): inserted first, each deleted exactly on drop.
pub struct ForwardAllowance {
    /// Each rule as `iptables` takes it after `-I FORWARD` / `-D FORWARD`.
    rules: Vec<Vec<String>>,
}

impl ForwardAllowance {
    /// Accepts what comes from and what goes to `subnet` (CIDR), with `comment` on the rules.
    pub fn insert(subnet: &str, comment: &str) -> anyhow::Result<ForwardAllowance> {
        let mut allowance = ForwardAllowance { rules: Vec::new() };
        for direction in ["-s", "-d"] {
            let rule: Vec<String> = [
                direction,
                subnet,
                "-m",
                "comment",
                "--comment",
                comment,
                "-j",
                "ACCEPT",
            ]
            .map(str::to_owned)
            .to_vec();
            iptables_forward("-I", &rule)?;
            allowance.rules.push(rule);
        }
        Ok(allowance)
    }
}

impl Drop for ForwardAllowance {
    fn drop(&mut self) {
        for rule in &self.rules {
            if let Err(err) = iptables_forward("-D", rule) {
                eprintln!("failed to remove a FORWARD rule: {err:#}");
            }
        }
    }
}

/// `iptables ACTION FORWARD RULE`.
fn iptables_forward(action: &str, rule: &[String]) -> anyhow::Result<()> {
    let mut args = vec![action, "FORWARD"];
    args.extend(rule.iter().map(String::as_str));
    run("iptables", &args)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_save_output_is_split_into_tables_without_counters() {
        let output = "# Generated by iptables-save v1.8.9 (nf_tables) on Fri Dec  4 18:37:07 2026\n\
                      *filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [12:3400]\n:DOCKER - [0:0]\n\
                      -A FORWARD -o docker0 -j DOCKER\nCOMMIT\n# Completed on Fri Dec  4\n\
                      # Table `nat' is incompatible, use 'nft' tool.\n";
        let (tables, unreadable) = sections(output);
        assert_eq!(
            tables,
            BTreeMap::from([(
                "filter".to_owned(),
                "*filter\n:INPUT ACCEPT\n:FORWARD DROP\n:DOCKER -\n\
                 -A FORWARD -o docker0 -j DOCKER\nCOMMIT\n"
                    .to_owned()
            )])
        );
        assert_eq!(unreadable, ["nat"]);
    }
}
