//! Following namespaces: tracer's table and a trace socket in every network namespace that
//! has nf_tables tables of its own, made as they appear and let go as they go.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use super::{
    Detail,
    join::RuleBook,
    matches::{self, Match, TunnelPorts},
    netlink::{self, NetlinkError, Request},
};
use crate::filter::Expr;

/// How often a namespace without nf_tables tables is looked at again.
const RECHECK: Duration = Duration::from_secs(2);

/// Rule attribution: in every network namespace that has nf_tables tables, tracer's owned
/// table marking the filter's packets and a socket the kernel reports their walk to; and what
/// it reported.
pub struct Rules {
    pub detail: Detail,
    matches: Vec<Match>,
    places: Vec<Place>,
    /// Namespaces looked at, by inode: when one without tables was last looked at (it is
    /// looked at again after [`RECHECK`]), or none once tracer's table is in it or could not
    /// be made there.
    examined: HashMap<u64, Option<Instant>>,
    pub book: RuleBook,
    /// Trace messages the kernel could not deliver (a socket's buffer was full).
    pub lost: u64,
}

/// tracer's table and trace socket in one namespace.
struct Place {
    netns: u64,
    _table: netlink::OwnedTable,
    socket: netlink::TraceSocket,
}

impl Place {
    /// tracer's table and trace socket in the calling thread's namespace, if it has nf_tables
    /// tables of its own.
    fn start(netns: u64, matches: &[Match]) -> Result<Option<Place>, NetlinkError> {
        if !netlink::has_tables()? {
            return Ok(None);
        }
        let socket = netlink::TraceSocket::open()?;
        let table = netlink::OwnedTable::create(matches)?;
        Ok(Some(Place {
            netns,
            _table: table,
            socket,
        }))
    }
}

/// A namespace to name rules in: inode, a path that opens it, and whether tracer runs in it.
pub struct Namespace<'a> {
    pub inode: u64,
    pub path: &'a Path,
    pub own: bool,
}

impl Rules {
    /// Rule attribution for the packets of `filter` (and the datagrams of tunnels on
    /// `tunnels`, which may carry them), in no namespace yet.
    pub fn new(filter: Option<&Expr>, detail: Detail, tunnels: &TunnelPorts) -> Rules {
        Rules {
            detail,
            matches: matches::compile(filter, tunnels),
            places: Vec::new(),
            examined: HashMap::new(),
            book: RuleBook::default(),
            lost: 0,
        }
    }

    /// Follows the namespaces there are now: each with nf_tables tables of its own gets
    /// tracer's table (one without is looked at again every [`RECHECK`], rules may come),
    /// and the table and socket of a namespace that is gone are let go (a socket would keep
    /// the namespace alive). Returns what could not be done, one line per namespace.
    pub fn follow<'a>(
        &mut self,
        namespaces: impl IntoIterator<Item = Namespace<'a>>,
    ) -> Vec<String> {
        let namespaces: Vec<Namespace> = namespaces.into_iter().collect();
        let alive: HashSet<u64> = namespaces.iter().map(|ns| ns.inode).collect();
        self.places.retain(|place| alive.contains(&place.netns));
        self.examined.retain(|inode, _| alive.contains(inode));
        let mut problems = Vec::new();
        for ns in namespaces {
            match self.examined.get(&ns.inode) {
                Some(Some(at)) if at.elapsed() < RECHECK => continue,
                Some(None) => continue,
                _ => {}
            }
            let start = || Place::start(ns.inode, &self.matches);
            let started = if ns.own {
                start()
            } else {
                crate::netns::run_in(ns.path, start)
                    .map_err(NetlinkError::from)
                    .and_then(|started| started)
            };
            let mut looked = None;
            match started {
                Ok(Some(place)) => {
                    self.book
                        .texts
                        .add_namespace(ns.inode, (!ns.own).then(|| ns.path.to_owned()));
                    self.places.push(place);
                }
                Ok(None) => looked = Some(Instant::now()),
                // The namespace went away since it was listed: nothing to say.
                Err(NetlinkError::Socket(err)) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => problems.push(explain(&err)),
            }
            self.examined.insert(ns.inode, looked);
        }
        problems
    }

    /// Namespaces where tracer's table marks packets.
    pub fn namespaces(&self) -> usize {
        self.places.len()
    }

    /// Reads the trace events the kernel has sent since the last call, without waiting.
    pub fn poll(&mut self, now_ns: u64) {
        for place in &mut self.places {
            loop {
                match place.socket.try_recv() {
                    Ok(Some(events)) => {
                        for mut event in events {
                            event.netns = place.netns;
                            self.book.add(event, now_ns);
                        }
                    }
                    Ok(None) => break,
                    Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => self.lost += 1,
                    Err(_) => break,
                }
            }
        }
    }
}

/// Refuses `--rules` on a kernel without tables owned by their socket (before Linux 5.12):
/// there a table of tracer's would outlive a tracer killed with SIGKILL, and stay in the
/// packets' path. Other failures are said per namespace as it is followed: a machine without
/// nf_tables at all has no rules to name, and tracing goes on.
pub fn check_kernel() -> anyhow::Result<()> {
    match netlink::owner_flag_works() {
        Err(err) if refuses_owner_flag(&err) => {
            anyhow::bail!("--rules: {}; trace without --rules here", explain(&err))
        }
        _ => Ok(()),
    }
}

/// The table's only flag is the owner flag: a kernel that refuses the table request itself
/// with "not supported" (or, before 5.12's check, "invalid") does not know it.
fn refuses_owner_flag(err: &NetlinkError) -> bool {
    matches!(
        err,
        NetlinkError::Refused {
            request: Some(Request::Table),
            errno: libc::EOPNOTSUPP | libc::EINVAL,
            message: None,
        }
    )
}

/// Why tracer's table could not be made, in words: the kernel's own where it gave them.
pub(super) fn explain(err: &NetlinkError) -> String {
    match err {
        err if refuses_owner_flag(err) => format!(
            "{err}; this kernel does not take the owner flag (NFT_TABLE_F_OWNER, Linux 5.12), \
             without which tracer could leave its table behind"
        ),
        NetlinkError::Refused {
            request: Some(Request::Table),
            errno: libc::EEXIST,
            ..
        } => format!(
            "an nf_tables table inet {} exists already",
            netlink::table_name()
        ),
        _ => format!("cannot create tracer's nf_tables table: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_reason_is_shown_and_the_owner_flag_named_only_for_the_table() {
        let refused = |request, errno, message: Option<&str>| NetlinkError::Refused {
            request,
            errno,
            message: message.map(str::to_owned),
        };
        let owner = explain(&refused(Some(Request::Table), libc::EOPNOTSUPP, None));
        assert!(owner.contains("NFT_TABLE_F_OWNER"), "{owner}");
        // An invalid rule is not a kernel without owned tables: the kernel's text is shown.
        let rule = explain(&refused(
            Some(Request::Rule("prerouting")),
            libc::EINVAL,
            Some("Unknown meta key"),
        ));
        assert!(!rule.contains("NFT_TABLE_F_OWNER"), "{rule}");
        assert!(
            rule.contains("a rule of tracer's chain prerouting"),
            "{rule}"
        );
        assert!(rule.contains("(Unknown meta key)"), "{rule}");
        let exists = explain(&refused(Some(Request::Table), libc::EEXIST, None));
        assert!(exists.contains("exists already"), "{exists}");
    }
}
