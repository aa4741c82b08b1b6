//! Loading a compiled seccomp filter into the calling process (seccomp(2)).
#![allow(unsafe_code)] // the seccomp(2) system call

use std::io;

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;

/// Loads `program` (an array of `struct sock_filter`, as libseccomp exports it). Without
/// no_new_privs this needs CAP_SYS_ADMIN. It applies to this process and what it execs,
/// for good.
pub fn load_filter(program: &[u8]) -> io::Result<()> {
    if program.is_empty()
        || !program.len().is_multiple_of(8)
        || program.len() / 8 > u16::MAX as usize
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a seccomp program of {} bytes", program.len()),
        ));
    }
    let mut filters: Vec<libc::sock_filter> = program
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        len: filters.len() as libc::c_ushort,
        filter: filters.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filters`, which outlives the call; the kernel copies the
    // program and keeps no pointer to our memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            0 as libc::c_uint,
            &prog as *const libc::sock_fprog,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
