//! Compiling an [`Expr`] into the kernel's postfix filter program.

use std::net::IpAddr;

use tracer_common::{
    config::{
        FILTER_MAX, Filter, FilterInsn, OP_AND, OP_FAMILY, OP_HOST, OP_NOT, OP_OR, OP_PORT,
        OP_PROTO, SIDE_DST, SIDE_EITHER, SIDE_SRC,
    },
    event::{FAMILY_IPV4, FAMILY_IPV6},
};

use super::{
    FilterError,
    parse::{Expr, Side},
};

/// Compiles `expr` (or nothing, which matches every packet).
pub fn compile(expr: Option<&Expr>) -> Result<Filter, FilterError> {
    let mut insns = Vec::new();
    if let Some(expr) = expr {
        emit(expr, &mut insns);
    }
    if insns.len() > FILTER_MAX {
        return Err(FilterError(format!(
            "the expression needs {} operations; at most {FILTER_MAX} are supported",
            insns.len()
        )));
    }
    let mut filter = Filter {
        len: insns.len() as u32,
        _pad: 0,
        insns: [FilterInsn::new(0); FILTER_MAX],
    };
    filter.insns[..insns.len()].copy_from_slice(&insns);
    Ok(filter)
}

fn emit(expr: &Expr, out: &mut Vec<FilterInsn>) {
    match expr {
        Expr::Family(family) => {
            let mut insn = FilterInsn::new(OP_FAMILY);
            insn.family = *family;
            out.push(insn);
        }
        Expr::Proto { proto, family } => {
            let mut insn = FilterInsn::new(OP_PROTO);
            insn.proto = *proto;
            out.push(insn);
            if let Some(family) = family {
                emit(&Expr::Family(*family), out);
                out.push(FilterInsn::new(OP_AND));
            }
        }
        Expr::Net { side, addr, prefix } => {
            let mut insn = FilterInsn::new(OP_HOST);
            let (bytes, family) = match addr {
                IpAddr::V4(v4) => {
                    let mut bytes = [0u8; 16];
                    bytes[..4].copy_from_slice(&v4.octets());
                    (bytes, FAMILY_IPV4)
                }
                IpAddr::V6(v6) => (v6.octets(), FAMILY_IPV6),
            };
            insn.family = family;
            for bit in 0..usize::from(*prefix) {
                insn.mask[bit / 8] |= 0x80 >> (bit % 8);
            }
            for ((addr, mask), value) in insn.addr.iter_mut().zip(insn.mask).zip(bytes) {
                *addr = value & mask;
            }
            sided(insn, *side, out);
        }
        Expr::Port { side, lo, hi } => {
            let mut insn = FilterInsn::new(OP_PORT);
            insn.port_lo = *lo;
            insn.port_hi = *hi;
            sided(insn, *side, out);
        }
        Expr::And(a, b) => binary(a, b, OP_AND, out),
        Expr::Or(a, b) => binary(a, b, OP_OR, out),
        Expr::Not(inner) => {
            emit(inner, out);
            out.push(FilterInsn::new(OP_NOT));
        }
    }
}

fn binary(a: &Expr, b: &Expr, op: u8, out: &mut Vec<FilterInsn>) {
    emit(a, out);
    emit(b, out);
    out.push(FilterInsn::new(op));
}

/// One instruction per side; `src and dst` needs both.
fn sided(mut insn: FilterInsn, side: Side, out: &mut Vec<FilterInsn>) {
    match side {
        Side::Src => insn.side = SIDE_SRC,
        Side::Dst => insn.side = SIDE_DST,
        Side::Either => insn.side = SIDE_EITHER,
        Side::Both => {
            let mut dst = insn;
            insn.side = SIDE_SRC;
            dst.side = SIDE_DST;
            out.push(insn);
            out.push(dst);
            out.push(FilterInsn::new(OP_AND));
            return;
        }
    }
    out.push(insn);
}
