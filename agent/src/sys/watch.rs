//! Waiting on a descriptor from async code, without polling: a pidfd (readable once its
//! process has exited) or a FIFO (readable once a writer wrote or left).
#![allow(unsafe_code)] // registering a descriptor with the reactor

use std::{io, os::fd::OwnedFd};

use tokio::io::{Interest, unix::AsyncFd};

pub struct Watched(AsyncFd<OwnedFd>);

impl Watched {
    /// Watches `fd` for reading (it should be non-blocking, as a pidfd always is).
    pub fn new(fd: OwnedFd) -> io::Result<Watched> {
        // SAFETY: an OwnedFd is a valid open descriptor, owned by the AsyncFd until it is
        // dropped, and its raw number never changes.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map(Watched)
            .map_err(|e| e.into_parts().1)
    }

    /// Resolves once the descriptor is readable.
    pub async fn readable(&self) -> io::Result<()> {
        self.0.readable().await.map(|_| ())
    }

    /// Reads what is there, waiting until something (or the end of file) is.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.0.readable().await?;
            if let Ok(result) = ready
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(io::Error::from))
            {
                return result;
            }
        }
    }
}
