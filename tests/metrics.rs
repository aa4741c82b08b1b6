//! End to end: the Prometheus page scraped and parsed (every family present and typed,
//! values that follow what the node did), and CRI ListMetricDescriptors /
//! ListPodSandboxMetrics with cadvisor's names.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::Duration,
};

use common::cri::{container_config, env_with, memory_hog};
use strata_api::cri;

/// A parsed exposition: families with their type and help, and samples by name and labels.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    helps: BTreeSet<String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Parses the text format strictly: a line that is not a comment, a blank or a
    /// well-formed sample of a family declared before it fails the test.
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(
                    s.types.insert(name.into(), kind.into()).is_none(),
                    "twice: {line}"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "{line}");
                s.helps.insert(name.into());
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("name value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("a number: {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect(line))),
                None => (series, BTreeMap::new()),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|f| s.types.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(
                s.types.contains_key(family),
                "a sample before its TYPE: {line}"
            );
            assert!(s.helps.contains(family), "a sample without HELP: {line}");
            s.samples.push((name.into(), labels, value));
        }
        s
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("key=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("a closing quote") {
                (_, '\\') => match chars.next().expect("an escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_page_follows_the_node() {
    let port = common::free_port();
    let mut env = env_with(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).await;
    let image = env.image.clone();
    let pod = env.pod("measured").await;
    let sleeper = env
        .start_sleeper(&pod, "sleeper", &image, "exec sleep 1000")
        .await;
    let (_, failed) = env
        .run_config(&pod, container_config("failing", &image, "exit 3"))
        .await;
    assert_eq!(failed.reason, "Error");
    let (_, st) = env.run_config(&pod, memory_hog(&image)).await;
    assert_eq!(st.reason, "OOMKilled");
    // A call that fails, counted with its code.
    let missing = env
        .rt
        .container_status(cri::ContainerStatusRequest {
            container_id: "0123456789ab".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // An RPC no service answers is counted, but not under its own name: callers must not
    // mint a series per path.
    let unanswered = env
        .rt
        .checkpoint_container(cri::CheckpointContainerRequest {
            container_id: sleeper.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unanswered.code(), tonic::Code::Unimplemented);
    // The exit events (and their counts) follow the exits; give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, kind, body) = common::http_get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    let scrape = Scrape::parse(&body);
    for (family, kind) in [
        ("strata_grpc_requests_total", "counter"),
        ("strata_grpc_request_duration_seconds", "histogram"),
        ("strata_pulled_bytes_total", "counter"),
        ("strata_pushed_bytes_total", "counter"),
        ("strata_pulls_in_flight", "gauge"),
        ("strata_layer_store_bytes", "gauge"),
        ("strata_content_store_bytes", "gauge"),
        ("strata_layers", "gauge"),
        ("strata_containers", "gauge"),
        ("strata_pods", "gauge"),
        ("strata_container_exits_total", "counter"),
        ("strata_monitors", "gauge"),
        ("strata_event_subscribers", "gauge"),
        ("strata_process_resident_memory_bytes", "gauge"),
        ("strata_process_open_fds", "gauge"),
    ] {
        assert_eq!(
            scrape.types.get(family).map(String::as_str),
            Some(kind),
            "{family} in:\n{body}"
        );
    }
    let v = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .value(name, labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} in:\n{body}"))
    };
    let run_pod = [
        ("method", "/runtime.v1.RuntimeService/RunPodSandbox"),
        ("code", "Ok"),
    ];
    assert_eq!(v("strata_grpc_requests_total", &run_pod), 1.0);
    let not_found = [
        ("method", "/runtime.v1.RuntimeService/ContainerStatus"),
        ("code", "NotFound"),
    ];
    assert_eq!(v("strata_grpc_requests_total", &not_found), 1.0);
    let other = [("method", "other"), ("code", "Unimplemented")];
    assert_eq!(v("strata_grpc_requests_total", &other), 1.0);
    assert!(!body.contains("CheckpointContainer"), "{body}");
    let create = [("method", "/runtime.v1.RuntimeService/CreateContainer")];
    assert_eq!(
        v("strata_grpc_request_duration_seconds_count", &create),
        3.0
    );
    let inf = [
        ("method", "/runtime.v1.RuntimeService/CreateContainer"),
        ("le", "+Inf"),
    ];
    assert_eq!(v("strata_grpc_request_duration_seconds_bucket", &inf), 3.0);
    assert!(v("strata_grpc_request_duration_seconds_sum", &create) > 0.0);
    // The busybox image's layers came from the registry, compressed.
    assert!(v("strata_pulled_bytes_total", &[]) > 500_000.0);
    assert_eq!(v("strata_pulls_in_flight", &[]), 0.0);
    assert!(v("strata_layer_store_bytes", &[]) > 1_000_000.0);
    assert_eq!(v("strata_containers", &[("state", "running")]), 1.0);
    assert_eq!(v("strata_containers", &[("state", "exited")]), 2.0);
    assert_eq!(v("strata_pods", &[("state", "ready")]), 1.0);
    assert_eq!(v("strata_monitors", &[]), 1.0);
    assert_eq!(
        v("strata_container_exits_total", &[("reason", "Error")]),
        1.0
    );
    assert_eq!(
        v("strata_container_exits_total", &[("reason", "OOMKilled")]),
        1.0
    );
    assert!(v("strata_process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(v("strata_process_open_fds", &[]) >= 3.0);

    // Anything else on the port is not found; the page is only read.
    assert!(common::http_get(port, "/").0.contains("404"));

    // CRI: the descriptors, and the pod's metrics under their names.
    let descriptors = env
        .rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let keys: BTreeMap<String, Vec<String>> = descriptors
        .into_iter()
        .map(|d| (d.name, d.label_keys))
        .collect();
    // A little network traffic out of the pod, on a veth pair of the test's own inside
    // the pod's namespace (it goes with the pod): ARP asks for the peer that never answers.
    let pin = env
        .daemon
        .state_dir
        .join("sandboxes")
        .join(&pod)
        .join("ns/net");
    let netns = format!("--net={}", pin.display());
    for args in [
        vec![
            "ip",
            "link",
            "add",
            "sttmetric0",
            "type",
            "veth",
            "peer",
            "name",
            "sttmetric1",
        ],
        vec!["ip", "addr", "add", "10.232.0.1/24", "dev", "sttmetric0"],
        vec!["ip", "link", "set", "sttmetric1", "up"],
        vec!["ip", "link", "set", "sttmetric0", "up"],
        vec!["/bin/busybox", "ping", "-c", "3", "-W", "1", "10.232.0.2"],
    ] {
        let ok = Command::new("nsenter")
            .arg(&netns)
            .args(&args)
            .output()
            .unwrap();
        if args[0] != "/bin/busybox" {
            assert!(ok.status.success(), "{args:?}: {ok:?}");
        }
    }
    let metrics = env
        .rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    assert_eq!(metrics.len(), 1);
    let pod_metrics = &metrics[0];
    assert_eq!(pod_metrics.pod_sandbox_id, pod);
    // Only running containers are measured.
    assert_eq!(pod_metrics.container_metrics.len(), 1);
    let c = &pod_metrics.container_metrics[0];
    assert_eq!(c.container_id, sleeper);
    let by_name: BTreeMap<&str, &cri::Metric> =
        c.metrics.iter().map(|m| (m.name.as_str(), m)).collect();
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_usage_bytes",
        "container_memory_working_set_bytes",
        "container_processes",
    ] {
        let m = by_name.get(name).unwrap_or_else(|| panic!("{name}: {c:?}"));
        assert_eq!(m.label_values.len(), keys[name].len(), "{name}");
        assert_eq!(m.label_values[0], sleeper);
    }
    assert!(
        by_name["container_memory_usage_bytes"]
            .value
            .as_ref()
            .unwrap()
            .value
            > 0
    );
    assert_eq!(
        by_name["container_processes"].value.as_ref().unwrap().value,
        1
    );
    assert_eq!(
        by_name["container_cpu_usage_seconds_total"].metric_type,
        cri::MetricType::Counter as i32
    );
    let tx = pod_metrics
        .metrics
        .iter()
        .find(|m| {
            m.name == "container_network_transmit_packets_total"
                && m.label_values.last().map(String::as_str) == Some("sttmetric0")
        })
        .unwrap_or_else(|| panic!("{:?}", pod_metrics.metrics));
    assert_eq!(tx.label_values.len(), keys[&tx.name].len());
    assert!(tx.value.as_ref().unwrap().value >= 3, "{tx:?}");
    env.remove_pods(vec![pod]).await;
}
