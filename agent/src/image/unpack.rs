//! Applies an uncompressed layer tar stream to an empty directory, making it overlay-ready:
//! OCI whiteouts become overlay whiteouts (`.wh.name` → a 0/0 character device,
//! `.wh..wh..opq` → `trusted.overlay.opaque=y` on the directory). Ownership, modes
//! (setuid too), mtimes, xattrs, hardlinks, symlinks and device nodes are kept.
//!
//! Every path goes through [`RootDir`], so no entry reaches outside the directory.

use std::{
    cell::Cell,
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
    /// More uncompressed bytes than the layer may have: a decompression bomb, or a layer
    /// over the configured caps.
    #[error(
        "layer inflates past {0} bytes, its cap (max_layer_ratio × its compressed size, at most max_layer_bytes)"
    )]
    TooLarge(u64),
    #[error("layer entry {0:?} is a whiteout of no file")]
    BadWhiteout(String),
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

/// What one layer may amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_entries: u64,
    /// Bytes of the whole uncompressed stream.
    pub max_bytes: u64,
}

/// A reader that hashes what passes through it, and fails once more than `max` bytes
/// passed (saying so in `exceeded`, which outlives the borrows of the tar walk).
struct HashingReader<'a, R> {
    inner: R,
    hasher: Hasher,
    read: u64,
    max: u64,
    exceeded: &'a Cell<bool>,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.max {
            self.exceeded.set(true);
            return Err(io::Error::other("the layer's size cap"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks `tar` into `dest`, which should be empty. Stops at the first entry past
/// `limits.max_entries` and the first byte past `limits.max_bytes`.
pub fn unpack<R: Read>(tar: R, dest: &RootDir, limits: Limits) -> Result<Unpacked> {
    let max_entries = limits.max_entries;
    let exceeded = Cell::new(false);
    // Whatever failed once the cap was passed failed because of it.
    let capped = |e: Error| {
        if exceeded.get() {
            Error::TooLarge(limits.max_bytes)
        } else {
            e
        }
    };
    let read_err = |e: io::Error| capped(Error::Read(e));
    let mut reader = HashingReader {
        inner: tar,
        hasher: Hasher::default(),
        read: 0,
        max: limits.max_bytes,
        exceeded: &exceeded,
    };
    // The archive borrows the reader; it is done with it once the entries run out.
    let mut archive = tar::Archive::new(&mut reader);
    let mut entries = 0u64;
    let mut content_bytes = 0u64;
    // Directory times are set last: creating entries inside a directory changes its mtime.
    let mut dir_times: Vec<(PathBuf, Attrs)> = Vec::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        entries += 1;
        if entries > max_entries {
            return Err(Error::TooManyEntries(max_entries));
        }
        let path = entry.path().map_err(read_err)?.into_owned();
        if is_whiteout_of_nothing(&path) {
            return Err(Error::BadWhiteout(path.display().to_string()));
        }
        let fail = |source: io::Error| {
            capped(Error::Entry {
                entry: path.display().to_string(),
                source,
            })
        };
        content_bytes += apply(&mut entry, &path, dest, &mut dir_times).map_err(fail)?;
        crate::failpoint::hit("unpack.entry");
    }
    for (path, attrs) in dir_times.iter().rev() {
        dest.set_mtime(path, attrs).map_err(|source| Error::Entry {
            entry: path.display().to_string(),
            source,
        })?;
    }
    // The tar end marker and padding are part of the diff_id: hash to the very end.
    io::copy(&mut reader, &mut io::sink()).map_err(read_err)?;
    Ok(Unpacked {
        diff_id: reader.hasher.finish(),
        content_bytes,
        entries,
    })
}

/// `.wh..` and `.wh...`: whiteouts of the directory they are in, or of its parent.
fn is_whiteout_of_nothing(path: &Path) -> bool {
    path.file_name()
        .and_then(OsStr::to_str)
        .and_then(|name| name.strip_prefix(WHITEOUT_PREFIX))
        .is_some_and(|hidden| hidden == "." || hidden == "..")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_entry_type(EntryType::Regular);
            tar.append_data(&mut header, path, *data).unwrap();
        }
        tar.into_inner().unwrap()
    }

    fn unpack_with(tar: &[u8], max_bytes: u64) -> Result<Unpacked> {
        let dir = tempfile::tempdir().unwrap();
        let root = RootDir::open(dir.path()).unwrap();
        let limits = Limits {
            max_entries: 100,
            max_bytes,
        };
        unpack(tar, &root, limits)
    }

    #[test]
    fn a_layer_stops_at_its_size_cap() {
        let zeros = vec![0u8; 1 << 20];
        let tar = tar_of(&[("big", &zeros)]);
        let within = unpack_with(&tar, tar.len() as u64).unwrap();
        assert_eq!(within.content_bytes, 1 << 20);
        match unpack_with(&tar, 100 << 10) {
            Err(Error::TooLarge(cap)) => assert_eq!(cap, 100 << 10),
            other => panic!("{other:?}"),
        }
        // Bytes after the end marker count too: they are part of the diff_id.
        let mut padded = tar_of(&[("small", b"x")]);
        let end = padded.len() as u64;
        padded.extend(std::iter::repeat_n(0u8, 1 << 20));
        assert!(matches!(
            unpack_with(&padded, end + 1000),
            Err(Error::TooLarge(_))
        ));
    }

    #[test]
    fn whiteouts_of_dot_and_dotdot_are_refused() {
        for name in ["a/.wh..", "a/.wh...", ".wh.."] {
            let tar = tar_of(&[("a/f", b"f"), (name, b"")]);
            match unpack_with(&tar, 1 << 20) {
                Err(Error::BadWhiteout(entry)) => assert_eq!(entry, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
