//! The two-node flannel-style overlay harness on its own, no tracer involved: pods reach each
//! other through the VXLAN tunnel, each fault stops traffic where it should and the kernel's
//! counters say where, kube-proxy's Service rules reach their endpoints, and nothing is left
//! once the overlay is dropped.

/// Named after the file, so that `cargo xtask test overlay_bed` selects these tests.
mod overlay_bed {
    use std::{
        io::{ErrorKind, Read as _, Write as _},
        net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
        time::Duration,
    };

    use tracer_tests::{
        netns::{Netns, run},
        overlay::{
            ETH_DEV, NodeId, Options, Overlay, VXLAN_DEV, VXLAN_OVERHEAD,
            fault::VxlanDf,
            probe::{self, UDP_HEADERS},
            service::{Endpoints, Service},
        },
        traffic,
    };

    /// Port of the pods' TCP listeners in the plain pod-to-pod tests.
    const PORT: u16 = 10001;
    /// Port of the pods' UDP sockets.
    const UDP_PORT: u16 = 10002;
    /// How long a connect may wait when its SYN is dropped: half the kernel's initial
    /// retransmission timeout (1 s), so exactly one SYN is sent.
    const CONNECT_WAIT: Duration = Duration::from_millis(500);

    fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    /// A connect from `from`'s pod to `to`'s pod on [`PORT`], expected to time out after
    /// [`CONNECT_WAIT`].
    fn connect_times_out(overlay: &Overlay, from: NodeId, to: NodeId) -> anyhow::Result<()> {
        let dst = addr(overlay.pod(to).addr, PORT);
        let attempt = overlay
            .pod(from)
            .netns
            .enter(|| TcpStream::connect_timeout(&dst, CONNECT_WAIT))?;
        assert_eq!(attempt.err().map(|e| e.kind()), Some(ErrorKind::TimedOut));
        Ok(())
    }

    /// The pods reach each other both ways, and see each other's own addresses: nothing on
    /// the overlay translates.
    #[test]
    fn pods_reach_each_other_across_nodes() -> anyhow::Result<()> {
        let overlay = Overlay::up(Options::default())?;
        for (from, to) in [(NodeId::A, NodeId::B), (NodeId::B, NodeId::A)] {
            let (client, server) = (overlay.pod(from), overlay.pod(to));
            let listener = traffic::listen(&server.netns, addr(server.addr, PORT))?;
            let dst = addr(server.addr, PORT);
            let mut outgoing = traffic::connect_from(&client.netns, None, dst)?;
            let mut incoming = traffic::accept(&listener)?;
            assert_eq!(incoming.peer_addr()?.ip(), client.addr);
            outgoing.write_all(b"ping\n")?;
            let mut buf = [0u8; 5];
            incoming.read_exact(&mut buf)?;
            incoming.write_all(b"pong\n")?;
            outgoing.read_exact(&mut buf)?;
            assert_eq!(&buf, b"pong\n");
        }
        // Both nodes' VXLAN devices carried it.
        for node in [NodeId::A, NodeId::B] {
            let stats = probe::link_stats(&overlay.node(node).netns, VXLAN_DEV)?;
            assert!(stats.tx_packets > 0 && stats.rx_packets > 0, "{stats:?}");
            assert_eq!(stats.tx_dropped, 0);
        }
        Ok(())
    }

    /// VXLAN dropped at node b's INPUT: the connect times out, node b's DROP rule counted the
    /// one encapsulated SYN, and nothing was decapsulated in node b.
    #[test]
    fn vxlan_dropped_on_the_peer_stops_at_its_input() -> anyhow::Result<()> {
        let overlay = Overlay::up(Options::default())?;
        let (b, pod_b) = (overlay.node(NodeId::B), overlay.pod(NodeId::B));
        let listener = traffic::listen(&pod_b.netns, addr(pod_b.addr, PORT))?;
        overlay.drop_vxlan_on(NodeId::B)?;
        let decapsulated = probe::link_stats(&b.netns, VXLAN_DEV)?.rx_packets;

        connect_times_out(&overlay, NodeId::A, NodeId::B)?;
        let drops = probe::rule_packets(&b.netns, "filter", "INPUT", "--dport 8472 -j DROP")?;
        assert_eq!(drops, 1);
        assert_eq!(
            probe::link_stats(&b.netns, VXLAN_DEV)?.rx_packets,
            decapsulated
        );
        assert!(!probe::pending(&listener)?);
        Ok(())
    }

