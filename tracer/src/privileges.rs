//! Whether tracer may do what it needs: load BPF programs, read kernel memory from them,
//! attach TC programs and enter other network namespaces.

use anyhow::bail;

/// Capabilities tracer uses, by number (include/uapi/linux/capability.h).
const NEEDED: [(u32, &str); 4] = [
    (12, "CAP_NET_ADMIN"),
    (21, "CAP_SYS_ADMIN"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

/// Fails with one line saying what to do when the process lacks a capability it needs.
pub fn check() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "tracer needs root (missing {}): run it with sudo",
            missing.join(", ")
        );
    }
    Ok(())
}
