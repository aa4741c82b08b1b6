//! `runtime.v1.ImageService`: pull, list, status, remove, filesystem info. The same
//! service struct serves strata's extension (`server/ext.rs`).

use std::{collections::HashMap, sync::Arc};

use strata_api::cri::{
    self, FilesystemIdentifier, FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse,
    ImageStatusRequest, ImageStatusResponse, ListImagesRequest, ListImagesResponse,
    PullImageRequest, PullImageResponse, RemoveImageRequest, RemoveImageResponse, UInt64Value,
    image_service_server::ImageService,
};
use tonic::{Request, Response, Status};

use super::{
    BoxStream, Context,
    convert::image::{credentials, image_name, to_cri},
};

pub struct Images {
    pub(super) ctx: Arc<Context>,
}

impl Images {
    pub fn new(ctx: Arc<Context>) -> Self {
        Images { ctx }
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
        // Callers of the same image share one pull, which stops once every one of them
        // has gone (given up, or past its deadline).
        let image = images.pull(&name, credentials, None).await?;
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
        Ok(Response::new(super::chunked(listed, |images| {
            cri::StreamImagesResponse { images }
        })))
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
