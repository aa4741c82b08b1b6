//! Image archives, for nodes without a registry: export writes images as an OCI image
//! layout in a tar (with a `manifest.json` beside it, so `docker load` reads it too);
//! import reads an OCI image layout (tar, or gzipped tar) or a `docker save` archive.
//!
//! Import streams: every file of the archive that may be a blob goes straight into the
//! content store's ingest, hashed on the way, so no blob is held in memory or read twice
//! before it is checked. Names in the archive are only ever looked up in a table, never used
//! as paths. Everything an import brings is unreferenced until its images are recorded, all
//! together at the end; whatever a failed import stored is collected afterwards.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{self, BufRead, Read, Write},
    path::{Component, Path},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use super::{
    Error, ImageStore, Result, checked_layer,
    digest::Digest,
    manifest::{self, Compression, Descriptor, Document},
    records::{ImageRecord, LayerRef},
    reference::Reference,
    unpack,
};

/// Files an archive may hold at most.
const MAX_ENTRIES: u64 = 100_000;
const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const DOCKER_MANIFEST_FILE: &str = "manifest.json";
/// containerd's annotation for an image's full name in an index.
const NAME_ANNOTATION: &str = "io.containerd.image.name";
/// The OCI annotation: usually just the tag.
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// An image an import stored.
#[derive(Debug, Clone)]
pub struct Imported {
    pub id: Digest,
    pub names: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// Copies an archive entry into the ingest. A failed read is the archive's fault; a failed
/// write the store's (a full disk, say), and says so.
fn copy_entry(
    entry: &mut impl Read,
    ingest: &mut super::content::Ingest<'_>,
    path: &str,
) -> Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut copied = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(invalid(format!("reading entry {path:?}: {e}"))),
        };
        ingest.write_all(&buf[..n]).map_err(|source| {
            Error::Content(super::content::Error::Io {
                path: ingest.file_path().to_path_buf(),
                source,
            })
        })?;
        copied += n as u64;
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid {
        what: "image archive".into(),
        message: message.into(),
    }
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// An archive path, with `./` prefixes and trailing slashes gone; `None` for one that is
/// absolute or climbs out with `..`.
fn clean_path(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// How a blob file is compressed, from its first bytes.
fn sniff(path: &Path) -> io::Result<Compression> {
    let mut magic = Vec::with_capacity(4);
    std::fs::File::open(path)?.take(4).read_to_end(&mut magic)?;
    Ok(Compression::of_magic(&magic))
}

/// Reads at most `limit` bytes of an entry; more is an error naming `what`.
fn read_capped(reader: impl Read, what: &str, limit: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(format!("reading {what}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(Error::TooLarge {
            what: format!("{what} in the archive"),
            limit,
        });
    }
    Ok(bytes)
}

/// An image found in an archive, before it is recorded.
struct Found {
    manifest: Digest,
    manifest_media_type: String,
    index: Option<Digest>,
    config: Digest,
    layers: Vec<Descriptor>,
    names: BTreeSet<String>,
}

impl ImageStore {
    /// The images `names` name, for an export; fails on the first unknown one.
    pub fn export_images(&self, names: &[String]) -> Result<Vec<ImageRecord>> {
        if names.is_empty() {
            return Err(invalid("no image to export"));
        }
        let mut images: Vec<ImageRecord> = Vec::new();
        for name in names {
            let image = self
                .find(name)
                .ok_or_else(|| Error::NotFound(name.clone()))?;
            if !images.iter().any(|i| i.id == image.id) {
                images.push(image);
            }
        }
        Ok(images)
    }

