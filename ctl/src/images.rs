//! Image verbs: pull (with progress bars when the endpoint is strata), images, inspecti,
//! rmi, imagefsinfo.

use std::{collections::HashMap, io::IsTerminal as _};

use strata_api::{
    cri::{
        self, AuthConfig, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest,
        ListContainersRequest, ListImagesRequest, PullImageRequest, RemoveImageRequest,
    },
    ext::{self, pull_image_progress_response::Event},
};

use crate::{
    Client,
    output::{self, Format, Table},
};

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

/// Builds the CRI auth config from `--creds user:pass`, `--auth base64` or a token.
pub fn auth(
    creds: Option<&str>,
    auth: Option<&str>,
    registry_token: Option<&str>,
) -> anyhow::Result<Option<AuthConfig>> {
    let mut config = AuthConfig::default();
    if let Some(creds) = creds {
        let (user, pass) = creds
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--creds must be USER:PASSWORD"))?;
        config.username = user.to_string();
        config.password = pass.to_string();
    }
    if let Some(auth) = auth {
        config.auth = auth.to_string();
    }
    if let Some(token) = registry_token {
        config.registry_token = token.to_string();
    }
    Ok((config != AuthConfig::default()).then_some(config))
}

pub async fn pull(client: &Client, image: &str, auth: Option<AuthConfig>) -> anyhow::Result<()> {
    let stream = client
        .ext()
        .pull_image_progress(ext::PullImageProgressRequest {
            image: spec(image),
            auth: auth.clone(),
        })
        .await;
    let image_ref = match stream {
        Ok(stream) => follow_progress(stream.into_inner()).await?,
        // Not strata: plain CRI, no progress.
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            client
                .call(
                    "pull",
                    client.images().pull_image(PullImageRequest {
                        image: spec(image),
                        auth,
                        sandbox_config: None,
                    }),
                )
                .await?
                .image_ref
        }
        Err(status) => return Err(anyhow::Error::new(status).context("pull")),
    };
    println!("Image is up to date for {image_ref}");
    Ok(())
}

/// Draws one bar per layer (on a terminal) and returns the pulled image's id.
async fn follow_progress(
    mut stream: tonic::Streaming<ext::PullImageProgressResponse>,
) -> anyhow::Result<String> {
    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    let multi = MultiProgress::with_draw_target(if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style =
        ProgressStyle::with_template("{prefix:.bold} {bar:30} {bytes:>10}/{total_bytes:<10} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    loop {
        let message = stream
            .message()
            .await
            .map_err(|s| anyhow::Error::new(s).context("pull"))?;
        let Some(event) = message.and_then(|m| m.event) else {
            anyhow::bail!("pull: the stream ended without a result");
        };
        match event {
            Event::Resolved(resolved) => {
                for layer in resolved.layers {
                    let bar = multi.add(ProgressBar::new(layer.size).with_style(style.clone()));
                    let short = layer
                        .digest
                        .trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect::<String>();
                    bar.set_prefix(short);
                    bar.set_message("waiting");
                    bars.insert(layer.digest, bar);
                }
            }
            Event::Layer(layer) => {
                if let Some(bar) = bars.get(&layer.digest) {
                    bar.set_position(layer.downloaded);
                    match ext::layer_progress::State::try_from(layer.state) {
                        Ok(ext::layer_progress::State::Downloading) => {
                            bar.set_message("downloading")
                        }
                        Ok(ext::layer_progress::State::Exists) => {
                            bar.finish_with_message("already here")
                        }
                        Ok(ext::layer_progress::State::Done) => bar.finish_with_message("done"),
                        _ => {}
                    }
                }
            }
            Event::Done(done) => return Ok(done.image_ref),
        }
    }
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(13).collect()
}

pub async fn list(
    client: &Client,
    format: Format,
    filter: Option<&str>,
    quiet: bool,
    digests: bool,
) -> anyhow::Result<()> {
    let response = client
        .call(
            "images",
            client.images().list_images(ListImagesRequest {
                filter: filter.map(|f| ImageFilter { image: spec(f) }),
            }),
        )
        .await?;
    if quiet {
        for image in &response.images {
            println!("{}", image.id);
        }
        return Ok(());
    }
    if format != Format::Table {
        return output::print_structured(format, &response);
    }
    let mut header = vec!["IMAGE", "TAG"];
    if digests {
        header.push("DIGEST");
    }
    header.extend(["IMAGE ID", "SIZE"]);
    let mut table = Table::new(header);
    for image in &response.images {
        let digest = image
            .repo_digests
            .first()
            .and_then(|d| d.split_once('@'))
            .map(|(_, d)| short_id(d))
            .unwrap_or_else(|| "<none>".into());
        let mut names: Vec<(String, String)> = image
            .repo_tags
            .iter()
            .map(|t| match t.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
                _ => (t.clone(), "<none>".into()),
            })
            .collect();
        if names.is_empty() {
            let repo = image
                .repo_digests
                .first()
                .and_then(|d| d.split_once('@'))
                .map_or("<none>".to_string(), |(r, _)| r.to_string());
            names.push((repo, "<none>".into()));
        }
        for (repo, tag) in names {
            let mut row = vec![repo, tag];
            if digests {
                row.push(digest.clone());
            }
            row.extend([short_id(&image.id), output::human_size(image.size)]);
            table.row(row);
        }
    }
    print!("{}", table.render());
    Ok(())
}

