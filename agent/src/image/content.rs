//! The content store: blobs (manifests, configs, compressed layers) by digest.
//!
//! A blob is written to the ingest area, fsynced, checked against its expected size and
//! digest, and renamed into `blobs/sha256/<hex>`; the directory is fsynced (once for a
//! whole pull) before any record refers to the blob. A crash at any point leaves either no
//! blob or the whole verified blob; leftovers in the ingest area are removed at start-up.

use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use super::digest::{Digest, Hasher};
use crate::state;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    Size {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob digest mismatch: expected {expected}, got {actual}")]
    Digest { expected: Digest, actual: Digest },
    #[error("blob {digest} is larger than the {limit}-byte limit")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("content store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
    counter: AtomicU64,
}

impl ContentStore {
    /// Opens (creating) the store under `root`, clearing interrupted ingests.
    pub fn open(root: &Path) -> Result<ContentStore> {
        let blobs = root.join("blobs/sha256");
        let ingest = root.join("ingest");
        std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        if ingest.exists() {
            std::fs::remove_dir_all(&ingest).map_err(io_err(&ingest))?;
        }
        std::fs::create_dir_all(&ingest).map_err(io_err(&ingest))?;
        Ok(ContentStore {
            blobs,
            ingest,
            counter: AtomicU64::new(0),
        })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub fn has(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Reads a whole blob, refusing ones over `limit` bytes.
    pub fn read(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let path = self.path(digest);
        let len = std::fs::metadata(&path).map_err(io_err(&path))?.len();
        if len > limit {
            return Err(Error::TooLarge {
                digest: digest.clone(),
                limit,
            });
        }
        std::fs::read(&path).map_err(io_err(&path))
    }

    /// Stores `bytes` as blob `digest` after checking that they hash to it.
    pub fn write(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let mut ingest = self.ingest(digest.clone(), Some(bytes.len() as u64))?;
        ingest.write_all(bytes).map_err(io_err(&ingest.path))?;
        ingest.commit()
    }

    /// Starts writing a blob whose digest is not known yet (see [`Ingest::commit_computed`]).
    pub fn ingest_new(&self) -> Result<Ingest<'_>> {
        self.ingest(Digest::of(b""), None)
    }

    /// Starts writing blob `digest`; `size`, when known, is checked on commit.
    pub fn ingest(&self, digest: Digest, size: Option<u64>) -> Result<Ingest<'_>> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self
            .ingest
            .join(format!("{}-{}-{n}", digest.hex(), std::process::id()));
        let file = File::create(&path).map_err(io_err(&path))?;
        Ok(Ingest {
            store: self,
            file,
            path,
            hasher: Hasher::default(),
            written: 0,
            digest,
            size,
            done: false,
        })
    }

    /// Makes the names of committed blobs durable. Callers sync before they record
    /// anything that refers to a blob, so a record never outlives its blobs in a crash.
    pub fn sync(&self) -> Result<()> {
        state::sync_dir(&self.blobs).map_err(io_err(&self.blobs))
    }

    pub fn remove(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Every blob in the store.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.blobs).map_err(io_err(&self.blobs))? {
            let entry = entry.map_err(io_err(&self.blobs))?;
            if let Some(name) = entry.file_name().to_str()
                && let Ok(d) = Digest::parse(&format!("sha256:{name}"))
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Whether a stored blob's bytes are its digest; if not, why.
    pub fn verify(&self, digest: &Digest) -> std::result::Result<(), String> {
        let path = self.path(digest);
        let mut hasher = Hasher::default();
        File::open(&path)
            .and_then(|mut file| io::copy(&mut file, &mut hasher))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let actual = hasher.finish();
        if actual == *digest {
            Ok(())
        } else {
            Err(format!("its bytes hash to {actual}"))
        }
    }

    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }
}

/// A blob being written. Dropped without [`Ingest::commit`], it leaves nothing behind.
pub struct Ingest<'a> {
    store: &'a ContentStore,
    file: File,
    path: PathBuf,
    hasher: Hasher,
    written: u64,
    digest: Digest,
    size: Option<u64>,
    done: bool,
}

impl Ingest<'_> {
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Where the bytes go until the blob is published.
    pub fn file_path(&self) -> &Path {
        &self.path
    }

    /// For content the agent makes itself: publishes the blob under the digest it hashes
    /// to, and returns that digest and the size.
    pub fn commit_computed(mut self) -> Result<(Digest, u64)> {
        let digest = std::mem::take(&mut self.hasher).finish();
        self.file.sync_all().map_err(io_err(&self.path))?;
        let dest = self.store.path(&digest);
        std::fs::rename(&self.path, &dest).map_err(io_err(&dest))?;
        self.done = true;
        Ok((digest, self.written))
    }

    /// Verifies size and digest, makes the blob durable and publishes it.
    pub fn commit(mut self) -> Result<()> {
        if let Some(expected) = self.size
            && expected != self.written
        {
            return Err(Error::Size {
                digest: self.digest.clone(),
                expected,
                actual: self.written,
            });
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != self.digest {
            return Err(Error::Digest {
                expected: self.digest.clone(),
                actual,
            });
        }
        self.file.sync_all().map_err(io_err(&self.path))?;
        let dest = self.store.path(&self.digest);
        std::fs::rename(&self.path, &dest).map_err(io_err(&dest))?;
        self.done = true;
        Ok(())
    }
}

impl Write for Ingest<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Ingest<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_blobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"abc");
        store.write(&d, b"abc").unwrap();
        assert_eq!(store.read(&d, 10).unwrap(), b"abc");
        assert!(matches!(store.read(&d, 2), Err(Error::TooLarge { .. })));

        let wrong = Digest::of(b"xyz");
        assert!(matches!(
            store.write(&wrong, b"abc"),
            Err(Error::Digest { .. })
        ));
        assert!(!store.has(&wrong));

        let mut ingest = store.ingest(Digest::of(b"hello"), Some(5)).unwrap();
        ingest.write_all(b"hel").unwrap();
        assert!(matches!(ingest.commit(), Err(Error::Size { .. })));
        // Nothing half-written is left anywhere.
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(store.list().unwrap(), vec![d]);
    }
}
