//! Pushing an image: for each blob (the layers, then the config) ask the registry whether
//! the repository has it, mount it from another repository of the same registry that is
//! known to have it, or upload it in one streamed request; then put the manifest. The local
//! store is only read, except for the pushed name recorded at the end.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{io::AsyncReadExt, sync::Semaphore};

use super::{
    Error, ImageStore, PROGRESS_EVERY, Result,
    digest::Digest,
    records::ImageRecord,
    reference::Reference,
    registry::{Credentials, Mount, Repository},
    report, with_retries,
};

const CHUNK: usize = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    Waiting,
    Uploading,
    /// The repository had it.
    Exists,
    /// Mounted from another repository of the registry.
    Mounted,
    Done,
}

#[derive(Debug, Clone)]
pub struct BlobProgress {
    pub digest: Digest,
    pub size: u64,
    pub uploaded: u64,
    pub state: BlobState,
}

#[derive(Debug, Clone)]
pub enum PushProgress {
    Resolved {
        manifest: Digest,
        blobs: Vec<(Digest, u64)>,
    },
    Blob(BlobProgress),
}

/// How a push went.
#[derive(Debug, Clone)]
pub struct PushSummary {
    /// `registry/repository@digest`.
    pub reference: String,
    pub manifest: Digest,
    pub uploaded_bytes: u64,
    pub uploaded: u32,
    pub skipped: u32,
    pub mounted: u32,
}

type ProgressTx = tokio::sync::mpsc::UnboundedSender<PushProgress>;

/// Repositories of `registry` (other than `repository`) that local records say hold each
/// blob: every image came from, or went to, the repositories its names name.
fn mount_sources(
    images: &[ImageRecord],
    registry: &str,
    repository: &str,
) -> BTreeMap<Digest, BTreeSet<String>> {
    let mut sources: BTreeMap<Digest, BTreeSet<String>> = BTreeMap::new();
    for image in images {
        let repos: BTreeSet<String> = image
            .tags
            .iter()
            .chain(&image.digests)
            .filter_map(|name| Reference::parse(name).ok())
            .filter(|r| r.registry == registry && r.repository != repository)
            .map(|r| r.repository)
            .collect();
        if repos.is_empty() {
            continue;
        }
        let blobs = image
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .chain([image.id.clone()]);
        for blob in blobs {
            sources
                .entry(blob)
                .or_default()
                .extend(repos.iter().cloned());
        }
    }
    sources
}

#[derive(Clone, Copy)]
enum Sent {
    Existed,
    Mounted,
    Uploaded(u64),
}

