//! Parsing pcap-filter expressions into an [`Expr`] tree.

use std::net::IpAddr;

use tracer_common::{
    event::{FAMILY_IPV4, FAMILY_IPV6},
    wire::ipproto,
};

use super::FilterError;

/// Which address or port of a packet a primitive looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
    /// `src or dst` (the default).
    Either,
    /// `src and dst`.
    Both,
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `ip` (4) or `ip6` (6).
    Family(u8),
    /// An IP protocol (`tcp` = 6, ...), optionally only for one family (`icmp` is IPv4's).
    Proto {
        proto: u8,
        family: Option<u8>,
    },
    /// `host`/`net`: an address with a prefix length.
    Net {
        side: Side,
        addr: IpAddr,
        prefix: u8,
    },
    /// `port`/`portrange`.
    Port {
        side: Side,
        lo: u16,
        hi: u16,
    },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
}

/// Parses `text`.
pub fn parse(text: &str) -> Result<Expr, FilterError> {
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Err(FilterError("empty expression".into()));
    }
    let mut parser = Parser {
        tokens,
        at: 0,
        last: None,
    };
    let expr = parser.or()?;
    match parser.peek() {
        None => Ok(expr),
        Some(token) => Err(parser.error(&format!("unexpected '{token}'"))),
    }
}

fn tokenize(text: &str) -> Result<Vec<String>, FilterError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' => {
                tokens.push(c.to_string());
                chars.next();
            }
            '!' => {
                tokens.push("not".into());
                chars.next();
            }
            '&' | '|' => {
                chars.next();
                if chars.next() != Some(c) {
                    return Err(FilterError(format!("'{c}' must be doubled ('{c}{c}')")));
                }
                tokens.push(if c == '&' { "and" } else { "or" }.into());
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "()!&|".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(word.to_lowercase());
            }
        }
    }
    Ok(tokens)
}

/// The qualifiers of the last primitive, which a bare value repeats.
#[derive(Debug, Clone, Copy)]
struct Qualifiers {
    proto: Option<Expr0>,
    side: Side,
    kind: Kind,
}

/// A protocol qualifier, kept small so it can be copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expr0 {
    Family(u8),
    Proto(u8, Option<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    Net,
    Port,
    PortRange,
}

