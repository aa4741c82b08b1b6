//! Loading a cgroup v2 device filter: `bpf(BPF_PROG_LOAD)` of a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and `bpf(BPF_PROG_ATTACH)` to a cgroup. The
//! program itself is data built in `cgroup::devices`.
#![allow(unsafe_code)] // the bpf(2) system call

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

/// One eBPF instruction, as the kernel takes it (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The 8 bytes the kernel reads.
    pub fn to_bytes(self) -> [u8; 8] {
        let off = self.off.to_ne_bytes();
        let imm = self.imm.to_ne_bytes();
        [
            self.code, self.regs, off[0], off[1], imm[0], imm[1], imm[2], imm[3],
        ]
    }
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Several programs on one cgroup (and its ancestors') must all allow an access.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `union bpf_attr` as BPF_PROG_LOAD reads it, zero-padded: the kernel refuses non-zero
/// bytes past the fields it knows.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    pad: [u64; 12],
}

/// `union bpf_attr` as BPF_PROG_ATTACH reads it.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    pad: [u32; 27],
}

/// The attribute blocks this module hands the kernel, and only those.
trait BpfAttr {}
impl BpfAttr for ProgLoad {}
impl BpfAttr for ProgAttach {}

fn bpf<T: BpfAttr>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] bpf_attr of the size passed; the
    // kernel reads (and for a load, writes the verifier log to a buffer we own) only that.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Loads `program` and attaches it to the cgroup directory `cgroup` as its device filter.
pub fn attach_device_filter(cgroup: &Path, program: &[Insn]) -> io::Result<()> {
    let bytes: Vec<u8> = program.iter().flat_map(|i| i.to_bytes()).collect();
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 << 10];
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: bytes.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut load).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        io::Error::new(
            e.kind(),
            format!("loading the device filter: {e}: {}", text.trim()),
        )
    })?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let dir = rustix::fs::open(
        cgroup,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut attach = ProgAttach {
        target_fd: dir.as_fd().as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attach)
        .map_err(|e| io::Error::new(e.kind(), format!("attaching the device filter: {e}")))?;
    // The cgroup holds the program now; our descriptor may go.
    Ok(())
}
