//! The bytes of JSON values, appended to a buffer without `fmt` on the common paths: integers
//! with `itoa`, IPv4 addresses octet by octet, strings copied as they are unless they hold a
//! character JSON must escape. Keys are written as pre-escaped literals with [`key!`].

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
};

/// The bytes `,"name":`, made at compile time: a key after the first of its object.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}
pub(super) use key;

/// The bytes `{"name":`: an object's opening and its first key.
macro_rules! open {
    ($name:literal) => {
        concat!("{\"", $name, "\":").as_bytes()
    };
}
pub(super) use open;

/// Appends JSON values to a byte buffer.
pub(super) trait Line {
    fn raw(&mut self, bytes: &[u8]);
    fn uint(&mut self, value: impl itoa::Integer);
    fn str(&mut self, value: &str);
    fn opt_str(&mut self, value: Option<&str>);
    fn null(&mut self);
    fn ip(&mut self, addr: IpAddr);
    /// A kernel address as a string, `"0x..."` (as `{:#x}` prints it).
    fn hex(&mut self, value: u64);
}

impl Line for Vec<u8> {
    #[inline]
    fn raw(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    #[inline]
    fn uint(&mut self, value: impl itoa::Integer) {
        self.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn str(&mut self, value: &str) {
        if value.bytes().any(needs_escape) {
            // The rare string with a quote, a backslash or a control character: serde_json
            // escapes it exactly as every other JSON value tracer writes.
            serde_json::to_writer(&mut *self, value).expect("writing to a Vec cannot fail");
            return;
        }
        self.push(b'"');
        self.extend_from_slice(value.as_bytes());
        self.push(b'"');
    }

    fn opt_str(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.str(value),
            None => self.null(),
        }
    }

    #[inline]
    fn null(&mut self) {
        self.extend_from_slice(b"null");
    }

    fn ip(&mut self, addr: IpAddr) {
        self.push(b'"');
        match addr {
            IpAddr::V4(v4) => ipv4(self, v4),
            // As `Display` writes it (with `::` and embedded IPv4 forms); rare enough for fmt.
            IpAddr::V6(v6) => write!(self, "{v6}").expect("writing to a Vec cannot fail"),
        }
        self.push(b'"');
    }

    fn hex(&mut self, value: u64) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.extend_from_slice(b"\"0x");
        let nibbles = (64 - value.leading_zeros()).div_ceil(4).max(1);
        for i in (0..nibbles).rev() {
            self.push(DIGITS[((value >> (i * 4)) & 0xf) as usize]);
        }
        self.push(b'"');
    }
}

fn ipv4(buf: &mut Vec<u8>, addr: Ipv4Addr) {
    let mut digits = itoa::Buffer::new();
    for (i, octet) in addr.octets().into_iter().enumerate() {
        if i > 0 {
            buf.push(b'.');
        }
        buf.extend_from_slice(digits.format(octet).as_bytes());
    }
}

/// Whether JSON needs `byte` escaped in a string: a quote, a backslash or a control character.
#[inline]
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn written(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut buf = Vec::new();
        f(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        for s in [
            "plain",
            "",
            "a\"b",
            "back\\slash",
            "tab\there",
            "\u{1}\u{1f}",
            "ünï",
        ] {
            assert_eq!(
                written(|b| b.str(s)),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for addr in [
            IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)),
            IpAddr::V4(Ipv4Addr::new(255, 10, 0, 1)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6("fd00:1::2".parse().unwrap()),
            IpAddr::V6("::ffff:10.0.0.1".parse().unwrap()),
        ] {
            assert_eq!(written(|b| b.ip(addr)), format!("\"{addr}\""));
        }
    }

    #[test]
    fn hex_is_written_as_fmt_writes_it() {
        for value in [0, 1, 0xf, 0x10, 0xffff_8881_3dae_60e0, u64::MAX] {
            assert_eq!(written(|b| b.hex(value)), format!("\"{value:#x}\""));
        }
    }

    #[test]
    fn keys_are_pre_escaped() {
        assert_eq!(key!("flow_id"), b",\"flow_id\":");
        assert_eq!(open!("type"), b"{\"type\":");
    }
}
