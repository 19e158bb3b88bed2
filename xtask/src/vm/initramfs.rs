//! The guest's root file system: busybox, the modules the testbed needs, iproute2, iptables
//! (the legacy backend, so only the x_tables modules are needed), the `tracer` binary, the
//! test binaries with their shared libraries, and an `/init` that runs the tests and prints the
//! verdict on the console. The two-node test's guests get the same tools, the overlay's and
//! the virtual hardware's modules, and xtask itself, whose `vm-node` command is the node's side
//! of the test.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::kernel::Image;
use crate::util::{self, output, workspace};

/// Modules the testbed and tracer need, by name; their dependencies come from `modules.dep`.
/// Those built into the kernel are simply not found and need nothing. `crc32c_generic` is a
/// soft dependency of libcrc32c (which conntrack needs), so modules.dep does not list it.
const MODULES: &[&str] = &[
    "crc32c_generic",
    "veth",
    "bridge",
    "nf_conntrack",
    "nf_nat",
    "iptable_nat",
    "iptable_filter",
    "ip6table_nat",
    "ip6table_filter",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_tcpudp",
    "sch_ingress",
    "cls_bpf",
    // `--rules` and `tracer doctor` create an nf_tables table.
    "nf_tables",
    // kube-proxy's IPVS mode (tests/tests/ipvs.rs): a virtual service, its scheduler, and
    // the dummy interface that holds the virtual address.
    "ip_vs",
    "ip_vs_rr",
    "dummy",
    // The tunnels tracer looks into (tests/tests/tunnels.rs).
    "vxlan",
    "geneve",
    "ipip",
    "sit",
    "ip_gre",
];

/// Modules a node of the two-node test needs: its pod's veth and bridge, the VXLAN overlay,
/// and the virtual wire and disk (virtio-pci itself is built into Debian's kernels).
const NODE_MODULES: &[&str] = &["veth", "bridge", "vxlan", "virtio_net", "virtio_blk"];

/// Host programs copied into the guest (with their libraries), and where they go.
const PROGRAMS: &[(&str, &str)] = &[
    ("/bin/busybox", "bin/busybox"),
    ("/bin/ip", "usr/sbin/ip"),
    ("/usr/sbin/tc", "usr/sbin/tc"),
    ("/usr/sbin/ipvsadm", "usr/sbin/ipvsadm"),
    (
        "/usr/sbin/xtables-legacy-multi",
        "usr/sbin/xtables-legacy-multi",
    ),
];

/// Builds the initramfs of the hook ladder tests for `image` and returns its path.
pub fn build(
    image: &Image,
    tracer: &Path,
    tests: &[(String, PathBuf)],
    env: &[(&str, &str)],
) -> anyhow::Result<PathBuf> {
    let mut binaries = vec![(tracer.to_path_buf(), "bin/tracer".to_owned())];
    for (name, path) in tests {
        binaries.push((path.clone(), format!("tests/{name}")));
    }
    assemble(image, &image.release, MODULES, &binaries, &ladder_init(env))
}

/// Builds the initramfs of the two-node test's guests: `tracer`, and `xtask` for `vm-node`.
/// Each guest learns which node it is from `tracer.node=NAME` on the kernel command line.
pub fn build_nodes(image: &Image, tracer: &Path, xtask: &Path) -> anyhow::Result<PathBuf> {
    let binaries = [
        (tracer.to_path_buf(), "bin/tracer".to_owned()),
        (xtask.to_path_buf(), "bin/xtask".to_owned()),
    ];
    let name = format!("{}-nodes", image.release);
    assemble(image, &name, NODE_MODULES, &binaries, &node_init())
}

/// Builds `target/vm/initramfs/NAME.cpio.gz`: the tools, `modules` with their dependencies,
/// `binaries` (stripped) where they go, and `init` as `/init`.
fn assemble(
    image: &Image,
    name: &str,
    modules: &[&str],
    binaries: &[(PathBuf, String)],
    init: &str,
) -> anyhow::Result<PathBuf> {
    let base = workspace().join("target/vm/initramfs");
    let root = base.join(name);
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "tests",
        "lib/modules",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    for (from, to) in PROGRAMS {
        install(&root, Path::new(from), to, false)?;
    }
    for name in ["iptables", "ip6tables"] {
        std::os::unix::fs::symlink("xtables-legacy-multi", root.join("usr/sbin").join(name))?;
    }
    let plugins = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    for entry in std::fs::read_dir(plugins)?.flatten() {
        let path = entry.path();
        let relative = path.strip_prefix("/").expect("absolute");
        install(&root, &path, &relative.to_string_lossy(), false)?;
    }
    for file in ["/etc/protocols", "/etc/services"] {
        if Path::new(file).exists() {
            std::fs::copy(file, root.join(&file[1..]))?;
        }
    }
    for (from, to) in binaries {
        install(&root, from, to, true)?;
    }
    let modules = self::modules(image, &root, modules)?;
    std::fs::write(root.join("etc/modules-load"), modules.join("\n") + "\n")?;
    let path = root.join("init");
    std::fs::write(&path, init)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

    let initrd = base.join(format!("{name}.cpio.gz"));
    let script = format!(
        "cd '{}' && find . | cpio --quiet -o -H newc | gzip -1 > '{}'",
        root.display(),
        initrd.display()
    );
    util::run(Command::new("sh").args(["-c", &script]))?;
    Ok(initrd)
}

