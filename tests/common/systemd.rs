//! A stand-in for systemd's D-Bus API, for the systemd cgroup driver's end-to-end test on a
//! machine whose init is not systemd. It serves, on a socket of its own, the calls the agent
//! makes on systemd's private socket (`Subscribe`, `Get Version`, `StartTransientUnit`,
//! `StopUnit`, `SetUnitProperties`), answers jobs with `JobRemoved` as systemd does, and
//! does to the real cgroupfs what systemd would: a unit's cgroup in every hierarchy, its
//! first processes moved in, everything killed and removed when it stops, and a scope
//! collected once systemd's own hierarchy shows it empty.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt as _;
use zbus::{OwnedObjectPath, OwnedVariant};

/// One call the agent made.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub unit: String,
    pub props: BTreeMap<String, String>,
    pub pids: Vec<u32>,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// Units started and not stopped: their cgroup path.
    units: BTreeMap<String, String>,
    /// Scopes collected because they were empty.
    collected: Vec<String>,
    jobs: u32,
    /// How long a scope's start takes (a loaded systemd).
    scope_delay: Duration,
}

pub struct FakeSystemd {
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

const ROOT: &str = "/sys/fs/cgroup";
/// Where systemd sees which processes a unit has (v1 host: the named hierarchy).
const TRACKING: &str = "/sys/fs/cgroup/systemd";

impl FakeSystemd {
    pub fn start() -> FakeSystemd {
        let dir = tempfile::Builder::new()
            .prefix("strata-fake-systemd-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("private");
        let state = Arc::new(Mutex::new(State::default()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(&socket).expect("bind the fake systemd socket")
        };
        let served = Arc::clone(&state);
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, state).await {
                        eprintln!("fake systemd: {e}");
                    }
                });
            }
        });
        let collecting = Arc::clone(&state);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                collect_empty_scopes(&collecting);
            }
        });
        FakeSystemd {
            socket,
            _dir: dir,
            state,
            runtime: Some(runtime),
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Units started and not stopped or collected.
    pub fn units(&self) -> BTreeMap<String, String> {
        self.state.lock().unwrap().units.clone()
    }

    pub fn collected(&self) -> Vec<String> {
        self.state.lock().unwrap().collected.clone()
    }

    /// Makes every later scope start take `delay` before systemd answers.
    pub fn delay_scopes(&self, delay: Duration) {
        self.state.lock().unwrap().scope_delay = delay;
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        // What a failed test left.
        let units: Vec<String> = self.state.lock().unwrap().units.values().cloned().collect();
        for path in units {
            kill_and_remove(&path);
        }
    }
}

async fn serve(stream: tokio::net::UnixStream, state: Arc<Mutex<State>>) -> zbus::Result<()> {
    let stream = stream
        .into_std()
        .map_err(|e| zbus::Error::Failure(e.to_string()))?;
    let conn = zbus::connection::Builder::unix_stream(stream)
        .server(zbus::Guid::generate())
        .p2p()
        .build()
        .await?;
    let mut messages = zbus::MessageStream::from(&conn);
    while let Some(Ok(msg)) = messages.next().await {
        if msg.message_type() != zbus::message::Type::MethodCall {
            continue;
        }
        let header = msg.header();
        let member = header.member().map(|m| m.to_string()).unwrap_or_default();
        let outcome = match member.as_str() {
            "Subscribe" => {
                conn.reply(&header, &()).await?;
                continue;
            }
            "Get" => {
                conn.reply(&header, &zbus::Variant::from("255 (strata test stand-in)"))
                    .await?;
                continue;
            }
            "SetUnitProperties" => {
                let (unit, _runtime, props): (String, bool, Vec<(String, OwnedVariant)>) =
                    msg.body().deserialize()?;
                record(&state, "SetUnitProperties", &unit, &props);
                conn.reply(&header, &()).await?;
                continue;
            }
            "StartTransientUnit" => {
                let (unit, _mode, props, _aux): StartTransientUnit = msg.body().deserialize()?;
                record(&state, "StartTransientUnit", &unit, &props);
                let delay = state.lock().unwrap().scope_delay;
                if unit.ends_with(".scope") && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                start(&state, &unit, &props).map(|()| unit)
            }
            "StopUnit" => {
                let (unit, _mode): (String, String) = msg.body().deserialize()?;
                record(&state, "StopUnit", &unit, &[]);
                stop(&state, &unit).map(|()| unit)
            }
            other => Err((
                "org.freedesktop.DBus.Error.UnknownMethod",
                format!("the stand-in has no {other}"),
            )),
        };
        match outcome {
            Ok(unit) => {
                let id = {
                    let mut s = state.lock().unwrap();
                    s.jobs += 1;
                    s.jobs
                };
                let job = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}"))?;
                conn.reply(&header, &job).await?;
                conn.emit_signal(
                    None::<&str>,
                    "/org/freedesktop/systemd1",
                    "org.freedesktop.systemd1.Manager",
                    "JobRemoved",
                    &(id, job, unit.as_str(), "done"),
                )
                .await?;
            }
            Err((name, text)) => conn.reply_error(&header, name, &text).await?,
        }
    }
    Ok(())
}

fn record(state: &Mutex<State>, method: &str, unit: &str, props: &[(String, OwnedVariant)]) {
    let pids = props
        .iter()
        .find(|(n, _)| n == "PIDs")
        .and_then(|(_, v)| v.try_clone().ok())
        .and_then(|v| Vec::<u32>::try_from(v).ok())
        .unwrap_or_default();
    state.lock().unwrap().calls.push(Call {
        method: method.into(),
        unit: unit.into(),
        props: props.iter().map(|(n, v)| (n.clone(), plain(v))).collect(),
        pids,
    });
}

