//! The places in the kernel where tracer observes packets, and the names of the programs and
//! maps in the object that tracer-ebpf builds. The collector finds programs and maps by these
//! names; a unit test of the collector checks every one against the built object.

/// Where an event was taken. The numeric values are part of the event layout.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `net_dev_queue` tracepoint: a packet handed to a device for transmission (`dev_queue_xmit`).
    NetDevQueue = 1,
    /// `net_dev_start_xmit` tracepoint: the driver is about to transmit the packet.
    NetDevStartXmit = 2,
    /// `netif_rx` tracepoint: a packet queued to a CPU's backlog (veth delivers to its peer this way).
    NetifRx = 3,
    /// `netif_receive_skb` tracepoint: a packet entering the receive path of a device.
    NetifReceiveSkb = 4,
    /// TC classifier on a device's ingress.
    TcIngress = 5,
    /// TC classifier on a device's egress.
    TcEgress = 6,
    /// `nf_nat_manip_pkt()` entry (fentry or kprobe): netfilter is about to rewrite the packet.
    NfNatManipPkt = 7,
    /// `kfree_skb` tracepoint: the packet was dropped, with the kernel's drop reason.
    KfreeSkb = 8,
}

impl Hook {
    /// Every hook, in the order of the values above.
    pub const ALL: [Hook; 8] = [
        Hook::NetDevQueue,
        Hook::NetDevStartXmit,
        Hook::NetifRx,
        Hook::NetifReceiveSkb,
        Hook::TcIngress,
        Hook::TcEgress,
        Hook::NfNatManipPkt,
        Hook::KfreeSkb,
    ];

    /// The hook for a raw value from an event, if it is known.
    pub const fn from_u8(value: u8) -> Option<Hook> {
        match value {
            1 => Some(Hook::NetDevQueue),
            2 => Some(Hook::NetDevStartXmit),
            3 => Some(Hook::NetifRx),
            4 => Some(Hook::NetifReceiveSkb),
            5 => Some(Hook::TcIngress),
            6 => Some(Hook::TcEgress),
            7 => Some(Hook::NfNatManipPkt),
            8 => Some(Hook::KfreeSkb),
            _ => None,
        }
    }

    /// The name used in every output, equal to the kernel's tracepoint name where there is one.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::NetDevQueue => "net_dev_queue",
            Hook::NetDevStartXmit => "net_dev_start_xmit",
            Hook::NetifRx => "netif_rx",
            Hook::NetifReceiveSkb => "netif_receive_skb",
            Hook::TcIngress => "tc_ingress",
            Hook::TcEgress => "tc_egress",
            Hook::NfNatManipPkt => "nf_nat_manip_pkt",
            Hook::KfreeSkb => "kfree_skb",
        }
    }

    /// Whether the packet is leaving the device at this hook (as opposed to arriving on it).
    pub const fn is_egress(self) -> bool {
        matches!(
            self,
            Hook::NetDevQueue | Hook::NetDevStartXmit | Hook::TcEgress
        )
    }
}

/// Program names in the eBPF object: the names of the entry functions in tracer-ebpf.
pub mod program {
    pub const NET_DEV_QUEUE: &str = "net_dev_queue";
    pub const NET_DEV_QUEUE_RAW: &str = "net_dev_queue_raw";
    pub const NET_DEV_START_XMIT: &str = "net_dev_start_xmit";
    pub const NET_DEV_START_XMIT_RAW: &str = "net_dev_start_xmit_raw";
    pub const NETIF_RX: &str = "netif_rx";
    pub const NETIF_RX_RAW: &str = "netif_rx_raw";
    pub const NETIF_RECEIVE_SKB: &str = "netif_receive_skb";
    pub const NETIF_RECEIVE_SKB_RAW: &str = "netif_receive_skb_raw";
    pub const KFREE_SKB: &str = "kfree_skb";
    pub const KFREE_SKB_RAW: &str = "kfree_skb_raw";
    /// `kfree_skb` on kernels whose tracepoint has no drop reason (before Linux 5.17).
    pub const KFREE_SKB_BARE: &str = "kfree_skb_bare";
    pub const KFREE_SKB_BARE_RAW: &str = "kfree_skb_bare_raw";
    pub const NF_NAT_MANIP_PKT_FENTRY: &str = "nf_nat_manip_pkt_fentry";
    pub const NF_NAT_MANIP_PKT_KPROBE: &str = "nf_nat_manip_pkt_kprobe";
    pub const TC_INGRESS: &str = "tc_ingress";
    pub const TC_EGRESS: &str = "tc_egress";
    /// `cgroup/sock_create`: who created each socket.
    pub const SOCK_CREATE: &str = "sock_create";
    /// `cgroup/sock_release`: when each socket went away.
    pub const SOCK_RELEASE: &str = "sock_release";
}

/// Map names in the eBPF object: the names of the map statics in tracer-ebpf.
pub mod map {
    /// The ring buffer of events.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU counters per hook (see `event::Counter`).
    pub const COUNTERS: &str = "COUNTERS";
    /// Connections the filter matched (see `flow::FlowKey`).
    pub const TRACKED: &str = "TRACKED";
}
