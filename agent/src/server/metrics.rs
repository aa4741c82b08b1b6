//! Metrics: the Prometheus page (`[metrics] listen`, GET /metrics), the tower layer that
//! counts every gRPC call, and CRI `ListMetricDescriptors` / `ListPodSandboxMetrics` with
//! cadvisor's names, as the kubelet's CRI stats provider reads them.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use strata_api::cri;

use super::Context;
use crate::{
    metrics::Page,
    runtime::{ContainerFilter, SandboxFilter, container::ContainerState, sandbox::SandboxState},
};

/// How long a scraper may take to send its request.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the page on `listener` until the task is dropped.
pub async fn serve(ctx: Arc<Context>, listener: tokio::net::TcpListener) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, Infallible>(answer(&ctx, &request).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(REQUEST_HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

async fn answer<B>(ctx: &Context, request: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, kind: &str, body: String| {
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, kind)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if request.uri().path() != "/metrics" {
        return reply(
            http::StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".into(),
        );
    }
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        );
    }
    reply(
        http::StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        page(ctx).await,
    )
}

/// The whole page: the daemon's counters and what is read off the machine now.
pub async fn page(ctx: &Context) -> String {
    let mut page = Page::default();
    page.daemon_counters();
    let containers = ctx.runtime.containers(&ContainerFilter::default()).await;
    page.family("strata_containers", "gauge", "Containers by state.");
    for (state, name) in [
        (ContainerState::Created, "created"),
        (ContainerState::Running, "running"),
        (ContainerState::Exited, "exited"),
    ] {
        let n = containers.iter().filter(|c| c.state == state).count();
        page.sample("strata_containers", &[("state", name)], n as f64);
    }
    // A container has a monitor from its creation to its exit.
    let monitors = containers
        .iter()
        .filter(|c| c.state != ContainerState::Exited && c.monitor.is_some())
        .count();
    page.family("strata_monitors", "gauge", "Container monitors running.")
        .sample("strata_monitors", &[], monitors as f64);
    let pods = ctx.runtime.pods(&SandboxFilter::default()).await;
    page.family("strata_pods", "gauge", "Pod sandboxes by state.");
    for (state, name) in [
        (SandboxState::Ready, "ready"),
        (SandboxState::NotReady, "notready"),
    ] {
        let n = pods.iter().filter(|p| p.state == state).count();
        page.sample("strata_pods", &[("state", name)], n as f64);
    }
    let images = Arc::clone(&ctx.images);
    let store = tokio::task::spawn_blocking(move || images.disk_usage().ok())
        .await
        .ok()
        .flatten();
    if let Some((layers, layer_bytes, blob_bytes, _)) = store {
        page.family(
            "strata_layer_store_bytes",
            "gauge",
            "Bytes of unpacked layers on disk.",
        )
        .sample("strata_layer_store_bytes", &[], layer_bytes as f64)
        .family(
            "strata_content_store_bytes",
            "gauge",
            "Bytes of blobs (compressed layers, manifests, configs) on disk.",
        )
        .sample("strata_content_store_bytes", &[], blob_bytes as f64)
        .family("strata_layers", "gauge", "Unpacked layers in the store.")
        .sample("strata_layers", &[], layers as f64);
    }
    page.family(
        "strata_event_subscribers",
        "gauge",
        "Clients subscribed to container events.",
    )
    .sample(
        "strata_event_subscribers",
        &[],
        ctx.events.subscribers() as f64,
    );
    let (rss, fds) = crate::sys::process::own_usage();
    page.family(
        "strata_process_resident_memory_bytes",
        "gauge",
        "The daemon's resident memory.",
    )
    .sample("strata_process_resident_memory_bytes", &[], rss as f64)
    .family(
        "strata_process_open_fds",
        "gauge",
        "File descriptors the daemon holds open.",
    )
    .sample("strata_process_open_fds", &[], fds as f64);
    page.finish()
}

