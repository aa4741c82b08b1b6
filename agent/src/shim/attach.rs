//! A container's attach point: a unix socket in its directory (`attach`), served by its
//! monitor. Every client gets the container's output as frames (a stream byte, 1 stdout or
//! 2 stderr, a 32-bit big-endian length, the bytes), the same bytes the CRI log gets; what a
//! client sends goes to the container's stdin pipe, when it has one. With `stdin_once` the
//! pipe closes when the first client's input ends. A client that cannot keep up is
//! dropped, so that no attacher can hold the container's output (or its log) up.

use std::{
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::Path,
};

pub struct Attach {
    listener: UnixListener,
    clients: Vec<Client>,
    stdin: Option<File>,
    stdin_once: bool,
}

struct Client {
    stream: UnixStream,
    input_open: bool,
}

/// What a poll slot of [`Attach::fds`] watches.
#[derive(Debug, Clone, Copy)]
pub enum Slot {
    Listener,
    Client(usize),
}

impl Attach {
    /// Serves `dir/attach`; `stdin` is the container's stdin pipe, if it has one.
    pub fn bind(dir: &Path, stdin: Option<OwnedFd>, stdin_once: bool) -> io::Result<Attach> {
        let (_dirfd, path) = crate::oci::attach_socket(dir)?;
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        let stdin = stdin.map(File::from);
        if let Some(stdin) = &stdin {
            set_nonblocking(stdin.as_fd())?;
        }
        Ok(Attach {
            listener,
            clients: Vec::new(),
            stdin,
            stdin_once,
        })
    }

    /// The descriptors to poll for reading, with what each is.
    pub fn fds(&self) -> Vec<(BorrowedFd<'_>, Slot)> {
        let mut fds = vec![(self.listener.as_fd(), Slot::Listener)];
        for (i, c) in self.clients.iter().enumerate() {
            if c.input_open {
                fds.push((c.stream.as_fd(), Slot::Client(i)));
            }
        }
        fds
    }

    /// Handles a ready slot: a new client, or a client's input.
    pub fn ready(&mut self, slot: Slot) {
        match slot {
            Slot::Listener => {
                while let Ok((stream, _)) = self.listener.accept() {
                    if stream.set_nonblocking(true).is_ok() {
                        self.clients.push(Client {
                            stream,
                            input_open: true,
                        });
                    }
                }
            }
            Slot::Client(i) => {
                let mut buf = [0u8; 16 << 10];
                let Some(client) = self.clients.get_mut(i) else {
                    return;
                };
                match client.stream.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        client.input_open = false;
                        if self.stdin_once {
                            // The container reads end of file.
                            self.stdin = None;
                        }
                    }
                    Ok(n) => {
                        if let Some(stdin) = &mut self.stdin
                            && stdin.write_all(&buf[..n]).is_err()
                        {
                            eprintln!("stratad monitor: the container does not read its stdin");
                        }
                    }
                }
            }
        }
    }

    /// Sends the container's output to every client (1 stdout, 2 stderr).
    pub fn output(&mut self, stream: u8, data: &[u8]) {
        if self.clients.is_empty() || data.is_empty() {
            return;
        }
        let mut frame = Vec::with_capacity(5 + data.len());
        frame.push(stream);
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
        frame.extend_from_slice(data);
        self.clients
            .retain_mut(|c| c.stream.write_all(&frame).is_ok());
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}
