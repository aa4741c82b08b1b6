//! Loading a cgroup v2 device filter: `bpf(BPF_PROG_LOAD)` of a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and `bpf(BPF_PROG_ATTACH)` to a cgroup. The
//! program itself is data built in `cgroup::devices`.
#![allow(unsafe_code)] // the bpf(2) system call

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use crate::cgroup::devices::Insn;

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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::cgroup::devices::{DEFAULT_RULES, program};

    /// On the real kernel (as root): a shell in a cgroup with the default filter opens
    /// /dev/null and is refused /dev/kmsg.
    #[test]
    fn the_default_filter_holds_on_the_real_kernel() {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists() && !p.join("tasks").exists())
            .expect("a cgroup v2 hierarchy (unified or hybrid) to attach to");
        let dir = root.join(format!("strata-bpf-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let attached = super::attach_device_filter(&dir, &program(DEFAULT_RULES));
        let out = attached.as_ref().ok().map(|()| {
            std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs || exit 1; (exec 3</dev/null) && echo null; \
                     (exec 3</dev/kmsg) 2>/dev/null && echo kmsg; echo done",
                    dir.display()
                ))
                .output()
                .unwrap()
        });
        // The shell has exited: its cgroup can go.
        let mut removed = std::fs::remove_dir(&dir);
        for _ in 0..100 {
            if removed.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            removed = std::fs::remove_dir(&dir);
        }
        attached.unwrap();
        removed.unwrap();
        let out = out.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "null\ndone\n",
            "{out:?}"
        );
    }
}