/// The front of every call: judged by [`mtls::admit`](super::mtls::admit) (remote
/// callers), then counted by method and code, with its latency (to the response's
/// headers: the whole call when unary). A call whose headers carry no `grpc-status` went
/// on to its trailers; it is counted OK (a stream that fails later is not told apart).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallsLayer;

impl<S> tower::Layer<S> for CallsLayer {
    type Service = Calls<S>;
    fn layer(&self, inner: S) -> Calls<S> {
        Calls { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Calls<S> {
    inner: S,
}

type Body = tonic::body::Body;

impl<S> tower::Service<http::Request<Body>> for Calls<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<
        Box<dyn std::future::Future<Output = std::result::Result<Self::Response, S::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = Instant::now();
        let admitted = super::mtls::admit(request.extensions().get::<super::mtls::Peer>(), &method);
        let deadline = super::deadline::of(&request);
        let call = admitted.map(|()| self.inner.call(request));
        Box::pin(async move {
            let response = match call {
                Ok(call) => match super::deadline::held_to(deadline, call).await {
                    Ok(answer) => answer?,
                    Err(expired) => expired.into_http(),
                },
                Err(refused) => refused.into_http(),
            };
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32);
            crate::metrics::call(
                label(&method, code),
                &format!("{code:?}"),
                started.elapsed(),
            );
            Ok(response)
        })
    }
}

/// The paths of the API's methods, and gRPC health's.
static METHODS: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| {
        let mut methods: std::collections::HashSet<String> =
            strata_api::rpc_paths().into_iter().collect();
        methods.extend(
            [
                "/grpc.health.v1.Health/Check",
                "/grpc.health.v1.Health/Watch",
            ]
            .map(String::from),
        );
        methods
    });

/// The method label of a call to `path` that ended with `code`: a method of the API, or
/// "other" for any path a caller made up (whatever it was told: refused, unimplemented)
/// and for methods no service answers. Callers must not mint a series per path they send.
fn label(path: &str, code: tonic::Code) -> &str {
    match code {
        tonic::Code::Unimplemented | tonic::Code::Unauthenticated => "other",
        _ if METHODS.contains(path) => path,
        _ => "other",
    }
}

/// The cadvisor metrics strata reports for containers, as (name, help, counter?).
const CONTAINER_METRICS: &[(&str, &str, bool)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        true,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        false,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        false,
    ),
    ("container_memory_rss", "Size of RSS in bytes.", false),
    (
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults).",
        true,
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        false,
    ),
];

/// The pod-level network metrics, by interface.
const NETWORK_METRICS: &[(&str, &str)] = &[
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
    ),
    (
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
    ),
    (
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
    ),
];

/// Labels of every container metric: cadvisor's id, name and image.
const LABELS: [&str; 3] = ["id", "name", "image"];

pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    let mut out: Vec<cri::MetricDescriptor> = CONTAINER_METRICS
        .iter()
        .map(|(name, help, _)| cri::MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: LABELS.iter().map(|s| s.to_string()).collect(),
        })
        .collect();
    out.extend(NETWORK_METRICS.iter().map(|(name, help)| {
        cri::MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: LABELS
                .iter()
                .chain(&["interface"])
                .map(|s| s.to_string())
                .collect(),
        }
    }));
    out
}

fn metric(name: &str, counter: bool, labels: Vec<String>, value: u64, at: i64) -> cri::Metric {
    cri::Metric {
        name: name.to_string(),
        timestamp: at,
        metric_type: if counter {
            cri::MetricType::Counter
        } else {
            cri::MetricType::Gauge
        }
        .into(),
        label_values: labels,
        value: Some(cri::UInt64Value { value }),
    }
}

