//! Durable records: every write goes to a temporary file that is fsynced and renamed over
//! the old one, then the directory is fsynced. A crash leaves the old or the new record,
//! never part of one.

use std::{
    fs::File,
    io::{self, Seek, Write},
    path::{Path, PathBuf},
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

/// Room for a record that must be written even once the disk is full (a container's exit):
/// taken while there is room, then filled in place and renamed over `path`, which needs no
/// new block.
pub struct Reserved {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    size: usize,
}

impl Reserved {
    pub fn new(path: &Path, size: usize) -> io::Result<Reserved> {
        let dir = path
            .parent()
            .ok_or_else(|| io::Error::other("a record needs a parent directory"))?;
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("a record needs a file name"))?;
        let tmp = dir.join(format!(".reserved-{}", name.to_string_lossy()));
        let mut file = File::options()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(&vec![0u8; size])?;
        file.sync_all()?;
        Ok(Reserved {
            file,
            tmp,
            path: path.to_path_buf(),
            size,
        })
    }

    /// Writes `bytes` as the record, atomically and durably (a record larger than the
    /// room goes the ordinary way).
    pub fn commit(mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() > self.size {
            let _ = std::fs::remove_file(&self.tmp);
            return write_atomic(&self.path, bytes);
        }
        self.file.rewind()?;
        self.file.write_all(bytes)?;
        self.file.set_len(bytes.len() as u64)?;
        self.file.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        match self.path.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }
}

/// Removes a directory that holds a record (`state.json`): the record first, so a crash
/// part-way leaves a directory without a record, which start-up recovery removes, never a
/// record of something half gone. A missing directory is fine.
pub fn remove_record_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join("state.json")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // A process that still writes into the directory (a monitor winding down) can add an
    // entry behind the walk: the walk is tried again, briefly.
    let mut tries = 0;
    loop {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => return Ok(()),
        }
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

    #[test]
    fn a_reserved_record_is_written_in_place_and_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("exit.json");
        let reserved = super::Reserved::new(&p, 64).unwrap();
        assert!(
            !p.exists(),
            "nothing at the record's path before the commit"
        );
        reserved.commit(b"{\"exit_code\":3}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"exit_code\":3}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Bigger than the room: written the ordinary way.
        let reserved = super::Reserved::new(&p, 4).unwrap();
        reserved.commit(b"a longer record").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"a longer record");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
