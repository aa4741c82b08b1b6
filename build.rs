//! Compiles `proto/` into Rust without a system `protoc`: protox parses the files into a
//! descriptor set, tonic-prost-build generates messages, clients and servers from it, and
//! pbjson-build adds protobuf-JSON serde impls (what `-o json` prints and crictl's config
//! files parse into).

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTOS: &[&str] = &["proto/runtime/v1/api.proto", "proto/strata/v1/strata.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out.join("descriptors.bin");
    fs::write(&descriptor_path, fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // A method without a handler answers UNIMPLEMENTED instead of failing to compile.
        .generate_default_stubs(true)
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&fs::read(&descriptor_path)?)?
        // Like crictl's output: every field, also those at their default (state 0 is READY).
        .emit_fields()
        .build(&[".runtime.v1", ".strata.v1"])?;
    Ok(())
}
