//! Which netfilter rule acted on a packet: the NAT rule behind a translation, the rule (or
//! chain policy) behind a drop.
//!
//! tracer sets `meta nftrace` on the packets its filter can match, from a table of its own
//! that the kernel deletes when tracer's socket closes ([`netlink::OwnedTable`]); the kernel
//! then reports every chain and rule such a packet traverses ([`netlink::TraceSocket`]).
//! [`RuleBook`] keeps the recent reports by packet identity (IP id, TCP sequence, tuple) and
//! answers for a NAT record or a dropped packet; [`listing`] gives each rule's text as `nft`
//! prints it.

pub mod listing;
pub mod netlink;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    decode::{HopEvent, Proto, Tuple},
    filter::Expr,
};

/// A verdict as nf_tables reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Verdict {
    Accept,
    Drop,
    Jump(String),
    Goto(String),
    Return,
    #[default]
    Continue,
    Other(i32),
}

impl Verdict {
    pub fn from_code(code: i32, chain: Option<String>) -> Verdict {
        match code {
            0 => Verdict::Drop,
            1 => Verdict::Accept,
            -1 => Verdict::Continue,
            -3 => Verdict::Jump(chain.unwrap_or_default()),
            -4 => Verdict::Goto(chain.unwrap_or_default()),
            -5 => Verdict::Return,
            other => Verdict::Other(other),
        }
    }

    /// As `nft monitor trace` writes it.
    pub fn name(&self) -> String {
        match self {
            Verdict::Accept => "accept".into(),
            Verdict::Drop => "drop".into(),
            Verdict::Jump(chain) => format!("jump {chain}"),
            Verdict::Goto(chain) => format!("goto {chain}"),
            Verdict::Return => "return".into(),
            Verdict::Continue => "continue".into(),
            Verdict::Other(code) => format!("verdict {code}"),
        }
    }
}

/// What a trace event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TraceKind {
    /// A rule matched and gave a verdict.
    Rule,
    /// The chain ended and its policy applied.
    Policy,
    /// A user chain ended and returned.
    Return,
    #[default]
    Other,
}

/// One event of the kernel's trace.
#[derive(Debug, Clone, Default)]
pub struct TraceEvent {
    /// `ip`, `ip6`, `inet`, ...: the table's family.
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    /// The rule's handle; none for a policy.
    pub handle: Option<u64>,
    pub kind: TraceKind,
    pub verdict: Verdict,
    /// The kernel's id of the packet within this trace.
    pub id: u32,
    /// Inode of the network namespace the event came from.
    pub netns: u64,
    /// The packet's family (`NFPROTO_IPV4` or `NFPROTO_IPV6`).
    pub nfproto: u8,
    /// The packet's IP header (up to 40 bytes) and transport header (up to 20) when traced.
    pub network: Vec<u8>,
    pub transport: Vec<u8>,
}

/// A packet as far as the trace can tell: protocol, IP id (0 for IPv6) and TCP sequence
/// (0 for other protocols), and its tuple where the rule saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketKey {
    pub proto: u8,
    pub ip_id: u16,
    pub seq: u32,
}

impl PacketKey {
    /// The identity of the packet an event saw.
    pub fn of(e: &HopEvent) -> PacketKey {
        PacketKey {
            proto: e.tuple.proto.0,
            ip_id: if e.tuple.src.is_ipv4() { e.ip_id } else { 0 },
            seq: if e.has_l4 && e.tuple.proto == Proto::TCP {
                e.tcp_seq
            } else {
                0
            },
        }
    }
}