impl ImageStore {
    /// Pushes the local image `name` to `target` (the image's own name when empty).
    pub async fn push(
        self: &Arc<Self>,
        name: &str,
        target: &str,
        credentials: Credentials,
        progress: Option<ProgressTx>,
    ) -> Result<PushSummary> {
        // The image's blobs stay while they are read; no lock is held while the registry
        // is waited on.
        let lease = super::Lease::new(self, false);
        let image = lease
            .hold_image(name)
            .await
            .ok_or_else(|| Error::NotFound(name.to_string()))?;
        let target = if target.is_empty() {
            default_target(name, &image)?
        } else {
            target.to_string()
        };
        let reference = Reference::parse(&target)?;
        if let Some(digest) = &reference.digest
            && *digest != image.manifest
        {
            return Err(Error::Invalid {
                what: format!("push target {target:?}"),
                message: format!("the image's manifest is {}", image.manifest),
            });
        }
        let repo = Arc::new(self.registry.repository_for_push(
            &reference.registry,
            &reference.repository,
            credentials,
        ));
        let manifest_bytes = self
            .content
            .read(&image.manifest, super::manifest::MAX_DOCUMENT)?;
        let config_size = std::fs::metadata(self.content.path(&image.id))
            .map_err(|e| Error::Internal(format!("config {}: {e}", image.id)))?
            .len();
        let mut blobs: Vec<(Digest, u64)> = image
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size))
            .collect();
        blobs.push((image.id.clone(), config_size));
        // The same layer twice in one image is sent once.
        let mut seen = BTreeSet::new();
        blobs.retain(|(d, _)| seen.insert(d.clone()));
        report(
            &progress,
            PushProgress::Resolved {
                manifest: image.manifest.clone(),
                blobs: blobs.clone(),
            },
        );
        let sources = Arc::new(mount_sources(
            &self.list(),
            &reference.registry,
            &reference.repository,
        ));

        let permits = Arc::new(Semaphore::new(self.config.max_concurrent_downloads));
        let mut tasks = tokio::task::JoinSet::new();
        for (digest, size) in blobs {
            let (store, repo, permits, progress, sources) = (
                self.clone(),
                repo.clone(),
                permits.clone(),
                progress.clone(),
                sources.clone(),
            );
            tasks.spawn(async move {
                let _permit = permits
                    .acquire()
                    .await
                    .map_err(|_| Error::Internal("upload slots closed".into()))?;
                let from = sources.get(&digest).cloned().unwrap_or_default();
                store
                    .push_blob(&repo, &digest, size, &from, &progress)
                    .await
            });
        }
        let mut summary = PushSummary {
            reference: reference.with_digest(&image.manifest),
            manifest: image.manifest.clone(),
            uploaded_bytes: 0,
            uploaded: 0,
            skipped: 0,
            mounted: 0,
        };
        while let Some(result) = tasks.join_next().await {
            let result = result.map_err(|e| Error::Internal(format!("upload task failed: {e}")))?;
            match result {
                Err(e) => {
                    tasks.abort_all();
                    return Err(e);
                }
                Ok(Sent::Existed) => summary.skipped += 1,
                Ok(Sent::Mounted) => summary.mounted += 1,
                Ok(Sent::Uploaded(n)) => {
                    summary.uploaded += 1;
                    summary.uploaded_bytes += n;
                }
            }
        }

        let reported = repo
            .put_manifest(
                &reference.manifest_ref(),
                &image.manifest_media_type,
                &manifest_bytes,
            )
            .await?;
        if let Some(reported) = reported
            && reported != image.manifest.to_string()
        {
            return Err(Error::Invalid {
                what: format!("pushing {target}"),
                message: format!(
                    "the registry stored the manifest as {reported}, not {}",
                    image.manifest
                ),
            });
        }
        summary.uploaded_bytes += manifest_bytes.len() as u64;

        // The image is now known to be in that repository too (a source for later mounts).
        let mut records = self.records();
        records.update(|all| {
            if let Some(record) = all.iter_mut().find(|i| i.id == image.id) {
                record.digests.insert(summary.reference.clone());
            }
        })?;
        Ok(summary)
    }

    /// Makes sure the repository has one blob, retrying transient failures.
    async fn push_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        size: u64,
        from: &BTreeSet<String>,
        progress: &Option<ProgressTx>,
    ) -> Result<Sent> {
        let state = |state, uploaded| {
            PushProgress::Blob(BlobProgress {
                digest: digest.clone(),
                size,
                uploaded,
                state,
            })
        };
        report(progress, state(BlobState::Waiting, 0));
        let sent = with_retries(&format!("upload of blob {digest}"), || {
            self.try_push_blob(repo, digest, size, from, progress)
        })
        .await?;
        let done = match sent {
            Sent::Existed => BlobState::Exists,
            Sent::Mounted => BlobState::Mounted,
            Sent::Uploaded(_) => BlobState::Done,
        };
        report(progress, state(done, size));
        Ok(sent)
    }

    async fn try_push_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        size: u64,
        from: &BTreeSet<String>,
        progress: &Option<ProgressTx>,
    ) -> Result<Sent> {
        if repo.has_blob(digest).await? {
            return Ok(Sent::Existed);
        }
        let mut location = None;
        for source in from {
            match repo.mount_blob(digest, source).await {
                Ok(Mount::Mounted) => return Ok(Sent::Mounted),
                Ok(Mount::Upload(session)) => {
                    location = Some(session);
                    break;
                }
                Err(e) if e.is_transient() => return Err(e.into()),
                // A source we may not read, or a registry that refuses mounts: upload.
                Err(e) => tracing::debug!(blob = %digest, error = %e, "mount refused"),
            }
        }
        let location = match location {
            Some(location) => location,
            None => repo.start_upload(digest).await?,
        };
        self.upload(repo, &location, digest, size, progress).await?;
        Ok(Sent::Uploaded(size))
    }

    /// Streams the blob file as the body of one PUT, reporting progress as it is read.
    async fn upload(
        &self,
        repo: &Repository,
        location: &str,
        digest: &Digest,
        size: u64,
        progress: &Option<ProgressTx>,
    ) -> Result<()> {
        let path = self.content.path(digest);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Error::Internal(format!("blob {digest}: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
        let sent = Arc::new(AtomicU64::new(0));
        let reader = {
            let (sent, progress, digest) = (sent.clone(), progress.clone(), digest.clone());
            tokio::spawn(async move {
                let mut last = Instant::now();
                loop {
                    let mut buf = bytes::BytesMut::with_capacity(CHUNK);
                    match file.read_buf(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            let total = sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                            crate::metrics::PUSHED_BYTES.fetch_add(n as u64, Ordering::Relaxed);
                            if tx.send(Ok(buf.freeze())).await.is_err() {
                                break;
                            }
                            if last.elapsed() >= PROGRESS_EVERY {
                                last = Instant::now();
                                report(
                                    &progress,
                                    PushProgress::Blob(BlobProgress {
                                        digest: digest.clone(),
                                        size,
                                        uploaded: total,
                                        state: BlobState::Uploading,
                                    }),
                                );
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            break;
                        }
                    }
                }
            })
        };
        let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        // Like downloads, an upload has no deadline, but fails when the registry takes no
        // byte (or, once all are sent, gives no answer) for the progress timeout.
        let secs = self.config.progress_timeout_secs;
        let put = repo.put_blob(location, digest, size, body);
        tokio::pin!(put);
        let mut last = (0u64, Instant::now());
        let result = loop {
            tokio::select! {
                result = &mut put => break result.map_err(Error::from),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let now = sent.load(Ordering::Relaxed);
                    if now != last.0 {
                        last = (now, Instant::now());
                    } else if last.1.elapsed() >= Duration::from_secs(secs) {
                        break Err(Error::Stalled {
                            what: format!("upload of blob {digest} to {}", repo.name()),
                            secs,
                        });
                    }
                }
            }
        };
        reader.abort();
        result
    }
}

