//! Netlink messages for nf_tables: a writer for the few requests tracer makes, and a reader of
//! the datagrams the kernel sends back (acknowledgements, errors with their extended-ack
//! message, dumps, trace events).

use netlink_packet_core::NlasIterator;

/// `sizeof(struct nlmsghdr)`.
const HEADER_LEN: usize = 16;
/// `NLMSGERR_ATTR_MSG` (include/uapi/linux/netlink.h; not in `libc`): the kernel's text.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// A netlink message under construction, attributes appended in order.
pub struct Message {
    bytes: Vec<u8>,
    /// Where each open nested attribute starts.
    open: Vec<usize>,
}

impl Message {
    /// A message of `kind` with `struct nfgenmsg` (`family`, version 0, `res_id`).
    pub fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Message {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        // struct nfgenmsg
        bytes.extend_from_slice(&[family, 0]);
        bytes.extend_from_slice(&res_id.to_be_bytes());
        Message {
            bytes,
            open: Vec::new(),
        }
    }

    /// An nf_tables request (`NFT_MSG_*`) in the `inet` family, acknowledged.
    pub fn nft(msg: i32, flags: i32, seq: u32) -> Message {
        Message::new(
            nft_type(msg),
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16,
            seq,
            libc::NFPROTO_INET as u8,
            0,
        )
    }

    pub fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + value.len()).expect("attribute shorter than 64 KiB");
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.pad();
        self
    }

    pub fn str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    /// A 32-bit attribute in network byte order, as nf_tables takes numbers; `value` is a
    /// constant from `libc` (a `c_int`) or a count.
    pub fn be32(&mut self, kind: u16, value: impl Into<i64>) -> &mut Self {
        let value = u32::try_from(value.into()).expect("a 32-bit attribute value");
        self.attr(kind, &value.to_be_bytes())
    }

    /// Opens a nested attribute, closed by [`Message::end`].
    pub fn begin(&mut self, kind: u16) -> &mut Self {
        self.open.push(self.bytes.len());
        self.bytes.extend_from_slice(&0u16.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(kind | libc::NLA_F_NESTED as u16).to_ne_bytes());
        self
    }

    pub fn end(&mut self) -> &mut Self {
        let start = self.open.pop().expect("a nested attribute is open");
        let len = u16::try_from(self.bytes.len() - start).expect("attribute shorter than 64 KiB");
        self.bytes[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        debug_assert!(self.open.is_empty());
        let len = u32::try_from(self.bytes.len()).expect("message shorter than 4 GiB");
        self.bytes[..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes
    }
}

/// The netlink message type of nf_tables message `msg` (`NFNL_SUBSYS_NFTABLES << 8 | msg`).
pub fn nft_type(msg: i32) -> u16 {
    ((libc::NFNL_SUBSYS_NFTABLES << 8) | msg) as u16
}

/// A netlink message: type, flags, nfgenmsg family, attributes after the nfgenmsg header (for
/// `NLMSG_ERROR`, the `struct nlmsgerr` and what follows it).
pub struct Received<'a> {
    pub kind: u16,
    pub flags: u16,
    pub family: u8,
    pub payload: &'a [u8],
}

/// What an `NLMSG_ERROR` message says: an acknowledgement (code 0) or an error, for the
/// request with sequence number `seq`, and the kernel's extended-ack text when it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// 0, or a negated errno.
    pub code: i32,
    pub seq: u32,
    pub message: Option<String>,
}

impl Received<'_> {
    /// The acknowledgement or error this message carries, if it is an `NLMSG_ERROR`.
    pub fn ack(&self) -> Option<Ack> {
        if self.kind != libc::NLMSG_ERROR as u16 {
            return None;
        }
        // struct nlmsgerr: the code, then the request's header (and, unless capped, its
        // payload), then the extended-ack attributes when NLM_F_ACK_TLVS says there are some.
        let p = self.payload;
        let code = i32::from_ne_bytes(p.get(..4)?.try_into().ok()?);
        let request = p.get(4..4 + HEADER_LEN)?;
        let seq = u32::from_ne_bytes(request[8..12].try_into().ok()?);
        let mut message = None;
        if self.flags & libc::NLM_F_ACK_TLVS as u16 != 0 {
            let echoed = if self.flags & libc::NLM_F_CAPPED as u16 != 0 {
                HEADER_LEN
            } else {
                u32::from_ne_bytes(request[..4].try_into().ok()?) as usize
            };
            let tlvs = p
                .get((4 + echoed).next_multiple_of(4)..)
                .unwrap_or_default();
            message = NlasIterator::new(tlvs)
                .filter_map(Result::ok)
                .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
                .and_then(|nla| c_string(nla.value()))
                .filter(|text| !text.is_empty());
        }
        Some(Ack { code, seq, message })
    }
}

