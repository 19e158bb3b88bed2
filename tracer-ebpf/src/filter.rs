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
    event::{CtTuple, PacketEvent},
};

use crate::config::CONFIG;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// The fields a filter looks at.
pub struct View<'a> {
    family: u8,
    proto: u8,
    src: &'a [u8; 16],
    dst: &'a [u8; 16],
    src_port: u16,
    dst_port: u16,
    has_ports: bool,
}

impl<'a> View<'a> {
    /// The packet as it is at this hop.
    #[inline(always)]
    pub fn packet(event: &'a PacketEvent, has_ports: bool) -> Self {
        View {
            family: event.family,
            proto: event.l4_proto,
            src: &event.src_addr,
            dst: &event.dst_addr,
            src_port: event.src_port,
            dst_port: event.dst_port,
            has_ports,
        }
    }

    /// The packet as one of its conntrack tuples describes the connection.
    #[inline(always)]
    pub fn tuple(tuple: &'a CtTuple) -> Self {
        View {
            family: tuple.family,
            proto: tuple.protonum,
            src: &tuple.src_addr,
            dst: &tuple.dst_addr,
            src_port: tuple.src_port,
            dst_port: tuple.dst_port,
            has_ports: matches!(tuple.protonum, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP),
        }
    }
}

/// Whether the filter is empty (matches everything).
#[inline(always)]
pub fn is_empty() -> bool {
    unsafe { core::ptr::read_volatile(&raw const CONFIG.filter.len) == 0 }
}

/// Runs the filter on `view`.
#[inline(always)]
pub fn evaluate(view: &View) -> bool {
    let len = unsafe { core::ptr::read_volatile(&raw const CONFIG.filter.len) } as usize;
    let mut stack: u64 = 0;
    for i in 0..FILTER_MAX {
        if i >= len {
            break;
        }
        // Field by field: copying whole instructions would cost stack the program lacks.
        let insn: *const FilterInsn = &raw const CONFIG.filter.insns[i];
        let field =
            |f: fn(*const FilterInsn) -> *const u8| unsafe { core::ptr::read_volatile(f(insn)) };
        let value = match field(|i| unsafe { &raw const (*i).op }) {
            OP_TRUE => true,
            OP_FAMILY => view.family == field(|i| unsafe { &raw const (*i).family }),
            OP_PROTO => view.proto == field(|i| unsafe { &raw const (*i).proto }),
            OP_HOST => {
                view.family == field(|i| unsafe { &raw const (*i).family })
                    && on_side(field(|i| unsafe { &raw const (*i).side }), |src| {
                        host(view, src, insn)
                    })
            }
            OP_PORT => {
                let (lo, hi) = unsafe {
                    (
                        core::ptr::read_volatile(&raw const (*insn).port_lo),
                        core::ptr::read_volatile(&raw const (*insn).port_hi),
                    )
                };
                view.has_ports
                    && on_side(field(|i| unsafe { &raw const (*i).side }), |src| {
                        let port = if src { view.src_port } else { view.dst_port };
                        lo <= port && port <= hi
                    })
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

/// `test(true)` for the source, `test(false)` for the destination, as `side` asks.
#[inline(always)]
fn on_side(side: u8, test: impl Fn(bool) -> bool) -> bool {
    match side {
        SIDE_SRC => test(true),
        SIDE_DST => test(false),
        _ => test(true) || test(false),
    }
}

/// Whether the source (or destination) address is in the instruction's network.
#[inline(always)]
fn host(view: &View, src: bool, insn: *const FilterInsn) -> bool {
    let addr = if src { view.src } else { view.dst };
    let packet_half =
        |at: usize| unsafe { core::ptr::read_unaligned(addr.as_ptr().add(at).cast::<u64>()) };
    let (mask, net) = unsafe { (&raw const (*insn).mask, &raw const (*insn).addr) };
    let insn_half = |bytes: *const [u8; 16], at: usize| unsafe {
        core::ptr::read_volatile(bytes.cast::<u8>().add(at).cast::<[u8; 8]>())
    };
    let matches = |at: usize| {
        packet_half(at) & u64::from_ne_bytes(insn_half(mask, at))
            == u64::from_ne_bytes(insn_half(net, at))
    };
    matches(0) && matches(8)
}
