//! Pulling an image: resolve the reference to a platform manifest, fetch the config, then
//! download and unpack the layers the node lacks, several at a time, each streaming from
//! the network through the content store's ingest and the decompressor into a new layer
//! directory with no whole-layer buffering. Nothing is published until its digests check.

use std::{
    io::{self, Read},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, watch};

use super::{
    Error, ImageStore, Lease, PROGRESS_EVERY, Result, checked_layer,
    chunks::ChunkReader,
    content::Ingest,
    digest::Digest,
    manifest::{self, Compression, Descriptor, Document},
    records::{ImageRecord, LayerRef},
    reference::Reference,
    registry::{Credentials, Repository},
    report, unpack, with_retries,
};

/// How a layer's pull is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerState {
    Waiting,
    Downloading,
    /// Already on the node: nothing to fetch.
    Exists,
    Done,
}

#[derive(Debug, Clone)]
pub struct LayerProgress {
    pub digest: Digest,
    pub size: u64,
    pub downloaded: u64,
    pub state: LayerState,
}

/// Events of one pull, in order: `Resolved`, then `Layer` updates, then nothing (the pull's
/// result says how it ended).
#[derive(Debug, Clone)]
pub enum Progress {
    Resolved {
        manifest: Digest,
        layers: Vec<(Digest, u64)>,
    },
    Layer(LayerProgress),
}

type ProgressTx = mpsc::UnboundedSender<Progress>;

/// A manifest or config must arrive whole within this many progress timeouts.
const DOCUMENT_TIMEOUTS: u64 = 3;

