//! Route netlink dumps of one network namespace: links (with their overlay parameters),
//! addresses, default routes, VXLAN forwarding entries, and the ids under which it knows other
//! namespaces.
//!
//! A netlink socket belongs to the namespace it was created in, so [`Netlink::open_in`] creates
//! it inside the target namespace and every later request on it describes that namespace.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    os::fd::{AsRawFd, BorrowedFd},
    path::Path,
};

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::NeighbourMessage,
    nsid::{NsidAttribute, NsidMessage},
    route::{RouteAttribute, RouteMessage},
    tc::{TcHandle, TcMessage},
};

/// `TC_H_CLSACT`: the clsact qdisc's parent handle (include/uapi/linux/pkt_sched.h).
const TC_H_CLSACT: u32 = 0xffff_fff1;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{
    Link, LinkKind,
    overlay::{self, FdbPeer, OverlayKind},
};
use crate::netns;

/// A route netlink socket in one namespace.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    /// A socket in the calling thread's namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            sequence: 0,
        })
    }

    /// A socket in the namespace at `path`.
    pub fn open_in(path: &Path) -> io::Result<Netlink> {
        netns::run_in(path, Netlink::open)?
    }

    /// Every link with its addresses, and whether it carries a default route.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let mut links: Vec<Link> = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
            .into_iter()
            .filter_map(|message| match message {
                RouteNetlinkMessage::NewLink(link) => Some(link_from(&link)),
                _ => None,
            })
            .collect();
        for message in self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))? {
            if let RouteNetlinkMessage::NewAddress(address) = message
                && let Some((ifindex, addr, prefix)) = address_from(&address)
                && let Some(link) = links.iter_mut().find(|l| l.ifindex == ifindex)
            {
                link.addresses.push((addr, prefix));
            }
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = RouteMessage::default();
            request.header.address_family = family;
            for message in self.dump(RouteNetlinkMessage::GetRoute(request))? {
                if let RouteNetlinkMessage::NewRoute(route) = message
                    && route.header.destination_prefix_length == 0
                    && let Some(oif) = route.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(oif) => Some(*oif),
                        _ => None,
                    })
                    && let Some(link) = links.iter_mut().find(|l| l.ifindex == oif)
                {
                    link.default_route = true;
                }
            }
        }
        for link in &mut links {
            if let Some(overlay) = &mut link.overlay
                && overlay.kind == OverlayKind::Vxlan
            {
                overlay.peers = self.fdb(link.ifindex)?;
            }
        }
        Ok(links)
    }

    /// The forwarding entries of the VXLAN device `ifindex` that send to remote endpoints.
    ///
    /// With strict checking, the kernel dumps only the device's entries (`rtnl_fdb_dump`
    /// takes `ndm_ifindex` as the port to dump); without (before Linux 4.20, or where the
    /// filtered dump is refused), it dumps every device's. The entries are picked here either
    /// way.
    pub fn fdb(&mut self, ifindex: u32) -> io::Result<Vec<FdbPeer>> {
        let filtered = if self.socket.set_netlink_get_strict_chk(true).is_ok() {
            let replies = self.fdb_dump(ifindex);
            self.socket.set_netlink_get_strict_chk(false)?;
            replies.ok()
        } else {
            None
        };
        let replies = match filtered {
            Some(replies) => replies,
            None => self.fdb_dump(0)?,
        };
        Ok(replies
            .iter()
            .filter_map(|message| match message {
                RouteNetlinkMessage::NewNeighbour(neighbour) => {
                    overlay::decode::fdb_peer(neighbour)
                }
                _ => None,
            })
            .filter(|(device, _)| *device == ifindex)
            .map(|(_, peer)| peer)
            .collect())
    }

    /// A bridge-family neighbour dump, of the device `ifindex` under strict checking, of
    /// every device with 0.
    fn fdb_dump(&mut self, ifindex: u32) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Bridge;
        request.header.ifindex = ifindex;
        self.dump(RouteNetlinkMessage::GetNeighbour(request))
    }

    /// Deletes the clsact qdisc of `ifindex` (with whatever filters remain on it).
    pub fn delete_clsact(&mut self, ifindex: u32) -> io::Result<()> {
        let mut message = TcMessage::default();
        message.header.index = ifindex as i32;
        message.header.parent = TcHandle::from(TC_H_CLSACT);
        message.header.handle = TcHandle::from(TC_H_CLSACT & 0xffff_0000);
        self.request(
            RouteNetlinkMessage::DelQueueDiscipline(message),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(drop)
    }

    /// The id this namespace gives the namespace open at `other`, if it assigned one.
    pub fn nsid_of(&mut self, other: BorrowedFd<'_>) -> io::Result<Option<i32>> {
        let mut request = NsidMessage::default();
        request.header.family = AddressFamily::Unspec;
        request
            .attributes
            .push(NsidAttribute::Fd(other.as_raw_fd() as u32));
        let replies = self.request(RouteNetlinkMessage::GetNsId(request), NLM_F_REQUEST)?;
        Ok(replies.into_iter().find_map(|message| match message {
            RouteNetlinkMessage::NewNsId(reply) => reply.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                _ => None,
            }),
            _ => None,
        }))
    }

    fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.request(message, NLM_F_REQUEST | NLM_F_DUMP)
    }

    /// Sends one request and collects the replies until the kernel says it is done (for
    /// dumps) or after the first reply (for plain requests).
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence += 1;
        let mut packet = NetlinkMessage::from(message);
        packet.header.flags = flags;
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;

        let dump = flags & NLM_F_DUMP != 0;
        let mut replies = Vec::new();
        let mut receive = Vec::with_capacity(1 << 16);
        loop {
            receive.clear();
            let size = self.socket.recv(&mut receive, 0)?;
            let mut offset = 0;
            while offset < size {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[offset..size])
                        .map_err(|err| {
                            io::Error::new(io::ErrorKind::InvalidData, err.to_string())
                        })?;
                offset += message.header.length as usize;
                if message.header.length == 0 {
                    break;
                }
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(err) => match err.code {
                        // An acknowledgement ends a request that expects no reply.
                        None if !dump => return Ok(replies),
                        None => {}
                        Some(code) => return Err(io::Error::from_raw_os_error(-code.get())),
                    },
                    NetlinkPayload::InnerMessage(inner) => {
                        replies.push(inner);
                        if !dump {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
            if !dump && !replies.is_empty() {
                return Ok(replies);
            }
        }
    }
}

