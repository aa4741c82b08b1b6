//! Image verbs: pull (with progress bars when the endpoint is strata), images, inspecti,
//! rmi, imagefsinfo; and strata's own: tag, history, df, commit, push, import, export.

use std::{collections::HashMap, io::IsTerminal as _};

use anyhow::Context as _;

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

/// How to authenticate to a registry, for pull and push.
#[derive(Debug, clap::Args)]
pub struct RegistryAuth {
    /// Registry credentials
    #[arg(long, value_name = "USER:PASSWORD")]
    creds: Option<String>,
    /// Registry credentials as base64 of USER:PASSWORD
    #[arg(long, value_name = "BASE64")]
    auth: Option<String>,
    /// A bearer token to send to the registry as it is
    #[arg(long, value_name = "TOKEN")]
    registry_token: Option<String>,
}

impl RegistryAuth {
    /// The CRI auth config, if any credentials were given.
    pub fn config(&self) -> anyhow::Result<Option<AuthConfig>> {
        let mut config = AuthConfig::default();
        if let Some(creds) = &self.creds {
            let (user, pass) = creds
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--creds must be USER:PASSWORD"))?;
            config.username = user.to_string();
            config.password = pass.to_string();
        }
        if let Some(auth) = &self.auth {
            config.auth.clone_from(auth);
        }
        if let Some(token) = &self.registry_token {
            config.registry_token.clone_from(token);
        }
        Ok((config != AuthConfig::default()).then_some(config))
    }
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
    use indicatif::{MultiProgress, ProgressBar};
    let multi = MultiProgress::with_draw_target(progress_target());
    let style = bar_style();
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
                    bar.set_prefix(short_digest(&layer.digest));
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

pub async fn check(client: &Client, format: Format, repair: bool) -> anyhow::Result<()> {
    let mut ext = client.ext();
    // A check reads every blob: no per-call deadline.
    let report = ext
        .check_store(ext::CheckStoreRequest { repair })
        .await
        .map_err(|s| anyhow::Error::new(s).context("check"))?
        .into_inner();
    let left = report.problems.iter().filter(|p| !p.repaired).count();
    if format != Format::Table {
        output::print_structured(format, &report)?;
    } else {
        if !report.problems.is_empty() {
            let mut table = Table::new(["PROBLEM", "DIGEST", "IMAGES", "REPAIRED", "DETAIL"]);
            for p in &report.problems {
                table.row([
                    p.kind.clone(),
                    p.digest.clone(),
                    p.images.len().to_string(),
                    if p.repaired { "yes" } else { "no" }.to_string(),
                    p.detail.clone(),
                ]);
            }
            print!("{}", table.render());
        }
        println!(
            "checked {} images, {} blobs, {} layers: {} problems, {} left",
            report.images,
            report.blobs,
            report.layers,
            report.problems.len(),
            left
        );
    }
    if left > 0 {
        anyhow::bail!(
            "check: {left} problems left{}",
            if repair { "" } else { " (--repair mends them)" }
        );
    }
    Ok(())
}

pub async fn commit(client: &Client, request: ext::CommitContainerRequest) -> anyhow::Result<()> {
    let mut ext = client.ext();
    // A commit reads the whole layer: no per-call deadline.
    let response = ext
        .commit_container(request)
        .await
        .map_err(|s| anyhow::Error::new(s).context("commit"))?
        .into_inner();
    println!("{}", response.image_id);
    Ok(())
}

/// Splits an instruction's arguments on whitespace; double quotes group (and are removed),
/// a backslash escapes the next character.
fn words(text: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.extend(chars.next());
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                current.push(c);
                in_word = true;
            }
        }
    }
    anyhow::ensure!(!quoted, "unterminated quote in {text:?}");
    if in_word {
        words.push(current);
    }
    Ok(words)
}

/// CMD/ENTRYPOINT: a JSON array (exec form) or a command line for `/bin/sh -c`.
fn command_form(args: &str) -> anyhow::Result<Vec<String>> {
    let args = args.trim();
    if args.starts_with('[') {
        return serde_json::from_str(args)
            .map_err(|e| anyhow::anyhow!("{args:?} is not a JSON array of strings: {e}"));
    }
    anyhow::ensure!(!args.is_empty(), "an empty command");
    Ok(vec!["/bin/sh".into(), "-c".into(), args.to_string()])
}

