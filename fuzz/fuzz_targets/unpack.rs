//! The layer unpacker on arbitrary tar streams: it may refuse them, but nothing it writes
//! lands outside the layer's directory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_agent::{
    image::unpack::{Limits, unpack},
    sys::rootdir::RootDir,
};

fuzz_target!(|data: &[u8]| {
    let base = tempfile::tempdir().expect("temp dir");
    let dest = base.path().join("layer");
    std::fs::create_dir(&dest).expect("layer dir");
    let root = RootDir::open(&dest).expect("open the layer dir");
    let limits = Limits {
        max_entries: 512,
        max_bytes: 4 << 20,
    };
    let _ = unpack(data, &root, limits);
    let beside: Vec<_> = std::fs::read_dir(base.path())
        .expect("read the base")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(beside, ["layer"], "the unpacker wrote beside the layer");
});
