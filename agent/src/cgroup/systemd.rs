//! The systemd cgroup driver: a pod's cgroup is a transient slice and a container's a
//! transient scope, both made by systemd through its D-Bus API, so that systemd (which owns
//! the cgroup tree on a systemd host) knows them and never moves or trims what the agent
//! put there.
//!
//! The agent talks to systemd's private socket (peer to peer, as root; no bus daemon
//! needed). Each unit carries the limits as properties, so that a `systemctl
//! daemon-reload` re-applies them instead of resetting them; the agent writes the same
//! limits through cgroupfs as well, for what systemd has no property for. A scope is made
//! with `Delegate=yes`: below it the agent keeps managing its own leaves (`main`, `exec-*`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::StreamExt as _;
use zbus::{OwnedObjectPath, Variant as Value};

use super::Resources;

const DESTINATION: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// What systemd answers for a unit it does not have.
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
/// What systemd answers for a transient unit started twice.
const UNIT_EXISTS: &str = "org.freedesktop.systemd1.UnitExists";
/// The first systemd with `CPUQuotaPeriodUSec`; older ones refuse a unit that has it.
const QUOTA_PERIOD_SINCE: u32 = 242;
/// Job signals a waiter may fall behind by (systemd announces every job on the host).
const QUEUED_SIGNALS: usize = 4096;
/// A systemd job that takes longer than this is reported as failed.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the systemd cgroup driver needs systemd as the init system, and {socket} cannot be \
         reached ({reason}){hint}"
    )]
    Unreachable {
        socket: PathBuf,
        reason: String,
        hint: &'static str,
    },
    #[error("systemd: {call} {unit}: {message}")]
    Call {
        call: &'static str,
        unit: String,
        message: String,
    },
    #[error("systemd: the job for {unit} ended with {result:?}")]
    Job { unit: String, result: String },
    #[error("systemd: no answer for {unit} within {0:?}", JOB_TIMEOUT)]
    Timeout { unit: String },
    #[error("invalid systemd slice {name:?}: {reason}")]
    Slice { name: String, reason: &'static str },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A connection to systemd, made when first needed and made again after systemd
/// re-executed itself (which closes it).
pub struct Systemd {
    socket: PathBuf,
    conn: tokio::sync::Mutex<Option<zbus::Connection>>,
    v2: bool,
    /// systemd's version number, once `version` has read it (0 before: the oldest).
    release: std::sync::atomic::AtomicU32,
}

impl Systemd {
    /// `v2`: the host runs cgroup v2, where some properties have other names.
    pub fn new(socket: &Path, v2: bool) -> Systemd {
        Systemd {
            socket: socket.to_path_buf(),
            conn: tokio::sync::Mutex::new(None),
            v2,
            release: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Connects and asks systemd its version: what the daemon checks before it serves.
    pub async fn version(&self) -> Result<String> {
        let conn = self.connection().await?;
        let reply = conn
            .call_method(
                Some(DESTINATION),
                PATH,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(MANAGER, "Version"),
            )
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let body = reply.body();
        let value: zbus::OwnedVariant = body
            .deserialize()
            .map_err(|e| self.unreachable(e.to_string()))?;
        let version = String::try_from(value).unwrap_or_default();
        self.release.store(
            release_number(&version),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(version)
    }

    /// The unit properties for `resources` that this systemd knows.
    fn properties(&self, resources: &Resources) -> Vec<(&'static str, Value<'static>)> {
        let release = self.release.load(std::sync::atomic::Ordering::Relaxed);
        properties(resources, self.v2, release)
    }

    fn unreachable(&self, reason: String) -> Error {
        let hint = if Path::new("/run/systemd/system").is_dir() {
            ""
        } else {
            "; systemd is not the init system of this machine (there is no /run/systemd/system): \
             use driver = \"cgroupfs\""
        };
        Error::Unreachable {
            socket: self.socket.clone(),
            reason,
            hint,
        }
    }

    async fn connection(&self) -> Result<zbus::Connection> {
        let mut held = self.conn.lock().await;
        if let Some(conn) = held.as_ref() {
            return Ok(conn.clone());
        }
        let stream = std::os::unix::net::UnixStream::connect(&self.socket)
            .map_err(|e| self.unreachable(e.to_string()))?;
        let conn = zbus::connection::Builder::unix_stream(stream)
            .p2p()
            .method_timeout(JOB_TIMEOUT)
            .build()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        // Job signals are sent only to subscribers.
        conn.call_method(Some(DESTINATION), PATH, Some(MANAGER), "Subscribe", &())
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        *held = Some(conn.clone());
        Ok(conn)
    }

    /// Runs one job-making call and waits for its job to finish. A connection systemd closed
    /// is made again, once.
    async fn job<B>(&self, call: &'static str, unit: &str, body: &B) -> Result<()>
    where
        B: serde::Serialize + zbus::DynamicType,
    {
        match self.job_once(call, unit, body).await {
            Err(Error::Unreachable { .. }) | Err(Error::Timeout { .. }) => {
                *self.conn.lock().await = None;
                match self.job_once(call, unit, body).await {
                    // The first try got as far as systemd: the unit is there.
                    Err(Error::Call { message, .. })
                        if call == "StartTransientUnit" && message.starts_with(UNIT_EXISTS) =>
                    {
                        Ok(())
                    }
                    done => done,
                }
            }
            done => done,
        }
    }

    async fn job_once<B>(&self, call: &'static str, unit: &str, body: &B) -> Result<()>
    where
        B: serde::Serialize + zbus::DynamicType,
    {
        let conn = self.connection().await?;
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface(MANAGER)
            .member("JobRemoved")
            .build()
            .map_err(|e| self.unreachable(e.to_string()))?;
        // Listening before the call: the job can end before its reply is read.
        let mut removed = zbus::MessageStream::for_match_rule(
            rule,
            &conn,
            std::num::NonZeroUsize::new(QUEUED_SIGNALS),
        )
        .await
        .map_err(|e| self.unreachable(e.to_string()))?;
        let reply = match conn
            .call_method(Some(DESTINATION), PATH, Some(MANAGER), call, body)
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                return Err(
                    refusal(call, unit, e).unwrap_or_else(|e| self.unreachable(e.to_string()))
                );
            }
        };
        let job: OwnedObjectPath = reply.body().deserialize().map_err(|e| Error::Call {
            call,
            unit: unit.to_string(),
            message: format!("unexpected reply: {e}"),
        })?;
        let wait = async {
            while let Some(Ok(signal)) = removed.next().await {
                let Ok((_, path, _, result)) = signal
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path == job {
                    return Some(result);
                }
            }
            None
        };
        match tokio::time::timeout(JOB_TIMEOUT, wait).await {
            Ok(Some(result)) if result == "done" => Ok(()),
            Ok(Some(result)) => Err(Error::Job {
                unit: unit.to_string(),
                result,
            }),
            Ok(None) => Err(self.unreachable("the connection closed".into())),
            Err(_) => Err(Error::Timeout {
                unit: unit.to_string(),
            }),
        }
    }

    /// Starts a transient slice (a pod's cgroup) with `resources` as its properties.
    pub async fn start_slice(&self, name: &str, resources: &Resources) -> Result<()> {
        let mut props = vec![
            ("Description", Value::from(format!("strata pod {name}"))),
            ("DefaultDependencies", Value::from(false)),
        ];
        props.extend(self.properties(resources));
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        self.job("StartTransientUnit", name, &(name, "fail", props, aux))
            .await
    }

    /// Starts a transient scope (a container's cgroup) in `slice`, delegated to the agent,
    /// with `pid` as its first process.
    pub async fn start_scope(
        &self,
        name: &str,
        slice: &str,
        pid: u32,
        resources: &Resources,
    ) -> Result<()> {
        let mut props = vec![
            (
                "Description",
                Value::from(format!("strata container {name}")),
            ),
            ("Slice", Value::from(slice.to_string())),
            ("Delegate", Value::from(true)),
            ("PIDs", Value::from(vec![pid])),
            ("DefaultDependencies", Value::from(false)),
        ];
        props.extend(self.properties(resources));
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        self.job("StartTransientUnit", name, &(name, "fail", props, aux))
            .await
    }

    /// Changes a running unit's limits (UpdateContainerResources).
    pub async fn set_properties(&self, name: &str, resources: &Resources) -> Result<()> {
        let props = self.properties(resources);
        if props.is_empty() {
            return Ok(());
        }
        // Setting properties is idempotent: a connection systemd closed is made again, and
        // the call sent again, once.
        let mut retried = false;
        loop {
            let conn = self.connection().await?;
            let sent = conn
                .call_method(
                    Some(DESTINATION),
                    PATH,
                    Some(MANAGER),
                    "SetUnitProperties",
                    &(name, true, &props),
                )
                .await;
            match sent.map_err(|e| refusal("SetUnitProperties", name, e)) {
                Ok(_) => return Ok(()),
                Err(Ok(refused)) => return Err(refused),
                Err(Err(e)) if retried => return Err(self.unreachable(e.to_string())),
                Err(Err(_)) => {
                    *self.conn.lock().await = None;
                    retried = true;
                }
            }
        }
    }

    /// Stops a unit; one systemd does not have (a scope it collected once it was empty) is
    /// stopped already.
    pub async fn stop(&self, name: &str) -> Result<()> {
        match self.job("StopUnit", name, &(name, "replace")).await {
            Err(Error::Call { message, .. }) if message.starts_with(NO_SUCH_UNIT) => Ok(()),
            done => done,
        }
    }
}

/// systemd's answer to `call` as an error (standard D-Bus error names come as FDO); any
/// other failure (the connection's) is handed back.
fn refusal(
    call: &'static str,
    unit: &str,
    e: zbus::Error,
) -> std::result::Result<Error, zbus::Error> {
    let message = match e {
        zbus::Error::MethodError(name, message, _) => {
            format!("{}: {}", name.as_str(), message.unwrap_or_default())
        }
        zbus::Error::FDO(e) => e.to_string(),
        other => return Err(other),
    };
    Ok(Error::Call {
        call,
        unit: unit.to_string(),
        message,
    })
}

/// The unit properties for `r`: `v2` for a cgroup v2 host, `release` systemd's version
/// number (properties newer than it are left out, or it would refuse the whole unit).
/// A limit of -1 is systemd's infinity, so that lifting a limit lifts it on the unit too.
pub fn properties(r: &Resources, v2: bool, release: u32) -> Vec<(&'static str, Value<'static>)> {
    let mut props = Vec::new();
    if r.memory_limit.is_some() || r.cpu_shares.is_some() || r.cpu_quota.is_some() {
        props.push(("MemoryAccounting", Value::from(true)));
        props.push(("CPUAccounting", Value::from(true)));
    }
    if let Some(limit) = r.memory_limit.filter(|m| *m != 0) {
        let name = if v2 { "MemoryMax" } else { "MemoryLimit" };
        props.push((name, Value::from(u64::try_from(limit).unwrap_or(u64::MAX))));
    }
    if let Some(shares) = r.cpu_shares {
        if v2 {
            props.push(("CPUWeight", Value::from(super::shares_to_weight(shares))));
        } else {
            props.push(("CPUShares", Value::from(shares)));
        }
    }
    match r.cpu_quota.filter(|q| *q != 0) {
        Some(quota) if quota > 0 => {
            let period = r.cpu_period.unwrap_or(100_000).max(1);
            // systemd keeps the quota per second, in steps of 10 ms: rounded up, as runc
            // does, so that a small quota never becomes none.
            let per_sec = (quota as u64).saturating_mul(1_000_000).div_ceil(period);
            let per_sec = per_sec.div_ceil(10_000).saturating_mul(10_000);
            props.push(("CPUQuotaPerSecUSec", Value::from(per_sec)));
            if release >= QUOTA_PERIOD_SINCE {
                props.push(("CPUQuotaPeriodUSec", Value::from(period)));
            }
        }
        Some(_) => props.push(("CPUQuotaPerSecUSec", Value::from(u64::MAX))),
        None => {}
    }
    if let Some(pids) = r.pids_limit {
        props.push(("TasksAccounting", Value::from(true)));
        let max = if pids > 0 { pids as u64 } else { u64::MAX };
        props.push(("TasksMax", Value::from(max)));
    }
    props
}

/// The number at the start of systemd's version ("252.33-1~deb12u1" → 252); 0 if none.
fn release_number(version: &str) -> u32 {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

/// The cgroup path of slice `name`, as systemd lays slices out: `a-b-c.slice` lives at
/// `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
pub fn slice_path(name: &str) -> Result<String> {
    let bad = |reason| Error::Slice {
        name: name.to_string(),
        reason,
    };
    if name == "-.slice" {
        return Ok(String::new());
    }
    let stem = name
        .strip_suffix(".slice")
        .ok_or_else(|| bad("a slice's name ends with .slice"))?;
    if stem.is_empty()
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
        || !stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '\\'))
    {
        return Err(bad(
            "a slice's name is words of letters, digits, _ . : joined by single dashes",
        ));
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for word in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(word);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path.join("/"))
}

/// The slice a pod gets inside `parent` (a slice's name): `<parent stem>-strata_pod_<id>.slice`.
pub fn pod_slice(parent: &str, id: &str) -> String {
    match parent.strip_suffix(".slice") {
        Some(stem) if stem != "-" && !stem.is_empty() => format!("{stem}-strata_pod_{id}.slice"),
        _ => format!("strata_pod_{id}.slice"),
    }
}

/// The scope of a container (or of a pod's PID-namespace holder).
pub fn scope(id: &str) -> String {
    format!("strata-{id}.scope")
}

/// The systemd unit a cgroup path ends in, if it ends in one.
pub fn unit_of(path: &str) -> Option<&str> {
    let last = path.trim_end_matches('/').rsplit('/').next()?;
    (last.ends_with(".slice") || last.ends_with(".scope")).then_some(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_nest_by_their_dashes() {
        assert_eq!(
            slice_path("kubepods-besteffort-pod1_2.slice").unwrap(),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1_2.slice"
        );
        assert_eq!(slice_path("strata.slice").unwrap(), "strata.slice");
        assert_eq!(slice_path("-.slice").unwrap(), "");
        for bad in [
            "kubepods",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            ".slice",
            "a/b.slice",
            "../x.slice",
            "a b.slice",
        ] {
            assert!(slice_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pod_slice_nests_in_its_parent() {
        let pod = pod_slice("kubepods-burstable-pod9.slice", "ab12");
        assert_eq!(pod, "kubepods-burstable-pod9-strata_pod_ab12.slice");
        assert!(
            slice_path(&pod).unwrap().starts_with(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod9.slice/"
            )
        );
        assert_eq!(pod_slice("-.slice", "ab"), "strata_pod_ab.slice");
        assert_eq!(
            unit_of("a.slice/b-c.slice/strata-1.scope"),
            Some("strata-1.scope")
        );
        assert_eq!(unit_of("a.slice/b-c.slice"), Some("b-c.slice"));
        assert_eq!(unit_of("strata/pod-1"), None);
    }

    #[test]
    fn limits_become_unit_properties() {
        let r = Resources {
            memory_limit: Some(64 << 20),
            cpu_shares: Some(512),
            cpu_quota: Some(15_000),
            cpu_period: Some(100_000),
            pids_limit: Some(-1),
            ..Default::default()
        };
        let has = |v2, name: &str, value: u64| {
            properties(&r, v2, 252)
                .iter()
                .any(|(n, v)| *n == name && *v == Value::from(value))
        };
        assert!(has(false, "MemoryLimit", 64 << 20));
        assert!(has(false, "CPUShares", 512));
        // 15 ms per 100 ms: 150 ms per second.
        assert!(has(false, "CPUQuotaPerSecUSec", 150_000));
        assert!(has(false, "TasksMax", u64::MAX));
        assert!(has(true, "MemoryMax", 64 << 20));
        assert!(has(true, "CPUWeight", 20));
        assert!(!has(true, "CPUShares", 512));
        // A quota of 1 ms per 300 ms rounds up to the 10 ms steps systemd keeps.
        let small = Resources {
            cpu_quota: Some(1000),
            cpu_period: Some(300_000),
            ..Default::default()
        };
        let p = properties(&small, true, 252);
        assert!(
            p.iter()
                .any(|(n, v)| *n == "CPUQuotaPerSecUSec" && *v == Value::from(10_000u64)),
            "{p:?}"
        );
        assert!(properties(&Resources::default(), true, 252).is_empty());
        // systemd before 242 has no CPUQuotaPeriodUSec and would refuse the unit.
        assert!(has(false, "CPUQuotaPeriodUSec", 100_000));
        assert!(
            !properties(&r, false, 241)
                .iter()
                .any(|(n, _)| *n == "CPUQuotaPeriodUSec")
        );
    }

    #[test]
    fn lifted_limits_are_infinity_and_huge_ones_saturate() {
        let lifted = Resources {
            memory_limit: Some(-1),
            cpu_quota: Some(-1),
            ..Default::default()
        };
        let p = properties(&lifted, false, 252);
        for name in ["MemoryLimit", "CPUQuotaPerSecUSec"] {
            assert!(
                p.iter()
                    .any(|(n, v)| *n == name && *v == Value::from(u64::MAX)),
                "{name}: {p:?}"
            );
        }
        let huge = Resources {
            cpu_quota: Some(i64::MAX),
            cpu_period: Some(1000),
            ..Default::default()
        };
        // No overflow: the quota per second saturates (u64::MAX µs per 1 ms period, in
        // 10 ms steps).
        let p = properties(&huge, true, 252);
        let saturated = u64::MAX.div_ceil(1000).div_ceil(10_000) * 10_000;
        assert!(
            p.iter()
                .any(|(n, v)| *n == "CPUQuotaPerSecUSec" && *v == Value::from(saturated)),
            "{p:?}"
        );
    }

    #[test]
    fn the_release_is_the_versions_leading_number() {
        assert_eq!(release_number("252.33-1~deb12u1"), 252);
        assert_eq!(release_number("219"), 219);
        assert_eq!(release_number("255 (strata test stand-in)"), 255);
        assert_eq!(release_number("unknown"), 0);
    }
}
