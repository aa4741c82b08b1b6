//! Crash points for the tests: with `STRATA_FAILPOINTS=name[,name…]` in its environment, the
//! daemon kills itself (SIGKILL, as a crash or the OOM killer would) on reaching a point of
//! that name, so that a test can restart it and look for what a crash there left behind.
//!
//! Only debug builds have them; in a release build [`hit`] is empty and the variable is
//! never read.

/// Every crash point: a name [`hit`] is given must be one of these.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub const POINTS: &[&str] = &[
    "pull.downloading",
    "unpack.entry",
    "pull.recording",
    "pod.pinned",
    "pod.networked",
    "container.prepared",
    "container.creating",
    "container.releasing",
    "container.starting",
    "container.killed",
    "container.stopping",
    "container.stopped-for-removal",
    "container.removing",
    "commit.layered",
    "commit.stored",
    "import.stored",
];

#[cfg(debug_assertions)]
pub fn hit(point: &'static str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("STRATA_FAILPOINTS")
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    });
    debug_assert!(POINTS.contains(&point), "unknown crash point {point}");
    if armed.iter().any(|a| a == point) {
        tracing::error!(point, "crash point reached: the daemon kills itself");
        crate::sys::process::crash();
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_point: &'static str) {}
