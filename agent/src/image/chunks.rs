//! A blocking byte stream over a channel of chunks: how the threads that unpack a layer or
//! read an imported archive consume what other threads or async tasks receive.

use std::io::{self, Read};

/// Where the chunks come from. `None` is the end of the stream.
pub trait ChunkSource {
    fn next_chunk(&mut self) -> Option<io::Result<Vec<u8>>>;
}

impl ChunkSource for std::sync::mpsc::Receiver<io::Result<Vec<u8>>> {
    fn next_chunk(&mut self) -> Option<io::Result<Vec<u8>>> {
        self.recv().ok()
    }
}

/// Only for blocking threads: `blocking_recv` panics inside the async runtime.
impl ChunkSource for tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>> {
    fn next_chunk(&mut self) -> Option<io::Result<Vec<u8>>> {
        self.blocking_recv()
    }
}

pub struct ChunkReader<S> {
    source: S,
    current: Vec<u8>,
    pos: usize,
}

impl<S: ChunkSource> ChunkReader<S> {
    pub fn new(source: S) -> ChunkReader<S> {
        ChunkReader {
            source,
            current: Vec::new(),
            pos: 0,
        }
    }
}

impl<S: ChunkSource> Read for ChunkReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.source.next_chunk() {
                None => return Ok(0),
                Some(chunk) => {
                    self.current = chunk?;
                    self.pos = 0;
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_read_as_one_stream_and_errors_pass_through() {
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(Ok(b"ab".to_vec())).unwrap();
        tx.send(Ok(Vec::new())).unwrap();
        tx.send(Ok(b"cde".to_vec())).unwrap();
        drop(tx);
        let mut all = String::new();
        ChunkReader::new(rx).read_to_string(&mut all).unwrap();
        assert_eq!(all, "abcde");

        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(Ok(b"a".to_vec())).unwrap();
        tx.send(Err(io::Error::other("cut"))).unwrap();
        let mut out = Vec::new();
        let err = ChunkReader::new(rx).read_to_end(&mut out).unwrap_err();
        assert_eq!(err.to_string(), "cut");
    }
}
