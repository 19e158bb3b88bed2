//! Faults a test turns on in a running overlay, each where it happens in a real cluster: a
//! firewall that drops VXLAN, a lost forwarding entry, an underlay whose MTU shrank.

use super::{ETH_DEV, NodeId, Overlay, VXLAN_DEV, VXLAN_PORT};

/// How the VXLAN devices set DF on the outer (underlay) header: `ip link ... type vxlan df`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VxlanDf {
    /// Never set (the kernel's default, and flannel's): an encapsulated packet too big for the
    /// underlay is fragmented there, whatever the inner packet's DF.
    Unset,
    /// Always set.
    Set,
    /// Copied from the inner IPv4 header: an inner packet with DF that is too big once
    /// encapsulated is dropped in the sending node.
    Inherit,
}

impl VxlanDf {
    fn keyword(self) -> &'static str {
        match self {
            VxlanDf::Unset => "unset",
            VxlanDf::Set => "set",
            VxlanDf::Inherit => "inherit",
        }
    }
}

impl Overlay {
    /// Drops VXLAN arriving at `node`: `iptables -I INPUT -p udp --dport 8472 -j DROP` in its
    /// namespace. Encapsulated packets then die in the node's INPUT hook.
    pub fn drop_vxlan_on(&self, node: NodeId) -> anyhow::Result<()> {
        let port = VXLAN_PORT.to_string();
        self.node(node).netns.exec(
            "iptables",
            &["-I", "INPUT", "-p", "udp", "--dport", &port, "-j", "DROP"],
        )?;
        Ok(())
    }

    /// Removes `node`'s FDB entry for the peer's VTEP: `flannel.1` then has no underlay
    /// destination for the peer's MAC and the kernel drops (`NO_TX_TARGET` in `vxlan_xmit`).
    pub fn remove_fdb(&self, node: NodeId) -> anyhow::Result<()> {
        let (this, peer) = (self.node(node), self.node(node.peer()));
        let dst = peer.underlay_addr.to_string();
        this.netns.exec(
            "bridge",
            &["fdb", "del", &peer.vtep_mac, "dev", VXLAN_DEV, "dst", &dst],
        )?;
        Ok(())
    }

    /// Sets the MTU of the underlay link (both ends), leaving `flannel.1` as it is: below the
    /// VXLAN MTU plus [`VXLAN_OVERHEAD`](super::VXLAN_OVERHEAD), large inner packets no longer
    /// fit once encapsulated (see [`Overlay::set_vxlan_df`] for what then happens to them).
    pub fn set_underlay_mtu(&self, mtu: u32) -> anyhow::Result<()> {
        for node in &self.nodes {
            node.netns
                .ip(&["link", "set", ETH_DEV, "mtu", &mtu.to_string()])?;
        }
        Ok(())
    }

    /// Sets how both VXLAN devices set DF on the outer header.
    pub fn set_vxlan_df(&self, df: VxlanDf) -> anyhow::Result<()> {
        for node in &self.nodes {
            node.netns.ip(&[
                "link",
                "set",
                VXLAN_DEV,
                "type",
                "vxlan",
                "df",
                df.keyword(),
            ])?;
        }
        Ok(())
    }
}
