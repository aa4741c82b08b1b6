//! Network interfaces, by ioctl (no netlink needed for what the agent does).
#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the descriptor is a socket we own and `ifr` is a valid ifreq for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connects to `port` on the loopback of the network namespace pinned at `netns` (the
/// caller's own, without one: a host-network pod). The namespace is entered by a thread of
/// its own, which ends right after: a socket stays in the namespace it was made in, and
/// the daemon's other threads never leave theirs. IPv4 first, then IPv6.
pub fn connect_loopback(netns: Option<&Path>, port: u16) -> io::Result<std::net::TcpStream> {
    let netns = netns.map(Path::to_path_buf);
    let connecting = std::thread::spawn(move || -> io::Result<std::net::TcpStream> {
        if let Some(path) = netns {
            let file = std::fs::File::open(&path)?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        }
        let timeout = std::time::Duration::from_secs(10);
        let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        std::net::TcpStream::connect_timeout(&v4, timeout).or_else(|e| {
            let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|_| e)
        })
    });
    connecting
        .join()
        .map_err(|_| io::Error::other("the connecting thread panicked"))?
}
