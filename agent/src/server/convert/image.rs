//! Images: CRI and strata.v1 messages to and from the image store's types.

use strata_api::{
    cri::{self, Int64Value},
    ext,
};
use tonic::Status;

use crate::image::{
    BlobState, Credentials, ImageRecord, LayerState, Progress, PushProgress, PushSummary, UserPart,
    registry,
};

pub fn image_name(spec: Option<&cri::ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(Status::invalid_argument(
            "image spec is missing the image name",
        )),
    }
}

pub fn credentials(auth: Option<cri::AuthConfig>) -> Result<Credentials, Status> {
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
pub fn to_cri(image: &ImageRecord) -> cri::Image {
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

pub fn pull_done(image: ImageRecord) -> ext::PullImageProgressResponse {
    ext::PullImageProgressResponse {
        event: Some(ext::pull_image_progress_response::Event::Done(ext::Done {
            image_ref: image.id.to_string(),
        })),
    }
}

pub fn push_message(event: PushProgress) -> ext::PushImageResponse {
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

pub fn push_done(summary: PushSummary) -> ext::PushImageResponse {
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

pub fn commit_changes(changes: Option<ext::ImageChanges>) -> crate::image::ConfigChanges {
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

pub fn pull_message(event: Progress) -> ext::PullImageProgressResponse {
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
