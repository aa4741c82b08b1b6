//! The unix socket the agent serves on: refuse a socket that a live daemon answers on,
//! replace a stale one, create the directory 0700 and the socket with the configured mode
//! and group (root only by default), and remove the socket again on shutdown (only if it
//! is still the one we bound).

use std::{
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

use crate::config::SocketAccess;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("socket {0} is in use by a running daemon; stop it first or choose another --socket")]
    InUse(PathBuf),
    #[error("socket {0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("socket {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The socket file of a bound listener. Dropping it removes the file if it is still ours.
pub struct Socket {
    path: PathBuf,
    inode: (u64, u64),
}

impl Socket {
    /// Binds `path`. Must be called inside a tokio runtime.
    pub fn bind(path: &Path, access: SocketAccess) -> Result<(Socket, UnixListener)> {
        let io_err = |what| {
            move |source| Error::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("cannot create its directory"))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(Error::InUse(path.to_path_buf()));
                }
                // Nobody answers: a daemon died without cleaning up.
                std::fs::remove_file(path).map_err(io_err("cannot remove the stale socket"))?;
                tracing::info!(socket = %path.display(), "replaced a stale socket");
            }
            Ok(_) => return Err(Error::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot inspect it")(e)),
        }
        let listener = UnixListener::bind(path).map_err(io_err("cannot bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode))
            .map_err(io_err("cannot set its mode"))?;
        if let Some(gid) = access.gid {
            crate::sys::set_group(path, gid).map_err(io_err("cannot give it its group"))?;
            // The group's members reach the socket through its directory: a private one
            // (ours, 0700) becomes theirs to pass through, not to list. A directory others
            // may already pass through (/run, say) is left as it is.
            if let Some(dir) = path.parent() {
                let meta =
                    std::fs::metadata(dir).map_err(io_err("cannot inspect its directory"))?;
                if meta.mode() & 0o001 == 0 {
                    crate::sys::set_group(dir, gid)
                        .and_then(|()| {
                            std::fs::set_permissions(
                                dir,
                                std::fs::Permissions::from_mode((meta.mode() & 0o7777) | 0o010),
                            )
                        })
                        .map_err(io_err("cannot open its directory to its group"))?;
                }
            }
        }
        let meta = std::fs::symlink_metadata(path).map_err(io_err("cannot inspect it"))?;
        let socket = Socket {
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
        };
        Ok((socket, listener))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // Another daemon may have replaced a socket we thought stale; leave theirs alone.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.inode
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove the socket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_replaces_stale_refuses_live_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/s.sock");

        let (first, listener) = Socket::bind(&path, SocketAccess::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);

        // Live: the listener accepts connections (the kernel queues them).
        assert!(matches!(
            Socket::bind(&path, SocketAccess::default()),
            Err(Error::InUse(_))
        ));

        // Stale: the listener is gone but the file stays.
        drop(listener);
        std::mem::forget(first);
        let (second, listener) = Socket::bind(&path, SocketAccess::default()).unwrap();
        drop((second, listener));
        assert!(!path.exists());

        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            Socket::bind(&path, SocketAccess::default()),
            Err(Error::NotASocket(_))
        ));
    }
}
