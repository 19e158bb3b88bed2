//! The exemplar of a hop latency observation: the flow and the connection's tuple of a recent
//! packet in the bucket, so that a slow bucket on a dashboard leads to a connection to trace
//! (`tracer --port`). OpenMetrics only: the classic text format has no exemplars.

use std::fmt;

use prometheus_client::encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder};

use crate::{decode::Tuple, output};

/// The most characters an exemplar's label names and values may have together (OpenMetrics).
pub const MAX_CHARS: usize = 128;

/// `flow_id="123",tuple="tcp 172.17.0.2:42598 > 198.19.0.252:10001"`.
#[derive(Debug, Clone, Copy)]
pub struct Exemplar {
    /// The flow the packet belongs to, as the monitor numbers flows.
    pub flow_id: u64,
    /// The tuple of the packet's first hop.
    pub tuple: Tuple,
}

impl Exemplar {
    /// The tuple as tracer prints it, with its protocol, if it fits in `room` characters; the
    /// protocol and destination alone (`tcp > [2001:db8::1]:443`) otherwise, which always fit
    /// (with a longest protocol name, IPv6 address, port and flow id: 87 characters in all).
    fn tuple_text(&self, room: usize) -> String {
        let proto = self.tuple.proto.name();
        let whole = format!("{proto} {}", output::tuple(&self.tuple));
        if whole.chars().count() <= room {
            return whole;
        }
        format!(
            "{proto} > {}",
            output::endpoint(self.tuple.dst, self.tuple.dst_port)
        )
    }
}

impl EncodeLabelSet for Exemplar {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        let flow_id = self.flow_id.to_string();
        let room = MAX_CHARS - "flow_id".len() - flow_id.len() - "tuple".len();
        ("flow_id", flow_id.as_str()).encode(encoder.encode_label())?;
        ("tuple", self.tuple_text(room).as_str()).encode(encoder.encode_label())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use prometheus_client::{
        metrics::{exemplar::HistogramWithExemplars, histogram::exponential_buckets},
        registry::Registry,
    };

    use super::*;
    use crate::decode::Proto;

    /// The exemplar's label set as the exposition writes it, between its braces.
    fn labels(exemplar: Exemplar) -> String {
        let histogram = HistogramWithExemplars::new(exponential_buckets(1.0, 2.0, 1));
        histogram.observe(0.5, Some(exemplar), None);
        let mut registry = Registry::default();
        registry.register("h", "h", histogram);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = text.lines().find(|line| line.contains(" # {")).unwrap();
        let (_, rest) = line.split_once(" # {").unwrap();
        rest.split_once('}').unwrap().0.to_owned()
    }

    /// Label names and values, without the quotes, `=` and `,` around them.
    fn chars(labels: &str) -> usize {
        labels
            .chars()
            .filter(|c| !matches!(c, '"' | '=' | ','))
            .count()
    }

    #[test]
    fn the_exemplar_names_the_flow_and_the_tuple() {
        let exemplar = Exemplar {
            flow_id: 123,
            tuple: Tuple {
                proto: Proto::TCP,
                src: [172, 17, 0, 2].into(),
                src_port: 42598,
                dst: [198, 19, 0, 252].into(),
                dst_port: 10001,
            },
        };
        assert_eq!(
            labels(exemplar),
            r#"flow_id="123",tuple="tcp 172.17.0.2:42598 > 198.19.0.252:10001""#
        );
    }

    #[test]
    fn a_tuple_too_long_for_openmetrics_keeps_its_destination() {
        let long = |last: u16| {
            IpAddr::V6(Ipv6Addr::new(
                0xfd00, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, last,
            ))
        };
        let widest = Exemplar {
            flow_id: u64::MAX,
            tuple: Tuple {
                proto: Proto::SCTP,
                src: long(0xfff1),
                src_port: 65535,
                dst: long(0xfff2),
                dst_port: 65535,
            },
        };
        let text = labels(widest);
        assert_eq!(
            text,
            r#"flow_id="18446744073709551615",tuple="sctp > [fd00:ffff:ffff:ffff:ffff:ffff:ffff:fff2]:65535""#
        );
        assert!(chars(&text) <= MAX_CHARS, "{text}");
        // With a short flow id the whole tuple fits.
        let short = Exemplar {
            flow_id: 7,
            ..widest
        };
        let text = labels(short);
        assert!(
            text.contains("[fd00:ffff:ffff:ffff:ffff:ffff:ffff:fff1]:65535 > "),
            "{text}"
        );
        assert!(chars(&text) <= MAX_CHARS, "{text}");
    }
}
