//! The comments of rules written by iptables-nft (`-m comment --comment "..."`, kube-proxy's
//! `namespace/service:port`): iptables-nft keeps them as an xtables `comment` match inside the
//! rule, which `nft` (1.0.6) does not print. A dump of the table's rules over netlink reads
//! them.

use std::{collections::HashMap, io};

use netlink_packet_core::NlasIterator;

use super::{
    message::{Message, c_string, messages, nft_type},
    socket,
};

// include/uapi/linux/netfilter/nf_tables.h (not in `libc`).
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
// `enum nft_match_attributes`.
const NFTA_MATCH_NAME: u16 = 1;
const NFTA_MATCH_INFO: u16 = 3;

/// The `NFPROTO_*` value of a family as `nft` names it.
fn nfproto(family: &str) -> Option<u8> {
    let value = match family {
        "inet" => libc::NFPROTO_INET,
        "ip" => libc::NFPROTO_IPV4,
        "ip6" => libc::NFPROTO_IPV6,
        "arp" => libc::NFPROTO_ARP,
        "bridge" => libc::NFPROTO_BRIDGE,
        "netdev" => libc::NFPROTO_NETDEV,
        _ => return None,
    };
    Some(value as u8)
}

/// The comment of every rule of a table that has one as an xtables match, by chain and
/// handle, in the current network namespace.
pub fn xt_comments(family: &str, table: &str) -> io::Result<HashMap<(String, u64), String>> {
    let Some(family) = nfproto(family) else {
        return Ok(HashMap::new());
    };
    let socket = socket()?;
    let mut request = Message::new(
        nft_type(libc::NFT_MSG_GETRULE),
        (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        1,
        family,
        0,
    );
    request.str(NFTA_RULE_TABLE, table);
    socket.send(&request.finish(), 0)?;
    let mut comments = HashMap::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        if n == 0 {
            return Ok(comments);
        }
        for message in messages(&buf[..n]) {
            if message.kind == libc::NLMSG_DONE as u16 {
                return Ok(comments);
            }
            if let Some(ack) = message.ack() {
                return if ack.code == 0 {
                    Ok(comments)
                } else {
                    Err(io::Error::from_raw_os_error(-ack.code))
                };
            }
            if let Some((chain, handle, comment)) = rule_comment(message.payload) {
                comments.insert((chain, handle), comment);
            }
        }
    }
}

/// The chain, handle and xtables comment of a rule message; `None` for a rule without one.
fn rule_comment(attrs: &[u8]) -> Option<(String, u64, String)> {
    let (mut chain, mut handle, mut comment) = (None, None, None);
    for nla in NlasIterator::new(attrs).filter_map(Result::ok) {
        match nla.kind() & !(libc::NLA_F_NESTED as u16) {
            NFTA_RULE_CHAIN => chain = c_string(nla.value()),
            NFTA_RULE_HANDLE => handle = nla.value().try_into().ok().map(u64::from_be_bytes),
            NFTA_RULE_EXPRESSIONS => comment = expressions_comment(nla.value()),
            _ => {}
        }
    }
    Some((chain?, handle?, comment?))
}

/// The text of the first `comment` match among a rule's expressions.
fn expressions_comment(list: &[u8]) -> Option<String> {
    NlasIterator::new(list)
        .filter_map(Result::ok)
        .filter(|elem| elem.kind() & !(libc::NLA_F_NESTED as u16) == NFTA_LIST_ELEM)
        .find_map(|elem| {
            let mut name = None;
            let mut data = None;
            for nla in NlasIterator::new(elem.value()).filter_map(Result::ok) {
                match nla.kind() & !(libc::NLA_F_NESTED as u16) {
                    NFTA_EXPR_NAME => name = c_string(nla.value()),
                    NFTA_EXPR_DATA => data = Some(nla.value().to_vec()),
                    _ => {}
                }
            }
            if name.as_deref() != Some("match") {
                return None;
            }
            let (mut matched, mut info) = (None, None);
            for nla in NlasIterator::new(&data?[..]).filter_map(Result::ok) {
                match nla.kind() & !(libc::NLA_F_NESTED as u16) {
                    NFTA_MATCH_NAME => matched = c_string(nla.value()),
                    NFTA_MATCH_INFO => info = c_string(nla.value()),
                    _ => {}
                }
            }
            (matched.as_deref() == Some("comment")).then_some(info?)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule message as the kernel dumps kube-proxy's DNAT rule: a `comment` match, a `tcp`
    /// match, and the target.
    fn rule(with_comment: bool) -> Vec<u8> {
        let mut msg = Message::new(nft_type(libc::NFT_MSG_NEWRULE), 0, 0, 2, 0);
        msg.str(NFTA_RULE_TABLE, "nat")
            .str(NFTA_RULE_CHAIN, "KUBE-SEP-4EX2N4PG4ASNZOBF")
            .attr(NFTA_RULE_HANDLE, &26u64.to_be_bytes());
        msg.begin(NFTA_RULE_EXPRESSIONS);
        let mut matched = |name: &str, info: &[u8]| {
            msg.begin(NFTA_LIST_ELEM).str(NFTA_EXPR_NAME, "match");
            msg.begin(NFTA_EXPR_DATA)
                .str(NFTA_MATCH_NAME, name)
                .attr(NFTA_MATCH_INFO, info)
                .end()
                .end();
        };
        if with_comment {
            let mut info = b"default/web:http".to_vec();
            info.resize(256, 0);
            matched("comment", &info);
        }
        matched("tcp", &[0; 16]);
        msg.end();
        msg.finish()
    }

    #[test]
    fn the_comment_match_of_a_rule_is_read() {
        let bytes = rule(true);
        let message = messages(&bytes).next().unwrap();
        assert_eq!(
            rule_comment(message.payload),
            Some((
                "KUBE-SEP-4EX2N4PG4ASNZOBF".to_owned(),
                26,
                "default/web:http".to_owned()
            ))
        );
        let bytes = rule(false);
        let message = messages(&bytes).next().unwrap();
        assert_eq!(rule_comment(message.payload), None);
    }
}