    /// Without its FDB entry for the peer's VTEP, node a's `flannel.1` has nowhere to send:
    /// the SYN is dropped in node a's `vxlan_xmit`, counted as one TX drop of `flannel.1`.
    #[test]
    fn missing_fdb_entry_drops_in_the_sender() -> anyhow::Result<()> {
        let overlay = Overlay::up(Options::default())?;
        let a = overlay.node(NodeId::A);
        let pod_b = overlay.pod(NodeId::B);
        let listener = traffic::listen(&pod_b.netns, addr(pod_b.addr, PORT))?;
        overlay.remove_fdb(NodeId::A)?;
        let fdb = run(
            "bridge",
            &["-n", &a.netns.name, "fdb", "show", "dev", VXLAN_DEV],
        )?;
        assert!(!fdb.contains(&overlay.node(NodeId::B).vtep_mac), "{fdb}");
        let before = probe::link_stats(&a.netns, VXLAN_DEV)?;

        connect_times_out(&overlay, NodeId::A, NodeId::B)?;
        let after = probe::link_stats(&a.netns, VXLAN_DEV)?;
        assert_eq!(after.tx_dropped - before.tx_dropped, 1);
        assert!(!probe::pending(&listener)?);
        Ok(())
    }

    /// The underlay's MTU lowered under flannel.1's plus VXLAN's 50 bytes. With flannel's
    /// VXLAN device (outer DF unset) an inner DF datagram one byte too big still arrives, in
    /// two underlay fragments; once the outer header inherits DF, it is dropped in node a (one
    /// fragmentation failure) while one of exactly the largest size still arrives.
    #[test]
    fn too_small_underlay_mtu_drops_df_datagrams_over_it() -> anyhow::Result<()> {
        const UNDERLAY_MTU: u32 = 1400;
        let overlay = Overlay::up(Options::default())?;
        assert_eq!(overlay.options().effective_vxlan_mtu(), 1450);
        overlay.set_underlay_mtu(UNDERLAY_MTU)?;
        let fitting = usize::try_from(UNDERLAY_MTU - VXLAN_OVERHEAD)? - UDP_HEADERS;
        let (a, pod_a, pod_b) = (
            overlay.node(NodeId::A),
            overlay.pod(NodeId::A),
            overlay.pod(NodeId::B),
        );
        let dst = addr(pod_b.addr, UDP_PORT);
        let socket = traffic::udp_bind(&pod_b.netns, dst)?;

        let created = probe::snmp(&a.netns, "Ip", "FragCreates")?;
        probe::send_df(&pod_a.netns, dst, fitting + 1)?;
        assert_eq!(probe::recv_len(&socket)?, fitting + 1);
        assert_eq!(probe::snmp(&a.netns, "Ip", "FragCreates")? - created, 2);

        overlay.set_vxlan_df(VxlanDf::Inherit)?;
        let failed = probe::snmp(&a.netns, "Ip", "FragFails")?;
        probe::send_df(&pod_a.netns, dst, fitting + 1)?;
        probe::send_df(&pod_a.netns, dst, fitting)?;
        // Both took the same path in order: had the first arrived, it would come first.
        assert_eq!(probe::recv_len(&socket)?, fitting);
        assert_eq!(probe::snmp(&a.netns, "Ip", "FragFails")? - failed, 1);
        Ok(())
    }

