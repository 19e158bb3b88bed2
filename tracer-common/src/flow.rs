//! Keys of the map in which the programs remember the flows their filter matched.
//!
//! A packet carries its conntrack entry only inside the namespace where conntrack saw it; on
//! the other side of a veth (in a container) the entry is gone, and the packet may show only
//! the translated port. When a packet matches the filter and carries an entry, the programs
//! store both conntrack tuples, so later packets of the same connection match by tuple on
//! either side of the NAT.

#[cfg(not(target_arch = "bpf"))]
use core::sync::atomic::{AtomicU64, Ordering};

use crate::assert_size;

/// Moves the tracking generation on, for a connection newly tracked: a verdict cached under an
/// older generation ("this connection does not match") is no longer trusted, since the new
/// connection may be the one it was made for, seen where its tuples differ.
///
/// One atomic add, never a load and a store: two CPUs tracking connections at once must both
/// move it. With a load and a store one of the moves can be lost, and a verdict cached
/// between them stays valid when it must not (the model in the tests shows the interleaving).
/// The generation is 64 bits wide, so it never comes back to 0, which means "nothing tracked
/// yet".
///
/// # Safety
/// `generation` points to a valid, 8-byte aligned `u64` that every CPU and thread only reads
/// and writes atomically.
#[inline(always)]
pub unsafe fn advance_generation(generation: *mut u64) {
    // BPF has an atomic add (`BPF_ATOMIC | BPF_ADD`) but no compare-and-swap before Linux
    // 5.12, so the target does not offer `AtomicU64::fetch_add`; the intrinsic is that add.
    #[cfg(target_arch = "bpf")]
    // SAFETY: as the caller promises.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            generation, 1,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as the caller promises.
    unsafe { AtomicU64::from_ptr(generation) }.fetch_add(1, Ordering::Relaxed);
}

/// A connection tuple in canonical order: the endpoint that sorts first is `a`, so a tuple and
/// its reverse have the same key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addr_a: [u8; 16],
    pub addr_b: [u8; 16],
    pub port_a: u16,
    pub port_b: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Padding, zero. Two fields rather than an array, which eBPF code would zero with a call
    /// to a byte-by-byte `memset`.
    pub _pad0: u8,
    pub _pad1: u16,
}
assert_size!(FlowKey, 40);

impl FlowKey {
    /// The key of the connection between two endpoints, whichever direction it is given in.
    #[inline(always)]
    pub fn new(proto: u8, src: &[u8; 16], src_port: u16, dst: &[u8; 16], dst_port: u16) -> Self {
        let src_first = match compare(src, dst) {
            core::cmp::Ordering::Less => true,
            core::cmp::Ordering::Greater => false,
            core::cmp::Ordering::Equal => src_port <= dst_port,
        };
        let (addr_a, port_a, addr_b, port_b) = if src_first {
            (*src, src_port, *dst, dst_port)
        } else {
            (*dst, dst_port, *src, src_port)
        };
        FlowKey {
            addr_a,
            addr_b,
            port_a,
            port_b,
            proto,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

impl FlowKey {
    /// A well-mixed 64-bit hash of the key, for choosing one connection in N by its remainder:
    /// [`FlowKey::signature`] through a 64-bit finalizer (MurmurHash3's `fmix64`), whose low
    /// bits depend on every input bit (the signature's alone hardly change between
    /// connections that differ in one port).
    #[inline(always)]
    pub fn sample_hash(&self) -> u64 {
        let mut h = self.signature();
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    /// A 64-bit digest of the key (not a hash for tables: cheap, for telling a remembered key
    /// from another one).
    #[inline(always)]
    pub fn signature(&self) -> u64 {
        let word = |bytes: &[u8; 16], half: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[half * 8..half * 8 + 8]);
            u64::from_ne_bytes(w)
        };
        let ports =
            u64::from(self.port_a) | u64::from(self.port_b) << 16 | u64::from(self.proto) << 32;
        [
            word(&self.addr_a, 0),
            word(&self.addr_a, 1),
            word(&self.addr_b, 0),
            word(&self.addr_b, 1),
            ports,
        ]
        .into_iter()
        .fold(0xcbf2_9ce4_8422_2325, |acc: u64, w| {
            (acc ^ w)
                .wrapping_mul(0x0000_0100_0000_01b3)
                .rotate_left(29)
        })
    }
}

/// Orders two addresses as big-endian numbers, in two 8-byte halves (cheap in eBPF).
#[inline(always)]
fn compare(a: &[u8; 16], b: &[u8; 16]) -> core::cmp::Ordering {
    let half = |x: &[u8; 16], i: usize| {
        u64::from_be_bytes([
            x[i],
            x[i + 1],
            x[i + 2],
            x[i + 3],
            x[i + 4],
            x[i + 5],
            x[i + 6],
            x[i + 7],
        ])
    };
    (half(a, 0), half(a, 8)).cmp(&(half(b, 0), half(b, 8)))
}

#[cfg(feature = "user")]
// SAFETY: `repr(C)` integers and arrays with explicit padding: every bit pattern is valid.
unsafe impl aya::Pod for FlowKey {}

#[cfg(test)]
mod generation_tests;

#[cfg(test)]
mod tests {
    use super::FlowKey;

    /// Connections that differ in one port, as consecutive ephemeral ports do, spread evenly
    /// over the remainders: sampling 1 in N keeps about 1 in N of them.
    #[test]
    fn sample_hash_spreads_connections_that_differ_in_one_port() {
        let lo = {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[127, 0, 0, 1]);
            a
        };
        let mut kept = [0u32; 4];
        for port in 40000u16..44000 {
            let key = FlowKey::new(6, &lo, port, &lo, 10097);
            kept[(key.sample_hash() % 4) as usize] += 1;
        }
        for count in kept {
            assert!((900..1100).contains(&count), "{kept:?}");
        }
        // The same connection in either direction has the same hash.
        let a = FlowKey::new(6, &lo, 40000, &lo, 80);
        let b = FlowKey::new(6, &lo, 80, &lo, 40000);
        assert_eq!(a.sample_hash(), b.sample_hash());
    }
}
