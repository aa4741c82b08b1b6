//! A container's attach point: a unix socket in its directory (`attach`), served by its
//! monitor. Every client gets the container's output as frames (a stream byte, 1 stdout or
//! 2 stderr, a 32-bit big-endian length, the bytes), the same bytes the CRI log gets. A
//! client sends `oci::TtyInput` frames: data for the container's stdin (its pipe, or its
//! terminal), window sizes (a terminal's), and the end of its input. With `stdin_once` the
//! first client's end of input is the container's: its pipe closes (on a terminal: the EOF
//! character, and no more input). Input the container does not read yet is kept, and the
//! clients' input is not read while too much is kept, so nothing is lost and nothing grows
//! without bound. A client that cannot keep up with the output is dropped, so that no
//! attacher can hold the container's output (or its log) up.

use crate::oci::TtyInput;
use std::{
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::Path,
};

use nix::poll::PollFlags;

/// Input kept for the container beyond which the clients' input is not read.
const MAX_PENDING: usize = 64 << 10;

pub struct Attach {
    listener: UnixListener,
    clients: Vec<Client>,
    /// The container's stdin pipe, or its terminal's master, while it takes input.
    stdin: Option<File>,
    /// The terminal's master (for window sizes), on a terminal.
    terminal: Option<File>,
    /// Input the container has not read yet.
    pending: Vec<u8>,
    /// The input has ended (`stdin_once`): stdin closes once `pending` is written.
    closing: bool,
    stdin_once: bool,
}

struct Client {
    stream: UnixStream,
    input_open: bool,
    /// Hung up: removed at the next sweep.
    gone: bool,
    /// Input not yet a whole frame.
    partial: Vec<u8>,
}

/// What a poll slot of [`Attach::fds`] watches.
#[derive(Debug, Clone, Copy)]
pub enum Slot {
    Listener,
    Client(usize),
    /// The container's stdin, writable again.
    Stdin,
}

impl Attach {
    /// Serves `dir/attach`; `stdin` is the container's stdin pipe, if it has one, or its
    /// terminal's master (`terminal`).
    pub fn bind(
        dir: &Path,
        stdin: Option<OwnedFd>,
        stdin_once: bool,
        terminal: bool,
    ) -> io::Result<Attach> {
        let (_dirfd, path) = crate::oci::attach_socket(dir)?;
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        let stdin = stdin.map(File::from);
        if let Some(stdin) = &stdin {
            set_nonblocking(stdin.as_fd())?;
        }
        let terminal = match (&stdin, terminal) {
            (Some(master), true) => Some(master.try_clone()?),
            _ => None,
        };
        Ok(Attach {
            listener,
            clients: Vec::new(),
            stdin,
            terminal,
            pending: Vec::new(),
            closing: false,
            stdin_once,
        })
    }

    /// Forgets the clients that hung up (between polls: slots are indices).
    pub fn sweep(&mut self) {
        self.clients.retain(|c| !c.gone);
    }

    /// The descriptors to poll, with what each is and the events wanted. A client whose
    /// input has ended is still polled (for nothing): its hang-up is noticed.
    pub fn fds(&self) -> Vec<(BorrowedFd<'_>, Slot, PollFlags)> {
        let mut fds = vec![(self.listener.as_fd(), Slot::Listener, PollFlags::POLLIN)];
        let reading = self.pending.len() < MAX_PENDING;
        for (i, c) in self.clients.iter().enumerate() {
            let flags = if c.input_open && reading {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            };
            fds.push((c.stream.as_fd(), Slot::Client(i), flags));
        }
        if let (Some(stdin), false) = (&self.stdin, self.pending.is_empty()) {
            fds.push((stdin.as_fd(), Slot::Stdin, PollFlags::POLLOUT));
        }
        fds
    }

    /// Handles a ready slot: a new client, a client's input or hang-up, or stdin writable.
    pub fn ready(&mut self, slot: Slot, events: PollFlags) {
        match slot {
            Slot::Listener => {
                while let Ok((stream, _)) = self.listener.accept() {
                    if stream.set_nonblocking(true).is_ok() {
                        self.clients.push(Client {
                            stream,
                            input_open: true,
                            gone: false,
                            partial: Vec::new(),
                        });
                    }
                }
            }
            Slot::Stdin => self.flush(),
            Slot::Client(i) => {
                let Some(client) = self.clients.get_mut(i) else {
                    return;
                };
                if !client.input_open || !events.contains(PollFlags::POLLIN) {
                    // Only a hang-up (or an error) wakes a client we do not read.
                    client.gone = true;
                    return;
                }
                let mut buf = [0u8; 16 << 10];
                let mut frames = Vec::new();
                match client.stream.read(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Ok(0) | Err(_) => {
                        // Gone. Only a client that had input says its end (a client
                        // watching the output must not close the container's stdin).
                        client.input_open = false;
                    }
                    Ok(n) => {
                        client.partial.extend_from_slice(&buf[..n]);
                        loop {
                            match TtyInput::decode(&mut client.partial) {
                                Ok(Some(frame)) => frames.push(frame),
                                Ok(None) => break,
                                Err(e) => {
                                    // Not ours to read on: that client's input is over.
                                    eprintln!("stratad monitor: an attach client: {e}");
                                    client.input_open = false;
                                    client.partial.clear();
                                    break;
                                }
                            }
                        }
                    }
                }
                for frame in frames {
                    self.input(frame);
                }
            }
        }
    }

    /// One frame of a client's input.
    fn input(&mut self, frame: TtyInput) {
        match frame {
            TtyInput::Data(data) => {
                if self.stdin.is_some() && !self.closing {
                    self.pending.extend_from_slice(&data);
                    self.flush();
                }
            }
            TtyInput::Resize { cols, rows } => {
                if let Some(terminal) = &self.terminal {
                    let _ = crate::sys::process::set_window_size(terminal.as_fd(), cols, rows);
                }
            }
            TtyInput::End if self.stdin_once && !self.closing => {
                if self.terminal.is_some() && self.stdin.is_some() {
                    // A terminal stays: its end of input is the EOF character.
                    self.pending.push(4);
                }
                // The container reads end of file (on a terminal, no more input).
                self.closing = true;
                self.flush();
            }
            TtyInput::End => {}
        }
    }

    /// Writes what the container will take of the pending input; closes stdin once the
    /// input has ended and all of it is written.
    fn flush(&mut self) {
        if let Some(stdin) = &mut self.stdin {
            while !self.pending.is_empty() {
                match stdin.write(&self.pending) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(_) => {
                        // The container closed its stdin: nobody reads this.
                        self.pending.clear();
                        self.stdin = None;
                        return;
                    }
                }
            }
        }
        if self.closing && self.pending.is_empty() {
            self.stdin = None;
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
        for c in &mut self.clients {
            if c.stream.write_all(&frame).is_err() {
                c.gone = true;
            }
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}
