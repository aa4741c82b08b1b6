//! The layer store: each layer unpacked once, overlay-ready, in `layers/<diff_id hex>/fs`,
//! shared by every image and container that has it.
//!
//! A layer is unpacked into a temporary directory, flushed to disk, and renamed into
//! place only once its digests have been checked; `meta.json` inside it is written before
//! the rename, so a layer directory that exists is complete. Temporary directories left by
//! a crash are removed at start-up.

use std::{
    io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use crate::{state, sys::rootdir::RootDir};

const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
#[error("layer store {path}: {source}")]
pub struct Error {
    path: PathBuf,
    #[source]
    source: io::Error,
}

pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error {
        path: path.to_path_buf(),
        source,
    }
}

/// What the store knows of a layer besides its files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerMeta {
    pub diff_id: Digest,
    /// Bytes of file content in the layer.
    pub size: u64,
    pub entries: u64,
}

pub struct LayerStore {
    dir: PathBuf,
    counter: AtomicU64,
}

impl LayerStore {
    pub fn open(root: &Path) -> Result<LayerStore> {
        let dir = root.join("layers");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing an interrupted unpack");
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
            }
        }
        Ok(LayerStore {
            dir,
            counter: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join(diff_id.hex())
    }

    /// The directory an overlay mount uses as a lower layer.
    pub fn fs_path(&self, diff_id: &Digest) -> PathBuf {
        self.layer_dir(diff_id).join("fs")
    }

    pub fn has(&self, diff_id: &Digest) -> bool {
        self.layer_dir(diff_id).join("meta.json").is_file()
    }

    pub fn meta(&self, diff_id: &Digest) -> Option<LayerMeta> {
        let text = std::fs::read(self.layer_dir(diff_id).join("meta.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// A new empty layer directory to unpack into.
    pub fn begin(&self, diff_id: &Digest) -> Result<PendingLayer<'_>> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}-{n}",
            diff_id.hex(),
            std::process::id()
        ));
        let fs = dir.join("fs");
        std::fs::create_dir_all(&fs).map_err(io_err(&fs))?;
        let root = RootDir::open(&fs).map_err(io_err(&fs))?;
        Ok(PendingLayer {
            store: self,
            dir,
            root,
            done: false,
        })
    }

    /// Makes published layer names durable; called before a record refers to them.
    pub fn sync(&self) -> Result<()> {
        state::sync_dir(&self.dir).map_err(io_err(&self.dir))
    }

    /// Removes a layer; a missing one is fine.
    pub fn remove(&self, diff_id: &Digest) -> Result<()> {
        let dir = self.layer_dir(diff_id);
        // Rename first so a half-removed layer never looks complete.
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let doomed = self
            .dir
            .join(format!("{TMP_PREFIX}rm-{}-{n}", diff_id.hex()));
        match std::fs::rename(&dir, &doomed) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other.map_err(io_err(&dir))?,
        }
        std::fs::remove_dir_all(&doomed).map_err(io_err(&doomed))
    }

    /// Whether a layer directory is whole (its record, naming it, and its tree); if not, why.
    pub fn verify(&self, diff_id: &Digest) -> std::result::Result<(), String> {
        let dir = self.layer_dir(diff_id);
        let meta = self
            .meta(diff_id)
            .ok_or_else(|| format!("{}: no readable meta.json", dir.display()))?;
        if meta.diff_id != *diff_id {
            return Err(format!("its meta.json names {}", meta.diff_id));
        }
        if !self.fs_path(diff_id).is_dir() {
            return Err(format!("{}: no fs directory", dir.display()));
        }
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            if let Some(name) = entry.file_name().to_str()
                && let Ok(d) = Digest::parse(&format!("sha256:{name}"))
            {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// A layer being unpacked. Dropped without [`PendingLayer::commit`], it is removed.
pub struct PendingLayer<'a> {
    store: &'a LayerStore,
    dir: PathBuf,
    root: RootDir,
    done: bool,
}

impl PendingLayer<'_> {
    pub fn root(&self) -> &RootDir {
        &self.root
    }

    /// Flushes the layer to disk and publishes it under its diff_id.
    pub fn commit(mut self, meta: &LayerMeta) -> Result<()> {
        let meta_path = self.dir.join("meta.json");
        let json = serde_json::to_vec(meta).map_err(|e| io_err(&meta_path)(e.into()))?;
        state::write_atomic(&meta_path, &json).map_err(io_err(&meta_path))?;
        // One syncfs for the whole tree: cheaper than an fsync per file, and the layer is
        // on disk before anything can refer to it.
        rustix::fs::syncfs(std::fs::File::open(&self.dir).map_err(io_err(&self.dir))?)
            .map_err(|e| io_err(&self.dir)(e.into()))?;
        let dest = self.store.layer_dir(&meta.diff_id);
        match std::fs::rename(&self.dir, &dest) {
            Ok(()) => {}
            // Someone else published the same layer meanwhile: theirs is as good as ours.
            Err(e)
                if e.raw_os_error() == Some(libc::ENOTEMPTY)
                    || e.kind() == io::ErrorKind::AlreadyExists =>
            {
                return Ok(());
            }
            Err(e) => return Err(io_err(&dest)(e)),
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for PendingLayer<'_> {
    fn drop(&mut self) {
        if !self.done
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.dir.display(), error = %e, "cannot remove a failed unpack");
        }
    }
}
