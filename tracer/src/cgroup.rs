//! The cgroup v2 hierarchy: where it is mounted, and the directories of its cgroups by id
//! (a cgroup's id, as `bpf_get_current_cgroup_id` reports it, is its directory's inode).

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// a hybrid system), from `/proc/self/mounts`.
pub fn mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mount_in(&mounts)
}

fn mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

/// The cgroups below `root` whose path `keep` accepts, by id, with their paths relative to
/// `root` (`/docker/ID`). Directories that vanish while being walked are skipped.
pub fn paths(root: &Path, keep: impl Fn(&str) -> bool) -> HashMap<u64, String> {
    let mut found = HashMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() {
                continue;
            }
            let path = entry.path();
            if let (Ok(meta), Ok(relative)) = (entry.metadata(), path.strip_prefix(root)) {
                let relative = format!("/{}", relative.to_string_lossy());
                if keep(&relative) {
                    found.insert(meta.ino(), relative);
                }
            }
            pending.push(path);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_unified_and_hybrid_systems() {
        let unified = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert_eq!(mount_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            mount_in("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"),
            None
        );
    }

    #[test]
    fn cgroup_directories_are_found_by_inode() {
        let root = std::env::temp_dir().join(format!("tracer-cgroup-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("docker/abc")).expect("temp dirs");
        let found = paths(&root, |path| path.ends_with("/abc"));
        let inode = std::fs::metadata(root.join("docker/abc"))
            .expect("exists")
            .ino();
        std::fs::remove_dir_all(&root).expect("removed");
        assert_eq!(found, HashMap::from([(inode, "/docker/abc".to_owned())]));
    }
}