/// `KEY=value …` pairs, or the old `KEY value` form for one.
fn pairs(args: &str) -> anyhow::Result<Vec<(String, String)>> {
    let words = words(args)?;
    if let [key, ..] = words.as_slice()
        && !key.contains('=')
    {
        let value = args.trim().strip_prefix(key.as_str()).unwrap_or_default();
        return Ok(vec![(key.clone(), value.trim().to_string())]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => anyhow::bail!("{w:?} is not KEY=value"),
        })
        .collect()
}

/// `--change` instructions → the config changes of a commit.
pub fn parse_changes(changes: &[String]) -> anyhow::Result<Option<ext::ImageChanges>> {
    if changes.is_empty() {
        return Ok(None);
    }
    let mut out = ext::ImageChanges::default();
    for change in changes {
        let change = change.trim();
        let (instruction, args) = change
            .split_once(char::is_whitespace)
            .unwrap_or((change, ""));
        let args = args.trim();
        match instruction.to_ascii_uppercase().as_str() {
            "ENV" => {
                for (k, v) in pairs(args)? {
                    out.env.push(format!("{k}={v}"));
                }
            }
            "LABEL" => out.labels.extend(pairs(args)?),
            "CMD" => {
                out.cmd = Some(ext::StringList {
                    values: command_form(args)?,
                })
            }
            "ENTRYPOINT" => {
                out.entrypoint = Some(ext::StringList {
                    values: command_form(args)?,
                })
            }
            "WORKDIR" => {
                anyhow::ensure!(!args.is_empty(), "WORKDIR needs a path");
                out.working_dir = Some(args.to_string());
            }
            "USER" => {
                anyhow::ensure!(!args.is_empty(), "USER needs a user");
                out.user = Some(args.to_string());
            }
            other => anyhow::bail!(
                "--change {other:?}: only ENV, CMD, ENTRYPOINT, WORKDIR, USER and LABEL"
            ),
        }
    }
    Ok(Some(out))
}

pub async fn push(
    client: &Client,
    format: Format,
    image: &str,
    reference: Option<String>,
    auth: Option<AuthConfig>,
) -> anyhow::Result<()> {
    // A push takes as long as the uploads take: no per-call deadline; the daemon's own
    // timeouts apply.
    let stream = client
        .ext()
        .push_image(ext::PushImageRequest {
            image: image.to_string(),
            reference: reference.unwrap_or_default(),
            auth,
        })
        .await
        .map_err(|s| anyhow::Error::new(s).context("push"))?;
    let done = follow_push(stream.into_inner()).await?;
    if format != Format::Table {
        return output::print_structured(format, &done);
    }
    println!(
        "Pushed {}: {} blobs uploaded ({}), {} already there, {} mounted",
        done.reference,
        done.blobs_uploaded,
        output::human_size(done.uploaded_bytes),
        done.blobs_skipped,
        done.blobs_mounted
    );
    Ok(())
}

fn bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{prefix:.bold} {bar:30} {bytes:>10}/{total_bytes:<10} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

fn progress_target() -> indicatif::ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    }
}

