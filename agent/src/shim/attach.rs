//! A container's attach point: a unix socket in its directory (`attach`), served by its
//! monitor. Every client gets the container's output as frames (a stream byte, 1 stdout or
//! 2 stderr, a 32-bit big-endian length, the bytes), the same bytes the CRI log gets. A
//! client sends `oci::TtyInput` frames: data for the container's stdin (its pipe, or its
//! terminal), window sizes (a terminal's), and the end of its input. With `stdin_once` the
//! first client's end of input is the container's: its pipe closes (on a terminal: the EOF
//! character). A client that cannot keep up is dropped, so that no attacher can hold the
//! container's output (or its log) up.

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

pub struct Attach {
    listener: UnixListener,
    clients: Vec<Client>,
    /// The container's stdin pipe, or its terminal's master.
    stdin: Option<File>,
    stdin_once: bool,
    terminal: bool,
}

struct Client {
    stream: UnixStream,
    input_open: bool,
    /// Input not yet a whole frame.
    pending: Vec<u8>,
}

/// What a poll slot of [`Attach::fds`] watches.
#[derive(Debug, Clone, Copy)]
pub enum Slot {
    Listener,
    Client(usize),
}

impl Attach {
    /// Serves `dir/attach`; `stdin` is the container's stdin pipe, if it has one, or (with
    /// `terminal`) its terminal's master.
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
        Ok(Attach {
            listener,
            clients: Vec::new(),
            stdin,
            stdin_once,
            terminal,
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
                            pending: Vec::new(),
                        });
                    }
                }
            }
            Slot::Client(i) => {
                let mut buf = [0u8; 16 << 10];
                let Some(client) = self.clients.get_mut(i) else {
                    return;
                };
                let mut frames = Vec::new();
                match client.stream.read(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Ok(0) | Err(_) => {
                        // Gone. Only a client that had input says its end (a client
                        // watching the output must not close the container's stdin).
                        client.input_open = false;
                    }
                    Ok(n) => {
                        client.pending.extend_from_slice(&buf[..n]);
                        loop {
                            match TtyInput::decode(&mut client.pending) {
                                Ok(Some(frame)) => frames.push(frame),
                                Ok(None) => break,
                                Err(e) => {
                                    eprintln!("stratad monitor: an attach client: {e}");
                                    client.input_open = false;
                                    client.pending.clear();
                                    frames.push(TtyInput::End);
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
                if let Some(stdin) = &mut self.stdin
                    && stdin.write_all(&data).is_err()
                {
                    eprintln!("stratad monitor: the container does not read its stdin");
                }
            }
            TtyInput::Resize { cols, rows } => {
                if let (true, Some(terminal)) = (self.terminal, &self.stdin) {
                    let _ = crate::sys::process::set_window_size(terminal.as_fd(), cols, rows);
                }
            }
            TtyInput::End if self.stdin_once => {
                if self.terminal {
                    // A terminal stays: its end of input is the EOF character.
                    if let Some(terminal) = &mut self.stdin {
                        let _ = terminal.write_all(&[4]);
                    }
                }
                // The container reads end of file (on a terminal, no more input).
                self.stdin = None;
            }
            TtyInput::End => {}
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
