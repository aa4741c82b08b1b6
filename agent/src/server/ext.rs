//! strata's image extension (`strata.v1.Images`): pull and push with progress, commit,
//! tag, history, disk usage, import and export.

use std::io::{self, Write};

use strata_api::ext::{self, images_server::Images as ExtImages};
use tonic::{Request, Response, Status, Streaming};

use super::{
    BoxStream,
    convert::image::{
        commit_changes, credentials, image_name, pull_done, pull_message, push_done, push_message,
    },
    image::Images,
};
use crate::image::chunks::ChunkReader;

type ProgressStream = BoxStream<ext::PullImageProgressResponse>;

/// Bytes of an archive per message to the client.
const EXPORT_CHUNK: usize = 1 << 20;

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
                // The client has gone: the transfer stops (a pull's leftovers are collected).
                () = out_tx.closed() => return,
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

    async fn check_store(
        &self,
        request: Request<ext::CheckStoreRequest>,
    ) -> Result<Response<ext::CheckStoreResponse>, Status> {
        let repair = request.into_inner().repair;
        let images = self.ctx.images.clone();
        let report = tokio::task::spawn_blocking(move || images.check(repair))
            .await
            .map_err(|e| Status::internal(format!("check task failed: {e}")))??;
        for p in &report.problems {
            tracing::warn!(kind = p.kind.name(), digest = %p.digest, detail = %p.detail, repaired = p.repaired, "store check");
        }
        Ok(Response::new(ext::CheckStoreResponse {
            images: report.images as u32,
            blobs: report.blobs as u32,
            layers: report.layers as u32,
            problems: report
                .problems
                .into_iter()
                .map(|p| ext::StoreProblem {
                    kind: p.kind.name().to_string(),
                    digest: p.digest.to_string(),
                    images: p.images,
                    detail: p.detail,
                    repaired: p.repaired,
                })
                .collect(),
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