/// The messages in a datagram; a truncated one ends the list.
pub fn messages(mut bytes: &[u8]) -> impl Iterator<Item = Received<'_>> {
    std::iter::from_fn(move || {
        let header = bytes.get(..HEADER_LEN)?;
        let len = u32::from_ne_bytes(header[..4].try_into().ok()?) as usize;
        if len < HEADER_LEN || len > bytes.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(header[4..6].try_into().ok()?);
        let flags = u16::from_ne_bytes(header[6..8].try_into().ok()?);
        let body = &bytes[HEADER_LEN..len];
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
        Some(if kind == libc::NLMSG_ERROR as u16 {
            Received {
                kind,
                flags,
                family: 0,
                payload: body,
            }
        } else {
            Received {
                kind,
                flags,
                family: *body.first()?,
                payload: body.get(4..)?,
            }
        })
    })
}

/// A NUL-terminated (or unterminated) UTF-8 string attribute.
pub fn c_string(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end]).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_measured() {
        let mut msg = Message::nft(libc::NFT_MSG_NEWRULE, 0, 7);
        msg.str(1, "t");
        msg.begin(4).be32(9, 0x0102_0304).end();
        let bytes = msg.finish();
        assert_eq!(bytes.len(), 16 + 4 + 8 + 4 + 8);
        assert_eq!(
            u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        // "t\0" padded to 4, after the 4-byte header.
        assert_eq!(&bytes[20..28], &[6, 0, 1, 0, b't', 0, 0, 0]);
        // The nest covers its own header and the 8-byte attribute inside.
        assert_eq!(u16::from_ne_bytes(bytes[28..30].try_into().unwrap()), 12);
        assert_eq!(
            u16::from_ne_bytes(bytes[30..32].try_into().unwrap()),
            4 | libc::NLA_F_NESTED as u16
        );
        assert_eq!(&bytes[36..40], &[1, 2, 3, 4]);
    }

    #[test]
    fn truncated_messages_end_the_list() {
        let mut bytes = Message::nft(libc::NFT_MSG_NEWTABLE, 0, 1).finish();
        bytes.truncate(bytes.len() - 1);
        assert_eq!(messages(&bytes).count(), 0);
    }

    /// An `NLMSG_ERROR` for request `seq` as the kernel writes it with `NETLINK_CAP_ACK` and
    /// `NETLINK_EXT_ACK` on: code, the request's header, the extended-ack attributes.
    pub(crate) fn error_message(code: i32, seq: u32, text: Option<&str>) -> Vec<u8> {
        let flags = libc::NLM_F_CAPPED
            | if text.is_some() {
                libc::NLM_F_ACK_TLVS
            } else {
                0
            };
        let mut msg = Message::new(libc::NLMSG_ERROR as u16, flags as u16, 0, 0, 0);
        // `Message::new` wrote a 4-byte nfgenmsg after the header; an error has none.
        msg.bytes.truncate(HEADER_LEN);
        msg.bytes.extend_from_slice(&code.to_ne_bytes());
        let request = Message::nft(libc::NFT_MSG_NEWTABLE, 0, seq).finish();
        msg.bytes.extend_from_slice(&request[..HEADER_LEN]);
        if let Some(text) = text {
            msg.str(NLMSGERR_ATTR_MSG, text);
        }
        msg.finish()
    }

    #[test]
    fn an_error_keeps_the_kernels_message_and_the_request_it_answers() {
        let bytes = error_message(-libc::EINVAL, 3, Some("Unknown table flags"));
        let acks: Vec<Ack> = messages(&bytes).filter_map(|m| m.ack()).collect();
        assert_eq!(
            acks,
            vec![Ack {
                code: -libc::EINVAL,
                seq: 3,
                message: Some("Unknown table flags".into())
            }]
        );
        let bytes = error_message(0, 4, None);
        let ack = messages(&bytes).find_map(|m| m.ack()).unwrap();
        assert_eq!((ack.code, ack.seq, ack.message), (0, 4, None));
    }
}
