//! The floor under every program's measured cost: an empty program (`r0 = 0; exit`) on one of
//! the same tracepoints, measured with the same `kernel.bpf_stats_enabled` accounting. What
//! tracer's programs cost above it is what tracer can change; the floor is the price of the
//! tracepoint call, the accounting itself and this machine's clock.

use std::{
    ffi::CStr,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::bail;

/// The floor program's name, as `bpftool prog show` reports it.
pub const NAME: &str = "trc_floor";

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// `r0 = 0; exit`, as two eBPF instructions.
const EMPTY: [u64; 2] = [0xb7_u64.to_le(), 0x95_u64.to_le()];

/// An empty program attached to a raw tracepoint; detached and unloaded on drop (the link and
/// program file descriptors close).
pub struct Floor {
    _program: OwnedFd,
    _link: OwnedFd,
}

impl Floor {
    /// Loads the empty program and attaches it to `tracepoint`.
    pub fn attach(tracepoint: &CStr) -> anyhow::Result<Floor> {
        let license = c"GPL";
        // `union bpf_attr` for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
        // log_size, log_buf, kern_version, prog_flags, prog_name[16], ...
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_RAW_TRACEPOINT.to_ne_bytes());
        attr[4..8].copy_from_slice(&(EMPTY.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(EMPTY.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[48..48 + NAME.len()].copy_from_slice(NAME.as_bytes());
        let program = bpf(BPF_PROG_LOAD, &attr, "load the floor program")?;

        // For BPF_RAW_TRACEPOINT_OPEN: name, prog_fd.
        let mut attr = [0u8; 128];
        attr[0..8].copy_from_slice(&(tracepoint.as_ptr() as u64).to_ne_bytes());
        attr[8..12].copy_from_slice(&(program as u32).to_ne_bytes());
        let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &attr, "attach the floor program");
        // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
        let program = unsafe { OwnedFd::from_raw_fd(program) };
        // SAFETY: as above.
        let link = unsafe { OwnedFd::from_raw_fd(link?) };
        Ok(Floor {
            _program: program,
            _link: link,
        })
    }
}

/// The `bpf(2)` system call with `attr`; the new file descriptor.
fn bpf(cmd: libc::c_long, attr: &[u8; 128], what: &str) -> anyhow::Result<i32> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` for `cmd`, and every pointer in it
    // outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), attr.len() as u32) };
    if fd < 0 {
        bail!("failed to {what}: {}", std::io::Error::last_os_error());
    }
    Ok(fd as i32)
}