/// Copies a program (or library) to `to` under `root`, with every shared library it needs.
fn install(root: &Path, from: &Path, to: &str, strip: bool) -> anyhow::Result<()> {
    let from =
        std::fs::canonicalize(from).with_context(|| format!("{} is missing", from.display()))?;
    let dest = root.join(to);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if strip {
        util::run(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(&from)
                .arg(&dest),
        )?;
    } else {
        std::fs::copy(&from, &dest)?;
    }
    for library in libraries(&from) {
        let target = root.join(library.strip_prefix("/").unwrap_or(&library));
        if target.exists() {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&library, &target)?;
    }
    Ok(())
}

/// Shared libraries of a dynamically linked file, from `ldd`.
fn libraries(path: &Path) -> Vec<PathBuf> {
    let Some(listing) = output(Command::new("ldd").arg(path)) else {
        return Vec::new(); // static
    };
    listing
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies the `wanted` modules and their dependencies, returns them in load order.
fn modules(image: &Image, root: &Path, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    let unpacked = image
        .modules
        .ancestors()
        .nth(3)
        .context("modules directory layout")?;
    util::run(
        Command::new("depmod")
            .arg("-b")
            .arg(unpacked)
            .arg(&image.release),
    )
    .context("depmod failed (cargo xtask setup installs kmod)")?;
    let dep = std::fs::read_to_string(image.modules.join("modules.dep"))?;
    let entries: Vec<(String, Vec<String>)> = dep
        .lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((
                module.to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect();
    let name_of = |path: &str| {
        Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split(".ko").next())
            .unwrap_or_default()
            .replace('-', "_")
    };
    let mut order: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for wanted in wanted {
        let Some((path, deps)) = entries.iter().find(|(p, _)| name_of(p) == *wanted) else {
            continue;
        };
        // modules.dep lists dependencies so that the last must load first.
        for module in deps.iter().rev().chain(std::iter::once(path)) {
            if seen.insert(module.clone()) {
                order.push(module.clone());
            }
        }
    }
    if order.is_empty() {
        bail!(
            "none of the needed modules found in {}",
            image.modules.display()
        );
    }
    let mut load = Vec::new();
    for module in &order {
        let source = image.modules.join(module);
        let name = Path::new(module)
            .file_name()
            .and_then(|n| n.to_str())
            .context("module name")?;
        let plain = name
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_owned();
        let dest = root.join("lib/modules").join(&plain);
        match name.rsplit('.').next() {
            Some("xz") => unpack("xz", &source, &dest)?,
            Some("zst") => unpack("zstd", &source, &dest)?,
            _ => {
                std::fs::copy(&source, &dest)?;
            }
        }
        load.push(plain);
    }
    Ok(load)
}

fn unpack(tool: &str, source: &Path, dest: &Path) -> anyhow::Result<()> {
    let data = Command::new(tool)
        .args(["-d", "-c"])
        .arg(source)
        .output()
        .with_context(|| format!("{tool} is needed to unpack {}", source.display()))?;
    if !data.status.success() {
        bail!("{tool} could not unpack {}", source.display());
    }
    std::fs::write(dest, data.stdout)?;
    Ok(())
}

/// The mounts and modules every guest starts with.
const BOOT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /var && ln -s /run /var/run
for module in $(cat /etc/modules-load); do
    insmod /lib/modules/$module || echo "tracer-vm: insmod $module failed"
done
ip link set lo up
export PATH=/usr/sbin:/usr/bin:/sbin:/bin TRACER_BIN=/bin/tracer RUST_BACKTRACE=1
"#;

/// `/init` of the ladder tests: every test binary, then the verdict.
fn ladder_init(env: &[(&str, &str)]) -> String {
    let exports: String = env
        .iter()
        .map(|(k, v)| format!("export {k}={v}\n"))
        .collect();
    format!(
        r#"{BOOT}{exports}echo "tracer-vm: kernel $(uname -r)"
/bin/tracer doctor
status=0
for test in /tests/*; do
    echo "tracer-vm: running $test"
    $test --test-threads=1 || status=1
done
echo "TRACER-VM-RESULT: $status"
poweroff -f
"#
    )
}

/// `/init` of a node of the two-node test: the node's side of the test (see `super::guest`),
/// driven by the host over the console, then its verdict.
fn node_init() -> String {
    format!(
        r#"{BOOT}node=$(sed -n 's/.*tracer\.node=\([a-z]*\).*/\1/p' /proc/cmdline)
echo "TRACER-NODE-BOOTED $node $(uname -r)"
/bin/xtask vm-node "$node"
echo "TRACER-NODE-RESULT: $?"
poweroff -f
"#
    )
}