pub async fn inspect(client: &Client, format: Format, images: &[String]) -> anyhow::Result<()> {
    let mut docs = Vec::new();
    for image in images {
        let status = client
            .call(
                "inspecti",
                client.images().image_status(ImageStatusRequest {
                    image: spec(image),
                    verbose: true,
                }),
            )
            .await?;
        let Some(found) = status.image else {
            anyhow::bail!("inspecti: no such image {image:?}");
        };
        docs.push(output::inspection(&found, status.info)?);
    }
    output::print_inspections(format, docs)
}

pub async fn remove(
    client: &Client,
    images: &[String],
    all: bool,
    prune: bool,
) -> anyhow::Result<()> {
    let mut targets: Vec<String> = images.to_vec();
    if all || prune {
        let listed = client
            .call(
                "rmi",
                client.images().list_images(ListImagesRequest::default()),
            )
            .await?;
        let in_use = if prune {
            images_in_use(client).await?
        } else {
            Default::default()
        };
        targets.extend(
            listed
                .images
                .into_iter()
                .filter(|i| !in_use.contains(&i.id))
                .map(|i| i.id),
        );
    }
    if targets.is_empty() && !(all || prune) {
        anyhow::bail!("rmi: name at least one image, or use --all or --prune");
    }
    for target in targets {
        let status = client
            .call(
                "rmi",
                client.images().image_status(ImageStatusRequest {
                    image: spec(&target),
                    verbose: false,
                }),
            )
            .await?;
        let Some(image) = status.image else {
            anyhow::bail!("rmi: no such image {target:?}");
        };
        client
            .call(
                "rmi",
                client.images().remove_image(RemoveImageRequest {
                    image: spec(&image.id),
                }),
            )
            .await?;
        for name in image.repo_tags.iter().chain(&image.repo_digests) {
            println!("Deleted: {name}");
        }
        if image.repo_tags.is_empty() && image.repo_digests.is_empty() {
            println!("Deleted: {}", image.id);
        }
    }
    Ok(())
}

/// Image ids that containers refer to. A runtime without container support has none.
async fn images_in_use(client: &Client) -> anyhow::Result<std::collections::HashSet<String>> {
    match client
        .runtime()
        .list_containers(ListContainersRequest::default())
        .await
    {
        Ok(r) => Ok(r
            .into_inner()
            .containers
            .into_iter()
            .map(|c: cri::Container| {
                if c.image_id.is_empty() {
                    c.image_ref
                } else {
                    c.image_id
                }
            })
            .collect()),
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(Default::default()),
        Err(s) => Err(anyhow::Error::new(s).context("rmi: listing containers")),
    }
}

