//! The end-to-end harness: runs the real `stratad` binary on a temporary root, state
//! directory and socket, talks to it through the generated client and the `stratactl`
//! binary, and always stops it and removes its files, also when a test fails.
//!
//! The binaries are the workspace's own build output (`cargo build --workspace`), found
//! next to the test executable or in `STRATA_BIN_DIR`.

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod containerd;
pub mod cri;
pub mod hostile;
pub mod oci;
pub mod pki;
pub mod proxy;
pub mod registry;
pub mod systemd;
pub mod token;

use std::{
    ffi::OsStr,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use strata_api::cri::{VersionRequest, runtime_service_client::RuntimeServiceClient};
use tonic::transport::Channel;

/// How long a daemon may take to answer its first `Version`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM before the harness kills it.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of one of the workspace's binaries. Fails loudly if it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("STRATA_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // target/<profile>/deps/<test> -> target/<profile>
            let exe = std::env::current_exe().expect("the test knows its own path");
            exe.parent()
                .and_then(Path::parent)
                .expect("test executables live in target/<profile>/deps")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace), or set STRATA_BIN_DIR",
        path.display()
    );
    if std::env::var_os("STRATA_BIN_DIR").is_none() {
        assert_fresh(&path);
    }
    path
}

/// Refuses to test a binary older than the sources it is built from: the tests would
/// pass or fail for code that is not there.
fn assert_fresh(binary: &Path) {
    let built = std::fs::metadata(binary)
        .and_then(|m| m.modified())
        .expect("binary mtime");
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let package = match binary.file_name().and_then(|n| n.to_str()) {
        Some("stratactl") => "ctl/src",
        _ => "agent/src",
    };
    let mut stack: Vec<PathBuf> = [package, "src", "proto"]
        .iter()
        .map(|d| top.join(d))
        .collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                assert!(
                    modified <= built,
                    "{} is older than {}: run cargo build --workspace before the tests",
                    binary.display(),
                    path.display()
                );
            }
        }
    }
}

/// Options for starting a daemon.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Contents of the config file passed with `--config`.
    pub config: String,
    /// Extra flags after the harness's own.
    pub args: Vec<String>,
    /// Extra environment variables (`STRATA_FAILPOINTS`, say).
    pub env: Vec<(String, String)>,
    /// Give the harness's root, state directory and socket in the config file instead of
    /// as flags.
    pub paths_from_config: bool,
    /// Run the daemon in this network namespace (a path such as /run/netns/NAME); only
    /// its network, the rest is the host's.
    pub netns: Option<PathBuf>,
}

/// A running `stratad` on its own temporary directories and its own cgroup parent.
pub struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Pod cgroups go below this, one per daemon, so tests never share cgroups.
    pub cgroup_parent: String,
    log: PathBuf,
}

/// The network of a test's pods when the test names none: loopback only, through
/// Debian's `loopback` plugin.
const LOOPBACK_CONFLIST: &str =
    r#"{"cniVersion": "1.0.0", "name": "strata-test-loopback", "plugins": [{"type": "loopback"}]}"#;

static DAEMONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Daemon {
    /// Starts a daemon with an empty config and waits until it serves.
    pub async fn start() -> Daemon {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Daemon {
        let mut daemon = Self::prepare();
        daemon.launch(options).await;
        daemon
    }

    /// The daemon's directories, without starting it (to plant files first).
    pub fn prepare() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("strata-e2e-")
            .tempdir()
            .expect("temp dir");
        let n = DAEMONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Daemon {
            child: None,
            root: dir.path().join("root"),
            state_dir: dir.path().join("run"),
            socket: dir.path().join("run/strata.sock"),
            cgroup_parent: format!("strata-e2e-{}-{n}", std::process::id()),
            log: dir.path().join("stratad.log"),
            dir,
        }
    }

    /// Starts the daemon and waits until it serves.
    pub async fn launch(&mut self, options: Options) {
        assert!(self.child.is_none(), "daemon already running");
        self.spawn(&options);
        self.wait_ready().await;
    }

    /// A path inside the daemon's temporary directory (removed with it).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("daemon running").id() as i32)
    }

    fn spawn(&mut self, options: &Options) {
        let config = self.path("config.toml");
        let mut text = String::new();
        if options.paths_from_config {
            for (key, path) in [
                ("root", &self.root),
                ("state_dir", &self.state_dir),
                ("socket", &self.socket),
            ] {
                text.push_str(&format!(
                    "{key} = {:?}\n",
                    path.to_str().expect("utf-8 path")
                ));
            }
        }
        if !options.config.contains("cgroup_parent") {
            text.push_str(&format!("cgroup_parent = {:?}\n", self.cgroup_parent));
        }
        text.push_str(&options.config);
        // Pods join a loopback-only network unless a test gives them one: the node's own
        // config dir is not the tests' to read, and without a network a pod is refused.
        if !options.config.contains("[cni]") {
            let conf_dir = self.path("cni-loopback");
            std::fs::create_dir_all(&conf_dir).expect("cni conf dir");
            std::fs::write(conf_dir.join("10-loopback.conflist"), LOOPBACK_CONFLIST)
                .expect("write conflist");
            text.push_str(&format!(
                "\n[cni]\nconf_dir = {:?}\nbin_dirs = [\"/usr/lib/cni\"]\n",
                conf_dir.to_str().expect("utf-8 path")
            ));
        }
        std::fs::write(&config, text).expect("write config");
        let log = std::fs::File::create(&self.log).expect("log file");
        let mut cmd = match &options.netns {
            // nsenter execs the daemon: the child is stratad itself.
            Some(netns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", netns.display()))
                    .arg(bin("stratad"));
                cmd
            }
            None => Command::new(bin("stratad")),
        };
        cmd.arg("--config").arg(&config);
        if !options.paths_from_config {
            cmd.arg("--root").arg(&self.root);
            cmd.arg("--state-dir").arg(&self.state_dir);
            cmd.arg("--socket").arg(&self.socket);
        }
        cmd.args(&options.args)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn stratad"));
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("stratad exited before serving ({status}):\n{}", self.logs());
            }
            if let Ok(channel) = strata_api::connect_path(&self.socket).await
                && RuntimeServiceClient::new(channel)
                    .version(VersionRequest::default())
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stratad did not serve within {READY_TIMEOUT:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything the daemon wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        strata_api::connect_path(&self.socket)
            .await
            .expect("connect to stratad")
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    /// Runs `stratactl` against this daemon.
    pub fn ctl<I, S>(&self, args: I) -> CtlOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        ctl_at(&self.endpoint(), args)
    }

    /// Sends `signal` and waits for the exit (killing the daemon if it overstays).
    pub async fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().expect("wait for stratad");
                panic!(
                    "stratad ignored {signal} for {STOP_TIMEOUT:?} (killed: {status}):\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stop(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGTERM).await
    }

    /// Waits for a daemon that is about to kill itself (a crash point) and checks that it
    /// died of SIGKILL.
    pub async fn wait_crash(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        let mut child = self.child.take().expect("daemon running");
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("stratad did not crash:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(
            status.signal(),
            Some(Signal::SIGKILL as i32),
            "{status}:\n{}",
            self.logs()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Whatever a failed test left: container processes and their monitors (they outlive
        // the daemon by design), mounts below the daemon's directory, and its cgroups.
        kill_leftovers(self.dir.path(), Some(&self.cgroup_parent));
        for mount_point in mounts_below(self.dir.path()).into_iter().rev() {
            let _ = nix::mount::umount2(&mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
        remove_cgroup_tree(&self.cgroup_parent);
    }
}

/// SIGKILLs every process in the cgroups below `cgroup_parent`, the monitors the
/// daemon's records name, and every process whose command line names `dir`, then waits
/// for the cgroups to empty.
pub fn kill_leftovers(dir: &Path, cgroup_parent: Option<&str>) {
    let dir_text = dir.to_string_lossy().into_owned();
    let cgroup_pids = || -> Vec<i32> {
        let mut pids = Vec::new();
        // Never the root: only a named parent's tree.
        for top in cgroup_parent
            .filter(|p| !p.is_empty())
            .map(cgroup_dirs)
            .unwrap_or_default()
        {
            let mut stack = vec![top];
            while let Some(d) = stack.pop() {
                if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
                    pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
                for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(entry.path());
                    }
                }
            }
        }
        pids
    };
    let mut victims = cgroup_pids();
    // Monitors: their records name them (their command lines name no path).
    for entry in std::fs::read_dir(dir.join("root/containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let record: serde_json::Value = std::fs::read(entry.path().join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if let Some(pid) = record["monitor"][0].as_i64()
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__monitor"))
        {
            victims.push(pid as i32);
        }
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&dir_text) {
            victims.push(pid);
        }
    }
    for pid in &victims {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cgroup_pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mount points at or below `dir`, in mount order.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// The directories of cgroup `rel` in every hierarchy mounted under /sys/fs/cgroup.
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(rel)];
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        dirs.push(entry.path().join(rel));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// The directories right below `rel` in every hierarchy (a daemon's pods, below its parent).
pub fn cgroups_below(rel: &str) -> Vec<String> {
    cgroup_dirs(rel)
        .into_iter()
        .flat_map(|top| {
            std::fs::read_dir(&top)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().display().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Container monitors running on the machine (any daemon's).
pub fn monitors_running() -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__monitor"))
        })
        .count()
}

/// The cgroup of pod `id`, relative to the hierarchies' roots.
pub fn pod_cgroup(daemon: &Daemon, id: &str) -> String {
    format!("{}/pod-{id}", daemon.cgroup_parent)
}

/// Nothing of pod `id` is left: no record, no pins, no mounts, no cgroup.
#[track_caller]
pub fn assert_pod_gone(daemon: &Daemon, id: &str) {
    assert!(
        !daemon.root.join("sandboxes").join(id).exists(),
        "record left"
    );
    assert!(
        !daemon.state_dir.join("sandboxes").join(id).exists(),
        "pins left"
    );
    let mounts = mounts_below(&daemon.state_dir.join("sandboxes").join(id));
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let cgroups = cgroup_dirs(&pod_cgroup(daemon, id));
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
}

/// Removes cgroup `rel` and everything below it, deepest first, in every hierarchy.
pub fn remove_cgroup_tree(rel: &str) {
    for top in cgroup_dirs(rel) {
        remove_dir_tree(&top);
    }
}

/// Removes the (empty) cgroup directory `top` and those below it, deepest first.
pub fn remove_dir_tree(top: &Path) {
    let mut stack = vec![top.to_path_buf()];
    let mut order = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
        order.push(dir);
    }
    for dir in order.into_iter().rev() {
        let _ = std::fs::remove_dir(&dir);
    }
}

/// What a `stratactl` run printed and how it exited.
#[derive(Debug)]
pub struct CtlOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// Asserts a zero exit and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "stratactl failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts a failure reported as one clear line (no panic, no debug dump) and
    /// returns that line.
    #[track_caller]
    pub fn failed(&self) -> &str {
        assert!(
            !self.status.success(),
            "stratactl succeeded: {}",
            self.stdout
        );
        assert_eq!(self.status.signal(), None, "stratactl died of a signal");
        assert_clear_error(&self.stderr, "stratactl")
    }
}

/// Runs `stratactl --endpoint <endpoint> args...`.
pub fn ctl_at<I, S>(endpoint: &str, args: I) -> CtlOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(bin("stratactl"))
        .arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .env_remove("STRATA_ENDPOINT")
        .stdin(Stdio::null())
        .output()
        .expect("run stratactl");
    CtlOutput {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `stratad` with `args` and expects it to refuse to start; returns its one line.
pub fn stratad_refuses<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = Command::new(bin("stratad"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run stratad");
    assert!(
        !output.status.success(),
        "stratad started although it should not have: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.signal(), None, "stratad died of a signal");
    assert_eq!(output.status.code(), Some(1));
    assert_clear_error(&String::from_utf8_lossy(&output.stderr), "stratad").to_string()
}

/// A clear error is exactly one line, prefixed with the program's name, with no panic
/// message or Rust debug formatting in it.
#[track_caller]
fn assert_clear_error<'a>(stderr: &'a str, program: &str) -> &'a str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    let line = lines[0];
    assert!(
        line.starts_with(&format!("{program}: ")),
        "error line lacks the program name: {line}"
    );
    for debug_marker in ["panicked", "RUST_BACKTRACE", "Os {", "Status {", "kind:"] {
        assert!(!line.contains(debug_marker), "debug output in: {line}");
    }
    line
}

/// Layer directories and blobs present, and nothing half-written anywhere.
pub fn store_listing(daemon: &Daemon) -> (Vec<String>, Vec<String>) {
    let names = |dir: PathBuf| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let layers = names(daemon.root.join("layers"));
    assert!(
        layers.iter().all(|l| !l.starts_with('.')),
        "half-built layers left: {layers:?}"
    );
    assert!(
        names(daemon.root.join("ingest")).is_empty(),
        "ingest not empty"
    );
    (layers, names(daemon.root.join("blobs/sha256")))
}

/// Pulls `image` on the CRI endpoint `endpoint` (strata's or another runtime's).
pub async fn pull_on(endpoint: &str, image: &str) {
    use strata_api::cri::{ImageSpec, PullImageRequest, image_service_client::ImageServiceClient};
    let channel = strata_api::connect(endpoint).await.expect("connect");
    ImageServiceClient::new(channel)
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pull {image} on {endpoint}: {e}"));
}

/// A tmpfs mounted for one test and unmounted when it ends.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "strata-test",
                path.to_str().unwrap(),
            ])
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Held by whoever may run CNI's portmap plugin (`tests/portmap-chains.sh` says why). When
/// the last holder in the process goes, on a machine that had none of portmap's node-wide
/// chains before the first, they are removed.
pub struct Portmap;

