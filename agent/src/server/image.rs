//! `runtime.v1.ImageService`. Every RPC answers UNIMPLEMENTED (the generated default
//! stubs) until the image store lands.

use std::sync::Arc;

use strata_api::cri::image_service_server::ImageService;

use super::Context;

pub struct Images {
    _ctx: Arc<Context>,
}

impl Images {
    pub fn new(ctx: Arc<Context>) -> Self {
        Images { _ctx: ctx }
    }
}

#[tonic::async_trait]
impl ImageService for Images {}
