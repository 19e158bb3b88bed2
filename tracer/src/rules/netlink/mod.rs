//! nf_tables over netlink: tracer's own table, and the trace events the kernel sends.
//!
//! The table is created with the owner flag (`NFT_TABLE_F_OWNER`, Linux 5.12+): it belongs to
//! the netlink socket that made it and the kernel deletes it when that socket closes, however
//! the process ends. Its chains only set `meta nftrace` on packets the filter can match; the
//! kernel then reports every chain and rule such a packet traverses to the `NFNLGRP_NFTRACE`
//! group.
//!
//! No maintained crate decodes trace events, and the crates that build rules either open a
//! socket per batch (which would take an owned table with it) or need libclang to build; the
//! few messages here are written with a small attribute writer ([`message`]) and read with
//! `netlink-packet-core`'s attribute parser. Errors keep the kernel's extended-ack text
//! (`NETLINK_EXT_ACK`) and which request of a batch it refused.

mod comments;
mod message;
mod report;
mod table;

use std::io;

use netlink_packet_core::NlasIterator;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

pub use comments::xt_comments;
pub use table::Request;

use super::{matches::Match, trace::TraceEvent};
use message::{Message, c_string, messages, nft_type};

/// What the names of tracer's tables (in the `inet` family) start with.
pub const TABLE_PREFIX: &str = "tracer-";

/// The name of this process's table, `tracer-PID`: tracers running at once each have their
/// own.
pub fn table_name() -> String {
    format!("{TABLE_PREFIX}{}", std::process::id())
}

/// Whether a table is a tracer's (this one's or another's running at the same time).
pub fn is_tracers(family: &str, table: &str) -> bool {
    family == "inet" && table.starts_with(TABLE_PREFIX)
}

/// What went wrong talking to nf_tables.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket failed: opening, binding, sending or receiving.
    #[error("netlink: {0}")]
    Socket(#[from] io::Error),
    /// The kernel refused a request, saying why in its extended acknowledgement when it did.
    #[error("the kernel refused {}: {}{}", describe(.request), io::Error::from_raw_os_error(*.errno), .message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Refused {
        /// The request it refused, where tracer knows it.
        request: Option<Request>,
        errno: i32,
        /// The kernel's own text (`NLMSGERR_ATTR_MSG`).
        message: Option<String>,
    },
}

impl NetlinkError {
    /// The errno of the failure, whichever side it came from.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Socket(err) => err.raw_os_error(),
            NetlinkError::Refused { errno, .. } => Some(*errno),
        }
    }
}

fn describe(request: &Option<Request>) -> String {
    match request {
        Some(Request::Table) => format!("the table inet {}", table_name()),
        Some(Request::Chain(chain)) => format!("the chain {chain} of tracer's table"),
        Some(Request::Rule(chain)) => format!("a rule of tracer's chain {chain}"),
        None => "a request".to_owned(),
    }
}

/// A netfilter netlink socket that sends to the kernel and asks for extended acknowledgements
/// (errors carry the kernel's text and only the refused request's header).
fn socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // Kernels before 4.12 have neither option; their errors then come without a text.
    let _ = socket.set_ext_ack(true);
    let _ = socket.set_cap_ack(true);
    Ok(socket)
}

/// tracer's table in the current network namespace, there while this value lives: dropping
/// it closes the socket, and the kernel deletes the table.
pub struct OwnedTable {
    _socket: Socket,
}

impl OwnedTable {
    /// Creates the table with a chain at prerouting and one at output, each marking the
    /// packets of `matches` (every packet when it holds one empty match).
    pub fn create(matches: &[Match]) -> Result<OwnedTable, NetlinkError> {
        let socket = socket()?;
        send_batch(&socket, table::batch(&table_name(), matches))?;
        Ok(OwnedTable { _socket: socket })
    }
}

/// Whether the kernel takes tables owned by their socket (Linux 5.12): creates one, alone,
/// under a name of its own, which the kernel deletes again as the socket closes on return.
pub fn owner_flag_works() -> Result<(), NetlinkError> {
    let socket = socket()?;
    send_batch(
        &socket,
        table::bare_table(&format!("{}-check", table_name())),
    )
}

