//! Durable records: every write goes to a temporary file that is fsynced and renamed over
//! the old one, then the directory is fsynced. A crash leaves the old or the new record,
//! never part of one.

use std::{
    fs::File,
    io::{self, Write},
    path::Path,
};

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("a record needs a parent directory"))?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Removes a directory that holds a record (`state.json`): the record first, so a crash
/// part-way leaves a directory without a record, which start-up recovery removes, never a
/// record of something half gone. A missing directory is fine.
pub fn remove_record_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join("state.json")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes a directory's entries (renames, creations) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        super::write_atomic(&p, b"one").unwrap();
        super::write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