/// A pull that callers of the same image share. When the last caller drops it (each gave
/// up, or its deadline passed), the pull is stopped.
pub(super) struct SharedPull {
    done: watch::Receiver<Option<std::result::Result<ImageRecord, Arc<Error>>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for SharedPull {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ImageStore {
    /// Pulls `name` and records it. Returns the image's record. A failed pull leaves no
    /// blob or layer behind that no image uses.
    ///
    /// Callers pulling the same image at the same time share one pull; a pull all of
    /// whose callers have gone is stopped and what it left is collected. A pull with
    /// `progress` is its caller's own, and stops when its caller drops it.
    pub async fn pull(
        self: &Arc<Self>,
        name: &str,
        credentials: Credentials,
        progress: Option<ProgressTx>,
    ) -> Result<ImageRecord> {
        let reference = Reference::parse(name)?;
        if progress.is_some() {
            return self.pull_now(&reference, credentials, progress).await;
        }
        let shared = self.join_pull(&reference, credentials);
        let mut done = shared.done.clone();
        // The task always sends its outcome; a task that ended without one was aborted.
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|outcome| outcome.clone());
        match outcome {
            Some(Ok(image)) => Ok(image),
            Some(Err(e)) => Err(Error::Shared(e)),
            None => Err(Error::Internal(
                "the pull task ended without a result".into(),
            )),
        }
    }

    /// The pull of `reference` in progress, or a new one.
    fn join_pull(
        self: &Arc<Self>,
        reference: &Reference,
        credentials: Credentials,
    ) -> Arc<SharedPull> {
        let key = reference.to_string();
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        pulls.retain(|_, pull| pull.strong_count() > 0);
        if let Some(pull) = pulls.get(&key).and_then(std::sync::Weak::upgrade) {
            return pull;
        }
        let (tx, rx) = watch::channel(None);
        let (store, reference) = (self.clone(), reference.clone());
        let task = tokio::spawn(async move {
            let result = store.pull_now(&reference, credentials, None).await;
            let _ = tx.send(Some(result.map_err(Arc::new)));
        });
        let pull = Arc::new(SharedPull {
            done: rx,
            task: task.abort_handle(),
        });
        pulls.insert(key, Arc::downgrade(&pull));
        pull
    }

    async fn pull_now(
        self: &Arc<Self>,
        reference: &Reference,
        credentials: Credentials,
        progress: Option<ProgressTx>,
    ) -> Result<ImageRecord> {
        let _in_flight = crate::metrics::PullInFlight::start();
        let mut lease = Lease::new(self, true);
        let result = self
            .pull_leased(reference, credentials, progress, &lease)
            .await;
        // Settled: the lease goes now, and what a failure left is collected here.
        lease.settled = true;
        drop(lease);
        if result.is_err() {
            // Waits for a collection under way; frees only what nobody uses.
            let _gc = self.gc.write().await;
            if let Err(e) = self.collect_garbage() {
                tracing::warn!(error = %e, "cleaning up after a failed pull");
            }
        }
        result
    }

    async fn pull_leased(
        self: &Arc<Self>,
        reference: &Reference,
        credentials: Credentials,
        progress: Option<ProgressTx>,
        lease: &Lease,
    ) -> Result<ImageRecord> {
        let repo = Arc::new(self.registry.repository(
            &reference.registry,
            &reference.repository,
            credentials,
        ));

        let (top, top_type) = self
            .fetch_document(&repo, &reference.manifest_ref())
            .await?;
        let top_digest = Digest::of(&top);
        if let Some(wanted) = &reference.digest
            && *wanted != top_digest
        {
            return Err(Error::Content(super::content::Error::Digest {
                expected: wanted.clone(),
                actual: top_digest,
            }));
        }
        let (manifest_bytes, manifest_digest, manifest_type, index) =
            match manifest::parse_document(&top, top_type.as_deref())? {
                Document::Manifest(_) => (top.clone(), top_digest.clone(), top_type, None),
                Document::Index(index) => {
                    let chosen = manifest::select_platform(&index, &manifest::node_platform())?;
                    let (bytes, media_type) = self
                        .fetch_document(&repo, &chosen.digest.to_string())
                        .await?;
                    let actual = Digest::of(&bytes);
                    if actual != chosen.digest {
                        return Err(Error::Content(super::content::Error::Digest {
                            expected: chosen.digest.clone(),
                            actual,
                        }));
                    }
                    (bytes, actual, media_type, Some(top_digest.clone()))
                }
            };
        let Document::Manifest(manifest) =
            manifest::parse_document(&manifest_bytes, manifest_type.as_deref())?
        else {
            return Err(Error::Invalid {
                what: format!("{reference}"),
                message: "an index whose entry is another index".into(),
            });
        };

        manifest::check_layer_count(manifest.layers.len(), self.config.max_layers)?;
        // Everything this image is made of stays until it is recorded.
        let mut leased = vec![manifest_digest.clone(), manifest.config.digest.clone()];
        leased.extend(index.clone());
        leased.extend(manifest.layers.iter().map(|l| l.digest.clone()));
        lease.hold(leased.clone()).await;
        let config_bytes = self.fetch_config(&repo, &manifest.config).await?;
        let config = manifest::parse_config(&config_bytes)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::Invalid {
                what: format!("image config {}", manifest.config.digest),
                message: format!(
                    "{} diff_ids for {} layers",
                    config.rootfs.diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        leased.extend(config.rootfs.diff_ids.iter().cloned());
        lease.hold(leased).await;
        report(
            &progress,
            Progress::Resolved {
                manifest: manifest_digest.clone(),
                layers: manifest
                    .layers
                    .iter()
                    .map(|l| (l.digest.clone(), l.size))
                    .collect(),
            },
        );

        let permits = Arc::new(Semaphore::new(self.config.max_concurrent_downloads));
        let mut tasks = tokio::task::JoinSet::new();
        for (desc, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let (store, repo, permits, progress) = (
                self.clone(),
                repo.clone(),
                permits.clone(),
                progress.clone(),
            );
            let (desc, diff_id) = (desc.clone(), diff_id.clone());
            tasks.spawn(async move {
                store
                    .ensure_layer(&repo, &desc, &diff_id, &permits, &progress)
                    .await
            });
        }
        while let Some(result) = tasks.join_next().await {
            let result = result.map_err(|e| Error::Internal(format!("layer task failed: {e}")))?;
            if let Err(e) = result {
                // Dropping the set cancels the other downloads; their partial files go with them.
                tasks.abort_all();
                return Err(e);
            }
        }

        self.content.write(&manifest_digest, &manifest_bytes)?;
        if let Some(index) = &index {
            self.content.write(index, &top)?;
        }
        let record = ImageRecord {
            id: manifest.config.digest.clone(),
            manifest: manifest_digest,
            manifest_media_type: manifest
                .media_type
                .clone()
                .unwrap_or_else(|| manifest::OCI_MANIFEST.to_string()),
            index,
            tags: reference.tagged().into_iter().collect(),
            digests: [reference.with_digest(&top_digest)].into_iter().collect(),
            layers: manifest
                .layers
                .iter()
                .zip(&config.rootfs.diff_ids)
                .map(|(l, d)| LayerRef {
                    digest: l.digest.clone(),
                    diff_id: d.clone(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                })
                .collect(),
            size: manifest_bytes.len() as u64
                + manifest.config.size
                + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            user: config
                .config
                .as_ref()
                .and_then(|c| c.user.clone())
                .unwrap_or_default(),
            stored_at: crate::clock::now_nanos(),
        };
        self.content.sync()?;
        self.layers.sync()?;
        crate::failpoint::hit("pull.recording");
        let mut records = self.records();
        records.update(|all| record_new(all, record))?;
        records
            .find(&reference.with_digest(&top_digest))
            .cloned()
            .ok_or_else(|| Error::Internal("the pulled image vanished".into()))
    }

    /// Fetches a manifest or index (capped in size) and its media type.
    async fn fetch_document(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let what = format!("manifest {}:{reference}", repo.name());
        let resp = repo.manifest(reference, manifest::ACCEPT).await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = self
            .read_capped(resp, &what, manifest::MAX_DOCUMENT)
            .await?;
        Ok((bytes, media_type))
    }

    /// The config blob, from the store or the registry (verified, then stored).
    async fn fetch_config(&self, repo: &Repository, desc: &Descriptor) -> Result<Vec<u8>> {
        if self.content.has(&desc.digest) {
            return Ok(self.content.read(&desc.digest, manifest::MAX_DOCUMENT)?);
        }
        if desc.size > manifest::MAX_DOCUMENT {
            return Err(Error::Content(super::content::Error::TooLarge {
                digest: desc.digest.clone(),
                limit: manifest::MAX_DOCUMENT,
            }));
        }
        let what = format!("config {}", desc.digest);
        let resp = repo.blob(&desc.digest).await?;
        let bytes = self
            .read_capped(resp, &what, manifest::MAX_DOCUMENT)
            .await?;
        self.content.write(&desc.digest, &bytes)?;
        Ok(bytes)
    }

    async fn read_capped(
        &self,
        mut resp: reqwest::Response,
        what: &str,
        limit: u64,
    ) -> Result<Vec<u8>> {
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(Error::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
        // Each piece must come within the progress timeout, and the whole document within
        // a few of them: a registry trickling a byte now and then does not hold a pull.
        let secs = self.config.progress_timeout_secs.max(1) * DOCUMENT_TIMEOUTS;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut body = Vec::new();
        loop {
            let chunk = tokio::time::timeout_at(deadline, self.next_chunk(&mut resp, what))
                .await
                .map_err(|_| Error::Download {
                    what: what.to_string(),
                    message: format!("sent too slowly: not whole after {secs} s"),
                })??;
            let Some(chunk) = chunk else {
                break;
            };
            body.extend_from_slice(&chunk);
            if body.len() as u64 > limit {
                return Err(Error::TooLarge {
                    what: what.to_string(),
                    limit,
                });
            }
        }
        Ok(body)
    }

    /// The next piece of a body, or a failure if none arrives within the progress timeout.
    async fn next_chunk(&self, resp: &mut reqwest::Response, what: &str) -> Result<Option<Bytes>> {
        let secs = self.config.progress_timeout_secs;
        match tokio::time::timeout(Duration::from_secs(secs), resp.chunk()).await {
            Err(_) => Err(Error::Stalled {
                what: what.to_string(),
                secs,
            }),
            Ok(Err(e)) => Err(Error::Download {
                what: what.to_string(),
                message: e.to_string(),
            }),
            Ok(Ok(chunk)) => Ok(chunk),
        }
    }

    fn blob_lock(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        map.entry(digest.clone()).or_default().clone()
    }

    /// Makes sure the layer's blob is in the content store and its files in the layer store,
    /// downloading at most once however many pulls want it at the same time.
    async fn ensure_layer(
        self: &Arc<Self>,
        repo: &Arc<Repository>,
        desc: &Descriptor,
        diff_id: &Digest,
        permits: &Semaphore,
        progress: &Option<ProgressTx>,
    ) -> Result<()> {
        let state = |state, downloaded| {
            Progress::Layer(LayerProgress {
                digest: desc.digest.clone(),
                size: desc.size,
                downloaded,
                state,
            })
        };
        report(progress, state(LayerState::Waiting, 0));
        let lock = self.blob_lock(&desc.digest);
        let _only_one = lock.lock().await;
        let have_files = self.layers.has(diff_id);
        if have_files && self.content.has(&desc.digest) {
            report(progress, state(LayerState::Exists, desc.size));
            return Ok(());
        }
        let _permit = permits
            .acquire()
            .await
            .map_err(|_| Error::Internal("download slots closed".into()))?;
        with_retries(&format!("download of layer {}", desc.digest), || {
            self.download_layer(repo, desc, diff_id, !have_files, progress)
        })
        .await?;
        report(progress, state(LayerState::Done, desc.size));
        Ok(())
    }

    async fn download_layer(
        self: &Arc<Self>,
        repo: &Repository,
        desc: &Descriptor,
        diff_id: &Digest,
        unpack: bool,
        progress: &Option<ProgressTx>,
    ) -> Result<()> {
        let compression = Compression::of_layer(&desc.media_type)?;
        let what = format!("layer {}", desc.digest);
        let mut resp = repo.blob(&desc.digest).await?;
        let (tx, rx) = mpsc::channel::<std::result::Result<Bytes, String>>(64);
        let worker = {
            let (store, desc, diff_id) = (self.clone(), desc.clone(), diff_id.clone());
            tokio::task::spawn_blocking(move || {
                store.store_layer(rx, &desc, &diff_id, compression, unpack)
            })
        };
        let mut downloaded = 0u64;
        let mut last_report = Instant::now();
        let pumped: Result<()> = async {
            while let Some(chunk) = self.next_chunk(&mut resp, &what).await? {
                downloaded += chunk.len() as u64;
                crate::metrics::PULLED_BYTES
                    .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if tx.send(Ok(chunk)).await.is_err() {
                    break; // the worker stopped; its error says why
                }
                if last_report.elapsed() >= PROGRESS_EVERY {
                    last_report = Instant::now();
                    report(
                        progress,
                        Progress::Layer(LayerProgress {
                            digest: desc.digest.clone(),
                            size: desc.size,
                            downloaded,
                            state: LayerState::Downloading,
                        }),
                    );
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = &pumped {
            let _ = tx.send(Err(e.to_string())).await;
        }
        drop(tx);
        let stored = worker
            .await
            .map_err(|e| Error::Internal(format!("layer worker failed: {e}")))?;
        pumped.and(stored)
    }

    /// The blocking half of a layer download: tee the compressed bytes into the content
    /// store's ingest and decompress them on this thread, unpack on a second one (so
    /// decompression and file writes overlap), then check both digests before publishing.
    fn store_layer(
        &self,
        rx: mpsc::Receiver<std::result::Result<Bytes, String>>,
        desc: &Descriptor,
        diff_id: &Digest,
        compression: Compression,
        unpack: bool,
    ) -> Result<()> {
        let mut ingest = self.content.ingest(desc.digest.clone(), Some(desc.size))?;
        let mut source = ChannelSource {
            rx,
            ingest: &mut ingest,
            limit: desc.size,
            pending: Bytes::new(),
        };
        let download_err = |e: io::Error| Error::Download {
            what: format!("layer {}", desc.digest),
            message: e.to_string(),
        };
        let pending_layer = if unpack {
            let pending = self.layers.begin(diff_id)?;
            let limits = unpack::Limits {
                max_entries: self.config.max_layer_entries,
                max_bytes: self.config.max_layer_size(desc.size),
            };
            let (tx, pipe) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(PIPE_DEPTH);
            let (decompressed, unpacked) = std::thread::scope(|scope| {
                let root = pending.root();
                let unpacker =
                    scope.spawn(move || unpack::unpack(ChunkReader::new(pipe), root, limits));
                let decompressed = decompress(&mut source, compression, &tx);
                drop(tx);
                let unpacked = unpacker
                    .join()
                    .map_err(|_| Error::Internal("the unpack thread panicked".into()));
                (decompressed, unpacked)
            });
            let unpacked = unpacked?;
            // An unpack error explains a decompressor that stopped early, not the reverse,
            // unless the download itself failed.
            let unpacked = match (decompressed, unpacked) {
                (Err(e), _)
                    if e.kind() == io::ErrorKind::Other
                        && e.get_ref().is_some_and(|i| i.is::<DownloadAborted>()) =>
                {
                    return Err(download_err(e));
                }
                (_, Err(e)) => {
                    return Err(Error::Unpack {
                        digest: desc.digest.clone(),
                        source: e,
                    });
                }
                (Err(e), Ok(_)) => {
                    return Err(Error::Unpack {
                        digest: desc.digest.clone(),
                        source: unpack::Error::Read(e),
                    });
                }
                (Ok(()), Ok(u)) => u,
            };
            Some((pending, checked_layer(&desc.digest, diff_id, unpacked)?))
        } else {
            None
        };
        // Whatever the decompressor left unread still belongs to the blob and its digest.
        io::copy(&mut source, &mut io::sink()).map_err(download_err)?;
        ingest.commit()?;
        if let Some((pending, meta)) = pending_layer {
            pending.commit(&meta)?;
        }
        Ok(())
    }
}

/// Decompressed buffers in flight between the two threads of a layer.
const PIPE_DEPTH: usize = 16;
const PIPE_CHUNK: usize = 256 << 10;

/// Reads `source` through the decompressor to its end, sending the output down `tx`.
/// Stops quietly if the receiving side has gone (it failed and says why).
fn decompress(
    source: &mut impl Read,
    compression: Compression,
    tx: &std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
) -> io::Result<()> {
    let mut reader = compression.reader(source)?;
    loop {
        let mut buf = vec![0u8; PIPE_CHUNK];
        let mut filled = 0;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // io::Error is not Clone: the unpacker gets the errno, or else the kind.
                    let copy = match e.raw_os_error() {
                        Some(errno) => io::Error::from_raw_os_error(errno),
                        None => io::Error::new(e.kind(), e.to_string()),
                    };
                    let _ = tx.send(Err(copy));
                    return Err(e);
                }
            }
        }
        if filled == 0 {
            return Ok(());
        }
        buf.truncate(filled);
        if tx.send(Ok(buf)).is_err() {
            return Ok(());
        }
    }
}

/// Marks the error a reader returns when the download behind it failed.
#[derive(Debug)]
struct DownloadAborted(String);

impl std::fmt::Display for DownloadAborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DownloadAborted {}

/// Reads the downloaded chunks on the blocking side, writing each to the ingest as it
/// passes.
struct ChannelSource<'a, 'b> {
    rx: mpsc::Receiver<std::result::Result<Bytes, String>>,
    ingest: &'a mut Ingest<'b>,
    limit: u64,
    pending: Bytes,
}

impl Read for ChannelSource<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(message)) => return Err(io::Error::other(DownloadAborted(message))),
                Some(Ok(chunk)) => {
                    io::Write::write_all(self.ingest, &chunk)?;
                    crate::failpoint::hit("pull.downloading");
                    if self.ingest.written() > self.limit {
                        return Err(io::Error::other(format!(
                            "the registry sent more than the {} bytes the manifest gives",
                            self.limit
                        )));
                    }
                    self.pending = chunk;
                }
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

/// Adds a pulled or committed image to the records: a tag moves to the new image; an image
/// already known by its id gains the new names.
pub(super) fn record_new(all: &mut Vec<ImageRecord>, new: ImageRecord) {
    for image in all.iter_mut().filter(|i| i.id != new.id) {
        for tag in &new.tags {
            image.tags.remove(tag);
        }
    }
    match all.iter_mut().find(|i| i.id == new.id) {
        Some(existing) => {
            existing.tags.extend(new.tags);
            existing.digests.extend(new.digests);
        }
        None => all.push(new),
    }
}
