//! Whether rules can be named on this machine, and why not, for `tracer doctor`.

use std::process::Command;

use super::{follow::explain, netlink};

/// Really creates tracer's table (with no rule in it) and joins the trace group.
pub fn probe() -> Result<String, String> {
    let table = netlink::OwnedTable::create(&[]).map_err(|err| explain(&err));
    let socket = netlink::TraceSocket::open();
    match (table, socket) {
        (Ok(_), Ok(_)) => {}
        (Err(err), _) => return Err(err),
        (_, Err(err)) => return Err(format!("no nf_tables trace events: {err}")),
    }
    let nft = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    let mut notes = vec!["an owned nf_tables table and trace events work".to_owned()];
    if !nft {
        notes.push("nft is not installed: rules are named by table, chain and handle".into());
    }
    if legacy_iptables() {
        notes.push(
            "iptables is the legacy backend: its rules are not nf_tables rules and are not named"
                .into(),
        );
    }
    Ok(notes.join("; "))
}

/// Whether `iptables` is the legacy (x_tables) backend, whose rules nf_tables tracing does not
/// see.
pub fn legacy_iptables() -> bool {
    Command::new("iptables")
        .arg("-V")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("legacy"))
}
