//! Images the tests build themselves: tar layers (including hostile ones), compressed
//! with gzip, zstd or not at all, OCI or Docker schema 2 manifests, and indexes.

use std::io::Write;

use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A fixed mtime so that layers are reproducible and times can be checked.
pub const MTIME: u64 = 1_700_000_000;

pub fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut hex = String::from("sha256:");
    for b in hash.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub media_type: String,
}

impl Blob {
    pub fn new(bytes: Vec<u8>, media_type: &str) -> Blob {
        Blob {
            digest: sha256(&bytes),
            bytes,
            media_type: media_type.to_string(),
        }
    }

    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.bytes.len(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

/// Builds a layer tar entry by entry.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_size(size);
    h.set_mtime(MTIME);
    h
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Complete);
        LayerBuilder { tar }
    }

    fn append(&mut self, mut h: tar::Header, path: &str, data: &[u8]) -> &mut Self {
        self.tar
            .append_data(&mut h, path, data)
            .unwrap_or_else(|e| panic!("tar entry {path}: {e}"));
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.append(header(tar::EntryType::Directory, mode, 0, 0, 0), path, &[])
    }

    pub fn file(&mut self, path: &str, content: &[u8], mode: u32) -> &mut Self {
        self.file_owned(path, content, mode, 0, 0)
    }

    pub fn file_owned(
        &mut self,
        path: &str,
        content: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        let h = header(
            tar::EntryType::Regular,
            mode,
            uid,
            gid,
            content.len() as u64,
        );
        self.append(h, path, content)
    }

    /// A file with extended attributes, as PAX `SCHILY.xattr.*` records.
    pub fn file_with_xattrs(
        &mut self,
        path: &str,
        content: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.tar
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .expect("pax");
        self.file(path, content, 0o644)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
        self.tar
            .append_link(&mut h, path, target)
            .unwrap_or_else(|e| panic!("symlink {path}: {e}"));
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0, 0, 0);
        self.tar
            .append_link(&mut h, path, target)
            .unwrap_or_else(|e| panic!("hardlink {path}: {e}"));
        self
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = header(tar::EntryType::Char, 0o666, 0, 0, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.append(h, path, &[])
    }

    pub fn fifo(&mut self, path: &str) -> &mut Self {
        self.append(header(tar::EntryType::Fifo, 0o600, 0, 0, 0), path, &[])
    }

    /// An OCI whiteout hiding `path` of the layers below.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, &[], 0o644)
    }

    /// Marks directory `dir` opaque: nothing of the layers below shows through it.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), &[], 0o644)
    }

    /// An entry whose name and link name are written into the header byte for byte,
    /// bypassing the tar crate's checks: for hostile layers (`../x`, `/abs`).
    pub fn raw(
        &mut self,
        kind: tar::EntryType,
        path: &str,
        link: &str,
        content: &[u8],
    ) -> &mut Self {
        let mut h = header(kind, 0o644, 0, 0, content.len() as u64);
        {
            let bytes = h.as_old_mut();
            assert!(
                path.len() < 100 && link.len() < 100,
                "raw names must fit the header"
            );
            bytes.name = [0; 100];
            bytes.name[..path.len()].copy_from_slice(path.as_bytes());
            bytes.linkname = [0; 100];
            bytes.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        self.tar.append(&h, content).expect("raw entry");
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let tar = std::mem::replace(&mut self.tar, tar::Builder::new(Vec::new()));
        tar.into_inner().expect("finish tar")
    }
}

/// A layer: the uncompressed tar (whose digest is the diff_id) and the blob as pushed.
#[derive(Debug, Clone)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub diff_id: String,
    pub blob: Blob,
}

pub fn layer(tar: Vec<u8>, compression: Compression, docker: bool) -> Layer {
    let (bytes, media_type) = match compression {
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&tar).expect("gzip");
            let media = if docker {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            };
            (enc.finish().expect("gzip"), media)
        }
        Compression::Zstd => (
            zstd::encode_all(&tar[..], 3).expect("zstd"),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
    };
    Layer {
        diff_id: sha256(&tar),
        tar,
        blob: Blob::new(bytes, media_type),
    }
}

/// A built image: config, layers and manifest, ready to push.
#[derive(Debug, Clone)]
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Layer>,
    pub manifest: Blob,
    pub docker: bool,
}

impl Image {
    /// The image id: the config's digest.
    pub fn id(&self) -> &str {
        &self.config.digest
    }

    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(self.layers.iter().map(|l| &l.blob))
    }

    /// This image's manifest, but listing `layers` (descriptors of anything).
    pub fn manifest_with(&self, layers: Vec<serde_json::Value>) -> Blob {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": self.manifest_media_type(),
            "config": self.config.descriptor(),
            "layers": layers,
        });
        Blob::new(
            serde_json::to_vec(&manifest).expect("manifest"),
            self.manifest_media_type(),
        )
    }

    pub fn manifest_media_type(&self) -> &str {
        if self.docker {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        }
    }
}

#[derive(Default)]
pub struct ImageBuilder {
    layers: Vec<(Vec<u8>, Compression)>,
    user: Option<String>,
    docker: bool,
    architecture: Option<String>,
    diff_ids: Option<Vec<String>>,
    label: Option<String>,
    cmd: Option<Vec<String>>,
}

