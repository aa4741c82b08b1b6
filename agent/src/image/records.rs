//! The image records (`images.json`): which names and digests point to which image, and
//! what each image is made of. Rewritten atomically on every change.

use std::{collections::BTreeSet, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{digest::Digest, reference::Reference};
use crate::state;

/// One layer of an image: the compressed blob and what it unpacks to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRef {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The config digest: the image id everywhere in CRI.
    pub id: Digest,
    /// The platform manifest.
    pub manifest: Digest,
    pub manifest_media_type: String,
    /// The index the manifest was chosen from, if the reference named one.
    #[serde(default)]
    pub index: Option<Digest>,
    /// `registry/repository:tag` names.
    pub tags: BTreeSet<String>,
    /// `registry/repository@sha256:…` names.
    pub digests: BTreeSet<String>,
    pub layers: Vec<LayerRef>,
    /// Bytes of manifest, config and compressed layers.
    pub size: u64,
    /// The config's `User`.
    #[serde(default)]
    pub user: String,
    /// When this node first stored it (nanoseconds since the epoch).
    pub stored_at: i64,
}

/// One part (user or group) of an image's `User`, read the one way the agent reads it
/// everywhere: digits are an id and never a name, so `ImageStatus` reports exactly the uid
/// `CreateContainer` runs (a kubelet admits `runAsNonRoot` pods on that report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserPart<'a> {
    Empty,
    Id(u32),
    /// Digits that are no usable id: 2^32 or more, or 4294967295, which is `(uid_t)-1`
    /// ("leave unchanged") to setresuid. Refused, never looked up as a name.
    OutOfRange(&'a str),
    Name(&'a str),
}

impl<'a> UserPart<'a> {
    pub fn parse(text: &'a str) -> Self {
        if text.is_empty() {
            UserPart::Empty
        } else if text.bytes().all(|b| b.is_ascii_digit()) {
            match text.parse::<u32>() {
                Ok(id) if id != u32::MAX => UserPart::Id(id),
                _ => UserPart::OutOfRange(text),
            }
        } else {
            UserPart::Name(text)
        }
    }
}

impl ImageRecord {
    /// The user part of the config's `User` (`name`, `uid`, `name:group`, `uid:gid`).
    pub fn user_part(&self) -> UserPart<'_> {
        UserPart::parse(self.user.split(':').next().unwrap_or_default())
    }
}

impl UserPart<'_> {
    /// A CRI `run_as_user`/`run_as_group` as an id, under the same rule.
    pub fn from_cri(id: i64) -> std::result::Result<u32, String> {
        match u32::try_from(id) {
            Ok(id) if id != u32::MAX => Ok(id),
            _ => Err(format!("{id} is out of range (0 to 4294967294)")),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    images: Vec<ImageRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image records {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image records {path} are corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub struct Records {
    path: PathBuf,
    images: Vec<ImageRecord>,
}

impl Records {
    pub fn load(path: PathBuf) -> Result<Records, Error> {
        let images = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<File>(&bytes)
                    .map_err(|source| Error::Corrupt {
                        path: path.clone(),
                        source,
                    })?
                    .images
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(Error::Io { path, source }),
        };
        Ok(Records { path, images })
    }

    pub fn all(&self) -> &[ImageRecord] {
        &self.images
    }

    /// Applies `change` to a copy and persists it; on error nothing changes.
    pub fn update(&mut self, change: impl FnOnce(&mut Vec<ImageRecord>)) -> Result<(), Error> {
        let mut next = self.images.clone();
        change(&mut next);
        let bytes = serde_json::to_vec_pretty(&File {
            images: next.clone(),
        })
        .map_err(|source| Error::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        state::write_atomic(&self.path, &bytes).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        self.images = next;
        Ok(())
    }

    /// Finds an image by id (`sha256:…`, or a unique hex prefix of at least 12 digits), by
    /// tag, or by digest reference.
    pub fn find(&self, name: &str) -> Option<&ImageRecord> {
        if let Ok(digest) = Digest::parse(name) {
            return self.images.iter().find(|i| i.id == digest);
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut matches = self.images.iter().filter(|i| i.id.hex().starts_with(hex));
            if let (Some(one), None) = (matches.next(), matches.next()) {
                return Some(one);
            }
        }
        let reference = Reference::parse(name).ok()?;
        if let Some(digest) = &reference.digest {
            let wanted = reference.with_digest(digest);
            return self.images.iter().find(|i| i.digests.contains(&wanted));
        }
        let tag = reference.tagged()?;
        self.images.iter().find(|i| i.tags.contains(&tag))
    }
}
