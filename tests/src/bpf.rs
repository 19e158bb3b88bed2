//! What the kernel says about BPF objects, to check that tracer leaves nothing behind.

use std::path::Path;

/// Ids of the BPF links a process holds, from its file descriptors' fdinfo.
pub fn links_of(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in entries.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(id) = info
            .lines()
            .find_map(|line| line.strip_prefix("link_id:"))
            .and_then(|id| id.trim().parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids
}

/// Whether the kernel still has a BPF link with `id` (asks bpftool).
pub fn link_exists(id: u32) -> bool {
    std::process::Command::new("bpftool")
        .args(["link", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Whether bpftool is there to ask.
pub fn bpftool_available() -> bool {
    ["/usr/sbin/bpftool", "/usr/bin/bpftool"]
        .iter()
        .any(|path| Path::new(path).exists())
}