impl ImageBuilder {
    pub fn new() -> ImageBuilder {
        ImageBuilder::default()
    }

    pub fn layer(mut self, tar: Vec<u8>, compression: Compression) -> Self {
        self.layers.push((tar, compression));
        self
    }

    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }

    /// Docker schema 2 media types instead of OCI ones.
    pub fn docker(mut self) -> Self {
        self.docker = true;
        self
    }

    pub fn architecture(mut self, arch: &str) -> Self {
        self.architecture = Some(arch.to_string());
        self
    }

    /// A label in the config: makes otherwise equal images distinct.
    pub fn label(mut self, label: &str) -> Self {
        self.label = Some(label.to_string());
        self
    }

    /// The config's Cmd (default `/bin/sh`).
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Lies about the layers' diff_ids in the config.
    pub fn diff_ids(mut self, diff_ids: Vec<String>) -> Self {
        self.diff_ids = Some(diff_ids);
        self
    }

    pub fn build(self) -> Image {
        let layers: Vec<Layer> = self
            .layers
            .into_iter()
            .map(|(tar, c)| layer(tar, c, self.docker))
            .collect();
        let diff_ids = self
            .diff_ids
            .unwrap_or_else(|| layers.iter().map(|l| l.diff_id.clone()).collect());
        let config = serde_json::json!({
            "architecture": self.architecture.unwrap_or_else(|| "amd64".into()),
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {
                "User": self.user.unwrap_or_default(),
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": self.cmd.clone().unwrap_or_else(|| vec!["/bin/sh".to_string()]),
                "Labels": {"test": self.label.unwrap_or_default()},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = Blob::new(
            serde_json::to_vec(&config).expect("config"),
            if self.docker {
                "application/vnd.docker.container.image.v1+json"
            } else {
                "application/vnd.oci.image.config.v1+json"
            },
        );
        let media = if self.docker {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media,
            "config": config.descriptor(),
            "layers": layers.iter().map(|l| l.blob.descriptor()).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(serde_json::to_vec(&manifest).expect("manifest"), media);
        Image {
            config,
            layers,
            manifest,
            docker: self.docker,
        }
    }
}

/// An OCI index of `(image, architecture)` pairs.
pub fn index(images: &[(&Image, &str)]) -> Blob {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(image, arch)| {
            let mut d = image.manifest.descriptor();
            d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
            d
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    Blob::new(serde_json::to_vec(&index).expect("index"), OCI_INDEX)
}

/// A base layer with Debian's static busybox as /bin/busybox and /bin/sh.
pub fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (Debian's busybox-static) must be installed");
    LayerBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", &busybox, 0o755)
        .symlink("bin/sh", "busybox")
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
            0o644,
        )
        .file("etc/group", b"root:x:0:\nuser:x:1000:\n", 0o644)
        .dir("tmp", 0o1777)
        .finish()
}

/// A gzip bomb as a layer blob: concatenated gzip members of a tar header for one file of
/// `size` bytes, then zeros up to it (and the end marker). A few MiB that inflate to `size`.
pub fn gzip_bomb(size: u64) -> Blob {
    let chunk: u64 = 4 << 20;
    let zeros = gzip_member(&vec![0u8; chunk as usize]);
    let mut bomb = gzip_member(regular_header("bomb", size).as_bytes());
    for _ in 0..size / chunk {
        bomb.extend_from_slice(&zeros);
    }
    bomb.extend(gzip_member(&vec![0u8; (size % chunk) as usize + 1024]));
    Blob::new(bomb, "application/vnd.oci.image.layer.v1.tar+gzip")
}

/// A layer blob of `thousands` × 1,000 empty entries (one name, again and again): a few MiB of
/// gzip members that stand for half a GiB of tar headers.
pub fn many_entries(thousands: usize) -> Blob {
    let member = gzip_member(&regular_header("e", 0).as_bytes().repeat(1000));
    let mut blob = Vec::new();
    for _ in 0..thousands {
        blob.extend_from_slice(&member);
    }
    blob.extend(gzip_member(&[0u8; 1024]));
    Blob::new(blob, "application/vnd.oci.image.layer.v1.tar+gzip")
}

/// One gzip member of `data`: members put one after another make one gzip stream.
fn gzip_member(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// The tar header of a root-owned regular file of `size` bytes.
fn regular_header(path: &str, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_path(path).expect("a short path");
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    header
}

/// An OCI layout archive of `image` named `name`, as another tool would write it (entries
/// may be left out or replaced).
pub fn layout_archive(image: &Image, name: &str, skip: &[&str]) -> Vec<u8> {
    let mut tar = LayerBuilder::new();
    tar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": image.manifest_media_type(),
            "digest": image.manifest.digest,
            "size": image.manifest.bytes.len(),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "v1"},
        }],
    });
    tar.file("index.json", &serde_json::to_vec(&index).unwrap(), 0o644);
    for blob in image.blobs().chain([&image.manifest]) {
        if skip.contains(&blob.digest.as_str()) {
            continue;
        }
        let path = format!("blobs/sha256/{}", blob.digest.trim_start_matches("sha256:"));
        tar.file(&path, &blob.bytes, 0o644);
    }
    tar.finish()
}
