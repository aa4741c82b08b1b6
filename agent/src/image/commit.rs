//! Committing a container's read-write layer as a new image layer: the upper directory is
//! turned back into an OCI layer (overlay whiteouts → `.wh.` files, opaque directories →
//! `.wh..wh..opq`), gzipped into the content store, unpacked into the layer store, and an
//! image config and manifest are written on top of the parent's. The parent's layers are
//! shared as they are; nothing is copied.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use super::{
    Error, ImageStore, Result,
    digest::{Digest, Hasher},
    manifest,
    records::{ImageRecord, LayerRef},
    reference::Reference,
};

/// What to say about a commit, and what to change in the image's config.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    pub message: String,
    pub author: String,
    pub changes: ConfigChanges,
}

/// Changes to the new image's run config, as a Dockerfile's ENV, CMD, ENTRYPOINT, WORKDIR,
/// USER and LABEL would make them.
#[derive(Debug, Clone, Default)]
pub struct ConfigChanges {
    /// `KEY=value`, replacing the same key.
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl ConfigChanges {
    /// Applies the changes to an image config's `config` object.
    fn apply(&self, config: &mut serde_json::Value) -> Result<()> {
        let invalid = |message: String| Error::Invalid {
            what: "commit changes".into(),
            message,
        };
        if !config.is_object() {
            *config = serde_json::json!({});
        }
        if !self.env.is_empty() {
            let mut env: Vec<String> = config["Env"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            for var in &self.env {
                let key = match var.split_once('=') {
                    Some((key, _)) if !key.is_empty() => key,
                    _ => return Err(invalid(format!("env {var:?} is not KEY=value"))),
                };
                let prefix = format!("{key}=");
                match env.iter_mut().find(|e| e.starts_with(&prefix)) {
                    Some(existing) => existing.clone_from(var),
                    None => env.push(var.clone()),
                }
            }
            config["Env"] = env.into();
        }
        if let Some(cmd) = &self.cmd {
            config["Cmd"] = cmd.clone().into();
        }
        if let Some(entrypoint) = &self.entrypoint {
            config["Entrypoint"] = entrypoint.clone().into();
        }
        if let Some(dir) = &self.working_dir {
            if !dir.starts_with('/') {
                return Err(invalid(format!(
                    "working dir {dir:?} is not an absolute path"
                )));
            }
            config["WorkingDir"] = dir.clone().into();
        }
        if let Some(user) = &self.user {
            config["User"] = user.clone().into();
        }
        if !self.labels.is_empty() {
            if !config["Labels"].is_object() {
                config["Labels"] = serde_json::json!({});
            }
            for (key, value) in &self.labels {
                if key.is_empty() {
                    return Err(invalid("a label with an empty key".into()));
                }
                config["Labels"][key] = value.clone().into();
            }
        }
        Ok(())
    }
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

fn header_for(stat: &rustix::fs::Stat, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(stat.st_mode & 0o7777);
    h.set_uid(u64::from(stat.st_uid));
    h.set_gid(u64::from(stat.st_gid));
    h.set_mtime(stat.st_mtime.max(0) as u64);
    h.set_size(size);
    h
}

/// Writes the upper directory `upper` as an OCI layer tar (entries sorted, so the same
/// changes give the same layer). The container may still be changing it: the tree is
/// walked by descriptor and never through a symlink (`sys::walk`), so nothing outside it
/// can be read into the layer, and a file is written with the size it had when opened.
fn write_layer<W: Write>(upper: &Path, out: W) -> io::Result<W> {
    use rustix::fs::FileType;
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let how = crate::sys::walk::Walk {
        sorted: true,
        tolerant: false,
    };
    crate::sys::walk::walk(upper, how, |entry| {
        let (name, stat) = (entry.path, entry.stat);
        let kind = entry.file_type();
        if kind == FileType::CharacterDevice && stat.st_rdev == 0 {
            // An overlay whiteout: the file is deleted in this layer.
            let file_name = name.file_name().unwrap_or_default().to_string_lossy();
            let wh = name.with_file_name(format!(".wh.{file_name}"));
            let mut h = header_for(stat, tar::EntryType::Regular, 0);
            h.set_mode(0o644);
            tar.append_data(&mut h, &wh, io::empty())?;
            return Ok(false);
        }
        if kind == FileType::Socket || kind == FileType::Unknown {
            return Ok(false); // not part of a layer
        }
        let mut extensions = entry.xattrs();
        let opaque = kind == FileType::Directory
            && entry.xattr("trusted.overlay.opaque").as_deref() == Some(b"y");
        extensions.retain(|(name, _)| !name.starts_with("trusted.overlay."));
        if !extensions.is_empty() {
            let records: Vec<(String, &[u8])> = extensions
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        match kind {
            FileType::Directory => {
                let mut h = header_for(stat, tar::EntryType::Directory, 0);
                tar.append_data(&mut h, name, io::empty())?;
                if opaque {
                    let mut h = header_for(stat, tar::EntryType::Regular, 0);
                    h.set_mode(0o644);
                    tar.append_data(&mut h, name.join(".wh..wh..opq"), io::empty())?;
                }
                return Ok(true);
            }
            FileType::Symlink => {
                let target = entry.read_link()?;
                let mut h = header_for(stat, tar::EntryType::Symlink, 0);
                tar.append_link(&mut h, name, &target)?;
            }
            FileType::RegularFile => {
                if stat.st_nlink > 1 {
                    let key = (stat.st_dev, stat.st_ino);
                    if let Some(first) = links.get(&key) {
                        let mut h = header_for(stat, tar::EntryType::Link, 0);
                        tar.append_link(&mut h, name, first)?;
                        return Ok(false);
                    }
                    links.insert(key, name.to_path_buf());
                }
                let file = entry.open()?;
                let size = file.metadata()?.len();
                // Exactly `size` bytes, whatever the container does to the file meanwhile.
                let body = file.take(size).chain(io::repeat(0)).take(size);
                let mut h = header_for(stat, tar::EntryType::Regular, size);
                tar.append_data(&mut h, name, body)?;
            }
            _ => {
                let tar_kind = match kind {
                    FileType::CharacterDevice => tar::EntryType::Char,
                    FileType::BlockDevice => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                };
                let mut h = header_for(stat, tar_kind, 0);
                if tar_kind != tar::EntryType::Fifo {
                    h.set_device_major(rustix::fs::major(stat.st_rdev))?;
                    h.set_device_minor(rustix::fs::minor(stat.st_rdev))?;
                }
                tar.append_data(&mut h, name, io::empty())?;
            }
        }
        Ok(false)
    })?;
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
        // The config first: bad changes fail before any work is done.
        let mut config: serde_json::Value =
            serde_json::from_slice(&self.content.read(&parent.id, manifest::MAX_DOCUMENT)?)
                .map_err(|e| Error::Invalid {
                    what: "parent config".into(),
                    message: e.to_string(),
                })?;
        if !config.is_object() {
            return Err(Error::Invalid {
                what: "parent config".into(),
                message: "not a JSON object".into(),
            });
        }
        info.changes.apply(&mut config["config"])?;
        // The layer: tar (hashed: the diff_id) → gzip → the content store (its digest).
        let ingest = self.content.ingest_new()?;
        let gzip = flate2::write::GzEncoder::new(ingest, flate2::Compression::fast());
        let hashing = Hashing {
            inner: gzip,
            hasher: Hasher::default(),
        };
        // The layer is written as it is read: a full store is the store's failure, not the
        // container's.
        let io_fail = |e: io::Error| {
            if matches!(
                e.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ) {
                Error::Content(super::content::Error::Io {
                    path: upper.to_path_buf(),
                    source: e,
                })
            } else {
                Error::Invalid {
                    what: format!("reading {}", upper.display()),
                    message: e.to_string(),
                }
            }
        };
        let hashing = write_layer(upper, hashing).map_err(io_fail)?;
        let diff_id = hashing.hasher.finish();
        let ingest = hashing.inner.finish().map_err(io_fail)?;
        let (layer_digest, layer_size) = ingest.commit_computed()?;
        crate::failpoint::hit("commit.layered");

        // Unpacked into the layer store like any pulled layer.
        self.unpack_stored(&layer_digest, &diff_id, manifest::Compression::Gzip)?;

        // The config: the parent's, plus the layer and a history entry.
        let now = crate::clock::rfc3339_nano(std::time::SystemTime::now());
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
        layers.push(serde_json::json!({"mediaType": manifest::Compression::Gzip.layer_media_type(), "digest": layer_digest, "size": layer_size}));
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
        crate::failpoint::hit("commit.stored");

        let mut new_layers = parent.layers.clone();
        new_layers.push(LayerRef {
            digest: layer_digest,
            diff_id,
            size: layer_size,
            media_type: manifest::Compression::Gzip.layer_media_type().into(),
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
            user: info
                .changes
                .user
                .clone()
                .unwrap_or_else(|| parent.user.clone()),
            stored_at: crate::clock::now_nanos(),
        };
        let mut records = self.records();
        records.update(|all| super::pull::record_new(all, record))?;
        records
            .find(&tag)
            .cloned()
            .ok_or_else(|| Error::Internal("the committed image vanished".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_like_dockerfile_instructions() {
        let mut config = serde_json::json!({
            "Env": ["PATH=/bin", "A=1"],
            "Cmd": ["sh"],
            "Labels": {"keep": "yes"},
        });
        let changes = ConfigChanges {
            env: vec!["A=2".into(), "B=x=y".into()],
            cmd: Some(vec![]),
            entrypoint: Some(vec!["/bin/app".into(), "--serve".into()]),
            working_dir: Some("/srv".into()),
            user: Some("1000:1000".into()),
            labels: [("team".to_string(), "node".to_string())].into(),
        };
        changes.apply(&mut config).unwrap();
        assert_eq!(
            config["Env"],
            serde_json::json!(["PATH=/bin", "A=2", "B=x=y"])
        );
        assert_eq!(config["Cmd"], serde_json::json!([]));
        assert_eq!(
            config["Entrypoint"],
            serde_json::json!(["/bin/app", "--serve"])
        );
        assert_eq!(config["WorkingDir"], "/srv");
        assert_eq!(config["User"], "1000:1000");
        assert_eq!(
            config["Labels"],
            serde_json::json!({"keep": "yes", "team": "node"})
        );

        // A config without a run config gets one; nothing given changes nothing.
        let mut empty = serde_json::Value::Null;
        ConfigChanges::default().apply(&mut empty).unwrap();
        assert_eq!(empty, serde_json::json!({}));

        for bad in [
            ConfigChanges {
                env: vec!["NOEQUALS".into()],
                ..Default::default()
            },
            ConfigChanges {
                env: vec!["=v".into()],
                ..Default::default()
            },
            ConfigChanges {
                working_dir: Some("rel".into()),
                ..Default::default()
            },
            ConfigChanges {
                labels: [(String::new(), "v".into())].into(),
                ..Default::default()
            },
        ] {
            assert!(bad.apply(&mut serde_json::json!({})).is_err(), "{bad:?}");
        }
    }
}