/// Sends a batch and waits for the kernel's answer to each of its `requests`: the first error
/// is the answer.
fn send_batch(
    socket: &Socket,
    (batch, requests): (Vec<u8>, Vec<(u32, Request)>),
) -> Result<(), NetlinkError> {
    socket.send(&batch, 0)?;
    // An acknowledgement (error 0) or an error for every request of the batch but its two
    // ends.
    let mut acked = 0;
    let mut buf = vec![0u8; 1 << 16];
    while acked < requests.len() {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        for ack in messages(&buf[..n]).filter_map(|m| m.ack()) {
            if ack.code != 0 {
                let request = requests
                    .iter()
                    .find(|(seq, _)| *seq == ack.seq)
                    .map(|&(_, request)| request);
                return Err(NetlinkError::Refused {
                    request,
                    errno: -ack.code,
                    message: ack.message,
                });
            }
            acked += 1;
        }
    }
    Ok(())
}

/// Whether the current network namespace has nf_tables tables (tracer's own aside): a dump of
/// the tables, by netlink.
pub fn has_tables() -> Result<bool, NetlinkError> {
    let socket = socket()?;
    let request = Message::new(
        nft_type(libc::NFT_MSG_GETTABLE),
        (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        1,
        0,
        0,
    );
    socket.send(&request.finish(), 0)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut found = false;
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        if n == 0 {
            return Ok(found);
        }
        for message in messages(&buf[..n]) {
            if message.kind == libc::NLMSG_DONE as u16 {
                return Ok(found);
            }
            if let Some(ack) = message.ack() {
                return if ack.code == 0 {
                    Ok(found)
                } else {
                    Err(NetlinkError::Refused {
                        request: None,
                        errno: -ack.code,
                        message: ack.message,
                    })
                };
            }
            let name = NlasIterator::new(message.payload)
                .filter_map(Result::ok)
                .find(|nla| nla.kind() == NFTA_TABLE_NAME)
                .and_then(|nla| c_string(nla.value()));
            found |= !name.is_some_and(|name| is_tracers(family_name(message.family), &name));
        }
    }
}

/// `NFTA_TABLE_NAME`, as a table dump carries it.
const NFTA_TABLE_NAME: u16 = 1;

/// A socket that receives the kernel's trace events for the current network namespace.
pub struct TraceSocket {
    socket: Socket,
    buf: Vec<u8>,
}

impl TraceSocket {
    pub fn open() -> io::Result<TraceSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.add_membership(libc::NFNLGRP_NFTRACE as u32)?;
        // Bursts of traced packets come faster than they are read at times; a larger buffer
        // loses fewer (a lost event only leaves a rule unnamed).
        socket.set_rx_buf_sz(4 << 20)?;
        Ok(TraceSocket {
            socket,
            buf: vec![0; 1 << 16],
        })
    }

    /// The trace events of the next datagram if one is waiting. `ENOBUFS` (events were
    /// lost) is an error the caller may count and go on from.
    pub fn try_recv(&mut self) -> io::Result<Option<Vec<TraceEvent>>> {
        let n = match self.socket.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(err) => return Err(err),
        };
        Ok(Some(
            messages(&self.buf[..n])
                .filter(|m| m.kind == nft_type(libc::NFT_MSG_TRACE))
                .filter_map(|m| report::trace_event(m.family, m.payload))
                .collect(),
        ))
    }
}

/// The family as `nft` names it (`NFPROTO_*`).
pub fn family_name(family: u8) -> &'static str {
    match i32::from(family) {
        libc::NFPROTO_INET => "inet",
        libc::NFPROTO_IPV4 => "ip",
        libc::NFPROTO_IPV6 => "ip6",
        libc::NFPROTO_UNSPEC => "unspec",
        libc::NFPROTO_ARP => "arp",
        libc::NFPROTO_NETDEV => "netdev",
        libc::NFPROTO_BRIDGE => "bridge",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_request_and_keeps_the_kernels_text() {
        let err = NetlinkError::Refused {
            request: Some(Request::Chain("prerouting-ct")),
            errno: libc::EINVAL,
            message: Some("Unknown ct key".into()),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("the kernel refused the chain prerouting-ct of tracer's table: "),
            "{text}"
        );
        assert!(text.ends_with(" (Unknown ct key)"), "{text}");
        assert_eq!(err.errno(), Some(libc::EINVAL));
    }
}