impl TraceEvent {
    /// The traced packet's identity and tuple, read from its headers.
    fn packet(&self) -> Option<(PacketKey, Tuple)> {
        let h = &self.network;
        let (proto, ip_id, src, dst) = match h.first()? >> 4 {
            4 if h.len() >= 20 => (
                h[9],
                u16::from_be_bytes([h[4], h[5]]),
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&h[12..16]).ok()?)),
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&h[16..20]).ok()?)),
            ),
            6 if h.len() >= 40 => (
                h[6],
                0,
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[8..24]).ok()?)),
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[24..40]).ok()?)),
            ),
            _ => return None,
        };
        let t = &self.transport;
        let ports = |t: &[u8]| -> (u16, u16) {
            if t.len() >= 4 {
                (
                    u16::from_be_bytes([t[0], t[1]]),
                    u16::from_be_bytes([t[2], t[3]]),
                )
            } else {
                (0, 0)
            }
        };
        let (src_port, dst_port) = match Proto(proto) {
            Proto::TCP | Proto::UDP | Proto::SCTP => ports(t),
            _ => (0, 0),
        };
        let seq = if Proto(proto) == Proto::TCP && t.len() >= 8 {
            u32::from_be_bytes([t[4], t[5], t[6], t[7]])
        } else {
            0
        };
        Some((
            PacketKey { proto, ip_id, seq },
            Tuple {
                proto: Proto(proto),
                src,
                src_port,
                dst,
                dst_port,
            },
        ))
    }
}

/// How much of what nf_tables reports is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// The rules that translated or dropped a packet.
    Acting,
    /// Also each packet's walk through the chains: every rule it matched, with its verdict.
    Walk,
}

/// Which side of the packet a NAT rule rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Translation {
    /// SNAT, MASQUERADE: made at postrouting (or input).
    Source,
    /// DNAT, REDIRECT: made at prerouting (or output).
    Destination,
}

/// A rule (or a chain's policy) that acted on a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    /// The rule's handle; none when the chain's policy acted.
    pub handle: Option<u64>,
    /// The rule as `nft` prints it (`policy drop` for a policy), when it could be had.
    pub text: Option<String>,
    pub verdict: String,
}

impl Rule {
    /// `ip nat POSTROUTING: oifname != "docker0" ... masquerade`.
    pub fn describe(&self) -> String {
        let text = match (&self.text, self.handle) {
            (Some(text), _) => text.clone(),
            (None, Some(handle)) => format!("rule handle {handle}"),
            (None, None) => format!("policy {}", self.verdict),
        };
        format!("{} {} {}: {text}", self.family, self.table, self.chain)
    }
}

/// A primitive of the filter that nf_tables can test: an address or network on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetMatch {
    pub dst: bool,
    pub addr: IpAddr,
    pub prefix: u8,
}

/// A port or port range on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMatch {
    pub dst: bool,
    pub lo: u16,
    pub hi: u16,
}

/// One conjunction of tests that marks a packet for tracing: nf_tables' rules are
/// conjunctions, so the filter becomes one of these per alternative.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// `NFPROTO_IPV4` (2) or `NFPROTO_IPV6` (10).
    pub family: Option<u8>,
    pub proto: Option<u8>,
    pub nets: Vec<NetMatch>,
    pub ports: Vec<PortMatch>,
}

/// Most rules tracer adds per chain; past this the filter is traced more broadly.
const MAX_MATCHES: usize = 32;

/// The filter as nf_tables matches: alternatives (each in both directions), each a superset
/// of what the filter takes there. What nf_tables cannot test (`not`) widens the match, since
/// tracing more packets than asked only costs events that tracer's own filter drops. One empty
/// match (every packet) when there is no filter or too many alternatives; none when the filter
/// can match nothing.
pub fn matches(filter: Option<&Expr>) -> Vec<Match> {
    let Some(filter) = filter else {
        return vec![Match::default()];
    };
    let mut all = Vec::new();
    for m in dnf(filter) {
        let reversed = Match {
            nets: m
                .nets
                .iter()
                .map(|n| NetMatch {
                    dst: !n.dst,
                    ..n.clone()
                })
                .collect(),
            ports: m
                .ports
                .iter()
                .map(|p| PortMatch {
                    dst: !p.dst,
                    ..p.clone()
                })
                .collect(),
            ..m.clone()
        };
        for m in [m, reversed] {
            // Ports are read at the same offsets for TCP, UDP and SCTP, and only for them.
            let with_proto: Vec<Match> = if !m.ports.is_empty() && m.proto.is_none() {
                [Proto::TCP, Proto::UDP, Proto::SCTP]
                    .iter()
                    .map(|p| Match {
                        proto: Some(p.0),
                        ..m.clone()
                    })
                    .collect()
            } else {
                vec![m]
            };
            for m in with_proto {
                if !all.contains(&m) {
                    all.push(m);
                }
            }
        }
    }
    if all.len() > MAX_MATCHES {
        return vec![Match::default()];
    }
    // Empty when the filter can match nothing: then nothing is marked.
    all
}

