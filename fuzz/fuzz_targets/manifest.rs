//! Manifests, indexes and image configs, under each media type a registry may claim.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_agent::image::manifest::{self, Document};

const MEDIA_TYPES: &[Option<&str>] = &[
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("text/plain"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let media_type = MEDIA_TYPES[pick as usize % MEDIA_TYPES.len()];
    match manifest::parse_document(bytes, media_type) {
        Ok(Document::Index(index)) => {
            let _ = manifest::select_platform(&index, &manifest::node_platform());
        }
        Ok(Document::Manifest(m)) => {
            for layer in &m.layers {
                let _ = manifest::Compression::of_layer(&layer.media_type);
            }
        }
        Err(_) => {}
    }
    let _ = manifest::parse_config(bytes);
});
