//! What the correlate fuzz target asserts, for any stream of events (valid records built from
//! fuzzer bytes, with clock ticks between them): the correlator never panics, keeps its tables
//! within their limits, and accounts for every hop it was given exactly once. Shared by the
//! fuzz target and the corpus test (`tracer/tests/fuzz_corpus.rs`).

use tracer::{
    correlate::{Correlator, Limits, Record},
    decode::decode,
};

/// Size of one `PacketEvent` record.
const RECORD: usize = 216;

pub fn check(data: &[u8]) {
    let limits = Limits {
        max_packets: 8,
        max_flows: 8,
        ..Limits::default()
    };
    let mut correlator = Correlator::new(limits.clone());
    let mut pushed = 0usize;
    let mut reported = 0usize;
    let drain = |correlator: &mut Correlator, reported: &mut usize| {
        while let Some(record) = correlator.pop() {
            if let Record::Packet(packet) = record {
                *reported += packet.hops.len();
                let mut sum = 0;
                for hop in &packet.hops {
                    sum += hop.since_prev_ns;
                    assert_eq!(hop.since_first_ns, sum);
                }
            }
        }
    };
    for chunk in data.chunks(RECORD + 1) {
        let (control, record) = chunk.split_first().unwrap_or((&0, &[]));
        if record.len() == RECORD {
            let mut bytes = record.to_vec();
            bytes[0] = 1; // a packet event
            bytes[1] = 1 + bytes[1] % 8; // a known hook
            if let Ok(event) = decode(&bytes) {
                correlator.push(event);
                pushed += 1;
            }
        } else {
            correlator.tick(u64::from(*control) << 24);
        }
        let (packets, flows) = correlator.sizes();
        assert!(packets <= limits.max_packets && flows <= limits.max_flows);
        drain(&mut correlator, &mut reported);
    }
    correlator.finish();
    drain(&mut correlator, &mut reported);
    assert_eq!(pushed, reported, "every hop is reported exactly once");
}
