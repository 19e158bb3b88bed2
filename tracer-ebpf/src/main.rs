//! tracer's kernel programs.
//!
//! Each hook family has its own module with thin entry points; they share the header parser
//! ([`packet`]), the `sk_buff` reader ([`skb`]) and the output path ([`emit`]). Every program is
//! passive: tracepoint programs cannot alter the packet, and TC programs return `TC_ACT_UNSPEC`
//! so the packet and the rest of the TC chain go on untouched.
#![no_std]
#![no_main]

mod compact;
mod config;
mod conntrack;
mod drop;
mod emit;
mod encap;
mod filter;
mod frame;
mod icmp;
mod layer;
mod nat;
mod owner;
mod packet;
mod skb;
mod stack;
mod tc;
mod words;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
