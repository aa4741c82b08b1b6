//! Committing a container's read-write layer as a new image layer: the upper directory is
//! turned back into an OCI layer (overlay whiteouts → `.wh.` files, opaque directories →
//! `.wh..wh..opq`), gzipped into the content store, unpacked into the layer store, and an
//! image config and manifest are written on top of the parent's. The parent's layers are
//! shared as they are; nothing is copied.

use std::{
    collections::HashMap,
    io::{self, Write},
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
};

use super::{
    Error, ImageStore, Result,
    digest::{Digest, Hasher},
    layers::LayerMeta,
    manifest,
    records::{ImageRecord, LayerRef},
    reference::Reference,
    unpack,
};

const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What to say about a commit.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    pub message: String,
    pub author: String,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names) else {
        return Vec::new();
    };
    names[..n]
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .filter_map(|name| {
            let name = String::from_utf8_lossy(name).into_owned();
            if name.starts_with("trusted.overlay.") {
                return None;
            }
            let mut value = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value).ok()?;
            value.truncate(len);
            Some((name, value))
        })
        .collect()
}

fn is_opaque(path: &Path) -> bool {
    let mut value = [0u8; 4];
    matches!(rustix::fs::lgetxattr(path, "trusted.overlay.opaque", &mut value), Ok(1) if value[0] == b'y')
}

fn header_for(meta: &std::fs::Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(size);
    h
}

/// Writes the upper directory `upper` as an OCI layer tar (entries sorted, so the same
/// changes give the same layer).
fn write_layer<W: Write>(upper: &Path, out: W) -> io::Result<W> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = upper.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)?.collect::<io::Result<Vec<_>>>()?;
        names.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for entry in names {
            let path = entry.path();
            let name = rel.join(entry.file_name());
            let meta = std::fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_char_device() && meta.rdev() == 0 {
                // An overlay whiteout: the file is deleted in this layer.
                let wh = rel.join(format!(".wh.{}", entry.file_name().to_string_lossy()));
                let mut h = header_for(&meta, tar::EntryType::Regular, 0);
                h.set_mode(0o644);
                tar.append_data(&mut h, &wh, io::empty())?;
                continue;
            }
            let extensions = xattrs(&path);
            if !extensions.is_empty() {
                let records: Vec<(String, &[u8])> = extensions
                    .iter()
                    .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                    .collect();
                tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
            }
            if ft.is_dir() {
                let mut h = header_for(&meta, tar::EntryType::Directory, 0);
                tar.append_data(&mut h, &name, io::empty())?;
                if is_opaque(&path) {
                    let mut h = header_for(&meta, tar::EntryType::Regular, 0);
                    h.set_mode(0o644);
                    tar.append_data(&mut h, name.join(".wh..wh..opq"), io::empty())?;
                }
                subdirs.push(name);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path)?;
                let mut h = header_for(&meta, tar::EntryType::Symlink, 0);
                tar.append_link(&mut h, &name, &target)?;
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                        let mut h = header_for(&meta, tar::EntryType::Link, 0);
                        tar.append_link(&mut h, &name, first)?;
                        continue;
                    }
                    links.insert((meta.dev(), meta.ino()), name.clone());
                }
                let mut h = header_for(&meta, tar::EntryType::Regular, meta.len());
                tar.append_data(&mut h, &name, std::fs::File::open(&path)?)?;
            } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                let kind = if ft.is_char_device() {
                    tar::EntryType::Char
                } else if ft.is_block_device() {
                    tar::EntryType::Block
                } else {
                    tar::EntryType::Fifo
                };
                let mut h = header_for(&meta, kind, 0);
                if kind != tar::EntryType::Fifo {
                    h.set_device_major(rustix::fs::major(meta.rdev()))?;
                    h.set_device_minor(rustix::fs::minor(meta.rdev()))?;
                }
                tar.append_data(&mut h, &name, io::empty())?;
            }
            // Sockets are not part of a layer.
        }
        stack.extend(subdirs.into_iter().rev());
    }
    tar.into_inner()
}