    /// Writes `images` as an OCI image-layout tar to `out`, and flushes it. Blocking.
    pub fn export<W: Write>(self: &Arc<Self>, images: &[ImageRecord], out: W) -> Result<W> {
        // The images' blobs stay while they are sent; no lock is held while the client
        // reads (it may be slow).
        let lease = super::Lease::new(self, false);
        lease.hold_images_blocking(images);
        let io_fail = |e: io::Error| Error::Download {
            what: "export".into(),
            message: e.to_string(),
        };
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        let add = |tar: &mut tar::Builder<W>, path: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(bytes.len() as u64);
            tar.append_data(&mut header, path, bytes)
        };
        let mut index = Vec::new();
        let mut docker = Vec::new();
        for image in images {
            let manifest_size = std::fs::metadata(self.content.path(&image.manifest))
                .map_err(io_fail)?
                .len();
            let descriptor = |annotations: BTreeMap<String, String>| Descriptor {
                media_type: image.manifest_media_type.clone(),
                digest: image.manifest.clone(),
                size: manifest_size,
                platform: None,
                annotations,
            };
            if image.tags.is_empty() {
                index.push(descriptor(BTreeMap::new()));
            }
            for tag in &image.tags {
                let short = Reference::parse(tag)
                    .ok()
                    .and_then(|r| r.tag)
                    .unwrap_or_default();
                index.push(descriptor(BTreeMap::from([
                    (NAME_ANNOTATION.to_string(), tag.clone()),
                    (REF_NAME_ANNOTATION.to_string(), short),
                ])));
            }
            docker.push(DockerEntry {
                config: blob_path(&image.id),
                repo_tags: Some(image.tags.iter().cloned().collect()),
                layers: image.layers.iter().map(|l| blob_path(&l.digest)).collect(),
            });
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_INDEX,
            "manifests": index,
        });
        add(&mut tar, LAYOUT_FILE, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_fail)?;
        add(&mut tar, INDEX_FILE, &json_bytes(&index)?).map_err(io_fail)?;
        add(&mut tar, DOCKER_MANIFEST_FILE, &json_bytes(&docker)?).map_err(io_fail)?;

        let mut written = BTreeSet::new();
        for image in images {
            let blobs = [image.manifest.clone(), image.id.clone()]
                .into_iter()
                .chain(image.layers.iter().map(|l| l.digest.clone()));
            for digest in blobs {
                if !written.insert(digest.clone()) {
                    continue;
                }
                let file = std::fs::File::open(self.content.path(&digest)).map_err(io_fail)?;
                let size = file.metadata().map_err(io_fail)?.len();
                let mut header = tar::Header::new_ustar();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(size);
                tar.append_data(&mut header, blob_path(&digest), file)
                    .map_err(io_fail)?;
            }
        }
        let mut out = tar.into_inner().map_err(io_fail)?;
        out.flush().map_err(io_fail)?;
        Ok(out)
    }

    /// Reads an image archive from `input` and records its images, named by the archive or,
    /// where it names none, `default_name`. Blocking. On failure the store is as before.
    pub fn import<R: Read>(
        self: &Arc<Self>,
        input: R,
        default_name: &str,
    ) -> Result<Vec<Imported>> {
        let default = if default_name.is_empty() {
            None
        } else {
            let reference = Reference::parse(default_name)?;
            Some(reference.tagged().ok_or_else(|| {
                invalid(format!(
                    "the name {default_name:?} must have a tag, not a digest"
                ))
            })?)
        };
        // No lock is held while the client sends the archive (it may be slow): each blob
        // is leased as it is stored.
        let lease = super::Lease::new(self, false);
        let result = self.import_leased(input, default.as_deref(), &lease);
        drop(lease);
        // Frees what the archive brought and no image uses (all of it, after a failure).
        let _gc = self.gc.blocking_write();
        if let Err(e) = self.collect_garbage() {
            tracing::warn!(error = %e, "cleaning up after an import");
        }
        result
    }

    fn import_leased<R: Read>(
        &self,
        input: R,
        default: Option<&str>,
        lease: &super::Lease,
    ) -> Result<Vec<Imported>> {
        let mut input = io::BufReader::with_capacity(256 << 10, input);
        let gzipped = Compression::of_magic(
            input
                .fill_buf()
                .map_err(|e| invalid(format!("reading: {e}")))?,
        ) == Compression::Gzip;
        let reader: Box<dyn Read> = if gzipped {
            Box::new(flate2::read::MultiGzDecoder::new(input))
        } else {
            Box::new(input)
        };
        let mut archive = tar::Archive::new(reader);

        // Archive path → blob digest, and symlinks (old `docker save` links repeated layers).
        let mut files: HashMap<String, Digest> = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        let mut layout = None;
        let mut index = None;
        let mut docker = None;
        let mut count = 0u64;
        let entries = archive
            .entries()
            .map_err(|e| invalid(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| invalid(format!("reading: {e}")))?;
            count += 1;
            if count > MAX_ENTRIES {
                return Err(Error::TooLarge {
                    what: "the archive's entry count".into(),
                    limit: MAX_ENTRIES,
                });
            }
            let raw = entry
                .path()
                .map_err(|e| invalid(format!("an entry name: {e}")))?
                .into_owned();
            let path = clean_path(&raw).ok_or_else(|| {
                invalid(format!(
                    "entry {:?} points outside the archive",
                    raw.display()
                ))
            })?;
            match entry.header().entry_type() {
                tar::EntryType::Directory => continue,
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(|e| invalid(format!("entry {path:?}: {e}")))?
                        .ok_or_else(|| invalid(format!("link {path:?} has no target")))?;
                    let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                        Path::new(&path)
                            .parent()
                            .unwrap_or(Path::new(""))
                            .join(target)
                    } else {
                        target.into_owned()
                    };
                    // `a/../b` is fine inside the archive; only escaping the top is not.
                    let resolved = normalize(&base).ok_or_else(|| {
                        invalid(format!("link {path:?} points outside the archive"))
                    })?;
                    links.insert(path, resolved);
                    continue;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                other => {
                    return Err(invalid(format!(
                        "entry {path:?} is a {other:?}, not a file"
                    )));
                }
            }
            match path.as_str() {
                LAYOUT_FILE => {
                    let bytes = read_capped(&mut entry, LAYOUT_FILE, 4096)?;
                    let value: serde_json::Value = serde_json::from_slice(&bytes)
                        .map_err(|e| invalid(format!("{LAYOUT_FILE}: {e}")))?;
                    layout = value["imageLayoutVersion"].as_str().map(str::to_string);
                    if layout.is_none() {
                        return Err(invalid(format!("{LAYOUT_FILE} has no imageLayoutVersion")));
                    }
                }
                INDEX_FILE => {
                    index = Some(read_capped(&mut entry, INDEX_FILE, manifest::MAX_DOCUMENT)?);
                }
                DOCKER_MANIFEST_FILE => {
                    docker = Some(read_capped(
                        &mut entry,
                        DOCKER_MANIFEST_FILE,
                        manifest::MAX_DOCUMENT,
                    )?);
                }
                // `docker save`'s legacy metadata: nothing an image needs.
                "repositories" => continue,
                p if p.ends_with("/json") || p.ends_with("/VERSION") => continue,
                _ => {
                    let mut ingest = self.content.ingest_new()?;
                    let copied = copy_entry(&mut entry, &mut ingest, &path)?;
                    let size = entry.size();
                    if copied != size {
                        return Err(invalid(format!(
                            "the archive is truncated: entry {path:?} has {copied} of its {size} bytes"
                        )));
                    }
                    let digest = lease.store_blocking(|| Ok(ingest.commit_computed()?.0))?;
                    if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                        let named = Digest::parse(&format!("sha256:{hex}")).map_err(|_| {
                            invalid(format!("blob {path:?} is not named by a digest"))
                        })?;
                        if named != digest {
                            return Err(Error::Content(super::content::Error::Digest {
                                expected: named,
                                actual: digest,
                            }));
                        }
                    }
                    files.insert(path, digest);
                }
            }
        }
        // Whatever follows the tar's end (padding) is read, so a gzip trailer is checked.
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink())
            .map_err(|e| invalid(format!("reading the end: {e}")))?;

        let lookup = |path: &str| -> Option<Digest> {
            let mut path = clean_path(Path::new(path))?;
            for _ in 0..16 {
                if let Some(d) = files.get(&path) {
                    return Some(d.clone());
                }
                path = links.get(&path)?.clone();
            }
            None
        };
        let found = match (index, docker) {
            (Some(index), _) => {
                if layout.is_none() {
                    return Err(invalid(format!("an {INDEX_FILE} without {LAYOUT_FILE}")));
                }
                self.found_in_layout(&index, &files, default)?
            }
            (None, Some(docker)) => self.found_in_docker(&docker, &lookup, default)?,
            (None, None) => {
                return Err(invalid(format!(
                    "neither an OCI layout ({INDEX_FILE}) nor a docker archive ({DOCKER_MANIFEST_FILE})"
                )));
            }
        };
        if found.is_empty() {
            return Err(invalid("no images in the archive"));
        }
        // Unpacked and recorded from the store alone: no client is waited on.
        let _gc = self.gc.blocking_read();
        self.store_found(found)
    }

    /// The images an OCI layout's index lists (an entry that is itself an index gives the
    /// node's platform).
    fn found_in_layout(
        &self,
        index: &[u8],
        files: &HashMap<String, Digest>,
        default: Option<&str>,
    ) -> Result<Vec<Found>> {
        let index: manifest::Index =
            serde_json::from_slice(index).map_err(|e| invalid(format!("{INDEX_FILE}: {e}")))?;
        let present: BTreeSet<&Digest> = files.values().collect();
        let read = |desc: &Descriptor| -> Result<Vec<u8>> {
            if !present.contains(&desc.digest) {
                return Err(invalid(format!(
                    "blob {} is not in the archive",
                    desc.digest
                )));
            }
            let bytes = self.content.read(&desc.digest, manifest::MAX_DOCUMENT)?;
            if bytes.len() as u64 != desc.size {
                return Err(invalid(format!(
                    "{} is {} bytes, the index says {}",
                    desc.digest,
                    bytes.len(),
                    desc.size
                )));
            }
            Ok(bytes)
        };
        let mut found: Vec<Found> = Vec::new();
        for desc in &index.manifests {
            let mut names = BTreeSet::new();
            if let Some(name) = desc.annotations.get(NAME_ANNOTATION)
                && let Ok(r) = Reference::parse(name)
            {
                names.extend(r.tagged());
            } else if let Some(name) = desc.annotations.get(REF_NAME_ANNOTATION) {
                if name.contains('/') || name.contains(':') {
                    names.extend(Reference::parse(name).ok().and_then(|r| r.tagged()));
                } else if let Some(default) = default
                    && let Ok(r) =
                        Reference::parse(&format!("{}:{name}", Reference::parse(default)?.name()))
                {
                    // A bare tag names an image of the repository given with the import.
                    names.extend(r.tagged());
                }
            }
            let bytes = read(desc)?;
            let (manifest_bytes, manifest_digest, media_type, index_digest) =
                match manifest::parse_document(&bytes, Some(&desc.media_type))? {
                    Document::Manifest(_) => {
                        (bytes, desc.digest.clone(), desc.media_type.clone(), None)
                    }
                    Document::Index(inner) => {
                        let chosen = manifest::select_platform(&inner, &manifest::node_platform())?;
                        (
                            read(chosen)?,
                            chosen.digest.clone(),
                            chosen.media_type.clone(),
                            Some(desc.digest.clone()),
                        )
                    }
                };
            let Document::Manifest(m) =
                manifest::parse_document(&manifest_bytes, Some(&media_type))?
            else {
                return Err(invalid("an index whose entry is another index"));
            };
            for blob in std::iter::once(&m.config).chain(&m.layers) {
                if !present.contains(&blob.digest) {
                    return Err(invalid(format!(
                        "blob {} of manifest {manifest_digest} is not in the archive",
                        blob.digest
                    )));
                }
            }
            // Several index entries (one per name) may be the same image.
            match found.iter_mut().find(|f| f.manifest == manifest_digest) {
                Some(existing) => existing.names.extend(names),
                None => found.push(Found {
                    manifest: manifest_digest,
                    manifest_media_type: m.media_type.clone().unwrap_or(media_type),
                    index: index_digest,
                    config: m.config.digest.clone(),
                    layers: m.layers.clone(),
                    names,
                }),
            }
        }
        if let Some(default) = default {
            for f in found.iter_mut().filter(|f| f.names.is_empty()) {
                f.names.insert(default.to_string());
            }
        }
        Ok(found)
    }

    /// The images a `docker save` archive's `manifest.json` lists. Docker archives have no
    /// manifests, so one is made for each (OCI, layers described as they are stored).
    fn found_in_docker(
        &self,
        docker: &[u8],
        lookup: &dyn Fn(&str) -> Option<Digest>,
        default: Option<&str>,
    ) -> Result<Vec<Found>> {
        let entries: Vec<DockerEntry> = serde_json::from_slice(docker)
            .map_err(|e| invalid(format!("{DOCKER_MANIFEST_FILE}: {e}")))?;
        let mut found = Vec::new();
        for entry in entries {
            let missing = |p: &str| invalid(format!("{p:?} is not in the archive"));
            let config = lookup(&entry.config).ok_or_else(|| missing(&entry.config))?;
            let config_size = self.content.read(&config, manifest::MAX_DOCUMENT)?.len() as u64;
            let mut layers = Vec::new();
            for path in &entry.layers {
                let digest = lookup(path).ok_or_else(|| missing(path))?;
                let file = self.content.path(&digest);
                let size = std::fs::metadata(&file)
                    .map_err(|e| Error::Internal(format!("blob {digest}: {e}")))?
                    .len();
                let compression =
                    sniff(&file).map_err(|e| Error::Internal(format!("blob {digest}: {e}")))?;
                layers.push(Descriptor {
                    media_type: compression.layer_media_type().into(),
                    digest,
                    size,
                    platform: None,
                    annotations: BTreeMap::new(),
                });
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": manifest::OCI_MANIFEST,
                "config": {"mediaType": manifest::OCI_CONFIG, "digest": config, "size": config_size},
                "layers": layers,
            });
            let bytes =
                serde_json::to_vec(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
            let digest = Digest::of(&bytes);
            self.content.write(&digest, &bytes)?;
            let mut names = BTreeSet::new();
            for tag in entry.repo_tags.unwrap_or_default() {
                let r = Reference::parse(&tag)?;
                names.extend(r.tagged());
            }
            if names.is_empty() {
                names.extend(default.map(str::to_string));
            }
            found.push(Found {
                manifest: digest,
                manifest_media_type: manifest::OCI_MANIFEST.into(),
                index: None,
                config,
                layers,
                names,
            });
        }
        Ok(found)
    }

    /// Checks each image's config against its layers, unpacks the layers the node lacks, and
    /// records all the images at once.
    fn store_found(&self, found: Vec<Found>) -> Result<Vec<Imported>> {
        crate::failpoint::hit("import.stored");
        let mut records = Vec::new();
        for f in found {
            manifest::check_layer_count(f.layers.len(), self.config.max_layers)?;
            let config_bytes = self.content.read(&f.config, manifest::MAX_DOCUMENT)?;
            let config = manifest::parse_config(&config_bytes)?;
            if config.rootfs.diff_ids.len() != f.layers.len() {
                return Err(invalid(format!(
                    "image {}: {} diff_ids for {} layers",
                    f.config,
                    config.rootfs.diff_ids.len(),
                    f.layers.len()
                )));
            }
            let mut layers = Vec::new();
            for (desc, diff_id) in f.layers.iter().zip(&config.rootfs.diff_ids) {
                let actual = std::fs::metadata(self.content.path(&desc.digest))
                    .map_err(|e| Error::Internal(format!("blob {}: {e}", desc.digest)))?
                    .len();
                if actual != desc.size {
                    return Err(Error::Content(super::content::Error::Size {
                        digest: desc.digest.clone(),
                        expected: desc.size,
                        actual,
                    }));
                }
                let compression = Compression::of_layer(&desc.media_type)?;
                self.unpack_stored(&desc.digest, diff_id, compression)?;
                layers.push(LayerRef {
                    digest: desc.digest.clone(),
                    diff_id: diff_id.clone(),
                    size: desc.size,
                    media_type: desc.media_type.clone(),
                });
            }
            let manifest_size = std::fs::metadata(self.content.path(&f.manifest))
                .map_err(|e| Error::Internal(format!("manifest {}: {e}", f.manifest)))?
                .len();
            records.push(ImageRecord {
                id: f.config.clone(),
                manifest: f.manifest,
                manifest_media_type: f.manifest_media_type,
                index: f.index,
                tags: f.names,
                digests: BTreeSet::new(),
                size: manifest_size
                    + config_bytes.len() as u64
                    + layers.iter().map(|l| l.size).sum::<u64>(),
                layers,
                user: config
                    .config
                    .as_ref()
                    .and_then(|c| c.user.clone())
                    .unwrap_or_default(),
                stored_at: crate::clock::now_nanos(),
            });
        }
        self.content.sync()?;
        self.layers.sync()?;
        let imported = records
            .iter()
            .map(|r| Imported {
                id: r.id.clone(),
                names: r.tags.iter().cloned().collect(),
            })
            .collect();
        self.records().update(|all| {
            for record in records {
                super::pull::record_new(all, record);
            }
        })?;
        Ok(imported)
    }

    /// Unpacks a stored layer blob into the layer store (if the node lacks the layer),
    /// checking that it unpacks to `diff_id`.
    pub(super) fn unpack_stored(
        &self,
        digest: &Digest,
        diff_id: &Digest,
        compression: Compression,
    ) -> Result<()> {
        if self.layers.has(diff_id) {
            return Ok(());
        }
        let pending = self.layers.begin(diff_id)?;
        let blob = std::fs::File::open(self.content.path(digest))
            .map_err(|e| Error::Internal(format!("blob {digest}: {e}")))?;
        let compressed = blob
            .metadata()
            .map_err(|e| Error::Internal(format!("blob {digest}: {e}")))?
            .len();
        let limits = unpack::Limits {
            max_entries: self.config.max_layer_entries,
            max_bytes: self.config.max_layer_size(compressed),
        };
        let blob = io::BufReader::with_capacity(256 << 10, blob);
        let reader = compression.reader(blob).map_err(|e| Error::Unpack {
            digest: digest.clone(),
            source: unpack::Error::Read(e),
        })?;
        let unpacked =
            unpack::unpack(reader, pending.root(), limits).map_err(|source| Error::Unpack {
                digest: digest.clone(),
                source,
            })?;
        pending.commit(&checked_layer(digest, diff_id, unpacked)?)?;
        Ok(())
    }
}

/// `a/b/../c` → `a/c`; `None` if `..` climbs above the top.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

fn json_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_stay_inside() {
        assert_eq!(
            clean_path(Path::new("./blobs/sha256/ab")).as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(
            clean_path(Path::new("index.json")).as_deref(),
            Some("index.json")
        );
        assert_eq!(clean_path(Path::new("../x")), None);
        assert_eq!(clean_path(Path::new("blobs/../../x")), None);
        assert_eq!(clean_path(Path::new("/etc/passwd")), None);
        assert_eq!(
            normalize(Path::new("a/../b/layer.tar")).as_deref(),
            Some("b/layer.tar")
        );
        assert_eq!(normalize(Path::new("a/../../b")), None);
    }
}
