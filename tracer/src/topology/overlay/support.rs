//! Which tunnel kinds the running kernel has, for `tracer doctor`: read from what the kernel
//! and its package publish, without creating a device.
//!
//! A kind's module is in the kernel when `/sys/module/NAME` exists (built in with parameters,
//! as all of these have, or loaded) or `modules.builtin` lists it; it can be loaded when
//! `modules.dep` lists it (creating a device of the kind loads it, through the
//! `rtnl-link-KIND` alias). A kernel without `/proc/modules` loads no modules at all.

use std::{collections::BTreeSet, path::Path};

use super::OverlayKind;

/// Whether a tunnel kind can be used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Built in, or its module is loaded.
    InKernel,
    /// A module that loads when a device of the kind is created.
    Module,
    Missing,
    /// The kernel loads modules, but its module lists are not there to look in (a container
    /// without the host's `/lib/modules`).
    Unknown,
}

/// What the kernel says about its modules.
#[derive(Debug, Clone, Default)]
pub struct Modules {
    /// The names in `/sys/module`.
    pub present: BTreeSet<String>,
    /// `modules.builtin` of the running kernel, if readable.
    pub builtin: Option<String>,
    /// `modules.dep` of the running kernel, if readable.
    pub loadable: Option<String>,
    /// Whether the kernel loads modules at all (`/proc/modules` exists).
    pub modular: bool,
}

impl Modules {
    /// Reads `/sys/module`, `/proc/modules` and `/lib/modules/RELEASE/modules.{builtin,dep}`.
    pub fn read(release: &str) -> Modules {
        let present = std::fs::read_dir("/sys/module")
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let lists = Path::new("/lib/modules").join(release);
        Modules {
            present,
            builtin: std::fs::read_to_string(lists.join("modules.builtin")).ok(),
            loadable: std::fs::read_to_string(lists.join("modules.dep")).ok(),
            modular: Path::new("/proc/modules").exists(),
        }
    }

    /// Whether the kernel has the module `name`.
    pub fn support(&self, name: &str) -> Support {
        if self.present.contains(name) || self.builtin.as_deref().is_some_and(|l| lists(l, name)) {
            return Support::InKernel;
        }
        if !self.modular {
            return Support::Missing;
        }
        match &self.loadable {
            Some(dep)
                if dep
                    .lines()
                    .any(|line| lists(line.split(':').next().unwrap_or(""), name)) =>
            {
                Support::Module
            }
            Some(_) => Support::Missing,
            None if self.builtin.is_some() => Support::Missing,
            None => Support::Unknown,
        }
    }

    /// One line: the kinds in the kernel, loadable as modules, missing and unknown.
    pub fn describe(&self) -> String {
        let groups = [
            (Support::InKernel, "in the kernel"),
            (Support::Module, "as modules"),
            (Support::Missing, "missing"),
            (
                Support::Unknown,
                "unknown (no module lists in /lib/modules)",
            ),
        ];
        let parts: Vec<String> = groups
            .iter()
            .filter_map(|(support, label)| {
                let kinds: Vec<&str> = OverlayKind::ALL
                    .iter()
                    .filter(|kind| self.support(kind.module()) == *support)
                    .map(|kind| kind.name())
                    .collect();
                (!kinds.is_empty()).then(|| format!("{label}: {}", kinds.join(", ")))
            })
            .collect();
        parts.join("; ")
    }
}

/// Whether a list of module paths (`kernel/net/ipv4/ipip.ko`, one a line, or one path) names
/// the module `name`, compressed or not; file names may spell `_` as `-`.
fn lists(paths: &str, name: &str) -> bool {
    paths.lines().any(|path| {
        let file = path.trim().rsplit('/').next().unwrap_or("");
        file.split_once(".ko")
            .is_some_and(|(stem, _)| stem.replace('-', "_") == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's 6.1: VXLAN loaded, the rest as modules, none built in.
    fn debian() -> Modules {
        Modules {
            present: ["vxlan", "udp_tunnel", "kernel"].map(str::to_owned).into(),
            builtin: Some("kernel/net/ipv4/tcp_cubic.ko\nkernel/net/unix/unix.ko\n".to_owned()),
            loadable: Some(
                "kernel/drivers/net/vxlan/vxlan.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz\n\
                 kernel/drivers/net/geneve.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz\n\
                 kernel/net/ipv4/ipip.ko.xz: kernel/net/ipv4/ip_tunnel.ko.xz\n\
                 kernel/net/ipv6/sit.ko.xz: kernel/net/ipv4/ip_tunnel.ko.xz\n\
                 kernel/net/ipv6/ip6_tunnel.ko.xz: kernel/net/ipv6/tunnel6.ko.xz\n\
                 kernel/net/ipv4/ip_gre.ko.xz: kernel/net/ipv4/gre.ko.xz\n\
                 kernel/net/ipv6/ip6_gre.ko.xz: kernel/net/ipv6/ip6_tunnel.ko.xz\n\
                 kernel/drivers/net/wireguard/wireguard.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz\n"
                    .to_owned(),
            ),
            modular: true,
        }
    }

    #[test]
    fn a_distribution_kernel_has_every_kind_as_a_module() {
        let modules = debian();
        assert_eq!(modules.support("vxlan"), Support::InKernel);
        assert_eq!(modules.support("ip6_gre"), Support::Module);
        // `gre` is ip_gre's helper: listed only after the colon, as a dependency.
        assert_eq!(modules.support("gre"), Support::Missing);
        assert_eq!(
            modules.describe(),
            "in the kernel: vxlan; as modules: geneve, ipip, sit, ip6tnl, gre, gretap, ip6gre, \
             ip6gretap, wireguard"
        );
    }

    #[test]
    fn a_kernel_without_modules_has_what_is_built_in() {
        // This machine's kernel: VXLAN built in (with parameters, so in /sys/module), no
        // module support and no /lib/modules.
        let modules = Modules {
            present: ["vxlan", "kernel"].map(str::to_owned).into(),
            builtin: None,
            loadable: None,
            modular: false,
        };
        assert_eq!(
            modules.describe(),
            "in the kernel: vxlan; missing: geneve, ipip, sit, ip6tnl, gre, gretap, ip6gre, \
             ip6gretap, wireguard"
        );
    }

    #[test]
    fn built_in_modules_without_sysfs_entries_and_unknown_lists() {
        let modules = Modules {
            present: BTreeSet::new(),
            builtin: Some("kernel/net/ipv4/ip_gre.ko\n".to_owned()),
            loadable: None,
            modular: true,
        };
        assert_eq!(modules.support("ip_gre"), Support::InKernel);
        assert_eq!(modules.support("geneve"), Support::Missing);
        let container = Modules {
            modular: true,
            ..Modules::default()
        };
        assert_eq!(container.support("geneve"), Support::Unknown);
        assert_eq!(
            container.describe(),
            "unknown (no module lists in /lib/modules): vxlan, geneve, ipip, sit, ip6tnl, gre, \
             gretap, ip6gre, ip6gretap, wireguard"
        );
    }
}
