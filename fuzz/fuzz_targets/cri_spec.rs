//! CRI configs as a client may send them (any protobuf) turned into the runtime's specs:
//! refused with a status, or converted, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strata_agent::server::convert::{container::container_spec, pod::pod_spec};
use strata_api::cri;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, message)) = data.split_first() else {
        return;
    };
    if kind & 1 == 0 {
        if let Ok(config) = cri::ContainerConfig::decode(message) {
            let _ = container_spec(config);
        }
    } else if let Ok(config) = cri::PodSandboxConfig::decode(message) {
        let _ = pod_spec(config, String::new());
    }
});
