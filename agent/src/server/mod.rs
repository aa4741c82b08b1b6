//! The gRPC face of the agent: one thin handler per RPC. tonic's types live here and
//! nowhere below.

pub mod authority;
pub mod convert;
mod deadline;
pub mod events;
mod ext;
mod image;
pub mod listener;
pub mod metrics;
pub mod mtls;
mod runtime;
mod status;
pub mod streaming;

use std::sync::Arc;

use strata_api::{
    cri::{image_service_server::ImageServiceServer, runtime_service_server::RuntimeServiceServer},
    ext::images_server::ImagesServer,
};
use tonic::transport::server::Router;

/// The router of every listener: each call is judged (remote callers), held to its
/// caller's deadline and counted first.
pub type Routes =
    Router<tower::layer::util::Stack<metrics::CallsLayer, tower::layer::util::Identity>>;

use crate::config::Config;

/// CRI clients (the kubelet, crictl) accept messages up to 16 MiB; so do we.
const MAX_MESSAGE: usize = strata_api::MAX_MESSAGE_SIZE;

/// A server stream of messages, as the RPCs that stream return it.
pub(crate) type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>>;

/// How many items one message of a Stream* list call carries: each message stays well
/// under the 16 MiB limit, and the list as a whole has none.
const STREAM_CHUNK: usize = 500;

/// A list as the Stream* calls send it: `wrap`ped chunks, never an empty message.
pub(crate) fn chunked<T: Clone, M: Send + 'static>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> M,
) -> BoxStream<M> {
    let messages: Vec<Result<M, tonic::Status>> = items
        .chunks(STREAM_CHUNK)
        .map(|chunk| Ok(wrap(chunk.to_vec())))
        .collect();
    Box::pin(tokio_stream::iter(messages))
}

/// Everything the handlers share.
pub struct Context {
    pub config: Config,
    pub images: Arc<crate::image::ImageStore>,
    pub runtime: Arc<crate::runtime::Runtime>,
    /// Issues the URLs of Exec (and serves them).
    pub streaming: Arc<streaming::Server>,
    /// Container events for `GetContainerEvents`.
    pub events: events::Events,
}

/// Builds the router with every service the agent offers on its socket.
pub async fn router(ctx: Arc<Context>) -> Routes {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RuntimeServiceServer<runtime::Runtime>>()
        .await;
    health
        .set_serving::<ImageServiceServer<image::Images>>()
        .await;

    tonic::transport::Server::builder()
        .layer(metrics::CallsLayer)
        .add_service(health_service)
        .add_service(
            RuntimeServiceServer::new(runtime::Runtime::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImageServiceServer::new(image::Images::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImagesServer::new(image::Images::new(ctx)).max_decoding_message_size(MAX_MESSAGE),
        )
}
