//! `tracer doctor`: what the running kernel offers, what tracer would use, and why.
//!
//! Every rung of every hook ladder is really loaded and attached (and detached again), so the
//! report is what the kernel did, not what its version suggests.

use std::{fmt::Write as _, path::Path};

use crate::{
    btf,
    kernel::{
        LoadOptions, Programs, Tunnels,
        hooks::{HookSet, Mechanism, Outcome},
        tc,
    },
    topology::overlay::support::Modules,
};

/// The findings.
pub struct Report {
    pub kernel: String,
    pub btf: bool,
    /// Why the programs could not be loaded at all, if they could not.
    pub load_error: Option<String>,
    pub notes: Vec<String>,
    pub outcomes: Vec<Outcome>,
    pub tcx: bool,
    /// Whether `--rules` can name netfilter rules here, and what limits it; or why not.
    pub rules: Result<String, String>,
    /// Whether packets can name the process behind them: where the socket programs attach,
    /// or why they cannot.
    pub processes: Result<String, String>,
    /// Which tunnel kinds the kernel has (built in, as modules, missing).
    pub tunnels: String,
}

/// Probes the kernel.
pub fn probe() -> Report {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let tunnels = Modules::read(&kernel).describe();
    let mut report = Report {
        kernel,
        btf: Path::new(btf::VMLINUX_BTF).exists(),
        load_error: None,
        notes: Vec::new(),
        outcomes: Vec::new(),
        tcx: tc::has_tcx(),
        rules: crate::rules::doctor::probe(),
        processes: Err("the programs could not be loaded".to_owned()),
        tunnels,
    };
    match Programs::load(&LoadOptions {
        hooks: HookSet::global(),
        filter: crate::filter::compile(None).expect("the empty filter compiles"),
        ring_bytes: 1 << 12,
        snap_len: 0,
        snap_headers_only: true,
        kernel_btf: None,
        tc_mode: tc::TcMode::Auto,
        sample_every: 1,
        tunnels: Tunnels::default(),
    }) {
        Ok(mut programs) => {
            report.notes = programs.notes().to_vec();
            report.outcomes = programs.climb(true);
            report.processes = programs
                .watch_sockets()
                .map(|root| {
                    format!(
                        "socket programs attach to the cgroup v2 root {}",
                        root.display()
                    )
                })
                .map_err(|err| format!("{err:#}"));
        }
        Err(err) => report.load_error = Some(format!("{err:#}")),
    }
    report
}

impl Report {
    /// The report as text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "kernel     {}", self.kernel);
        let _ = writeln!(
            out,
            "BTF        {}",
            if self.btf {
                format!(
                    "{} (kernel structure offsets are read from it)",
                    btf::VMLINUX_BTF
                )
            } else {
                format!(
                    "missing: {} not found; tracer needs CONFIG_DEBUG_INFO_BTF",
                    btf::VMLINUX_BTF
                )
            }
        );
        let _ = writeln!(
            out,
            "TC         {}",
            if self.tcx {
                "tcx links (Linux 6.6+), detached when tracer exits"
            } else {
                "clsact qdisc filters through netlink (no TCX before Linux 6.6)"
            }
        );
        let _ = writeln!(
            out,
            "rules      {}",
            match &self.rules {
                Ok(works) => format!("--rules works: {works}"),
                Err(why) => format!("--rules cannot name netfilter rules: {why}"),
            }
        );
        let _ = writeln!(
            out,
            "processes  {}",
            match &self.processes {
                Ok(works) => format!("packets name the process that created their socket: {works}"),
                Err(why) =>
                    format!("packets cannot name their process (--pid, --comm fail): {why}"),
            }
        );
        let _ = writeln!(out, "tunnels    {}", self.tunnels);
        let effective = crate::privileges::effective();
        for cap in &crate::privileges::CAPABILITIES {
            let state = if effective & (1 << cap.bit) != 0 {
                "present"
            } else if cap.required {
                "MISSING, required"
            } else {
                "missing"
            };
            let _ = writeln!(out, "capability CAP_{:<11} {state}: {}", cap.name, cap.why);
        }
        for host in &crate::privileges::HOST_PATHS {
            let state = if std::path::Path::new(host.path).exists() {
                "present"
            } else {
                "absent"
            };
            let _ = writeln!(out, "path       {:<32} {state}: {}", host.path, host.why);
        }
        let _ = writeln!(
            out,
            "hooks      default: {}; opt-in with --hooks +NAME: {}",
            HookSet::default_set().names().join(", "),
            HookSet::opt_in().names().join(", ")
        );
        for note in &self.notes {
            let _ = writeln!(out, "note       {note}");
        }
        if let Some(err) = &self.load_error {
            let _ = writeln!(out, "programs   could not be loaded: {err}");
            return out;
        }
        let _ = writeln!(out, "\n{:<20} {:<8} result", "hook", "rung");
        for outcome in &self.outcomes {
            let chosen = outcome.chosen_rung();
            for (rung, result) in &outcome.tried {
                let mut verdict = match result {
                    Ok(()) if Some(*rung) == chosen => "works: chosen".to_owned(),
                    Ok(()) => "works".to_owned(),
                    Err(refusal) => format!("not usable: {refusal}"),
                };
                if let (Ok(()), Some(lacks)) = (result, rung.lacks) {
                    verdict = format!("{verdict}, degraded: {lacks}");
                }
                let _ = writeln!(
                    out,
                    "{:<20} {:<8} {}",
                    outcome.spec.target,
                    rung.mechanism.name(),
                    verdict
                );
            }
            if chosen.is_none() {
                let consequence = if outcome.spec.required {
                    "tracing is not possible without it"
                } else if outcome.spec.target == "nf_nat_manip_pkt" {
                    "no NAT function hop; NAT is still found from conntrack and by comparing hops"
                } else {
                    "this hop is left out"
                };
                let _ = writeln!(out, "{:<20} {:<8} {consequence}", outcome.spec.target, "-");
            }
        }
        out
    }

    /// The mechanism chosen for a hook target, if any.
    pub fn chosen(&self, target: &str) -> Option<Mechanism> {
        self.outcomes
            .iter()
            .find(|o| o.spec.target == target)
            .and_then(Outcome::chosen)
    }
}
