//! Names for what the kernel identifies by number: network namespaces and containers.
//!
//! The kernel programs report a namespace by inode. Outputs show the container that owns it
//! when one is known, and the namespace's name otherwise (`ip netns` names); the namespace
//! tracer itself runs in is called `host`.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use rustc_hash::FxHashMap;

/// Names by namespace inode, drop reason value and code address.
#[derive(Debug, Clone, Default)]
pub struct NameTable {
    netns: FxHashMap<u64, String>,
    containers: FxHashMap<u64, String>,
    drop_reasons: HashMap<u32, String>,
    symbols: HashMap<u64, String>,
    /// Changes whenever a namespace or container is named, in this table or any other, so that
    /// an output may keep what it rendered of the names of a place until this changes.
    places_version: u64,
}

/// The source of [`NameTable::places_version`]: unique across tables.
static PLACES_VERSION: AtomicU64 = AtomicU64::new(1);

impl NameTable {
    /// Names the namespace with `inode`.
    pub fn set_netns(&mut self, inode: u64, name: impl Into<String>) {
        self.netns.insert(inode, name.into());
        self.places_version = PLACES_VERSION.fetch_add(1, Ordering::Relaxed);
    }

    /// Names the container whose network namespace has `inode`.
    pub fn set_container(&mut self, inode: u64, name: impl Into<String>) {
        self.containers.insert(inode, name.into());
        self.places_version = PLACES_VERSION.fetch_add(1, Ordering::Relaxed);
    }

    /// The same while the names of namespaces and containers stay the same.
    pub fn places_version(&self) -> u64 {
        self.places_version
    }

    /// Names `enum skb_drop_reason` values.
    pub fn set_drop_reasons(&mut self, reasons: HashMap<u32, String>) {
        self.drop_reasons = reasons;
    }

    /// Names a code address (`function+0xoffset`).
    pub fn set_symbol(&mut self, address: u64, symbol: impl Into<String>) {
        self.symbols.insert(address, symbol.into());
    }

    /// The drop reason's name, or its number.
    pub fn drop_reason(&self, reason: u32) -> String {
        self.drop_reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| reason.to_string())
    }

    /// The code address as `function+0xoffset`, or in hex.
    pub fn symbol(&self, address: u64) -> String {
        self.symbols
            .get(&address)
            .cloned()
            .unwrap_or_else(|| format!("{address:#x}"))
    }

    pub fn has_symbol(&self, address: u64) -> bool {
        self.symbols.contains_key(&address)
    }

    pub fn netns(&self, inode: u64) -> Option<&str> {
        self.netns.get(&inode).map(String::as_str)
    }

    pub fn container(&self, inode: u64) -> Option<&str> {
        self.containers.get(&inode).map(String::as_str)
    }

    /// The most useful name for a place: container, namespace name, or `netns:<inode>`.
    pub fn place(&self, inode: u64) -> String {
        self.container(inode)
            .or_else(|| self.netns(inode))
            .map_or_else(|| format!("netns:{inode}"), str::to_owned)
    }

    /// Keeps the drop reasons and symbols of `other` (they do not change with the topology).
    pub fn keep_kernel_names(&mut self, other: &NameTable) {
        self.drop_reasons = other.drop_reasons.clone();
        self.symbols = other.symbols.clone();
    }
}

/// Finds the kernel functions containing `addresses` in one read of `/proc/kallsyms`, as
/// `function+0xoffset`; `None` for an address in no function (or when kallsyms is hidden).
pub fn kernel_symbols(addresses: &[u64]) -> Vec<Option<String>> {
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
        return vec![None; addresses.len()];
    };
    let mut best: Vec<Option<(u64, &str)>> = vec![None; addresses.len()];
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        for (address, best) in addresses.iter().zip(&mut best) {
            if addr <= *address && best.is_none_or(|(b, _)| addr > b) {
                *best = Some((addr, name));
            }
        }
    }
    addresses
        .iter()
        .zip(best)
        .map(|(address, best)| {
            let (start, name) = best.filter(|(start, _)| *start != 0)?;
            Some(format!("{name}+{:#x}", address - start))
        })
        .collect()
}