/// A property's value as text: strings, numbers and booleans as themselves, anything else
/// in D-Bus's own notation.
fn plain(value: &OwnedVariant) -> String {
    match &**value {
        zbus::Variant::Str(s) => s.to_string(),
        zbus::Variant::Bool(b) => b.to_string(),
        zbus::Variant::U64(n) => n.to_string(),
        zbus::Variant::U32(n) => n.to_string(),
        zbus::Variant::I64(n) => n.to_string(),
        zbus::Variant::I32(n) => n.to_string(),
        other => format!("{other}"),
    }
}

type Refusal = (&'static str, String);

/// `StartTransientUnit`'s arguments: name, mode, properties, auxiliary units.
type StartTransientUnit = (
    String,
    String,
    Vec<(String, OwnedVariant)>,
    Vec<(String, Vec<(String, OwnedVariant)>)>,
);

/// systemd's layout: `a-b.slice` at `a.slice/a-b.slice`, a scope inside its slice.
fn slice_path(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".slice")?;
    let mut parts = Vec::new();
    let mut prefix = String::new();
    for word in stem.split('-') {
        if word.is_empty() {
            return None;
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(word);
        parts.push(format!("{prefix}.slice"));
    }
    Some(parts.join("/"))
}

/// The hierarchies systemd realizes units in on a v1 host: its own, the empty v2 tree, and
/// the controllers it manages (never cpuset, freezer or net_cls).
fn hierarchies() -> Vec<PathBuf> {
    [
        "systemd", "unified", "cpu", "cpuacct", "blkio", "memory", "devices", "pids",
    ]
    .iter()
    .map(|h| Path::new(ROOT).join(h))
    .filter(|p| p.is_dir())
    .collect()
}

fn start(
    state: &Mutex<State>,
    unit: &str,
    props: &[(String, OwnedVariant)],
) -> Result<(), Refusal> {
    let invalid = |text: String| ("org.freedesktop.DBus.Error.InvalidArgs", text);
    let prop = |name: &str| props.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    if state.lock().unwrap().units.contains_key(unit) {
        return Err((
            "org.freedesktop.systemd1.UnitExists",
            format!("Unit {unit} already exists."),
        ));
    }
    let path = if unit.ends_with(".slice") {
        slice_path(unit).ok_or_else(|| invalid(format!("bad slice name {unit}")))?
    } else if unit.ends_with(".scope") {
        let slice = prop("Slice")
            .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
            .ok_or_else(|| invalid("a scope needs Slice".into()))?;
        let parent = slice_path(&slice).ok_or_else(|| invalid(format!("bad slice {slice}")))?;
        format!("{parent}/{unit}")
    } else {
        return Err(invalid(format!("unit type of {unit}")));
    };
    let pids = prop("PIDs")
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| Vec::<u32>::try_from(v).ok())
        .unwrap_or_default();
    if unit.ends_with(".scope") && pids.is_empty() {
        return Err(invalid("No PIDs specified".into()));
    }
    for top in hierarchies() {
        let dir = top.join(&path);
        std::fs::create_dir_all(&dir).map_err(|e| invalid(format!("{}: {e}", dir.display())))?;
        for pid in &pids {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                .map_err(|e| invalid(format!("moving {pid} into {}: {e}", dir.display())))?;
        }
    }
    state.lock().unwrap().units.insert(unit.into(), path);
    Ok(())
}

fn stop(state: &Mutex<State>, unit: &str) -> Result<(), Refusal> {
    let paths: Vec<String> = {
        let mut s = state.lock().unwrap();
        let Some(path) = s.units.remove(unit) else {
            return Err((
                "org.freedesktop.systemd1.NoSuchUnit",
                format!("Unit {unit} not loaded."),
            ));
        };
        // Stopping a slice stops what is inside it.
        let inside: Vec<String> = s
            .units
            .iter()
            .filter(|(_, p)| p.starts_with(&format!("{path}/")))
            .map(|(u, _)| u.clone())
            .collect();
        let mut paths: Vec<String> = inside.iter().filter_map(|u| s.units.remove(u)).collect();
        paths.push(path);
        paths
    };
    for path in paths {
        kill_and_remove(&path);
    }
    Ok(())
}

/// Kills what the unit's cgroup holds (as systemd's KillMode=control-group) and removes
/// its directories, deepest first, in every hierarchy.
fn kill_and_remove(path: &str) {
    for _ in 0..100 {
        let pids = procs_below(&Path::new(TRACKING).join(path));
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for top in hierarchies() {
        super::remove_dir_tree(&top.join(path));
    }
}

fn procs_below(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    pids
}

/// systemd collects a scope whose cgroup has no process left.
fn collect_empty_scopes(state: &Mutex<State>) {
    let empty: Vec<(String, String)> = {
        let s = state.lock().unwrap();
        s.units
            .iter()
            .filter(|(u, p)| {
                u.ends_with(".scope") && procs_below(&Path::new(TRACKING).join(p)).is_empty()
            })
            .map(|(u, p)| (u.clone(), p.clone()))
            .collect()
    };
    for (unit, path) in empty {
        kill_and_remove(&path);
        let mut s = state.lock().unwrap();
        s.units.remove(&unit);
        s.collected.push(unit);
    }
}