pub async fn fs_info(client: &Client, format: Format) -> anyhow::Result<()> {
    let info = client
        .call(
            "imagefsinfo",
            client.images().image_fs_info(ImageFsInfoRequest {}),
        )
        .await?;
    if format != Format::Table {
        return output::print_structured(format, &info);
    }
    let mut table = Table::new(["KIND", "MOUNTPOINT", "USED", "INODES"]);
    for (kind, list) in [
        ("image", &info.image_filesystems),
        ("container", &info.container_filesystems),
    ] {
        for fs in list {
            table.row([
                kind.to_string(),
                fs.fs_id
                    .as_ref()
                    .map(|f| f.mountpoint.clone())
                    .unwrap_or_default(),
                output::human_size(fs.used_bytes.as_ref().map_or(0, |v| v.value)),
                fs.inodes_used.as_ref().map_or(0, |v| v.value).to_string(),
            ]);
        }
    }
    print!("{}", table.render());
    Ok(())
}

pub async fn tag(client: &Client, source: &str, target: &str) -> anyhow::Result<()> {
    let response = client
        .call(
            "tag",
            client.ext().tag_image(ext::TagImageRequest {
                source: source.to_string(),
                target: target.to_string(),
            }),
        )
        .await?;
    println!("{} {}", response.tag, response.image_id);
    Ok(())
}

pub async fn history(client: &Client, format: Format, image: &str) -> anyhow::Result<()> {
    let response = client
        .call(
            "history",
            client.ext().image_history(ext::ImageHistoryRequest {
                image: image.to_string(),
            }),
        )
        .await?;
    if format != Format::Table {
        return output::print_structured(format, &response);
    }
    let mut table = Table::new(["LAYER", "CREATED", "CREATED BY", "SIZE", "SHARED BY"]);
    for e in &response.entries {
        let layer = if e.empty_layer {
            "<empty>".to_string()
        } else {
            short_id(&e.layer_digest)
        };
        let created_by: String = e.created_by.chars().take(45).collect();
        table.row([
            layer,
            e.created.clone(),
            created_by,
            output::human_size(e.unpacked_size),
            if e.empty_layer {
                String::new()
            } else {
                e.shared_by.to_string()
            },
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

pub async fn df(client: &Client, format: Format) -> anyhow::Result<()> {
    let usage = client
        .call("df", client.ext().disk_usage(ext::DiskUsageRequest {}))
        .await?;
    if format != Format::Table {
        return output::print_structured(format, &usage);
    }
    let mut table = Table::new(["TYPE", "COUNT", "ON DISK"]);
    table.row([
        "layers".to_string(),
        usage.layers.to_string(),
        output::human_size(usage.layers_bytes),
    ]);
    table.row([
        "blobs".to_string(),
        usage.images.to_string(),
        output::human_size(usage.blobs_bytes),
    ]);
    table.row([
        "containers (rw)".to_string(),
        usage.containers.to_string(),
        output::human_size(usage.containers_bytes),
    ]);
    print!("{}", table.render());
    println!(
        "sharing: the images add up to {} unpacked; their layers take {} on disk",
        output::human_size(usage.images_unshared_bytes),
        output::human_size(usage.layers_bytes)
    );
    Ok(())
}

pub async fn commit(
    client: &Client,
    container: &str,
    reference: &str,
    message: Option<String>,
    author: Option<String>,
    pause: bool,
) -> anyhow::Result<()> {
    let mut ext = client.ext();
    // A commit reads the whole layer: no per-call deadline.
    let response = ext
        .commit_container(ext::CommitContainerRequest {
            container_id: container.to_string(),
            reference: reference.to_string(),
            message: message.unwrap_or_default(),
            author: author.unwrap_or_default(),
            pause,
        })
        .await
        .map_err(|s| anyhow::Error::new(s).context("commit"))?
        .into_inner();
    println!("{}", response.image_id);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_print_like_crictl() {
        assert_eq!(crate::output::human_size(999), "999B");
        assert_eq!(crate::output::human_size(1_000), "1kB");
        assert_eq!(crate::output::human_size(1_234_567), "1.235MB");
    }
}
