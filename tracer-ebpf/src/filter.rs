//! Evaluates the compiled filter expression (see `tracer_common::config::Filter`) on one view
//! of a packet: its own tuple, or one of its conntrack tuples.
//!
//! The program is a short postfix sequence of predicates and boolean operators, evaluated on
//! a stack of bits. It lives in the frozen `CONFIG`, so the verifier knows every instruction
//! and follows only the branch each one takes.

use tracer_common::{
    config::{
        FILTER_MAX, FilterInsn, OP_AND, OP_FAMILY, OP_HOST, OP_NOT, OP_OR, OP_PORT, OP_PROTO,
        OP_TRUE, SIDE_DST, SIDE_SRC,
    },
    event::Encap,
};

use crate::{config::CONFIG, packet::Headers};

/// The fields a filter looks at.
pub struct View<'a> {
    pub family: u8,
    pub proto: u8,
    pub src: &'a [u8; 16],
    pub dst: &'a [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub has_ports: bool,
}

impl<'a> View<'a> {
    /// The packet as it is at this hop.
    #[inline(always)]
    pub fn packet(headers: &'a Headers, has_ports: bool) -> Self {
        View {
            family: headers.family,
            proto: headers.l4_proto,
            src: &headers.src_addr,
            dst: &headers.dst_addr,
            src_port: headers.src_port,
            dst_port: headers.dst_port,
            has_ports,
        }
    }
}

impl<'a> View<'a> {
    /// The packet an ICMP error quotes.
    #[inline(always)]
    pub fn quoted(quote: &'a Encap) -> Self {
        View {
            family: quote.family,
            proto: quote.proto,
            src: &quote.src_addr,
            dst: &quote.dst_addr,
            src_port: quote.src_port,
            dst_port: quote.dst_port,
            has_ports: tracer_common::wire::ipproto::has_ports(quote.proto),
        }
    }
}

/// Reads a field of the frozen `CONFIG` (see [`crate::config`]).
#[inline(always)]
fn config<T: Copy>(field: *const T) -> T {
    // SAFETY: `field` points into `CONFIG`, a static that lives as long as the program and
    // is never written; the volatile read keeps its placeholder value from being folded in.
    unsafe { core::ptr::read_volatile(field) }
}

/// Whether the filter is empty (matches everything).
#[inline(always)]
pub fn is_empty() -> bool {
    config(&raw const CONFIG.filter.len) == 0
}

/// Runs the filter on `view`. A function of its own in the object (a BPF-to-BPF call) rather
/// than three copies in every program: its frame is added to the caller's only while it runs.
#[inline(never)]
pub fn evaluate(view: &View) -> bool {
    let len = config(&raw const CONFIG.filter.len) as usize;
    let mut stack: u64 = 0;
    for i in 0..FILTER_MAX {
        if i >= len {
            break;
        }
        // Field by field: copying whole instructions would cost stack the program lacks.
        let insn: &'static FilterInsn = &CONFIG.filter.insns[i];
        let value = match config(&raw const insn.op) {
            OP_TRUE => true,
            OP_FAMILY => view.family == config(&raw const insn.family),
            OP_PROTO => view.proto == config(&raw const insn.proto),
            OP_HOST => {
                let side = config(&raw const insn.side);
                view.family == config(&raw const insn.family)
                    && ((side != SIDE_DST && host(view.src, insn))
                        || (side != SIDE_SRC && host(view.dst, insn)))
            }
            OP_PORT => {
                let side = config(&raw const insn.side);
                let (lo, hi) = (
                    config(&raw const insn.port_lo),
                    config(&raw const insn.port_hi),
                );
                view.has_ports
                    && ((side != SIDE_DST && lo <= view.src_port && view.src_port <= hi)
                        || (side != SIDE_SRC && lo <= view.dst_port && view.dst_port <= hi))
            }
            OP_AND => {
                let (a, b) = (stack & 1, (stack >> 1) & 1);
                stack >>= 2;
                a & b == 1
            }
            OP_OR => {
                let (a, b) = (stack & 1, (stack >> 1) & 1);
                stack >>= 2;
                a | b == 1
            }
            OP_NOT => {
                let a = stack & 1;
                stack >>= 1;
                a == 0
            }
            _ => false,
        };
        stack = (stack << 1) | u64::from(value);
    }
    stack & 1 == 1
}

/// Whether `addr` is in the instruction's network, compared in two 8-byte halves.
#[inline(always)]
fn host(addr: &[u8; 16], insn: &'static FilterInsn) -> bool {
    let half = |bytes: &[u8; 16], at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_ne_bytes(word)
    };
    let matches = |at: usize| {
        let mask = u64::from_ne_bytes(config(insn.mask[at..].as_ptr().cast::<[u8; 8]>()));
        let net = u64::from_ne_bytes(config(insn.addr[at..].as_ptr().cast::<[u8; 8]>()));
        half(addr, at) & mask == net
    };
    matches(0) && matches(8)
}