/// The filter in disjunctive normal form over the tests nf_tables can make; a `not` becomes
/// "anything".
fn dnf(expr: &Expr) -> Vec<Match> {
    use crate::filter::Side;
    let side = |side: &Side| -> Vec<Vec<bool>> {
        match side {
            Side::Src => vec![vec![false]],
            Side::Dst => vec![vec![true]],
            Side::Either => vec![vec![false], vec![true]],
            Side::Both => vec![vec![false, true]],
        }
    };
    match expr {
        Expr::Family(family) => vec![Match {
            family: Some(if *family == 6 { 10 } else { 2 }),
            ..Match::default()
        }],
        Expr::Proto { proto, family } => vec![Match {
            family: family.map(|f| if f == 6 { 10 } else { 2 }),
            proto: Some(*proto),
            ..Match::default()
        }],
        Expr::Net {
            side: s,
            addr,
            prefix,
        } => side(s)
            .into_iter()
            .map(|dsts| Match {
                family: Some(if addr.is_ipv4() { 2 } else { 10 }),
                nets: dsts
                    .into_iter()
                    .map(|dst| NetMatch {
                        dst,
                        addr: *addr,
                        prefix: *prefix,
                    })
                    .collect(),
                ..Match::default()
            })
            .collect(),
        Expr::Port { side: s, lo, hi } => side(s)
            .into_iter()
            .map(|dsts| Match {
                ports: dsts
                    .into_iter()
                    .map(|dst| PortMatch {
                        dst,
                        lo: *lo,
                        hi: *hi,
                    })
                    .collect(),
                ..Match::default()
            })
            .collect(),
        Expr::Or(a, b) => {
            let mut all = dnf(a);
            all.extend(dnf(b));
            all
        }
        Expr::And(a, b) => {
            let (a, b) = (dnf(a), dnf(b));
            let mut all = Vec::new();
            for x in &a {
                for y in &b {
                    if let Some(m) = conjoin(x, y) {
                        all.push(m);
                    }
                    if all.len() > MAX_MATCHES {
                        return vec![Match::default()];
                    }
                }
            }
            all
        }
        Expr::Not(_) => vec![Match::default()],
    }
}

/// Both matches at once; `None` when they cannot both hold (two families or protocols).
fn conjoin(a: &Match, b: &Match) -> Option<Match> {
    let one = |x: Option<u8>, y: Option<u8>| match (x, y) {
        (Some(x), Some(y)) if x != y => Err(()),
        (x, y) => Ok(x.or(y)),
    };
    Some(Match {
        family: one(a.family, b.family).ok()?,
        proto: one(a.proto, b.proto).ok()?,
        nets: a.nets.iter().chain(&b.nets).cloned().collect(),
        ports: a.ports.iter().chain(&b.ports).cloned().collect(),
    })
}

