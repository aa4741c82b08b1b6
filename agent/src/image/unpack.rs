//! Applies an uncompressed layer tar stream to an empty directory, making it overlay-ready:
//! OCI whiteouts become overlay whiteouts (`.wh.name` → a 0/0 character device,
//! `.wh..wh..opq` → `trusted.overlay.opaque=y` on the directory). Ownership, modes
//! (setuid too), mtimes, xattrs, hardlinks, symlinks and device nodes are kept.
//!
//! Every path goes through [`RootDir`], so no entry reaches outside the directory.

use std::{
    ffi::OsStr,
    io::{self, Read},
    path::{Path, PathBuf},
};

use tar::EntryType;

use super::digest::{Digest, Hasher};
use crate::sys::rootdir::{self, Attrs, NodeKind, RootDir};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("layer entry {entry:?}: {source}")]
    Entry {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    #[error("layer has more than {0} entries")]
    TooManyEntries(u64),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What an unpacked layer amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 of the whole uncompressed stream: the layer's `diff_id`.
    pub diff_id: Digest,
    /// Bytes of regular-file content.
    pub content_bytes: u64,
    pub entries: u64,
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks `tar` into `dest`, which should be empty.
pub fn unpack<R: Read>(tar: R, dest: &RootDir, max_entries: u64) -> Result<Unpacked> {
    let mut reader = HashingReader {
        inner: tar,
        hasher: Hasher::default(),
    };
    // The archive borrows the reader; it is done with it once the entries run out.
    let mut archive = tar::Archive::new(&mut reader);
    let mut entries = 0u64;
    let mut content_bytes = 0u64;
    // Directory times are set last: creating entries inside a directory changes its mtime.
    let mut dir_times: Vec<(PathBuf, Attrs)> = Vec::new();
    for entry in archive.entries().map_err(Error::Read)? {
        let mut entry = entry.map_err(Error::Read)?;
        entries += 1;
        if entries > max_entries {
            return Err(Error::TooManyEntries(max_entries));
        }
        let path = entry.path().map_err(Error::Read)?.into_owned();
        let fail = |source: io::Error| Error::Entry {
            entry: path.display().to_string(),
            source,
        };
        content_bytes += apply(&mut entry, &path, dest, &mut dir_times).map_err(fail)?;
    }
    for (path, attrs) in dir_times.iter().rev() {
        dest.set_mtime(path, attrs).map_err(|source| Error::Entry {
            entry: path.display().to_string(),
            source,
        })?;
    }
    // The tar end marker and padding are part of the diff_id: hash to the very end.
    io::copy(&mut reader, &mut io::sink()).map_err(Error::Read)?;
    Ok(Unpacked {
        diff_id: reader.hasher.finish(),
        content_bytes,
        entries,
    })
}

fn attrs_of<R: Read>(entry: &tar::Entry<R>) -> io::Result<Attrs> {
    let h = entry.header();
    let id =
        |v: u64| u32::try_from(v).map_err(|_| io::Error::other(format!("id {v} out of range")));
    Ok(Attrs {
        uid: id(h.uid()?)?,
        gid: id(h.gid()?)?,
        mode: h.mode()? & 0o7777,
        mtime_secs: i64::try_from(h.mtime().unwrap_or(0)).unwrap_or(0),
        mtime_nanos: 0,
    })
}

/// Applies one entry; returns the bytes of file content written.
fn apply<R: Read>(
    entry: &mut tar::Entry<R>,
    path: &Path,
    dest: &RootDir,
    dir_times: &mut Vec<(PathBuf, Attrs)>,
) -> io::Result<u64> {
    let attrs = attrs_of(entry)?;
    if let Some(name) = path.file_name().and_then(OsStr::to_str)
        && let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX)
    {
        let parent = path.parent().unwrap_or(Path::new(""));
        if name == OPAQUE_MARKER {
            dest.ensure_dir(parent)?;
            dest.set_xattr(parent, OsStr::new("trusted.overlay.opaque"), b"y")?;
        } else if !hidden.starts_with(WHITEOUT_PREFIX) && !hidden.is_empty() {
            let whiteout = Attrs {
                uid: 0,
                gid: 0,
                mode: 0,
                ..attrs
            };
            dest.mknod(&parent.join(hidden), NodeKind::Char, 0, 0, &whiteout)?;
        }
        // Other `.wh..wh.` names are AUFS bookkeeping with no meaning here.
        return Ok(0);
    }

    let mut written = 0;
    match entry.header().entry_type() {
        EntryType::Directory => {
            dest.mkdir(path, &attrs)?;
            dir_times.push((path.to_path_buf(), attrs));
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let mut file = dest.create_file(path)?;
            written = io::copy(entry, &mut file)?;
            rootdir::finish_file(&file, &attrs)?;
        }
        EntryType::Symlink => {
            let target = entry
                .link_name()?
                .ok_or_else(|| io::Error::other("symlink without a target"))?;
            dest.symlink(path, &target, &attrs)?;
        }
        EntryType::Link => {
            let target = entry
                .link_name()?
                .ok_or_else(|| io::Error::other("hardlink without a target"))?;
            dest.hardlink(path, &target)?;
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let (kind, major, minor) = match entry.header().entry_type() {
                EntryType::Fifo => (NodeKind::Fifo, 0, 0),
                kind => (
                    if kind == EntryType::Char {
                        NodeKind::Char
                    } else {
                        NodeKind::Block
                    },
                    entry.header().device_major()?.unwrap_or(0),
                    entry.header().device_minor()?.unwrap_or(0),
                ),
            };
            dest.mknod(path, kind, major, minor, &attrs)?;
        }
        other => {
            tracing::debug!(entry = %path.display(), kind = ?other, "skipping layer entry of unsupported type");
            return Ok(0);
        }
    }
    if !matches!(entry.header().entry_type(), EntryType::Link) {
        apply_xattrs(entry, path, dest)?;
    }
    Ok(written)
}

/// PAX `SCHILY.xattr.*` records. `trusted.overlay.*` is never taken from an image: those
/// attributes steer overlayfs itself (opaque dirs, redirects) and only the unpacker sets them.
fn apply_xattrs<R: Read>(entry: &mut tar::Entry<R>, path: &Path, dest: &RootDir) -> io::Result<()> {
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(());
    };
    let mut xattrs = Vec::new();
    for ext in extensions {
        let ext = ext?;
        if let Ok(key) = ext.key()
            && let Some(name) = key.strip_prefix("SCHILY.xattr.")
            && !name.starts_with(OVERLAY_XATTR_PREFIX)
        {
            xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
        }
    }
    for (name, value) in xattrs {
        dest.set_xattr(path, OsStr::new(&name), &value)?;
    }
    Ok(())
}