struct Parser {
    tokens: Vec<String>,
    at: usize,
    last: Option<Qualifiers>,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn next(&mut self) -> Option<String> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn error(&self, what: &str) -> FilterError {
        FilterError(format!("{what} (in '{}')", self.tokens.join(" ")))
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.and()?;
        while self.peek() == Some("or") {
            self.next();
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.unary()?;
        while self.peek() == Some("and") {
            self.next();
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        match self.peek() {
            Some("not") => {
                self.next();
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some("(") => {
                self.next();
                let inner = self.or()?;
                if self.next().as_deref() != Some(")") {
                    return Err(self.error("missing ')'"));
                }
                Ok(inner)
            }
            Some(_) => self.primitive(),
            None => Err(self.error("expression ends too early")),
        }
    }

    /// `[proto] [src|dst|src or dst|src and dst] [host|net|port|portrange] value`, a protocol
    /// alone, or a bare value with the previous primitive's qualifiers.
    fn primitive(&mut self) -> Result<Expr, FilterError> {
        let proto = self.protocol();
        let side = self.side()?;
        let kind = self.kind();
        if let (Some(proto), None, None) = (proto, side, kind) {
            // A protocol alone (`tcp`); it takes no value of its own.
            return Ok(expr0(proto));
        }
        let qualifiers = match (side, kind, self.last) {
            // A bare value: repeat the previous qualifiers (`host a or b`).
            (None, None, Some(last)) if proto.is_none() => last,
            _ => Qualifiers {
                proto,
                side: side.unwrap_or(Side::Either),
                kind: kind.unwrap_or(Kind::Host),
            },
        };
        let value = self
            .next()
            .ok_or_else(|| self.error("a value is missing at the end"))?;
        if matches!(value.as_str(), "and" | "or" | "not" | "(" | ")") {
            return Err(self.error(&format!("a value is missing before '{value}'")));
        }
        self.last = Some(qualifiers);
        let test = self.value(qualifiers, &value)?;
        Ok(match qualifiers.proto {
            Some(proto) => Expr::And(Box::new(expr0(proto)), Box::new(test)),
            None => test,
        })
    }

    fn protocol(&mut self) -> Option<Expr0> {
        let proto = match self.peek()? {
            "ip" => Expr0::Family(FAMILY_IPV4),
            "ip6" => Expr0::Family(FAMILY_IPV6),
            "tcp" => Expr0::Proto(ipproto::TCP, None),
            "udp" => Expr0::Proto(ipproto::UDP, None),
            "sctp" => Expr0::Proto(ipproto::SCTP, None),
            "icmp" => Expr0::Proto(ipproto::ICMP, Some(FAMILY_IPV4)),
            "icmp6" => Expr0::Proto(ipproto::ICMPV6, Some(FAMILY_IPV6)),
            _ => return None,
        };
        self.next();
        Some(proto)
    }

    fn side(&mut self) -> Result<Option<Side>, FilterError> {
        let first = match self.peek() {
            Some("src") => Side::Src,
            Some("dst") => Side::Dst,
            _ => return Ok(None),
        };
        self.next();
        // `src or dst` / `src and dst`, when followed by the other direction.
        let combined = match (
            self.peek(),
            self.tokens.get(self.at + 1).map(String::as_str),
        ) {
            (Some("or"), Some("src" | "dst")) => Some(Side::Either),
            (Some("and"), Some("src" | "dst")) => Some(Side::Both),
            _ => None,
        };
        if let Some(side) = combined {
            self.next();
            self.next();
            return Ok(Some(side));
        }
        Ok(Some(first))
    }

    fn kind(&mut self) -> Option<Kind> {
        let kind = match self.peek()? {
            "host" => Kind::Host,
            "net" => Kind::Net,
            "port" => Kind::Port,
            "portrange" => Kind::PortRange,
            _ => return None,
        };
        self.next();
        Some(kind)
    }

    fn value(&self, q: Qualifiers, value: &str) -> Result<Expr, FilterError> {
        match q.kind {
            Kind::Host => {
                let addr: IpAddr = value.parse().map_err(|_| {
                    self.error(&format!(
                        "'{value}' is not an IP address (host names and other primitives such \
                         as ether, vlan or len are not supported)"
                    ))
                })?;
                let prefix = if addr.is_ipv4() { 32 } else { 128 };
                Ok(Expr::Net {
                    side: q.side,
                    addr,
                    prefix,
                })
            }
            Kind::Net => {
                let (addr, prefix) = value.split_once('/').ok_or_else(|| {
                    self.error(&format!(
                        "'{value}' is not a network in CIDR form (10.0.0.0/8)"
                    ))
                })?;
                let addr: IpAddr = addr
                    .parse()
                    .map_err(|_| self.error(&format!("'{addr}' is not an IP address")))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let prefix: u8 = prefix
                    .parse()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| self.error(&format!("'{prefix}' is not a prefix length")))?;
                Ok(Expr::Net {
                    side: q.side,
                    addr,
                    prefix,
                })
            }
            Kind::Port => {
                let port = self.port(value)?;
                Ok(Expr::Port {
                    side: q.side,
                    lo: port,
                    hi: port,
                })
            }
            Kind::PortRange => {
                let (lo, hi) = value
                    .split_once('-')
                    .ok_or_else(|| self.error(&format!("'{value}' is not a range (1000-2000)")))?;
                let (lo, hi) = (self.port(lo)?, self.port(hi)?);
                if lo > hi {
                    return Err(self.error(&format!("empty port range '{value}'")));
                }
                Ok(Expr::Port {
                    side: q.side,
                    lo,
                    hi,
                })
            }
        }
    }

    fn port(&self, value: &str) -> Result<u16, FilterError> {
        value.parse().map_err(|_| {
            self.error(&format!(
                "'{value}' is not a port number (service names are not supported)"
            ))
        })
    }
}

fn expr0(proto: Expr0) -> Expr {
    match proto {
        Expr0::Family(family) => Expr::Family(family),
        Expr0::Proto(proto, family) => Expr::Proto { proto, family },
    }
}
