//! `runtime.v1.ImageService`, and strata's image extension (`strata.v1.Images`): pull and
//! push with progress, commit, tag, history, disk usage, import and export.

use std::{
    collections::HashMap,
    io::{self, Write},
    pin::Pin,
    sync::Arc,
};

use strata_api::{
    cri::{
        self, FilesystemIdentifier, FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse,
        ImageStatusRequest, ImageStatusResponse, Int64Value, ListImagesRequest, ListImagesResponse,
        PullImageRequest, PullImageResponse, RemoveImageRequest, RemoveImageResponse, UInt64Value,
        image_service_server::ImageService,
    },
    ext::{self, images_server::Images as ExtImages},
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::Context;
use crate::image::{
    BlobState, Credentials, ImageRecord, LayerState, Progress, PushProgress, PushSummary, UserPart,
    chunks::ChunkReader, registry,
};

pub struct Images {
    ctx: Arc<Context>,
}

impl Images {
    pub fn new(ctx: Arc<Context>) -> Self {
        Images { ctx }
    }
}

fn image_name(spec: Option<&cri::ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(Status::invalid_argument(
            "image spec is missing the image name",
        )),
    }
}

fn credentials(auth: Option<cri::AuthConfig>) -> Result<Credentials, Status> {
    let Some(auth) = auth else {
        return Ok(Credentials::default());
    };
    let (username, password) = if !auth.auth.is_empty() {
        registry::decode_auth(&auth.auth)
            .ok_or_else(|| Status::invalid_argument("auth is not base64 of user:password"))?
    } else {
        (auth.username, auth.password)
    };
    Ok(Credentials {
        username,
        password,
        identity_token: auth.identity_token,
        registry_token: auth.registry_token,
    })
}

/// CRI's view of an image record.
fn to_cri(image: &ImageRecord) -> cri::Image {
    // CRI wants the user part, as CreateContainer will read it. An id out of range is
    // reported as the name it is not, which a kubelet refuses for runAsNonRoot (and
    // CreateContainer refuses outright).
    let (uid, username) = match image.user_part() {
        UserPart::Id(uid) => (Some(Int64Value { value: uid.into() }), String::new()),
        UserPart::Empty => (None, String::new()),
        UserPart::OutOfRange(name) | UserPart::Name(name) => (None, name.to_string()),
    };
    cri::Image {
        id: image.id.to_string(),
        repo_tags: image.tags.iter().cloned().collect(),
        repo_digests: image.digests.iter().cloned().collect(),
        size: image.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: image.id.to_string(),
            ..Default::default()
        }),
        pinned: false,
    }
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image.as_ref())?.to_string();
        let credentials = credentials(request.auth)?;
        let images = self.ctx.images.clone();
        // The pull goes on if the caller gives up: the next caller then finds it done.
        let image = tokio::spawn(async move { images.pull(&name, credentials, None).await })
            .await
            .map_err(|e| Status::internal(format!("pull task failed: {e}")))??;
        Ok(Response::new(PullImageResponse {
            image_ref: image.id.to_string(),
        }))
    }

    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(name) => self.ctx.images.find(&name).into_iter().collect(),
            None => self.ctx.images.list(),
        };
        Ok(Response::new(ListImagesResponse {
            images: images.iter().map(to_cri).collect(),
        }))
    }

    async fn stream_images(
        &self,
        request: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<BoxStream<cri::StreamImagesResponse>>, Status> {
        let filter = request.into_inner().filter;
        let listed = self
            .list_images(Request::new(ListImagesRequest { filter }))
            .await?
            .into_inner()
            .images;
        // Each message well under the 16 MiB message limit, and never an empty one.
        let messages: Vec<Result<cri::StreamImagesResponse, Status>> = listed
            .chunks(STREAM_CHUNK)
            .map(|chunk| {
                Ok(cri::StreamImagesResponse {
                    images: chunk.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image.as_ref())?;
        let Some(image) = self.ctx.images.find(name) else {
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if request.verbose {
            let (manifest, config) = self.ctx.images.documents(&image)?;
            let parse = |bytes: &[u8]| {
                serde_json::from_slice::<serde_json::Value>(bytes)
                    .unwrap_or(serde_json::Value::Null)
            };
            let layers: Vec<serde_json::Value> = image
                .layers
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "digest": l.digest,
                        "diffID": l.diff_id,
                        "size": l.size,
                        "mediaType": l.media_type,
                        "path": self.ctx.images.layer_path(&l.diff_id),
                        "unpackedSize": self.ctx.images.layer_meta(&l.diff_id).map(|m| m.size),
                    })
                })
                .collect();
            let details = serde_json::json!({
                "imageId": image.id,
                "manifestDigest": image.manifest,
                "indexDigest": image.index,
                "manifest": parse(&manifest),
                "imageSpec": parse(&config),
                "layers": layers,
            });
            info.insert("info".to_string(), details.to_string());
        }
        Ok(Response::new(ImageStatusResponse {
            image: Some(to_cri(&image)),
            info,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image.as_ref())?;
        if let Some(image) = self.ctx.images.remove(name).await? {
            tracing::info!(image = %image.id, "removed image");
        }
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let images = self.ctx.images.clone();
        let usage = tokio::task::spawn_blocking(move || images.usage())
            .await
            .map_err(|e| Status::internal(format!("usage task failed: {e}")))?;
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![FilesystemUsage {
                timestamp: crate::clock::now_nanos(),
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: self.ctx.images.root().display().to_string(),
                }),
                used_bytes: Some(UInt64Value { value: usage.bytes }),
                inodes_used: Some(UInt64Value {
                    value: usage.inodes,
                }),
            }],
            container_filesystems: vec![],
        }))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;
