//! Reading the TCP/IPv4 segments of a classic pcap file as tcpdump writes it (Ethernet link
//! type, microsecond or nanosecond timestamps, either byte order): only what the observer
//! benchmark matches packets on.

use anyhow::{bail, ensure};

/// `LINKTYPE_ETHERNET`.
const LINKTYPE_ETHERNET: u32 = 1;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;

/// One TCP segment as captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Capture time, ns since the epoch.
    pub ts_ns: u64,
    pub src_port: u16,
    pub dst_port: u16,
    /// Raw sequence and acknowledgement numbers.
    pub seq: u32,
    pub ack: u32,
    /// The TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, ...).
    pub flags: u8,
    pub payload_len: u32,
}

/// The TCP/IPv4 segments in a pcap file's bytes; other packets are skipped, and a record cut
/// short at the end of the file ends the list.
pub fn tcp_segments(bytes: &[u8]) -> anyhow::Result<Vec<Segment>> {
    ensure!(bytes.len() >= 24, "not a pcap file: {} bytes", bytes.len());
    let magic = u32::from_le_bytes(bytes[0..4].try_into()?);
    let (little, nanos) = match magic {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        _ => bail!("not a pcap file (magic {magic:#x})"),
    };
    let u32_at = |b: &[u8], at: usize| -> u32 {
        let raw: [u8; 4] = b[at..at + 4].try_into().expect("four bytes");
        if little {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        }
    };
    let linktype = u32_at(bytes, 20) & 0xffff;
    ensure!(
        linktype == LINKTYPE_ETHERNET,
        "pcap link type {linktype}, expected Ethernet"
    );
    let mut segments = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let (sec, frac) = (u32_at(bytes, at), u32_at(bytes, at + 4));
        let len = u32_at(bytes, at + 8) as usize;
        let Some(frame) = bytes.get(at + 16..at + 16 + len) else {
            break;
        };
        let ts_ns =
            u64::from(sec) * 1_000_000_000 + u64::from(frac) * if nanos { 1 } else { 1_000 };
        if let Some(segment) = parse_frame(frame, ts_ns) {
            segments.push(segment);
        }
        at += 16 + len;
    }
    Ok(segments)
}

fn parse_frame(frame: &[u8], ts_ns: u64) -> Option<Segment> {
    let be16 = |b: &[u8], at: usize| Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?));
    let be32 = |b: &[u8], at: usize| Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?));
    if be16(frame, 12)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || *ip.get(9)? != IPPROTO_TCP {
        return None;
    }
    let total_len = usize::from(be16(ip, 2)?);
    let tcp = ip.get(ihl..)?;
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    Some(Segment {
        ts_ns,
        src_port: be16(tcp, 0)?,
        dst_port: be16(tcp, 2)?,
        seq: be32(tcp, 4)?,
        ack: be32(tcp, 8)?,
        flags: *tcp.get(13)?,
        payload_len: u32::try_from(total_len.checked_sub(ihl + data_offset)?).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame with an IPv4/TCP header and `payload` bytes of payload, cut to
    /// `snap` bytes.
    fn frame(dst_port: u16, seq: u32, flags: u8, payload: u16, snap: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(20 + 20 + payload).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 64, IPPROTO_TCP, 0, 0]);
        ip.extend_from_slice(&[172, 17, 0, 2, 198, 19, 0, 252]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&dst_port.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&7u32.to_be_bytes());
        f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.resize(f.len() + usize::from(payload), 0xab);
        f.truncate(snap);
        f
    }

    fn pcap(magic: u32, records: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut p = magic.to_le_bytes().to_vec();
        p.extend_from_slice(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&128u32.to_le_bytes());
        p.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        for (sec, frac, data) in records {
            p.extend_from_slice(&sec.to_le_bytes());
            p.extend_from_slice(&frac.to_le_bytes());
            p.extend_from_slice(&(data.len() as u32).to_le_bytes());
            p.extend_from_slice(&(data.len() as u32 + 1000).to_le_bytes());
            p.extend_from_slice(data);
        }
        p
    }

    #[test]
    fn reads_nanosecond_captures() {
        let file = pcap(
            0xa1b2_3c4d,
            &[
                (1_700_000_000, 123_456_789, frame(10077, 42, 0x02, 0, 128)),
                (1_700_000_001, 5, frame(10077, 43, 0x18, 1400, 128)),
            ],
        );
        let segments = tcp_segments(&file).unwrap();
        assert_eq!(segments.len(), 2);
        assert_eq!(
            segments[0],
            Segment {
                ts_ns: 1_700_000_000_123_456_789,
                src_port: 40000,
                dst_port: 10077,
                seq: 42,
                ack: 7,
                flags: 0x02,
                payload_len: 0,
            }
        );
        assert_eq!(segments[1].payload_len, 1400);
        assert_eq!(segments[1].ts_ns, 1_700_000_001_000_000_005);
    }

    #[test]
    fn reads_microseconds_and_skips_what_is_not_tcp() {
        let mut arp = frame(1, 1, 0, 0, 60);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let file = pcap(
            0xa1b2_c3d4,
            &[(10, 20, arp), (10, 30, frame(80, 9, 0x11, 0, 128))],
        );
        let segments = tcp_segments(&file).unwrap();
        assert_eq!(segments.len(), 1);
        assert_eq!(segments[0].ts_ns, 10_000_030_000);
    }

    #[test]
    fn stops_at_a_cut_record_and_rejects_other_files() {
        let mut file = pcap(0xa1b2_3c4d, &[(1, 2, frame(80, 1, 0x10, 0, 128))]);
        let whole = file.len();
        file.extend_from_slice(&pcap(0xa1b2_3c4d, &[(1, 3, frame(80, 2, 0x10, 0, 128))])[24..]);
        file.truncate(whole + 30);
        assert_eq!(tcp_segments(&file).unwrap().len(), 1);
        // A frame cut before the TCP flags is skipped rather than misread.
        let short = pcap(0xa1b2_3c4d, &[(1, 2, frame(80, 1, 0x10, 0, 40))]);
        assert!(tcp_segments(&short).unwrap().is_empty());
        assert!(tcp_segments(b"not a capture at all, no").is_err());
        assert!(tcp_segments(&[0; 10]).is_err());
    }
}
