//! A packet's conntrack entry (`skb->_nfct`, include/linux/skbuff.h) and its two tuples
//! (`struct nf_conn`'s `tuplehash[IP_CT_DIR_ORIGINAL]` and `[IP_CT_DIR_REPLY]`,
//! include/net/netfilter/nf_conntrack.h).
//!
//! The tuples are read only when the filter needs them or an event is written, with one helper
//! call for both (they are adjacent), into the scratch buffer the header parser is done with.
//! They are kept as the kernel's bytes: the filter looks at them in place, and they are
//! decoded into the event only when one is written.

use core::mem::MaybeUninit;

use aya_ebpf::helpers::generated;
use tracer_common::{
    config::OFFSET_UNKNOWN,
    event::{CtTuple, FAMILY_IPV4, FAMILY_IPV6},
    wire::{
        conntrack::{self, AF_INET, AF_INET6, TUPLE_SIZE},
        ipproto,
    },
};

use crate::{config::conf, filter::View};

/// Bytes of stack a program lends, in turn, to the header window and to the tuples. The tuples
/// need 96: from the original tuple to the end of the reply tuple,
/// `sizeof(struct nf_conntrack_tuple_hash)` (56) further on. The window needs a header of up
/// to 40 bytes read at any offset below 64 (see `skb::Window`).
pub const SCRATCH: usize = 104;

/// The stack a program lends in turn to the parser and to the tuples.
#[repr(C, align(8))]
pub struct Scratch(pub [u8; SCRATCH]);

/// A packet's conntrack entry.
pub struct Conntrack {
    /// Address of the `nf_conn`, 0 without one.
    pub ct: u64,
    /// `PacketEvent::ct_state`.
    pub state: u8,
}

impl Conntrack {
    /// The entry `nfct` (the value of `skb->_nfct`) points at; none for an untracked packet.
    #[inline(always)]
    pub fn of(nfct: u64) -> Conntrack {
        let info = nfct & conntrack::INFO_MASK;
        let ct = nfct & !conntrack::INFO_MASK;
        if ct != 0 && info != conntrack::UNTRACKED {
            Conntrack {
                ct,
                state: conntrack::encode_state(info as u8),
            }
        } else {
            Conntrack { ct: 0, state: 0 }
        }
    }

    /// Whether the entry is established, so its tuples (and NAT) are settled.
    #[inline(always)]
    pub fn settled(&self) -> bool {
        matches!(conntrack::decode_state(self.state), Some(0 | 3))
    }

    /// Reads both tuples into `scratch` with one helper call; `None` without an entry, or
    /// where the running kernel does not lay them out as expected.
    #[inline(always)]
    pub fn read<'s>(&self, scratch: &'s mut MaybeUninit<Scratch>) -> Option<Tuples<'s>> {
        let (orig, reply) = (conf!(offsets.ct_tuple_orig), conf!(offsets.ct_tuple_reply));
        if self.ct == 0 || orig == OFFSET_UNKNOWN || reply == OFFSET_UNKNOWN {
            return None;
        }
        let gap = reply.wrapping_sub(orig);
        if gap as usize + TUPLE_SIZE > SCRATCH {
            return None;
        }
        // SAFETY: the helper writes `SCRATCH` bytes, the buffer's size, and zeroes them when it
        // fails; the buffer is initialized once it returns.
        let raw = unsafe {
            let rc = generated::bpf_probe_read_kernel(
                scratch.as_mut_ptr().cast(),
                SCRATCH as u32,
                (self.ct + u64::from(orig)) as *const core::ffi::c_void,
            );
            if rc != 0 {
                return None;
            }
            &scratch.assume_init_ref().0
        };
        Some(Tuples { raw, gap })
    }
}

/// Both tuples of an entry, as the kernel's bytes.
#[derive(Clone, Copy)]
pub struct Tuples<'s> {
    raw: &'s [u8; SCRATCH],
    /// Offset of the reply tuple in `raw`.
    gap: u32,
}

impl<'s> Tuples<'s> {
    /// The tuples [`Conntrack::read`] put in `scratch`.
    ///
    /// # Safety
    /// `Conntrack::read` must have returned tuples for this `scratch`, which was not written
    /// since.
    #[inline(always)]
    pub unsafe fn in_scratch(scratch: &'s MaybeUninit<Scratch>) -> Tuples<'s> {
        let gap = conf!(offsets.ct_tuple_reply).wrapping_sub(conf!(offsets.ct_tuple_orig));
        Tuples {
            // SAFETY: the read filled the buffer, as the caller promises.
            raw: unsafe { &scratch.assume_init_ref().0 },
            gap,
        }
    }

    /// The original (0) or reply (1) tuple as the filter sees it, when it is an IPv4 or IPv6
    /// tuple.
    #[inline(always)]
    pub fn view(&self, which: usize) -> Option<View<'_>> {
        let base = if which == 0 { 0 } else { self.gap as usize };
        let raw = self.raw.get(base..base + TUPLE_SIZE)?;
        let field = |offset: u32, len: usize| raw.get(offset as usize..offset as usize + len);
        let address = |offset: u32| -> Option<&[u8; 16]> { field(offset, 16)?.try_into().ok() };
        let port = |offset: u32| field(offset, 2).map(|p| u16::from_be_bytes([p[0], p[1]]));
        let l3num = field(conf!(offsets.tuple_l3num), 2)?;
        let family = match u16::from_ne_bytes([l3num[0], l3num[1]]) {
            AF_INET => FAMILY_IPV4,
            AF_INET6 => FAMILY_IPV6,
            _ => return None,
        };
        let proto = *field(conf!(offsets.tuple_protonum), 1)?.first()?;
        Some(View {
            family,
            proto,
            src: address(conf!(offsets.tuple_src_addr))?,
            dst: address(conf!(offsets.tuple_dst_addr))?,
            src_port: port(conf!(offsets.tuple_src_port))?,
            dst_port: port(conf!(offsets.tuple_dst_port))?,
            has_ports: ipproto::has_ports(proto),
        })
    }

    /// Writes the original (0) or reply (1) tuple into an event's zeroed tuple.
    ///
    /// # Safety
    /// `dst` must be valid for writing one tuple.
    #[inline(always)]
    pub unsafe fn write(&self, which: usize, dst: *mut CtTuple) {
        let Some(view) = self.view(which) else {
            return;
        };
        // SAFETY: `dst` is one writable tuple.
        unsafe {
            copy16(view.src, &raw mut (*dst).src_addr);
            copy16(view.dst, &raw mut (*dst).dst_addr);
            (*dst).src_port = view.src_port;
            (*dst).dst_port = view.dst_port;
            (*dst).family = view.family;
            (*dst).protonum = view.proto;
        }
    }
}

/// Copies a 16-byte address as two words (an assignment would be a `memcpy` call).
///
/// # Safety
/// `dst` must be valid for writing 16 bytes.
#[inline(always)]
pub unsafe fn copy16(src: &[u8; 16], dst: *mut [u8; 16]) {
    let (from, to) = (src.as_ptr().cast::<u64>(), dst.cast::<u64>());
    // SAFETY: both are 16 bytes; unaligned access, as the arrays are only byte-aligned.
    unsafe {
        to.write_unaligned(from.read_unaligned());
        to.add(1).write_unaligned(from.add(1).read_unaligned());
    }
}