fn short_digest(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

async fn follow_push(
    mut stream: tonic::Streaming<ext::PushImageResponse>,
) -> anyhow::Result<ext::PushDone> {
    use ext::{blob_progress::State, push_image_response::Event};
    use indicatif::{MultiProgress, ProgressBar};
    let multi = MultiProgress::with_draw_target(progress_target());
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    loop {
        let message = stream
            .message()
            .await
            .map_err(|s| anyhow::Error::new(s).context("push"))?;
        let Some(event) = message.and_then(|m| m.event) else {
            anyhow::bail!("push: the stream ended without a result");
        };
        match event {
            Event::Resolved(resolved) => {
                for blob in resolved.blobs {
                    let bar = multi.add(ProgressBar::new(blob.size).with_style(bar_style()));
                    bar.set_prefix(short_digest(&blob.digest));
                    bar.set_message("waiting");
                    bars.insert(blob.digest, bar);
                }
            }
            Event::Blob(blob) => {
                if let Some(bar) = bars.get(&blob.digest) {
                    bar.set_position(blob.uploaded);
                    match State::try_from(blob.state) {
                        Ok(State::Uploading) => bar.set_message("uploading"),
                        Ok(State::Exists) => bar.finish_with_message("already there"),
                        Ok(State::Mounted) => bar.finish_with_message("mounted"),
                        Ok(State::Done) => bar.finish_with_message("done"),
                        _ => {}
                    }
                }
            }
            Event::Done(done) => return Ok(done),
        }
    }
}

/// Bytes per message of an import.
const IMPORT_CHUNK: usize = 1 << 20;

pub async fn import(
    client: &Client,
    format: Format,
    file: &std::path::Path,
    name: String,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let mut input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if file.as_os_str() == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(file)
                .await
                .with_context(|| format!("opening {}", file.display()))?,
        )
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let options = ext::ImportImageRequest {
        part: Some(ext::import_image_request::Part::Options(
            ext::ImportOptions { name },
        )),
    };
    let _ = tx.send(options).await;
    let display = file.display().to_string();
    let reader = tokio::spawn(async move {
        loop {
            let mut buf = Vec::with_capacity(IMPORT_CHUNK);
            match (&mut input)
                .take(IMPORT_CHUNK as u64)
                .read_to_end(&mut buf)
                .await
            {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    let data = ext::ImportImageRequest {
                        part: Some(ext::import_image_request::Part::Data(buf)),
                    };
                    if tx.send(data).await.is_err() {
                        return Ok(()); // the call ended; its status says why
                    }
                }
                Err(e) => return Err(anyhow::anyhow!("reading {display}: {e}")),
            }
        }
    });
    let result = client
        .ext()
        .import_image(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    // A local read failure explains a failed call better than the status does.
    reader.await??;
    let response = result
        .map_err(|s| anyhow::Error::new(s).context("import"))?
        .into_inner();
    if format != Format::Table {
        return output::print_structured(format, &response);
    }
    for image in response.images {
        let names = if image.names.is_empty() {
            "<none>".to_string()
        } else {
            image.names.join(", ")
        };
        println!("Imported {names} ({})", image.image_id);
    }
    Ok(())
}

pub async fn export(
    client: &Client,
    file: &std::path::Path,
    images: Vec<String>,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = client
        .ext()
        .export_image(ext::ExportImageRequest { images })
        .await
        .map_err(|s| anyhow::Error::new(s).context("export"))?
        .into_inner();
    if file.as_os_str() == "-" {
        let mut out = tokio::io::stdout();
        while let Some(message) = stream
            .message()
            .await
            .map_err(|s| anyhow::Error::new(s).context("export"))?
        {
            out.write_all(&message.data).await?;
        }
        out.flush().await?;
        return Ok(());
    }
    // Written beside the target and renamed at the end: a failed export leaves no file.
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let written: anyhow::Result<()> = async {
        let mut out = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        while let Some(message) = stream
            .message()
            .await
            .map_err(|s| anyhow::Error::new(s).context("export"))?
        {
            out.write_all(&message.data)
                .await
                .with_context(|| format!("writing {}", partial.display()))?;
        }
        out.sync_all().await?;
        Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, file)
        .await
        .with_context(|| format!("renaming {} to {}", partial.display(), file.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_like_dockerfile_instructions() {
        let c = parse_changes(&[
            "ENV A=1 B=\"two words\"".into(),
            "ENV OLD style value".into(),
            "CMD [\"sleep\", \"1\"]".into(),
            "ENTRYPOINT echo hi".into(),
            "WORKDIR /srv".into(),
            "user 1000".into(),
            "LABEL team=node".into(),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.env, ["A=1", "B=two words", "OLD=style value"]);
        assert_eq!(c.cmd.unwrap().values, ["sleep", "1"]);
        assert_eq!(c.entrypoint.unwrap().values, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.user.as_deref(), Some("1000"));
        assert_eq!(c.labels["team"], "node");
        assert!(parse_changes(&[]).unwrap().is_none());
        for bad in [
            "RUN make",
            "CMD [1, 2]",
            "ENV =x",
            "WORKDIR",
            "ENV A=\"open",
        ] {
            assert!(parse_changes(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_print_like_crictl() {
        assert_eq!(crate::output::human_size(999), "999B");
        assert_eq!(crate::output::human_size(1_000), "1kB");
        assert_eq!(crate::output::human_size(1_234_567), "1.235MB");
    }
}
