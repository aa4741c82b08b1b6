//! The binary the agent's helpers run as. A helper is visible inside containers (a
//! container's init before it execs, an exec's child, the pod's PID 1), and
//! `/proc/<pid>/exe` of such a process would hand a container the host's `stratad` inode to
//! write to (CVE-2019-5736 is that attack on runc). So helpers run from a sealed in-memory
//! copy of the binary that no one can write: made once per daemon, kept open for its life.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    sync::OnceLock,
};

use rustix::fs::{MemfdFlags, SealFlags};

static COPY: OnceLock<Result<OwnedFd, String>> = OnceLock::new();

/// The path to exec a helper from (`/proc/self/fd/N` of the sealed copy, which stays
/// close-on-exec: the kernel opens it before closing the descriptor). The copy is made on
/// the first call.
pub fn helper_binary() -> io::Result<PathBuf> {
    match COPY.get_or_init(|| sealed_copy().map_err(|e| e.to_string())) {
        Ok(fd) => Ok(PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))),
        Err(e) => Err(io::Error::other(format!(
            "cannot make the sealed copy of stratad: {e}"
        ))),
    }
}

fn sealed_copy() -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("stratad", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut copy = std::fs::File::from(fd);
    io::copy(&mut std::fs::File::open("/proc/self/exe")?, &mut copy)?;
    let fd = OwnedFd::from(copy);
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    #[test]
    fn the_copy_is_sealed_against_every_write() {
        let path = super::helper_binary().unwrap();
        let original = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), original);
        // Even opened for writing (as through /proc/<pid>/exe), nothing can be written,
        // nor the file cut short.
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) {
            assert!(f.write_all(b"evil").is_err());
            assert!(f.set_len(0).is_err());
        }
        assert_eq!(std::fs::read(&path).unwrap(), original);
    }
}