type ProgressStream = BoxStream<ext::PullImageProgressResponse>;

/// Runs `work` in its own task, streaming its progress events as they come and its result
/// last (an error ends the stream with that status). A client that goes away does not
/// stop the work.
fn progress_stream<E, T, M>(
    work: impl Future<Output = crate::image::Result<T>> + Send + 'static,
    mut events: tokio::sync::mpsc::UnboundedReceiver<E>,
    event_message: fn(E) -> M,
    done_message: fn(T) -> M,
) -> BoxStream<M>
where
    E: Send + 'static,
    T: Send + 'static,
    M: Send + 'static,
{
    let (out_tx, out_rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        tokio::pin!(work);
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                Some(event) = events.recv() => {
                    let _ = out_tx.send(Ok(event_message(event))).await;
                }
            }
        };
        while let Ok(event) = events.try_recv() {
            let _ = out_tx.send(Ok(event_message(event))).await;
        }
        let _ = out_tx
            .send(result.map(done_message).map_err(Status::from))
            .await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(out_rx))
}

fn pull_done(image: ImageRecord) -> ext::PullImageProgressResponse {
    ext::PullImageProgressResponse {
        event: Some(ext::pull_image_progress_response::Event::Done(ext::Done {
            image_ref: image.id.to_string(),
        })),
    }
}

fn push_message(event: PushProgress) -> ext::PushImageResponse {
    use ext::push_image_response::Event;
    let event = match event {
        PushProgress::Resolved { manifest, blobs } => Event::Resolved(ext::PushResolved {
            manifest_digest: manifest.to_string(),
            blobs: blobs
                .into_iter()
                .map(|(digest, size)| ext::LayerDescriptor {
                    digest: digest.to_string(),
                    size,
                })
                .collect(),
        }),
        PushProgress::Blob(blob) => Event::Blob(ext::BlobProgress {
            digest: blob.digest.to_string(),
            size: blob.size,
            uploaded: blob.uploaded,
            state: match blob.state {
                BlobState::Waiting => ext::blob_progress::State::Waiting,
                BlobState::Uploading => ext::blob_progress::State::Uploading,
                BlobState::Exists => ext::blob_progress::State::Exists,
                BlobState::Mounted => ext::blob_progress::State::Mounted,
                BlobState::Done => ext::blob_progress::State::Done,
            } as i32,
        }),
    };
    ext::PushImageResponse { event: Some(event) }
}

fn push_done(summary: PushSummary) -> ext::PushImageResponse {
    ext::PushImageResponse {
        event: Some(ext::push_image_response::Event::Done(ext::PushDone {
            reference: summary.reference,
            manifest_digest: summary.manifest.to_string(),
            uploaded_bytes: summary.uploaded_bytes,
            blobs_uploaded: summary.uploaded,
            blobs_skipped: summary.skipped,
            blobs_mounted: summary.mounted,
        })),
    }
}

fn commit_changes(changes: Option<ext::ImageChanges>) -> crate::image::ConfigChanges {
    let Some(c) = changes else {
        return Default::default();
    };
    crate::image::ConfigChanges {
        env: c.env,
        cmd: c.cmd.map(|l| l.values),
        entrypoint: c.entrypoint.map(|l| l.values),
        working_dir: c.working_dir,
        user: c.user,
        labels: c.labels.into_iter().collect(),
    }
}

/// Bytes of an archive per message to the client.
const EXPORT_CHUNK: usize = 1 << 20;

