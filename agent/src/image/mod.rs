//! Images: the registry client, the content store, the layer store and the image records,
//! behind one facade, [`ImageStore`]. Nothing here knows about gRPC or containers.

mod archive;
pub mod check;
pub mod chunks;
mod commit;
pub mod content;
pub mod digest;
pub mod layers;
pub mod manifest;
mod pull;
mod push;
pub mod records;
pub mod reference;
pub mod registry;
pub mod unpack;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

pub use commit::{CommitInfo, ConfigChanges};
pub use digest::Digest;
pub use pull::{LayerState, Progress};
pub use push::{BlobState, PushProgress, PushSummary};
pub use records::{ImageRecord, UserPart};
pub use registry::Credentials;

use crate::config::ImagesConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Reference(#[from] reference::ParseError),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    #[error(transparent)]
    Content(#[from] content::Error),
    #[error(transparent)]
    Layers(#[from] layers::Error),
    #[error(transparent)]
    Records(#[from] records::Error),
    #[error("layer {digest}: {source}")]
    Unpack {
        digest: Digest,
        #[source]
        source: unpack::Error,
    },
    #[error(
        "layer {digest}: unpacked content has diff_id {actual}, but the image config says {expected}"
    )]
    DiffId {
        digest: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: no data received for {secs} s")]
    Stalled { what: String, secs: u64 },
    #[error("{what}: download failed: {message}")]
    Download { what: String, message: String },
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
    /// The outcome of a pull that several callers shared.
    #[error(transparent)]
    Shared(Arc<Error>),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    fn is_transient(&self) -> bool {
        match self {
            Error::Registry(e) => e.is_transient(),
            Error::Stalled { .. } | Error::Download { .. } => true,
            Error::Shared(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Tries of one layer download or blob upload: the first and two retries.
const TRANSFER_TRIES: u32 = 3;
/// How often a transfer in progress reports how far it got.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Sends a progress event to whoever listens. A client that went away does not stop the
/// work.
fn report<E>(progress: &Option<tokio::sync::mpsc::UnboundedSender<E>>, event: E) {
    if let Some(tx) = progress {
        let _ = tx.send(event);
    }
}

/// Runs `transfer` until it succeeds, fails for good, or has failed transiently
/// [`TRANSFER_TRIES`] times, pausing a little longer before each retry.
async fn with_retries<T, F, Fut>(what: &str, mut transfer: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match transfer().await {
            Err(e) if e.is_transient() && attempt < TRANSFER_TRIES => {
                tracing::warn!(what, error = %e, attempt, "transfer failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(250 * u64::from(attempt)))
                    .await;
            }
            other => return other,
        }
    }
}

/// What a layer blob unpacked to, as the layer store records it, if it is the content the
/// image config names (`diff_id`).
fn checked_layer(
    digest: &Digest,
    diff_id: &Digest,
    unpacked: unpack::Unpacked,
) -> Result<layers::LayerMeta> {
    if unpacked.diff_id != *diff_id {
        return Err(Error::DiffId {
            digest: digest.clone(),
            expected: diff_id.clone(),
            actual: unpacked.diff_id,
        });
    }
    Ok(layers::LayerMeta {
        diff_id: diff_id.clone(),
        size: unpacked.content_bytes,
        entries: unpacked.entries,
    })
}

/// What a transfer reads or writes, kept from garbage collection while it runs (a pull
/// until its image is recorded, a push or an export until it has sent everything). It is
/// taken under the collector's lock, briefly, and never held across network I/O: a
/// collection under way ends first, and every later one sees the lease before anything it
/// covers is written or read.
pub(crate) struct Lease {
    store: Arc<ImageStore>,
    owner: String,
    /// Dropped before `settled` is set (its pull was stopped half-way), the lease has the
    /// store collect what the transfer left.
    collect_on_drop: bool,
    settled: bool,
}

impl Lease {
    fn new(store: &Arc<ImageStore>, collect_on_drop: bool) -> Lease {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Lease {
            store: store.clone(),
            owner: format!("transfer {n}"),
            collect_on_drop,
            settled: false,
        }
    }

    /// Keeps `digests` (blobs and layers) from collection, in place of what it kept.
    async fn hold(&self, digests: Vec<Digest>) {
        let _gc = self.store.gc.read().await;
        self.store.pin_layers(&self.owner, digests);
    }

    /// Stores a blob (`store` returns its digest) and keeps it, together: a collection
    /// runs before or after, never between. From a blocking thread.
    fn store_blocking(&self, store: impl FnOnce() -> Result<Digest>) -> Result<Digest> {
        let _gc = self.store.gc.blocking_read();
        let digest = store()?;
        self.store
            .pins()
            .entry(self.owner.clone())
            .or_default()
            .push(digest.clone());
        Ok(digest)
    }

    /// Keeps what `image` is made of, as long as the image is still recorded.
    async fn hold_image(&self, name: &str) -> Option<ImageRecord> {
        let _gc = self.store.gc.read().await;
        let image = self.store.find(name)?;
        self.store
            .pin_layers(&self.owner, parts(std::slice::from_ref(&image)));
        Some(image)
    }

    /// Keeps what `images` are made of (from a blocking thread). They must have been
    /// recorded when they were looked up: a part collected meanwhile fails the transfer.
    fn hold_images_blocking(&self, images: &[ImageRecord]) {
        let _gc = self.store.gc.blocking_read();
        self.store.pin_layers(&self.owner, parts(images));
    }
}

/// The blobs and layers `images` are made of.
fn parts(images: &[ImageRecord]) -> Vec<Digest> {
    let mut digests = Vec::new();
    for image in images {
        digests.extend([image.id.clone(), image.manifest.clone()]);
        digests.extend(image.index.clone());
        for layer in &image.layers {
            digests.extend([layer.digest.clone(), layer.diff_id.clone()]);
        }
    }
    digests
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.store.unpin_layers(&self.owner);
        if self.collect_on_drop
            && !self.settled
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let store = self.store.clone();
            runtime.spawn(async move {
                let _gc = store.gc.write().await;
                if let Err(e) = store.collect_garbage() {
                    tracing::warn!(error = %e, "cleaning up after an abandoned pull");
                }
            });
        }
    }
}

/// Disk use of the image store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

pub struct ImageStore {
    root: PathBuf,
    content: content::ContentStore,
    layers: layers::LayerStore,
    records: Mutex<records::Records>,
    registry: Arc<registry::RegistryClient>,
    config: ImagesConfig,
    /// One download per blob at a time, across all pulls.
    in_flight: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Garbage collection holds it exclusively; a pull holds it shared only while it takes
    /// its lease (never across network I/O), so a collection never removes what a pull
    /// has fetched but not yet recorded.
    gc: tokio::sync::RwLock<()>,
    /// Layers containers use, by container, and what pulls in progress fetch (blobs and
    /// layers), by pull: never collected, whatever the records say.
    pins: Mutex<HashMap<String, Vec<Digest>>>,
    /// Pulls in progress that callers share, by reference.
    pulls: Mutex<HashMap<String, std::sync::Weak<pull::SharedPull>>>,
}

impl ImageStore {
    pub fn open(
        root: &Path,
        config: ImagesConfig,
        registries: std::collections::BTreeMap<String, crate::config::RegistryConfig>,
    ) -> Result<ImageStore> {
        Ok(ImageStore {
            root: root.to_path_buf(),
            content: content::ContentStore::open(root)?,
            layers: layers::LayerStore::open(root)?,
            records: Mutex::new(records::Records::load(root.join("images.json"))?),
            registry: Arc::new(registry::RegistryClient::new(
                registries,
                std::time::Duration::from_secs(config.progress_timeout_secs),
            )?),
            config,
            in_flight: Mutex::new(HashMap::new()),
            gc: tokio::sync::RwLock::new(()),
            pins: Mutex::new(HashMap::new()),
            pulls: Mutex::new(HashMap::new()),
        })
    }

    fn records(&self) -> std::sync::MutexGuard<'_, records::Records> {
        // A panic while holding the lock cannot leave the records half-changed (updates
        // are applied to a copy), so a poisoned lock is still consistent.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.records().all().to_vec()
    }

    pub fn find(&self, name: &str) -> Option<ImageRecord> {
        self.records().find(name).cloned()
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.layers.fs_path(diff_id)
    }

    pub fn config(&self, image: &ImageRecord) -> Result<manifest::ImageConfig> {
        let bytes = self.content.read(&image.id, manifest::MAX_DOCUMENT)?;
        Ok(manifest::parse_config(&bytes)?)
    }

    fn pins(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Digest>>> {
        // Each change is one map operation: a poisoned lock is still consistent.
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `layers` from garbage collection while `owner` (a container) uses them.
    pub fn pin_layers(&self, owner: &str, layers: Vec<Digest>) {
        self.pins().insert(owner.to_string(), layers);
    }

    /// Lets go of what `owner` kept; returns it.
    fn unpin_layers(&self, owner: &str) -> Vec<Digest> {
        self.pins().remove(owner).unwrap_or_default()
    }

    /// Lets go of what `owner` (a container that was removed) kept, and frees it at once if
    /// no image has it any more (its image was removed while the container existed).
    pub fn release_layers(self: &Arc<Self>, owner: &str) {
        let released = self.unpin_layers(owner);
        let orphaned = released
            .iter()
            .any(|diff_id| self.layer_users(diff_id) == 0);
        if orphaned && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.clone();
            runtime.spawn(async move {
                if let Err(e) = store.collect_leftovers().await {
                    tracing::warn!(error = %e, "freeing the layers of a removed container");
                }
            });
        }
    }

    pub fn layer_meta(&self, diff_id: &Digest) -> Option<layers::LayerMeta> {
        self.layers.meta(diff_id)
    }

    /// The raw manifest and config of an image.
    pub fn documents(&self, image: &ImageRecord) -> Result<(Vec<u8>, Vec<u8>)> {
        Ok((
            self.content.read(&image.manifest, manifest::MAX_DOCUMENT)?,
            self.content.read(&image.id, manifest::MAX_DOCUMENT)?,
        ))
    }

    /// Removes the image `name` names, under all its names. A missing image is not an
    /// error. Blobs and layers nothing else uses are freed.
    pub async fn remove(&self, name: &str) -> Result<Option<ImageRecord>> {
        let _gc = self.gc.write().await;
        let removed = {
            let mut records = self.records();
            let Some(image) = records.find(name).cloned() else {
                return Ok(None);
            };
            records.update(|all| all.retain(|i| i.id != image.id))?;
            image
        };
        self.collect_garbage()?;
        Ok(Some(removed))
    }

    /// Frees what a crash left unrecorded: the blobs and layers of a pull, import or
    /// commit that stored them but never recorded its image. For start-up, once the layers
    /// of every container are pinned.
    pub async fn collect_leftovers(&self) -> Result<()> {
        let _gc = self.gc.write().await;
        self.collect_garbage()
    }

    /// Deletes blobs and layers that no image refers to. Callers hold the gc lock.
    fn collect_garbage(&self) -> Result<()> {
        let (blobs, layers): (HashSet<Digest>, HashSet<Digest>) = {
            let records = self.records();
            let mut blobs = HashSet::new();
            let mut layers = HashSet::new();
            for image in records.all() {
                blobs.insert(image.id.clone());
                blobs.insert(image.manifest.clone());
                blobs.extend(image.index.clone());
                for layer in &image.layers {
                    blobs.insert(layer.digest.clone());
                    layers.insert(layer.diff_id.clone());
                }
            }
            for pinned in self.pins().values() {
                layers.extend(pinned.iter().cloned());
                blobs.extend(pinned.iter().cloned());
            }
            (blobs, layers)
        };
        for digest in self.content.list()? {
            if !blobs.contains(&digest) {
                self.content.remove(&digest)?;
            }
        }
        for diff_id in self.layers.list()? {
            if !layers.contains(&diff_id) {
                tracing::debug!(layer = %diff_id, "freeing unused layer");
                self.layers.remove(&diff_id)?;
            }
        }
        Ok(())
    }

    /// Gives the image `source` names the name `target` too (moved from any image that had
    /// it). Returns the image and the normalised tag.
    pub fn tag(&self, source: &str, target: &str) -> Result<(ImageRecord, String)> {
        let reference = reference::Reference::parse(target)?;
        if reference.digest.is_some() {
            return Err(Error::Invalid {
                what: format!("tag {target:?}"),
                message: "a tag cannot carry a digest".into(),
            });
        }
        let tag = reference
            .tagged()
            .ok_or_else(|| Error::Internal("a parsed reference without digest has a tag".into()))?;
        let mut records = self.records();
        let image = records
            .find(source)
            .cloned()
            .ok_or_else(|| Error::NotFound(source.to_string()))?;
        records.update(|all| {
            for other in all.iter_mut() {
                if other.id == image.id {
                    other.tags.insert(tag.clone());
                } else {
                    other.tags.remove(&tag);
                }
            }
        })?;
        let updated = records
            .find(&tag)
            .cloned()
            .ok_or_else(|| Error::Internal("the tagged image vanished".into()))?;
        Ok((updated, tag))
    }

    /// How many local images have the layer `diff_id`.
    pub fn layer_users(&self, diff_id: &Digest) -> usize {
        self.records()
            .all()
            .iter()
            .filter(|i| i.layers.iter().any(|l| &l.diff_id == diff_id))
            .count()
    }

    /// Layers on disk (count, allocated bytes), blobs' allocated bytes, and the images'
    /// unpacked sizes added up as if nothing were shared.
    pub fn disk_usage(&self) -> Result<(usize, u64, u64, u64)> {
        let layers = self.layers.list()?.len();
        let (layer_bytes, _) = crate::sys::disk_usage(self.layers.dir());
        let (blob_bytes, _) = crate::sys::disk_usage(self.content.blobs_dir());
        let unshared = self
            .list()
            .iter()
            .flat_map(|i| i.layers.iter())
            .map(|l| self.layers.meta(&l.diff_id).map_or(0, |m| m.size))
            .sum();
        Ok((layers, layer_bytes, blob_bytes, unshared))
    }

    /// Bytes and inodes used by blobs and layers.
    pub fn usage(&self) -> Usage {
        let mut usage = Usage::default();
        for dir in [self.content.blobs_dir(), self.layers.dir()] {
            let (bytes, inodes) = crate::sys::disk_usage(dir);
            usage.bytes += bytes;
            usage.inodes += inodes;
        }
        usage
    }

    /// The directory image data lives in (reported as the image filesystem).
    pub fn root(&self) -> &Path {
        &self.root
    }
}