impl ImageStore {
    /// Commits `upper` (a container's read-write layer) on top of `parent` as a new image
    /// named `target`.
    pub fn commit(
        &self,
        parent: &ImageRecord,
        upper: &Path,
        target: &str,
        info: &CommitInfo,
    ) -> Result<ImageRecord> {
        let reference = Reference::parse(target)?;
        let tag = reference.tagged().ok_or_else(|| Error::Invalid {
            what: format!("commit target {target:?}"),
            message: "must be a name with a tag, not a digest".into(),
        })?;
        // The layer: tar (hashed: the diff_id) → gzip → the content store (its digest).
        let ingest = self.content.ingest_new()?;
        let gzip = flate2::write::GzEncoder::new(ingest, flate2::Compression::fast());
        let hashing = Hashing {
            inner: gzip,
            hasher: Hasher::default(),
        };
        let io_fail = |e: io::Error| Error::Invalid {
            what: format!("reading {}", upper.display()),
            message: e.to_string(),
        };
        let hashing = write_layer(upper, hashing).map_err(io_fail)?;
        let diff_id = hashing.hasher.finish();
        let ingest = hashing.inner.finish().map_err(io_fail)?;
        let (layer_digest, layer_size) = ingest.commit_computed()?;

        // Unpacked into the layer store like any pulled layer.
        if !self.layers.has(&diff_id) {
            let pending = self.layers.begin(&diff_id)?;
            let blob = std::fs::File::open(self.content.path(&layer_digest)).map_err(io_fail)?;
            let unpacked = unpack::unpack(
                flate2::read::MultiGzDecoder::new(io::BufReader::new(blob)),
                pending.root(),
                self.config.max_layer_entries,
            )
            .map_err(|source| Error::Unpack {
                digest: layer_digest.clone(),
                source,
            })?;
            if unpacked.diff_id != diff_id {
                return Err(Error::DiffId {
                    digest: layer_digest,
                    expected: diff_id,
                    actual: unpacked.diff_id,
                });
            }
            pending.commit(&LayerMeta {
                diff_id: diff_id.clone(),
                size: unpacked.content_bytes,
                entries: unpacked.entries,
            })?;
        }

        // The config: the parent's, plus the layer and a history entry.
        let mut config: serde_json::Value =
            serde_json::from_slice(&self.content.read(&parent.id, manifest::MAX_DOCUMENT)?)
                .map_err(|e| Error::Invalid {
                    what: "parent config".into(),
                    message: e.to_string(),
                })?;
        let now = crate::helper::monitor::rfc3339_nano(std::time::SystemTime::now());
        config["created"] = now.clone().into();
        if !info.author.is_empty() {
            config["author"] = info.author.clone().into();
        }
        match config["rootfs"]["diff_ids"].as_array_mut() {
            Some(ids) => ids.push(diff_id.to_string().into()),
            None => {
                return Err(Error::Invalid {
                    what: "parent config".into(),
                    message: "no rootfs.diff_ids".into(),
                });
            }
        }
        let mut history = serde_json::json!({ "created": now, "created_by": "strata commit" });
        if !info.message.is_empty() {
            history["comment"] = info.message.clone().into();
        }
        if !info.author.is_empty() {
            history["author"] = info.author.clone().into();
        }
        match config["history"].as_array_mut() {
            Some(h) => h.push(history),
            None => config["history"] = serde_json::Value::Array(vec![history]),
        }
        let config_bytes =
            serde_json::to_vec(&config).map_err(|e| Error::Internal(e.to_string()))?;
        let config_digest = Digest::of(&config_bytes);
        self.content.write(&config_digest, &config_bytes)?;

        let mut layers: Vec<serde_json::Value> = parent
            .layers
            .iter()
            .map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}))
            .collect();
        layers.push(serde_json::json!({"mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": layer_size}));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": manifest::OCI_CONFIG, "digest": config_digest, "size": config_bytes.len()},
            "layers": layers,
        });
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
        let manifest_digest = Digest::of(&manifest_bytes);
        self.content.write(&manifest_digest, &manifest_bytes)?;
        self.content.sync()?;
        self.layers.sync()?;

        let mut new_layers = parent.layers.clone();
        new_layers.push(LayerRef {
            digest: layer_digest,
            diff_id,
            size: layer_size,
            media_type: LAYER_MEDIA_TYPE.into(),
        });
        let record = ImageRecord {
            id: config_digest.clone(),
            manifest: manifest_digest,
            manifest_media_type: manifest::OCI_MANIFEST.into(),
            index: None,
            tags: [tag.clone()].into_iter().collect(),
            digests: Default::default(),
            size: manifest_bytes.len() as u64
                + config_bytes.len() as u64
                + new_layers.iter().map(|l| l.size).sum::<u64>(),
            layers: new_layers,
            user: parent.user.clone(),
            stored_at: super::now_nanos(),
        };
        let mut records = self.records();
        records.update(|all| super::pull::record_new(all, record))?;
        records
            .find(&tag)
            .cloned()
            .ok_or_else(|| Error::Internal("the committed image vanished".into()))
    }
}