/// The blocking end of an export: gathers the archive into chunks for the client. Fails
/// (and so stops the export) when the client has gone.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Result<ext::ExportImageResponse, Status>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(EXPORT_CHUNK));
        self.tx
            .blocking_send(Ok(ext::ExportImageResponse { data }))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(EXPORT_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == EXPORT_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

/// Images per message of a streamed list.
const STREAM_CHUNK: usize = 500;

fn pull_message(event: Progress) -> ext::PullImageProgressResponse {
    use ext::pull_image_progress_response::Event;
    let event = match event {
        Progress::Resolved { manifest, layers } => Event::Resolved(ext::Resolved {
            manifest_digest: manifest.to_string(),
            layers: layers
                .into_iter()
                .map(|(digest, size)| ext::LayerDescriptor {
                    digest: digest.to_string(),
                    size,
                })
                .collect(),
        }),
        Progress::Layer(layer) => Event::Layer(ext::LayerProgress {
            digest: layer.digest.to_string(),
            size: layer.size,
            downloaded: layer.downloaded,
            state: match layer.state {
                LayerState::Waiting => ext::layer_progress::State::Waiting,
                LayerState::Downloading => ext::layer_progress::State::Downloading,
                LayerState::Exists => ext::layer_progress::State::Exists,
                LayerState::Done => ext::layer_progress::State::Done,
            } as i32,
        }),
    };
    ext::PullImageProgressResponse { event: Some(event) }
}

#[tonic::async_trait]
impl ExtImages for Images {
    async fn tag_image(
        &self,
        request: Request<ext::TagImageRequest>,
    ) -> Result<Response<ext::TagImageResponse>, Status> {
        let request = request.into_inner();
        if request.source.is_empty() || request.target.is_empty() {
            return Err(Status::invalid_argument(
                "TagImage needs a source and a target",
            ));
        }
        let (image, tag) = self.ctx.images.tag(&request.source, &request.target)?;
        Ok(Response::new(ext::TagImageResponse {
            image_id: image.id.to_string(),
            tag,
        }))
    }

    async fn image_history(
        &self,
        request: Request<ext::ImageHistoryRequest>,
    ) -> Result<Response<ext::ImageHistoryResponse>, Status> {
        let name = request.into_inner().image;
        let image = self
            .ctx
            .images
            .find(&name)
            .ok_or_else(|| crate::image::Error::NotFound(name.clone()))?;
        let config = self.ctx.images.config(&image)?;
        // History entries that made a layer take the layers in order; the others have none.
        let mut layers = image.layers.iter();
        let mut entries = Vec::new();
        let history = if config.history.is_empty() {
            // No history recorded: one entry per layer.
            image
                .layers
                .iter()
                .map(|_| crate::image::manifest::History::default())
                .collect()
        } else {
            config.history.clone()
        };
        for h in history {
            let layer = if h.empty_layer { None } else { layers.next() };
            entries.push(ext::HistoryEntry {
                created: h.created.unwrap_or_default(),
                created_by: h.created_by.unwrap_or_default(),
                comment: h.comment.unwrap_or_default(),
                empty_layer: layer.is_none(),
                layer_digest: layer.map(|l| l.digest.to_string()).unwrap_or_default(),
                size: layer.map_or(0, |l| l.size),
                unpacked_size: layer
                    .and_then(|l| self.ctx.images.layer_meta(&l.diff_id))
                    .map_or(0, |m| m.size),
                shared_by: layer.map_or(0, |l| self.ctx.images.layer_users(&l.diff_id) as u32),
            });
        }
        entries.reverse();
        Ok(Response::new(ext::ImageHistoryResponse {
            image_id: image.id.to_string(),
            entries,
        }))
    }

    async fn commit_container(
        &self,
        request: Request<ext::CommitContainerRequest>,
    ) -> Result<Response<ext::CommitContainerResponse>, Status> {
        let request = request.into_inner();
        if request.reference.is_empty() {
            return Err(Status::invalid_argument(
                "CommitContainer needs a reference for the new image",
            ));
        }
        let (container, upper, frozen) = self
            .ctx
            .runtime
            .commit_source(&request.container_id, request.pause)
            .await?;
        let parent = self.ctx.images.find(&container.image_id).ok_or_else(|| {
            Status::failed_precondition(format!("the image of container {} is gone", container.id))
        })?;
        let images = self.ctx.images.clone();
        let info = crate::image::CommitInfo {
            message: request.message,
            author: request.author,
            changes: commit_changes(request.changes),
        };
        let reference = request.reference;
        let image = tokio::task::spawn_blocking(move || {
            let result = images.commit(&parent, &upper, &reference, &info);
            drop(frozen);
            result
        })
        .await
        .map_err(|e| Status::internal(format!("commit task failed: {e}")))??;
        tracing::info!(container = %container.id, image = %image.id, "committed");
        Ok(Response::new(ext::CommitContainerResponse {
            image_id: image.id.to_string(),
        }))
    }

    async fn disk_usage(
        &self,
        _request: Request<ext::DiskUsageRequest>,
    ) -> Result<Response<ext::DiskUsageResponse>, Status> {
        let images = self.ctx.images.clone();
        let (layers, layers_bytes, blobs_bytes, unshared) =
            tokio::task::spawn_blocking(move || images.disk_usage())
                .await
                .map_err(|e| Status::internal(format!("usage task failed: {e}")))??;
        let (containers, containers_bytes) = self.ctx.runtime.containers_disk_usage().await;
        Ok(Response::new(ext::DiskUsageResponse {
            images: self.ctx.images.list().len() as u32,
            layers: layers as u32,
            containers: containers as u32,
            layers_bytes,
            blobs_bytes,
            containers_bytes,
            images_unshared_bytes: unshared,
        }))
    }

    async fn pull_image_progress(
        &self,
        request: Request<ext::PullImageProgressRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let request = request.into_inner();
        let name = image_name(request.image.as_ref())?.to_string();
        let credentials = credentials(request.auth)?;
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let images = self.ctx.images.clone();
        let work = async move { images.pull(&name, credentials, Some(events_tx)).await };
        Ok(Response::new(progress_stream(
            work,
            events_rx,
            pull_message,
            pull_done,
        )))
    }

    async fn push_image(
        &self,
        request: Request<ext::PushImageRequest>,
    ) -> Result<Response<BoxStream<ext::PushImageResponse>>, Status> {
        let request = request.into_inner();
        if request.image.is_empty() {
            return Err(Status::invalid_argument("PushImage needs an image"));
        }
        // Checked here too, so that an unknown image fails the call rather than the stream.
        if self.ctx.images.find(&request.image).is_none() {
            return Err(crate::image::Error::NotFound(request.image).into());
        }
        let credentials = credentials(request.auth)?;
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let images = self.ctx.images.clone();
        let work = async move {
            images
                .push(
                    &request.image,
                    &request.reference,
                    credentials,
                    Some(events_tx),
                )
                .await
        };
        Ok(Response::new(progress_stream(
            work,
            events_rx,
            push_message,
            push_done,
        )))
    }

    async fn import_image(
        &self,
        request: Request<Streaming<ext::ImportImageRequest>>,
    ) -> Result<Response<ext::ImportImageResponse>, Status> {
        use ext::import_image_request::Part;
        let mut stream = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(8);
        let mut name = String::new();
        match stream.message().await?.and_then(|m| m.part) {
            Some(Part::Options(options)) => name = options.name,
            Some(Part::Data(data)) => {
                let _ = tx.send(Ok(data)).await;
            }
            None => return Err(Status::invalid_argument("ImportImage got no archive")),
        }
        let images = self.ctx.images.clone();
        let worker =
            tokio::task::spawn_blocking(move || images.import(ChunkReader::new(rx), &name));
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    let _ = tx
                        .send(Err(io::Error::other(format!(
                            "the client's stream failed: {}",
                            status.message()
                        ))))
                        .await;
                    break;
                }
            };
            let go_on = match message.part {
                // A failed send: the import stopped, and its error says why.
                Some(Part::Data(data)) => tx.send(Ok(data)).await.is_ok(),
                Some(Part::Options(_)) => {
                    let _ = tx
                        .send(Err(io::Error::other("options may only come first")))
                        .await;
                    false
                }
                None => true,
            };
            if !go_on {
                break;
            }
        }
        drop(tx);
        let imported = worker
            .await
            .map_err(|e| Status::internal(format!("import task failed: {e}")))??;
        for image in &imported {
            tracing::info!(image = %image.id, names = ?image.names, "imported");
        }
        Ok(Response::new(ext::ImportImageResponse {
            images: imported
                .into_iter()
                .map(|i| ext::ImportedImage {
                    image_id: i.id.to_string(),
                    names: i.names,
                })
                .collect(),
        }))
    }

    async fn export_image(
        &self,
        request: Request<ext::ExportImageRequest>,
    ) -> Result<Response<BoxStream<ext::ExportImageResponse>>, Status> {
        let names = request.into_inner().images;
        let images = self.ctx.images.export_images(&names)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let store = self.ctx.images.clone();
        tokio::task::spawn_blocking(move || {
            let sender = ChunkSender {
                tx: tx.clone(),
                buf: Vec::with_capacity(EXPORT_CHUNK),
            };
            if let Err(e) = store.export(&images, sender) {
                tracing::info!(error = %e, "export stopped");
                let _ = tx.blocking_send(Err(Status::from(e)));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
