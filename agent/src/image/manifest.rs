//! OCI and Docker schema 2 manifests, indexes (manifest lists) and image configs: the
//! parts strata reads, parsed leniently where the specs allow and strictly where it matters
//! (schema version, digests, media types).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What the agent asks registries for, best first.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Manifests, indexes and configs above this size are refused.
pub const MAX_DOCUMENT: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed {what}: {message}")]
    Malformed { what: &'static str, message: String },
    #[error("unsupported media type {0:?}")]
    MediaType(String),
    #[error("no image for {wanted} in the index (it has: {available})")]
    NoPlatform { wanted: String, available: String },
    #[error("an image of {count} layers: more than the {max} allowed (images.max_layers)")]
    TooManyLayers { count: usize, max: usize },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Refuses an image of more than `max` layers, before any of them is fetched.
pub fn check_layer_count(count: usize, max: usize) -> Result<()> {
    if count > max {
        return Err(Error::TooManyLayers { count, max });
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// A document fetched by reference: either one image or a choice of platforms.
#[derive(Debug, Clone)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// How a blob is compressed, from its first bytes.
    pub fn of_magic(head: &[u8]) -> Compression {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// The OCI media type of a layer compressed this way.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        }
    }

    /// A reader of `source` decompressed.
    pub fn reader<'a, R: std::io::Read + 'a>(
        self,
        source: R,
    ) -> std::io::Result<Box<dyn std::io::Read + 'a>> {
        Ok(match self {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(source)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(source)?),
            Compression::None => Box::new(source),
        })
    }

    pub fn of_layer(media_type: &str) -> Result<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Ok(Compression::Zstd)
            }
            other => Err(Error::MediaType(other.to_string())),
        }
    }
}

fn malformed(what: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
    move |e| Error::Malformed {
        what,
        message: e.to_string(),
    }
}

/// Parses a manifest or index. `media_type` is the registry's Content-Type; the document's
/// own `mediaType` wins when present, and the shape decides when neither says.
pub fn parse_document(bytes: &[u8], media_type: Option<&str>) -> Result<Document> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(malformed("manifest"))?;
    let kind = probe
        .media_type
        .clone()
        .or_else(|| media_type.map(|m| m.split(';').next().unwrap_or(m).trim().to_string()))
        .filter(|m| !m.is_empty() && m != "application/json" && m != "application/octet-stream");
    let is_index = match kind.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(Error::MediaType(other.to_string())),
        None if probe.manifests.is_some() => true,
        None if probe.config.is_some() => false,
        None => {
            return Err(Error::Malformed {
                what: "manifest",
                message: "neither an image manifest nor an index".into(),
            });
        }
    };
    let doc = if is_index {
        let index: Index = serde_json::from_slice(bytes).map_err(malformed("index"))?;
        check_schema(index.schema_version)?;
        Document::Index(index)
    } else {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(malformed("manifest"))?;
        check_schema(manifest.schema_version)?;
        if !matches!(
            manifest.config.media_type.as_str(),
            OCI_CONFIG | DOCKER_CONFIG
        ) {
            return Err(Error::MediaType(manifest.config.media_type.clone()));
        }
        for layer in &manifest.layers {
            Compression::of_layer(&layer.media_type)?;
        }
        Document::Manifest(manifest)
    };
    Ok(doc)
}

fn check_schema(version: u32) -> Result<()> {
    if version != 2 {
        return Err(Error::Malformed {
            what: "manifest",
            message: format!("schemaVersion {version} is not supported (only 2)"),
        });
    }
    Ok(())
}

/// The platform of this node, as OCI names it.
pub fn node_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "x86" => ("386", None),
        "arm" => ("arm", Some("v7")),
        "powerpc64" => ("ppc64le", None),
        other => (other, None),
    };
    Platform {
        architecture: architecture.to_string(),
        os: "linux".to_string(),
        variant: variant.map(str::to_string),
    }
}

/// Picks the index entry for `wanted`. A variant must match if both sides name one.
pub fn select_platform<'a>(index: &'a Index, wanted: &Platform) -> Result<&'a Descriptor> {
    let fits = |p: &Platform| {
        p.os == wanted.os
            && p.architecture == wanted.architecture
            && match (&p.variant, &wanted.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    };
    index
        .manifests
        .iter()
        .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST))
        .find(|d| d.platform.as_ref().is_some_and(fits))
        .ok_or_else(|| Error::NoPlatform {
            wanted: wanted.to_string(),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The parts of an image config the agent uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
    #[serde(default)]
    pub history: Vec<History>,
}

/// One step of an image's making, from its config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub empty_layer: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

pub fn parse_config(bytes: &[u8]) -> Result<ImageConfig> {
    let config: ImageConfig = serde_json::from_slice(bytes).map_err(malformed("image config"))?;
    if config.rootfs.kind != "layers" {
        return Err(Error::Malformed {
            what: "image config",
            message: format!("rootfs type {:?} (expected \"layers\")", config.rootfs.kind),
        });
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn manifests_and_indexes_are_told_apart() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{D1}","size":3}},
               "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{D2}","size":9}}]}}"#
        );
        match parse_document(manifest.as_bytes(), Some(OCI_MANIFEST)).unwrap() {
            Document::Manifest(m) => assert_eq!(m.layers[0].size, 9),
            other => panic!("{other:?}"),
        }
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let Document::Index(index) = parse_document(index.as_bytes(), None).unwrap() else {
            panic!("not an index");
        };
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(
            select_platform(&index, &amd64).unwrap().digest.to_string(),
            D2
        );
        let s390 = Platform {
            architecture: "s390x".into(),
            ..amd64
        };
        let err = select_platform(&index, &s390).unwrap_err().to_string();
        assert!(
            err.contains("linux/arm64/v8") && err.contains("linux/s390x"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_documents_are_refused() {
        let foreign = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{D1}","size":3}},
               "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D2}","size":9}}]}}"#
        );
        assert!(matches!(
            parse_document(foreign.as_bytes(), None),
            Err(Error::MediaType(_))
        ));
        let v1 = r#"{"schemaVersion":1,"config":{"mediaType":"x","digest":"sha256:1","size":1}}"#;
        assert!(parse_document(v1.as_bytes(), None).is_err());
        assert!(parse_document(b"{}", Some("text/html")).is_err());
        assert!(parse_document(b"not json", None).is_err());
    }
}