/// Every Ready pod's metrics: its running containers' cgroup counters, and the pod's
/// network counters (read in its network namespace, through a process in it).
pub async fn pod_metrics(ctx: &Context) -> Vec<cri::PodSandboxMetrics> {
    let filter = SandboxFilter {
        state: Some(SandboxState::Ready),
        ..Default::default()
    };
    let mut out = Vec::new();
    for sandbox in ctx.runtime.pods(&filter).await {
        let running = ContainerFilter {
            pod_id: Some(sandbox.id.clone()),
            state: Some(ContainerState::Running),
            ..Default::default()
        };
        let containers = ctx.runtime.containers(&running).await;
        let at = crate::clock::now_nanos();
        let container_metrics = containers
            .iter()
            .map(|c| {
                let stats = ctx.runtime.container_stats(c);
                let labels = vec![c.id.clone(), c.spec.name.clone(), c.spec.image.clone()];
                let values = [
                    stats.cpu_usage_ns / 1_000_000_000,
                    stats.memory_usage,
                    stats.memory_working_set,
                    stats.memory_rss,
                    stats.page_faults,
                    stats.pids,
                ];
                cri::ContainerMetrics {
                    container_id: c.id.clone(),
                    metrics: CONTAINER_METRICS
                        .iter()
                        .zip(values)
                        .map(|((name, _, counter), v)| {
                            metric(name, *counter, labels.clone(), v, at)
                        })
                        .collect(),
                }
            })
            .collect();
        let mut metrics = Vec::new();
        let in_netns = containers.iter().find_map(|c| c.pid);
        if sandbox.spec.network != crate::runtime::sandbox::NamespaceMode::Node
            && let Some(pid) = in_netns
        {
            for iface in crate::sys::process::net_dev(pid) {
                if iface.name == "lo" {
                    continue;
                }
                let labels = vec![
                    sandbox.id.clone(),
                    sandbox.spec.name.clone(),
                    String::new(),
                    iface.name.clone(),
                ];
                let values = [
                    iface.rx_bytes,
                    iface.rx_packets,
                    iface.rx_errors,
                    iface.tx_bytes,
                    iface.tx_packets,
                    iface.tx_errors,
                ];
                metrics.extend(
                    NETWORK_METRICS
                        .iter()
                        .zip(values)
                        .map(|((name, _), v)| metric(name, true, labels.clone(), v, at)),
                );
            }
        }
        out.push(cri::PodSandboxMetrics {
            pod_sandbox_id: sandbox.id,
            metrics,
            container_metrics,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    #[test]
    fn only_the_apis_methods_become_labels() {
        let version = "/runtime.v1.RuntimeService/Version";
        assert_eq!(super::label(version, Code::Ok), version);
        assert_eq!(super::label(version, Code::PermissionDenied), version);
        let stop = "/runtime.v1.RuntimeService/StopContainer";
        assert_eq!(super::label(stop, Code::PermissionDenied), stop);
        let pull = "/strata.v1.Images/PullImageProgress";
        assert_eq!(super::label(pull, Code::Internal), pull);
        let health = "/grpc.health.v1.Health/Check";
        assert_eq!(super::label(health, Code::Ok), health);
        // Declared but not answered, or asked for without a certificate.
        let unanswered = "/runtime.v1.RuntimeService/StreamPodSandboxMetrics";
        assert_eq!(super::label(unanswered, Code::Unimplemented), "other");
        assert_eq!(super::label(version, Code::Unauthenticated), "other");
        let made_up = format!("/runtime.v1.RuntimeService/{}", "x".repeat(15_000));
        for code in [
            Code::Ok,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::Unauthenticated,
            Code::InvalidArgument,
        ] {
            assert_eq!(super::label(&made_up, code), "other", "{code:?}");
            assert_eq!(super::label("/a.B/C", code), "other", "{code:?}");
        }
    }

    #[test]
    fn descriptors_name_cadvisor_metrics_with_their_labels() {
        let d = super::descriptors();
        let cpu = d
            .iter()
            .find(|d| d.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(cpu.label_keys, ["id", "name", "image"]);
        let rx = d
            .iter()
            .find(|d| d.name == "container_network_receive_bytes_total")
            .unwrap();
        assert_eq!(rx.label_keys.last().map(String::as_str), Some("interface"));
        assert!(d.iter().all(|d| !d.help.is_empty()));
    }
}