/// Rule attribution: in every network namespace that has nf_tables tables, tracer's owned
/// table marking the filter's packets and a socket the kernel reports their walk to; and what
/// it reported.
pub struct Rules {
    pub detail: Detail,
    matches: Vec<Match>,
    places: Vec<Place>,
    /// Namespaces looked at, with tables or not, by inode.
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
    fn start(netns: u64, matches: &[Match]) -> io::Result<Option<Place>> {
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
    /// Rule attribution for the packets of `filter`, in no namespace yet.
    pub fn new(filter: Option<&Expr>, detail: Detail) -> Rules {
        Rules {
            detail,
            matches: matches(filter),
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
                crate::netns::run_in(ns.path, start).and_then(|started| started)
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

/// Why tracer's table could not be made, in words.
fn explain(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EINVAL) => {
            format!("the kernel refused an owned nf_tables table ({err}); it needs Linux 5.12+")
        }
        Some(libc::EEXIST) => {
            format!(
                "an nf_tables table inet {} exists already",
                netlink::table_name()
            )
        }
        _ => format!("cannot create tracer's nf_tables table: {err}"),
    }
}

/// Whether rules can be named here, and why not, for `tracer doctor`: tracer's table is
/// really created (with no rule in it) and the trace group joined.
pub fn probe() -> Result<String, String> {
    let table = netlink::OwnedTable::create(&[]).map_err(|err| explain(&err));
    let socket = netlink::TraceSocket::open();
    match (table, socket) {
        (Ok(_), Ok(_)) => {}
        (Err(err), _) => return Err(err),
        (_, Err(err)) => return Err(format!("no nf_tables trace events: {err}")),
    }
    let nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    let legacy = legacy_iptables();
    let mut notes = vec!["an owned nf_tables table and trace events work".to_owned()];
    if !nft {
        notes.push("nft is not installed: rules are named by table, chain and handle".into());
    }
    if legacy {
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
    std::process::Command::new("iptables")
        .arg("-V")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("legacy"))
}

/// How often a namespace without nf_tables tables is looked at again.
const RECHECK: Duration = Duration::from_secs(2);

/// How long trace events are kept for a packet to be joined to them.
const KEEP_NS: u64 = 5_000_000_000;
/// Most packets whose trace events are kept.
const MAX_PACKETS: usize = 65_536;

/// The trace events of recent packets, and the rule texts read so far.
#[derive(Default)]
pub struct RuleBook {
    /// Events of each packet, in the order received, with their tuple.
    packets: HashMap<PacketKey, Vec<(Tuple, TraceEvent)>>,
    /// The packet each trace id (in a namespace) was last seen as. The kernel puts the
    /// packet's headers only in the first event of each walk through a base chain; the events
    /// after it carry the walk's id alone.
    walking: HashMap<(u64, u32), (PacketKey, Tuple)>,
    /// Rules of translations not seen between hops, by flow, until their NAT record.
    flows: HashMap<(u64, Translation), Arc<Rule>>,
    /// (receive time, key) in arrival order, to forget old packets.
    order: VecDeque<(u64, PacketKey)>,
    texts: listing::Texts,
}

impl RuleBook {
    /// Adds a trace event received at `now_ns`; events of tracer's own table are skipped.
    pub fn add(&mut self, event: TraceEvent, now_ns: u64) {
        if netlink::is_tracers(event.family, &event.table) {
            return;
        }
        let walk = (event.netns, event.id);
        let (key, tuple) = match event.packet() {
            Some(packet) => {
                if self.walking.len() >= MAX_PACKETS {
                    self.walking.clear();
                }
                self.walking.insert(walk, packet);
                packet
            }
            None => match self.walking.get(&walk) {
                Some(&packet) => packet,
                None => return,
            },
        };
        let events = self.packets.entry(key).or_default();
        if events.is_empty() {
            self.order.push_back((now_ns, key));
        }
        events.push((tuple, event));
        while let Some(&(at, key)) = self.order.front() {
            if now_ns.saturating_sub(at) < KEEP_NS && self.order.len() <= MAX_PACKETS {
                break;
            }
            self.order.pop_front();
            self.packets.remove(&key);
        }
    }

    /// The rule that made the `translation` of the packet `key`: the last rule that accepted
    /// it in a walk through a `nat` chain at a hook where that translation is made, among the
    /// walks that saw the packet as `before` (any, when `None`).
    pub fn nat_rule(
        &mut self,
        key: PacketKey,
        before: Option<&Tuple>,
        translation: Translation,
    ) -> Option<Arc<Rule>> {
        let events = self.packets.get(&key)?;
        let walks = walks(events, |tuple| before.is_none_or(|b| tuple == b));
        let event = walks
            .iter()
            .filter_map(|(_, walk)| {
                let last = walk.last()?;
                let base = &walk.first()?.chain;
                let (kind, hook) =
                    self.texts
                        .base_chain(last.netns, last.family, &last.table, base)?;
                let hooks: &[&str] = match translation {
                    Translation::Source => &["postrouting", "input"],
                    Translation::Destination => &["prerouting", "output"],
                };
                (kind == "nat"
                    && hooks.contains(&hook)
                    && last.kind == TraceKind::Rule
                    && last.verdict == Verdict::Accept)
                    .then_some(*last)
            })
            .last()?
            .clone();
        Some(self.rule_of(&event))
    }

    /// Remembers the rule behind a flow's translation, for a NAT record that comes later
    /// (one known from conntrack, written when the flow ends).
    pub fn remember(&mut self, flow_id: u64, translation: Translation, rule: Arc<Rule>) {
        if self.flows.len() >= MAX_PACKETS {
            self.flows.clear();
        }
        self.flows.insert((flow_id, translation), rule);
    }

    /// The rule remembered for a flow's translation, forgotten as it is given.
    pub fn remembered(&mut self, flow_id: u64, translation: Translation) -> Option<Arc<Rule>> {
        self.flows.remove(&(flow_id, translation))
    }

    /// The packet's walks through the chains: every rule that matched it (and the policies
    /// and returns), in order, with the namespace and the tuple the walk saw.
    pub fn walks_of(&mut self, key: PacketKey) -> Vec<(u64, Tuple, Vec<Arc<Rule>>)> {
        let Some(events) = self.packets.get(&key) else {
            return Vec::new();
        };
        // The kernel also reports reaching the end of a chain, as a rule without a handle
        // that continues: nothing to show.
        let shown = |e: &&TraceEvent| e.kind != TraceKind::Rule || e.handle.is_some();
        let walks: Vec<(Tuple, Vec<TraceEvent>)> = walks(events, |_| true)
            .into_iter()
            .map(|(tuple, walk)| (tuple, walk.into_iter().filter(shown).cloned().collect()))
            .filter(|(_, walk): &(Tuple, Vec<TraceEvent>)| !walk.is_empty())
            .collect();
        walks
            .into_iter()
            .map(|(tuple, walk)| {
                let netns = walk.first().map_or(0, |e| e.netns);
                (netns, tuple, walk.iter().map(|e| self.rule_of(e)).collect())
            })
            .collect()
    }

    /// The rule or policy that dropped the packet `key`, seen with one of `tuples`.
    pub fn drop_rule(&mut self, key: PacketKey, tuples: &[Tuple]) -> Option<Arc<Rule>> {
        let events = self.packets.get(&key)?;
        let event = events
            .iter()
            .filter(|(tuple, _)| tuples.contains(tuple))
            .map(|(_, event)| event)
            .find(|event| event.verdict == Verdict::Drop)?
            .clone();
        Some(self.rule_of(&event))
    }

    fn rule_of(&mut self, event: &TraceEvent) -> Arc<Rule> {
        let text = match (event.kind, event.handle) {
            (TraceKind::Policy, _) => Some(format!("policy {}", event.verdict.name())),
            (_, Some(handle)) => self.texts.rule(
                event.netns,
                event.family,
                &event.table,
                &event.chain,
                handle,
            ),
            (_, None) => None,
        };
        Arc::new(Rule {
            family: event.family,
            table: event.table.clone(),
            chain: event.chain.clone(),
            handle: event.handle.filter(|_| event.kind != TraceKind::Policy),
            text,
            verdict: event.verdict.name(),
        })
    }
}

/// The packet's walks through base chains, among the events seen with a tuple `seen`
/// accepts: each from the event that entered a base chain (the one with the packet's headers)
/// to the one that ended the walk (accept, drop, a policy), with the tuple it saw.
fn walks(
    events: &[(Tuple, TraceEvent)],
    seen: impl Fn(&Tuple) -> bool,
) -> Vec<(Tuple, Vec<&TraceEvent>)> {
    let mut walks = Vec::new();
    let mut walk: Vec<&TraceEvent> = Vec::new();
    let mut tuple = None;
    for (t, event) in events {
        if !seen(t) {
            continue;
        }
        let enters = !event.network.is_empty();
        if (enters || walk.first().is_some_and(|first| first.id != event.id)) && !walk.is_empty() {
            walks.push((tuple.unwrap_or(*t), std::mem::take(&mut walk)));
        }
        if walk.is_empty() {
            tuple = Some(*t);
        }
        walk.push(event);
        let ends = event.kind == TraceKind::Policy
            || matches!(event.verdict, Verdict::Accept | Verdict::Drop);
        if ends {
            walks.push((tuple.unwrap_or(*t), std::mem::take(&mut walk)));
        }
    }
    if let (Some(t), false) = (tuple, walk.is_empty()) {
        walks.push((t, walk));
    }
    walks
}

#[cfg(test)]
mod tests;
