//! The daemon's own counters, kept as it works and read by the Prometheus page
//! (`server::metrics`): gRPC calls by method and code and their latency, bytes pulled and
//! pushed, pulls in flight, container exits by reason. What can be read off the machine at
//! scrape time (containers by state, store size, RSS) is not kept here.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

/// Compressed layer bytes received from registries.
pub static PULLED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Blob bytes sent to registries.
pub static PUSHED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Pulls under way.
pub static PULLS_IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Debug, Default, Clone)]
pub struct Histogram {
    /// Observations at or below each bucket's bound (not cumulative here).
    pub counts: [u64; BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Debug, Default)]
struct Calls {
    /// Calls by (method, code).
    total: BTreeMap<(String, String), u64>,
    /// Latency by method.
    latency: BTreeMap<String, Histogram>,
}

static CALLS: Mutex<Calls> = Mutex::new(Calls {
    total: BTreeMap::new(),
    latency: BTreeMap::new(),
});

/// Container exits by reason (Completed, Error, OOMKilled, StartError, …).
static EXITS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// At most this many method labels are kept; calls of any further method count as
/// "other". The API has some sixty methods: this only holds if a caller of `call` lets a
/// client's own text through.
pub const MAX_METHODS: usize = 256;

/// Counts a gRPC call of `method` (a method's path, or "other") that ended with `code`
/// after `took`.
pub fn call(method: &str, code: &str, took: Duration) {
    CALLS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .count(method, code, took);
}

impl Calls {
    fn count(&mut self, method: &str, code: &str, took: Duration) {
        let method = if self.latency.contains_key(method) || self.latency.len() < MAX_METHODS {
            method
        } else {
            "other"
        };
        *self
            .total
            .entry((method.to_string(), code.to_string()))
            .or_default() += 1;
        self.latency
            .entry(method.to_string())
            .or_default()
            .observe(took.as_secs_f64());
    }
}

/// Counts a container exit.
pub fn exit(reason: &str) {
    let reason = if reason.is_empty() { "Unknown" } else { reason };
    *EXITS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(reason.to_string())
        .or_default() += 1;
}

/// Holds a pull in the in-flight gauge while it lives.
pub struct PullInFlight(());

impl PullInFlight {
    pub fn start() -> PullInFlight {
        PULLS_IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        PullInFlight(())
    }
}

impl Drop for PullInFlight {
    fn drop(&mut self) {
        PULLS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Prometheus text exposition (format 0.0.4), one family at a time.
#[derive(Debug, Default)]
pub struct Page {
    text: String,
}

impl Page {
    /// Starts a family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
        self
    }

    /// The daemon's own families: calls, latency, bytes, pulls, exits.
    pub fn daemon_counters(&mut self) -> &mut Self {
        let (total, latency) = {
            let calls = CALLS.lock().unwrap_or_else(|p| p.into_inner());
            (calls.total.clone(), calls.latency.clone())
        };
        self.family(
            "strata_grpc_requests_total",
            "counter",
            "gRPC calls served, by method and status code.",
        );
        for ((method, code), n) in &total {
            self.sample(
                "strata_grpc_requests_total",
                &[("method", method), ("code", code)],
                *n as f64,
            );
        }
        self.family(
            "strata_grpc_request_duration_seconds",
            "histogram",
            "Time to the response's headers (the whole call for unary calls), by method.",
        );
        for (method, h) in &latency {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                self.sample(
                    "strata_grpc_request_duration_seconds_bucket",
                    &[("method", method), ("le", &number(*bound))],
                    cumulative as f64,
                );
            }
            self.sample(
                "strata_grpc_request_duration_seconds_bucket",
                &[("method", method), ("le", "+Inf")],
                h.count as f64,
            )
            .sample(
                "strata_grpc_request_duration_seconds_sum",
                &[("method", method)],
                h.sum,
            )
            .sample(
                "strata_grpc_request_duration_seconds_count",
                &[("method", method)],
                h.count as f64,
            );
        }
        self.family(
            "strata_pulled_bytes_total",
            "counter",
            "Compressed layer bytes received from registries.",
        )
        .sample(
            "strata_pulled_bytes_total",
            &[],
            PULLED_BYTES.load(Ordering::Relaxed) as f64,
        );
        self.family(
            "strata_pushed_bytes_total",
            "counter",
            "Blob bytes sent to registries.",
        )
        .sample(
            "strata_pushed_bytes_total",
            &[],
            PUSHED_BYTES.load(Ordering::Relaxed) as f64,
        );
        self.family("strata_pulls_in_flight", "gauge", "Image pulls under way.")
            .sample(
                "strata_pulls_in_flight",
                &[],
                PULLS_IN_FLIGHT.load(Ordering::Relaxed) as f64,
            );
        let exits = EXITS.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.family(
            "strata_container_exits_total",
            "counter",
            "Container exits seen by this daemon, by reason (OOMKilled for the OOM killer's).",
        );
        for (reason, n) in &exits {
            self.sample(
                "strata_container_exits_total",
                &[("reason", reason)],
                *n as f64,
            );
        }
        self
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_prometheus_text() {
        call(
            "/runtime.v1.RuntimeService/Version",
            "OK",
            Duration::from_millis(3),
        );
        call(
            "/runtime.v1.RuntimeService/Version",
            "OK",
            Duration::from_secs(60),
        );
        exit("OOMKilled");
        let mut page = Page::default();
        page.daemon_counters()
            .family("strata_test", "gauge", "A \"quoted\"\nhelp.")
            .sample("strata_test", &[("name", "a\"b\\c\nd")], 1.5);
        let text = page.finish();
        assert!(text.contains("# TYPE strata_grpc_request_duration_seconds histogram\n"));
        assert!(text.contains(
            "strata_grpc_request_duration_seconds_bucket{method=\"/runtime.v1.RuntimeService/Version\",le=\"0.005\"} "
        ));
        assert!(text.contains(
            "strata_grpc_request_duration_seconds_bucket{method=\"/runtime.v1.RuntimeService/Version\",le=\"+Inf\"} "
        ));
        assert!(text.contains("strata_container_exits_total{reason=\"OOMKilled\"} "));
        assert!(text.contains("# HELP strata_test A \"quoted\"\\nhelp.\n"));
        assert!(text.contains("strata_test{name=\"a\\\"b\\\\c\\nd\"} 1.5\n"));
        // The 60 s call is over every bound: only +Inf holds it.
        let version = "method=\"/runtime.v1.RuntimeService/Version\"";
        let bucket = |le: &str| -> u64 {
            text.lines()
                .find(|l| l.contains(version) && l.contains(&format!("le=\"{le}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap()
        };
        assert_eq!(bucket("+Inf") - bucket("30"), 1);
    }

    #[test]
    fn method_labels_are_bounded() {
        let mut calls = Calls::default();
        for i in 0..MAX_METHODS + 50 {
            calls.count(&format!("/test.Flood/M{i}"), "OK", Duration::from_millis(1));
        }
        assert!(
            calls.latency.len() <= MAX_METHODS + 1,
            "{}",
            calls.latency.len()
        );
        assert!(calls.total.keys().filter(|(m, _)| m != "other").count() <= MAX_METHODS);
        assert!(calls.latency.contains_key("other"));
    }
}