pub(super) fn link_from(message: &LinkMessage) -> Link {
    let mut link = Link {
        ifindex: message.header.index,
        name: String::new(),
        kind: LinkKind::Other(String::new()),
        master: None,
        peer_ifindex: None,
        peer_netnsid: None,
        up: message.header.flags.contains(LinkFlags::Up),
        addresses: Vec::new(),
        default_route: false,
        overlay: None,
    };
    if message.header.flags.contains(LinkFlags::Loopback) {
        link.kind = LinkKind::Loopback;
    }
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Controller(master) => link.master = Some(*master),
            LinkAttribute::Link(peer) => link.peer_ifindex = Some(*peer),
            LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                link.overlay = overlay::decode::from_link_info(infos);
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = match kind {
                            InfoKind::Veth => LinkKind::Veth,
                            InfoKind::Bridge => LinkKind::Bridge,
                            other => LinkKind::Other(other.to_string()),
                        };
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(overlay) = &mut link.overlay {
        // A tunnel's IFLA_LINK_NETNSID is where its underlay device is.
        overlay.underlay_netnsid = link.peer_netnsid;
    }
    if link.kind != LinkKind::Veth {
        // Only a veth's IFLA_LINK names a peer; for other kinds it is a lower device.
        link.peer_ifindex = None;
        link.peer_netnsid = None;
    }
    link
}

fn address_from(message: &AddressMessage) -> Option<(u32, IpAddr, u8)> {
    let addr = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(addr) => Some(*addr),
        _ => None,
    });
    let addr = addr.or_else(|| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(addr) => Some(*addr),
            _ => None,
        })
    })?;
    Some((message.header.index, addr, message.header.prefix_len))
}

/// The ids namespace `from` (a netlink socket in it) gives to `others`, by inode.
pub fn nsids(
    from: &mut Netlink,
    others: &[(u64, BorrowedFd<'_>)],
    wanted: &[i32],
) -> HashMap<i32, u64> {
    let mut found = HashMap::new();
    for (inode, fd) in others {
        if wanted.iter().all(|id| found.contains_key(id)) {
            break;
        }
        if let Ok(Some(id)) = from.nsid_of(*fd) {
            found.insert(id, *inode);
        }
    }
    found
}
