//! Trace events as the kernel sends them (`NFT_MSG_TRACE`, `struct nft_traceinfo` written by
//! net/netfilter/nf_tables_trace.c), decoded to [`TraceEvent`]s.

use netlink_packet_core::{NlaBuffer, NlasIterator};

use super::{family_name, message::c_string};
use crate::rules::trace::{TraceEvent, TraceKind, Verdict};

// `enum nft_trace_attributes` (include/uapi/linux/netfilter/nf_tables.h; not in `libc`).
const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
const NFTA_TRACE_NFPROTO: u16 = 15;
/// A policy event's verdict: the chain's policy, instead of `NFTA_TRACE_VERDICT`.
const NFTA_TRACE_POLICY: u16 = 16;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// Decodes the attributes of an `NFT_MSG_TRACE` message; `None` when one it needs is missing
/// or malformed.
pub fn trace_event(family: u8, attrs: &[u8]) -> Option<TraceEvent> {
    let mut event = TraceEvent {
        family: family_name(family),
        ..TraceEvent::default()
    };
    for nla in NlasIterator::new(attrs) {
        let nla = nla.ok()?;
        let value = nla.value();
        match nla.kind() & !(libc::NLA_F_NESTED as u16) {
            NFTA_TRACE_TABLE => event.table = c_string(value)?,
            NFTA_TRACE_CHAIN => event.chain = c_string(value)?,
            NFTA_TRACE_RULE_HANDLE => {
                event.handle = Some(u64::from_be_bytes(value.try_into().ok()?));
            }
            NFTA_TRACE_TYPE => {
                event.kind = TraceKind::from_code(u32::from_be_bytes(value.try_into().ok()?));
            }
            NFTA_TRACE_VERDICT => event.verdict = verdict(value)?,
            NFTA_TRACE_ID => event.id = u32::from_be_bytes(value.try_into().ok()?),
            NFTA_TRACE_NETWORK_HEADER => event.network = value.to_vec(),
            NFTA_TRACE_TRANSPORT_HEADER => event.transport = value.to_vec(),
            NFTA_TRACE_POLICY => {
                let code = i32::from_be_bytes(value.try_into().ok()?);
                event.verdict = Verdict::from_code(code, None);
            }
            NFTA_TRACE_NFPROTO => {
                event.nfproto = u8::try_from(u32::from_be_bytes(value.try_into().ok()?)).ok()?;
            }
            _ => {}
        }
    }
    (!event.table.is_empty() && !event.chain.is_empty()).then_some(event)
}

fn verdict(nested: &[u8]) -> Option<Verdict> {
    let mut code = None;
    let mut chain = None;
    for nla in NlasIterator::new(nested) {
        let nla: NlaBuffer<&[u8]> = nla.ok()?;
        match nla.kind() & !(libc::NLA_F_NESTED as u16) {
            NFTA_VERDICT_CODE => code = Some(i32::from_be_bytes(nla.value().try_into().ok()?)),
            NFTA_VERDICT_CHAIN => chain = c_string(nla.value()),
            _ => {}
        }
    }
    Some(Verdict::from_code(code?, chain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::netlink::message::{Message, messages, nft_type};

    #[test]
    fn a_trace_message_decodes() {
        let mut msg = Message::new(
            nft_type(libc::NFT_MSG_TRACE),
            0,
            0,
            libc::NFPROTO_IPV4 as u8,
            0,
        );
        msg.str(NFTA_TRACE_TABLE, "nat")
            .str(NFTA_TRACE_CHAIN, "POSTROUTING")
            .attr(NFTA_TRACE_RULE_HANDLE, &12u64.to_be_bytes())
            .be32(NFTA_TRACE_TYPE, 3)
            .be32(NFTA_TRACE_ID, 0xabcd);
        msg.begin(NFTA_TRACE_VERDICT)
            .attr(NFTA_VERDICT_CODE, &1i32.to_be_bytes())
            .end();
        msg.attr(NFTA_TRACE_NETWORK_HEADER, &[0x45; 20]);
        let bytes = msg.finish();
        let received: Vec<_> = messages(&bytes).collect();
        assert_eq!(received.len(), 1);
        let event = trace_event(received[0].family, received[0].payload).unwrap();
        assert_eq!(
            (event.family, event.table.as_str(), event.chain.as_str()),
            ("ip", "nat", "POSTROUTING")
        );
        assert_eq!(
            (event.handle, event.kind, event.id),
            (Some(12), TraceKind::Rule, 0xabcd)
        );
        assert_eq!(event.verdict, Verdict::Accept);
        assert_eq!(event.network.len(), 20);
    }

    #[test]
    fn a_malformed_trace_message_is_no_event() {
        assert!(trace_event(libc::NFPROTO_IPV4 as u8, &[8, 0, 1, 0, b'x']).is_none());
    }
}
