//! Who owns each socket: `cgroup/sock_create` runs in the process that creates an inet socket,
//! `cgroup/sock_release` where its last user closes it. Each writes a `SocketEvent` with the
//! socket's cookie; packet events carry the cookie of their socket, and the collector joins
//! the two. Both always return 1 (allow): tracer never refuses a socket.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, generated},
    macros::cgroup_sock,
    programs::SockContext,
};
use tracer_common::event::{EventKind, SocketEvent};

use crate::emit;

/// `cgroup/sock_*` programs: 1 lets the operation go on.
const ALLOW: i32 = 1;

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    socket_event(&ctx, EventKind::SocketCreated);
    ALLOW
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    socket_event(&ctx, EventKind::SocketReleased);
    ALLOW
}

#[inline(always)]
fn socket_event(ctx: &SockContext, kind: EventKind) {
    // SAFETY: the context is the socket the program runs for; the helper reads (and on first
    // use sets) its cookie.
    let cookie = unsafe { generated::bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: helpers without arguments; these programs run in process context.
    let (cgroup_id, tgid) = unsafe {
        (
            generated::bpf_get_current_cgroup_id(),
            (bpf_get_current_pid_tgid() >> 32) as u32,
        )
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    emit::socket(&SocketEvent {
        kind: kind as u8,
        _pad: [0; 3],
        tgid,
        cookie,
        cgroup_id,
        comm,
    });
}