/// Holders, and whether the chains were there before the first.
static PORTMAP: std::sync::Mutex<(usize, bool)> = std::sync::Mutex::new((0, false));

fn portmap_chains(verb: &str) -> bool {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/portmap-chains.sh"))
        .arg(verb)
        .status()
        .expect("tests/portmap-chains.sh")
        .success()
}

impl Portmap {
    pub fn hold() -> Portmap {
        let mut state = PORTMAP.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 == 0 {
            state.1 = portmap_chains("present");
        }
        state.0 += 1;
        Portmap
    }
}

impl Drop for Portmap {
    fn drop(&mut self) {
        let mut state = PORTMAP.lock().unwrap_or_else(|p| p.into_inner());
        state.0 -= 1;
        if state.0 == 0 && !state.1 {
            portmap_chains("remove");
        }
    }
}

/// A free TCP port on loopback (bound and let go; whoever asked takes it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a loopback port")
        .local_addr()
        .expect("its address")
        .port()
}

/// Compiles the C program `source` statically (gcc, which tests/run.sh installs) in `dir`
/// and returns the executable's bytes, for a test image's layer.
pub fn compile_static(dir: &Path, name: &str, source: &str) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let built = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.join(name))
        .arg(&src)
        .output()
        .expect("gcc (tests/run.sh installs it)");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::read(dir.join(name)).unwrap()
}

/// An image spec naming `image`.
pub fn image_spec(image: &str) -> Option<strata_api::cri::ImageSpec> {
    Some(strata_api::cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

/// GET `path` from a server on 127.0.0.1:`port` (the metrics page): its status line,
/// content type and body.
pub fn http_get(port: u16, path: &str) -> (String, String, String) {
    use std::io::{Read, Write};

    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_string();
    let kind = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (status, kind, body.to_string())
}