    /// Connects from `client` to `dst`, accepts the connection on `listener` and checks data
    /// crosses both ways; the address the listener saw the connection come from.
    fn serve_one(
        client: &Netns,
        dst: SocketAddr,
        listener: &TcpListener,
    ) -> anyhow::Result<Ipv4Addr> {
        let mut outgoing = traffic::connect_from(client, None, dst)?;
        let mut incoming = traffic::accept(listener)?;
        outgoing.write_all(b"GET\n")?;
        let mut buf = [0u8; 4];
        incoming.read_exact(&mut buf)?;
        incoming.write_all(b"200\n")?;
        outgoing.read_exact(&mut buf)?;
        match incoming.peer_addr()? {
            SocketAddr::V4(peer) => Ok(*peer.ip()),
            SocketAddr::V6(peer) => anyhow::bail!("IPv6 peer {peer}"),
        }
    }

    /// The ClusterIP from pod a, with pod b as the only endpoint: DNAT to pod b across the
    /// overlay, not masqueraded (the client is inside the cluster CIDR).
    #[test]
    fn cluster_ip_reaches_the_single_endpoint() -> anyhow::Result<()> {
        let overlay = Overlay::up(Options::default())?;
        let service = overlay.web_service(NodeId::A, Endpoints::PeerPod)?;
        let (a, pod_a, pod_b) = (
            overlay.node(NodeId::A),
            overlay.pod(NodeId::A),
            overlay.pod(NodeId::B),
        );
        let listener = traffic::listen(&pod_b.netns, addr(pod_b.addr, service.target_port))?;
        let peer = serve_one(&pod_a.netns, service.cluster_addr().into(), &listener)?;
        assert_eq!(peer, pod_a.addr);

        let sep = service.sep_chain(pod_b.addr)?;
        let dnat = format!("--to-destination {}:8080", pod_b.addr);
        assert_eq!(probe::rule_packets(&a.netns, "nat", &sep, &dnat)?, 1);
        let masquerade = probe::rule_packets(&a.netns, "nat", "KUBE-POSTROUTING", "MASQUERADE")?;
        assert_eq!(masquerade, 0);
        Ok(())
    }

    /// The NodePort on node a's underlay address, from node b's host network: DNAT to pod b
    /// and masquerade to node a's `flannel.1` address, the way back across the overlay.
    #[test]
    fn node_port_reaches_the_single_endpoint() -> anyhow::Result<()> {
        let overlay = Overlay::up(Options::default())?;
        let service = overlay.web_service(NodeId::A, Endpoints::PeerPod)?;
        let (a, b, pod_b) = (
            overlay.node(NodeId::A),
            overlay.node(NodeId::B),
            overlay.pod(NodeId::B),
        );
        let listener = traffic::listen(&pod_b.netns, addr(pod_b.addr, service.target_port))?;
        let dst = addr(a.underlay_addr, service.node_port);
        let peer = serve_one(&b.netns, dst, &listener)?;
        assert_eq!(peer, a.vtep_addr);

        let ext = service.ext_chain()?;
        assert_eq!(
            probe::rule_packets(&a.netns, "nat", &ext, "KUBE-MARK-MASQ")?,
            1
        );
        let masquerade = probe::rule_packets(&a.netns, "nat", "KUBE-POSTROUTING", "MASQUERADE")?;
        assert_eq!(masquerade, 1);
        Ok(())
    }