/// The name to push an image under when none is given: the name it was asked by if that is
/// one of its tags, else its only tag.
fn default_target(name: &str, image: &ImageRecord) -> Result<String> {
    if let Some(tag) = Reference::parse(name).ok().and_then(|r| r.tagged())
        && image.tags.contains(&tag)
    {
        return Ok(tag);
    }
    match image.tags.len() {
        1 => Ok(image.tags.iter().next().cloned().unwrap_or_default()),
        0 => Err(Error::Invalid {
            what: format!("push of {name:?}"),
            message: "the image has no name: give the reference to push to".into(),
        }),
        _ => Err(Error::Invalid {
            what: format!("push of {name:?}"),
            message: "the image has several names: give the reference to push to".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::records::LayerRef;

    fn image(id: &str, names: &[&str], layers: &[&str]) -> ImageRecord {
        let d = |s: &str| Digest::of(s.as_bytes());
        ImageRecord {
            id: d(id),
            manifest: d(&format!("m{id}")),
            manifest_media_type: String::new(),
            index: None,
            tags: names.iter().map(|s| s.to_string()).collect(),
            digests: Default::default(),
            layers: layers
                .iter()
                .map(|l| LayerRef {
                    digest: d(l),
                    diff_id: d(l),
                    size: 1,
                    media_type: String::new(),
                })
                .collect(),
            size: 0,
            user: String::new(),
            stored_at: 0,
        }
    }

    #[test]
    fn mounts_come_from_other_repositories_of_the_same_registry() {
        let images = vec![
            image("a", &["127.0.0.1:5000/base:1"], &["l1", "l2"]),
            image("b", &["127.0.0.1:5000/app:1"], &["l1", "l3"]),
            image("c", &["other.example/base:1"], &["l4"]),
        ];
        let sources = mount_sources(&images, "127.0.0.1:5000", "app");
        let l1 = Digest::of(b"l1");
        assert_eq!(
            sources[&l1].iter().collect::<Vec<_>>(),
            vec!["base"],
            "the target repository itself is no source"
        );
        assert!(!sources.contains_key(&Digest::of(b"l3")));
        assert!(
            !sources.contains_key(&Digest::of(b"l4")),
            "another registry"
        );
        assert!(sources.contains_key(&Digest::of(b"a")), "configs mount too");
    }

    #[test]
    fn the_default_target_is_the_name_used_or_the_only_tag() {
        let one = image("a", &["127.0.0.1:5000/base:1"], &[]);
        assert_eq!(
            default_target("sha256:whatever", &one).unwrap(),
            "127.0.0.1:5000/base:1"
        );
        let two = image(
            "a",
            &["127.0.0.1:5000/base:1", "127.0.0.1:5000/base:2"],
            &[],
        );
        assert_eq!(
            default_target("127.0.0.1:5000/base:2", &two).unwrap(),
            "127.0.0.1:5000/base:2"
        );
        assert!(default_target("x", &two).is_err());
        assert!(default_target("x", &image("a", &[], &[])).is_err());
    }
}