    /// Both pods behind the ClusterIP: each connection from pod a lands on exactly one, the
    /// one whose `KUBE-SEP` chain counted it; pod b sees pod a's address, pod a (reaching
    /// itself through the Service) the bridge's, as kube-proxy masquerades hairpin traffic.
    /// Connections are made until both endpoints were picked (at most 64: the chance that 64
    /// coin flips all agree is 2^-63).
    #[test]
    fn cluster_ip_balances_over_both_pods() -> anyhow::Result<()> {
        let overlay = Overlay::up(Options::default())?;
        let service = overlay.web_service(NodeId::A, Endpoints::BothPods)?;
        let restore = service.restore_input()?;
        assert!(
            restore.contains(
                "-m comment --comment \"default/web:http -> 10.244.1.2:8080\" \
                 -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-"
            ),
            "{restore}"
        );
        let (a, pod_a, pod_b) = (
            overlay.node(NodeId::A),
            overlay.pod(NodeId::A),
            overlay.pod(NodeId::B),
        );
        let pods = [pod_a, pod_b];
        let listeners = pods
            .iter()
            .map(|pod| traffic::listen(&pod.netns, addr(pod.addr, service.target_port)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut picked = [0u64; 2];
        let mut connections = 0;
        while picked.contains(&0) {
            assert!(connections < 64, "always the same endpoint: {picked:?}");
            connections += 1;
            let mut outgoing =
                traffic::connect_from(&pod_a.netns, None, service.cluster_addr().into())?;
            let (index, mut incoming) = probe::accept_any(&[&listeners[0], &listeners[1]])?;
            outgoing.write_all(b"GET\n")?;
            let mut buf = [0u8; 4];
            incoming.read_exact(&mut buf)?;
            picked[index] += 1;
            let expected_peer = if index == 0 {
                a.bridge_addr
            } else {
                pod_a.addr
            };
            assert_eq!(incoming.peer_addr()?.ip(), expected_peer);
            for (pod, count) in pods.iter().zip(picked) {
                let sep = service.sep_chain(pod.addr)?;
                let dnat = format!("--to-destination {}:8080", pod.addr);
                assert_eq!(probe::rule_packets(&a.netns, "nat", &sep, &dnat)?, count);
            }
            for listener in &listeners {
                assert!(!probe::pending(listener)?);
            }
        }
        Ok(())
    }

    /// kube-proxy's chain names for a Service port and an endpoint, from kube-proxy's own
    /// tests (`ns1/svc1:p80` over TCP, endpoint 10.180.0.1:80).
    #[test]
    fn chain_names_are_kube_proxys() -> anyhow::Result<()> {
        let service = Service {
            namespace: "ns1".to_owned(),
            name: "svc1".to_owned(),
            port_name: "p80".to_owned(),
            target_port: 80,
            ..Service::web(Vec::new())
        };
        assert_eq!(service.svc_chain()?, "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(service.ext_chain()?, "KUBE-EXT-XPGD46QRK7WJZT7O");
        let endpoint = Ipv4Addr::new(10, 180, 0, 1);
        assert_eq!(service.sep_chain(endpoint)?, "KUBE-SEP-SXIVWICOYRO3J4NJ");
        Ok(())
    }

    /// Every namespace is there while the overlay lives, with its faults and Service, and
    /// none is left once it is dropped.
    #[test]
    fn nothing_is_left_after_drop() -> anyhow::Result<()> {
        let ours = |prefix: &str| -> anyhow::Result<Vec<String>> {
            let mut names: Vec<String> = run("ip", &["netns", "list"])?
                .lines()
                .filter_map(|line| line.split_whitespace().next())
                .filter(|name| name.starts_with(prefix))
                .map(str::to_owned)
                .collect();
            names.sort();
            Ok(names)
        };
        let overlay = Overlay::up(Options::default())?;
        let prefix = overlay.prefix();
        overlay.web_service(NodeId::A, Endpoints::BothPods)?;
        overlay.drop_vxlan_on(NodeId::B)?;
        overlay.remove_fdb(NodeId::B)?;
        overlay.set_underlay_mtu(1280)?;
        let mut names: Vec<String> = overlay.namespaces().map(|ns| ns.name.clone()).collect();
        names.sort();
        assert_eq!(names.len(), 4);
        assert_eq!(ours(&prefix)?, names);
        let a = overlay.node(NodeId::A);
        let mtu = run("ip", &["-n", &a.netns.name, "link", "show", ETH_DEV])?;
        assert!(mtu.contains("mtu 1280"), "{mtu}");
        drop(overlay);
        assert_eq!(ours(&prefix)?, Vec::<String>::new());
        Ok(())
    }
}
