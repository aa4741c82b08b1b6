//! The container's init: the child the monitor forks. In order: namespaces (the pod's,
//! joined, and new ones of its own), the rootfs plan (overlay, mounts, pivot_root, masks,
//! devices), the working directory, "ready" to the monitor, the wait for StartContainer
//! on the start FIFO, limits, then the identity (capability bounding set, groups, gid,
//! uid, capabilities, no_new_privs), the seccomp filter and exec. (The hostname is the
//! pod's: the UTS namespace it joins was given it when the pod's namespaces were pinned.)
//!
//! Every privileged call goes through `sys::Syscall`, so the sequence is tested here with
//! a recording fake. It runs in a freshly forked child of the single-threaded monitor.

use std::{
    convert::Infallible,
    ffi::CString,
    fs::File,
    io::Read,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use rustix::thread::CapabilitySet;

use super::{Error, Result, at};
use crate::{
    oci::{self, Message, Stage, spec::Spec},
    rootfs,
    sys::syscall::{Linux, Namespace, Rlimit, Syscall, rlimit_resource},
};

/// The init's ends of the pipes to the monitor.
pub struct Pipes {
    /// The monitor writes one byte once the init is in its cgroup.
    pub go: OwnedFd,
    /// Messages to the monitor; after the exec it closes by itself.
    pub sync: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The container's stdin pipe, when it has one.
    pub stdin: Option<OwnedFd>,
    /// On a terminal: the socket the pty's master goes to the monitor on.
    pub console: Option<OwnedFd>,
}

/// Runs the init on the real kernel. Never returns: it execs the entrypoint or exits.
pub fn run(spec: &Spec, pipes: Pipes) -> ! {
    let mut sys = Linux::default();
    let mut sync = File::from(pipes.sync);
    let others = Stdio {
        go: pipes.go,
        stdin: pipes.stdin,
        stdout: pipes.stdout,
        stderr: pipes.stderr,
        console: pipes.console,
    };
    let error = match setup_and_exec(spec, &mut sys, others, &mut sync) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let failure = Message::Failure {
        stage: error.stage(),
        message: error.to_string(),
    };
    let _ = oci::write_message(&mut sync, &failure);
    // After the release, StartContainer is reading the start FIFO: it hears it first-hand.
    if let Ok(line) = serde_json::to_vec(&failure) {
        let _ = sys.tell_starter(&[line.as_slice(), b"\n"].concat());
    }
    std::process::exit(127);
}

/// The init's ends of the pipes but the sync pipe.
pub struct Stdio {
    pub go: OwnedFd,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub console: Option<OwnedFd>,
}

/// Everything up to the exec; returns only on failure.
pub fn setup_and_exec(
    spec: &Spec,
    sys: &mut dyn Syscall,
    stdio: Stdio,
    sync: &mut File,
) -> Result<Infallible> {
    let Stdio {
        go,
        stdin,
        stdout,
        stderr,
        console,
    } = stdio;
    sys.set_non_dumpable()
        .map_err(at(Stage::Setup, || "prctl(PR_SET_DUMPABLE)".into()))?;
    let mut byte = [0u8; 1];
    File::from(go)
        .read_exact(&mut byte)
        .map_err(at(Stage::Setup, || "waiting for the monitor".into()))?;

    check_spec(spec)?;
    // Read and opened while the host's paths are still in reach.
    let seccomp = read_seccomp(spec)?;
    sys.hold_start_fifo(&spec.strata.start_fifo)
        .map_err(at(Stage::Setup, || {
            format!("opening {}", spec.strata.start_fifo.display())
        }))?;
    enter_namespaces(spec, sys)?;
    for m in rootfs::plan(spec) {
        sys.mount(&m).map_err(at(Stage::Mounts, || m.describe()))?;
    }
    enter_working_dir(spec, sys, true)?;
    match console {
        // The terminal is all of the container's stdio: the pipes are not used.
        Some(socket) => sys
            .console(spec.process.user.uid, socket)
            .map_err(at(Stage::Setup, || "the container's terminal".into()))?,
        None => sys
            .redirect_stdio(stdin, stdout, stderr)
            .map_err(at(Stage::Setup, || "redirecting stdio".into()))?,
    }
    let exe = resolve_executable(spec, sys)?;
    let (args, env) = (cstrings(&spec.process.args)?, cstrings(&spec.process.env)?);

    oci::write_message(sync, &Message::Ready { pid: None })
        .map_err(at(Stage::Setup, || "reporting ready".into()))?;
    // Still root here: the FIFO is reached through this process's /proc entry.
    let mut started = serde_json::to_vec(&Message::Started).unwrap_or_default();
    started.push(b'\n');
    sys.wait_for_start(&started)
        .map_err(at(Stage::Start, || "waiting for start".into()))?;
    apply_limits(spec, sys, &mut |warning| {
        let _ = oci::write_message(sync, &Message::Warning { message: warning });
    })?;
    confine_and_exec(
        spec,
        sys,
        &exe,
        &args,
        &env,
        seccomp.as_deref(),
        &[sync.as_raw_fd()],
    )
}

/// Refuses a spec the init could not carry out to its end, before anything is changed on
/// its account: unknown namespaces, capabilities or resource limits, NUL bytes.
fn check_spec(spec: &Spec) -> Result<()> {
    for ns in &spec.linux.namespaces {
        Namespace::from_oci(&ns.kind)
            .ok_or_else(|| Error::Spec(format!("unsupported namespace {:?}", ns.kind)))?;
    }
    let caps = &spec.process.capabilities;
    for names in [&caps.bounding, &caps.effective, &caps.permitted] {
        capability_set(names)?;
    }
    for limit in &spec.process.rlimits {
        rlimit_resource(&limit.kind)
            .ok_or_else(|| Error::Spec(format!("unknown resource limit {}", limit.kind)))?;
    }
    if spec.process.args.is_empty() {
        return Err(Error::Spec("no command to run".into()));
    }
    cstrings(&spec.process.args)?;
    cstrings(&spec.process.env)?;
    Ok(())
}

/// The container's seccomp program, if it has one.
pub fn read_seccomp(spec: &Spec) -> Result<Option<Vec<u8>>> {
    spec.strata
        .seccomp
        .as_ref()
        .map(|path| {
            std::fs::read(path)
                .map_err(at(Stage::Seccomp, || format!("reading {}", path.display())))
        })
        .transpose()
}

/// Joins the pod's namespaces and creates the container's own (the monitor made the PID
/// namespace before forking).
fn enter_namespaces(spec: &Spec, sys: &mut dyn Syscall) -> Result<()> {
    let mut fresh = vec![Namespace::Mount];
    for ns in &spec.linux.namespaces {
        let kind = Namespace::from_oci(&ns.kind)
            .ok_or_else(|| Error::Spec(format!("unsupported namespace {:?}", ns.kind)))?;
        match (kind, &ns.path) {
            (Namespace::Pid, _) => continue,
            (kind, Some(path)) => sys.join(kind, path).map_err(at(Stage::Namespaces, || {
                format!("joining {} namespace {}", ns.kind, path.display())
            }))?,
            (Namespace::Mount, None) => {}
            (kind, None) => fresh.push(kind),
        }
    }
    sys.unshare(&fresh)
        .map_err(at(Stage::Namespaces, || "unshare".into()))
}

/// Enters the process's working directory, resolved inside the container's root (which is
/// `/` by now) the safe way: a symlink there, however planted, cannot lead out of it. The
/// init creates a missing one, as other runtimes do; an exec does not.
pub fn enter_working_dir(spec: &Spec, sys: &mut dyn Syscall, create: bool) -> Result<()> {
    let cwd = if spec.process.cwd.is_empty() {
        "/"
    } else {
        spec.process.cwd.as_str()
    };
    sys.enter_working_dir(Path::new(cwd), create)
        .map_err(at(Stage::WorkingDir, || {
            format!("entering working directory {cwd}")
        }))
}

/// The OOM score adjustment and the resource limits, as root. Lowering the OOM score needs
/// CAP_SYS_RESOURCE, which some hosts' root lacks: then the inherited value stays, `warn`
/// is told, and the start goes on.
pub fn apply_limits(
    spec: &Spec,
    sys: &mut dyn Syscall,
    warn: &mut dyn FnMut(String),
) -> Result<()> {
    if let Some(adj) = spec.process.oom_score_adj
        && let Err(e) = sys.set_oom_score_adj(adj)
    {
        warn(format!("oom_score_adj {adj} not applied: {e}"));
    }
    for limit in &spec.process.rlimits {
        let resource = rlimit_resource(&limit.kind)
            .ok_or_else(|| Error::Spec(format!("unknown resource limit {}", limit.kind)))?;
        sys.set_rlimit(Rlimit {
            resource,
            soft: limit.soft,
            hard: limit.hard,
        })
        .map_err(at(Stage::Limits, || {
            format!("setting {} to {}", limit.kind, limit.hard)
        }))?;
    }
    Ok(())
}

/// The last steps before the container's process runs: its user and capabilities, the
/// seccomp filter, only the standard descriptors (and `keep`), execve. Without
/// no_new_privs loading a filter needs CAP_SYS_ADMIN, so it comes before the privileges
/// go (the filter must then allow the calls that drop them, as RuntimeDefault does);
/// with no_new_privs it comes last, so that as few calls as possible happen under it.
/// Returns only on failure.
pub fn confine_and_exec(
    spec: &Spec,
    sys: &mut dyn Syscall,
    exe: &CString,
    args: &[CString],
    env: &[CString],
    seccomp: Option<&[u8]>,
    keep: &[i32],
) -> Result<Infallible> {
    // First, so that no seccomp profile can stand in its way.
    sys.reset_signals()
        .map_err(at(Stage::Setup, || "resetting signal dispositions".into()))?;
    // The profile takes effect at the exec; set while privileged and before no_new_privs,
    // which would forbid the transition.
    if let Some(profile) = &spec.process.apparmor_profile {
        sys.set_apparmor_exec_profile(profile)
            .map_err(at(Stage::AppArmor, || {
                format!("AppArmor profile {profile}")
            }))?;
    }
    let nnp = spec.process.no_new_privileges;
    let load = |sys: &mut dyn Syscall, program: &[u8]| {
        sys.load_seccomp(program)
            .map_err(at(Stage::Seccomp, || "loading the seccomp filter".into()))
    };
    if let Some(program) = seccomp
        && !nnp
    {
        load(sys, program)?;
    }
    drop_privileges(spec, sys)?;
    if nnp {
        sys.set_no_new_privs()
            .map_err(at(Stage::User, || "no_new_privs".into()))?;
    }
    sys.close_other_fds(keep)
        .map_err(at(Stage::Setup, || "closing descriptors".into()))?;
    if let Some(program) = seccomp
        && nnp
    {
        load(sys, program)?;
    }
    let e = sys.exec(exe, args, env);
    Err(Error::Sys {
        stage: Stage::Exec,
        what: format!(
            "exec {}",
            spec.process.args.first().map_or("", String::as_str)
        ),
        source: e,
    })
}

/// Resolves and execs `spec.process.args` as the container's user, for a process joining
/// a running container. Returns only on failure.
pub fn exec_as_container(
    spec: &Spec,
    sys: &mut dyn Syscall,
    seccomp: Option<&[u8]>,
) -> Result<Infallible> {
    let exe = resolve_executable(spec, sys)?;
    let (args, env) = (cstrings(&spec.process.args)?, cstrings(&spec.process.env)?);
    confine_and_exec(spec, sys, &exe, &args, &env, seccomp, &[])
}

fn cstrings(items: &[String]) -> Result<Vec<CString>> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| Error::Spec(format!("{s:?} contains a NUL byte")))
        })
        .collect()
}

/// The entrypoint as a path: as given if it has a '/', else searched in the container's PATH.
fn resolve_executable(spec: &Spec, sys: &mut dyn Syscall) -> Result<CString> {
    let arg0 = spec
        .process
        .args
        .first()
        .ok_or_else(|| Error::Spec("no command to run".into()))?;
    if arg0.contains('/') {
        return CString::new(arg0.as_bytes())
            .map_err(|_| Error::Spec("the command contains a NUL byte".into()));
    }
    let path = spec
        .process
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let found = sys
        .find_executable(arg0, path)
        .ok_or_else(|| Error::NotFound(arg0.clone()))?;
    CString::new(found.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Spec("the command's path contains a NUL byte".into()))
}

/// The capability bounding set, groups, gid, uid and (for root) the effective and
/// permitted capabilities, in that order: the ids change while CAP_SETUID/SETGID are
/// still held.
fn drop_privileges(spec: &Spec, sys: &mut dyn Syscall) -> Result<()> {
    let caps = &spec.process.capabilities;
    let user = &spec.process.user;
    let bounding = capability_set(&caps.bounding)?;
    sys.limit_bounding_set(bounding)
        .map_err(at(Stage::User, || {
            "dropping capabilities from the bounding set".into()
        }))?;
    sys.set_groups(&user.additional_gids)
        .map_err(at(Stage::User, || "setgroups".into()))?;
    sys.set_gid(user.gid)
        .map_err(at(Stage::User, || format!("setgid {}", user.gid)))?;
    sys.set_uid(user.uid)
        .map_err(at(Stage::User, || format!("setuid {}", user.uid)))?;
    // A process can only keep capabilities it has: on a host whose root lacks some (say
    // CAP_SYS_RESOURCE), "all" means all of root's.
    let held = sys
        .permitted_capabilities()
        .map_err(at(Stage::User, || "reading capabilities".into()))?;
    let effective = capability_set(&caps.effective)? & held;
    let permitted = capability_set(&caps.permitted)? & held;
    if user.uid == 0 {
        sys.set_capabilities(effective, permitted)
            .map_err(at(Stage::User, || "setting capabilities".into()))?;
    }
    Ok(())
}

fn capability_set(names: &[String]) -> Result<CapabilitySet> {
    names.iter().try_fold(CapabilitySet::empty(), |set, name| {
        oci::caps::bit(name)
            .map(|bit| set | bit)
            .ok_or_else(|| Error::Spec(format!("unknown capability {name}")))
    })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};

    use super::*;
    use crate::{
        oci::spec::{Mount as SpecMount, Namespace as SpecNamespace, Rlimit as SpecRlimit},
        sys::{
            mount::Mount,
            syscall::{Call, Recorder},
        },
    };

    fn spec(no_new_privileges: bool) -> Spec {
        let mut s = Spec::default();
        s.process.args = vec!["/bin/sh".into(), "-c".into(), "true".into()];
        s.process.cwd = "/work".into();
        s.process.user.uid = 1000;
        s.process.user.gid = 1000;
        s.process.user.additional_gids = vec![10];
        s.process.capabilities.bounding = vec!["CAP_CHOWN".into(), "CAP_KILL".into()];
        s.process.capabilities.effective = vec!["CAP_CHOWN".into()];
        s.process.capabilities.permitted = vec!["CAP_CHOWN".into()];
        s.process.no_new_privileges = no_new_privileges;
        s.process.oom_score_adj = Some(500);
        s.process.rlimits = vec![SpecRlimit {
            kind: "RLIMIT_NOFILE".into(),
            soft: 1024,
            hard: 4096,
        }];
        s.root.path = "/c/rootfs".into();
        s.strata.start_fifo = "/c/start".into();
        s.linux.namespaces = vec![
            SpecNamespace {
                kind: "network".into(),
                path: Some("/pins/net".into()),
            },
            SpecNamespace {
                kind: "ipc".into(),
                path: None,
            },
            SpecNamespace {
                kind: "pid".into(),
                path: None,
            },
        ];
        s.mounts = vec![SpecMount {
            destination: "/proc".into(),
            kind: "proc".into(),
            source: "proc".into(),
            options: vec![],
        }];
        s.linux.masked_paths = vec!["/proc/kcore".into()];
        s
    }

    /// Runs the init against `sys` with a seccomp program (when `seccomp`), returns the
    /// error it ended with and the messages it sent the monitor.
    fn run_init(spec: &mut Spec, sys: &mut Recorder, seccomp: bool) -> (Error, Vec<Message>) {
        let dir = tempfile::tempdir().unwrap();
        if seccomp {
            let path = dir.path().join("seccomp.bpf");
            std::fs::write(&path, [0u8; 16]).unwrap();
            spec.strata.seccomp = Some(path);
        }
        let pipe = || {
            let (r, w) = std::io::pipe().unwrap();
            (OwnedFd::from(r), OwnedFd::from(w))
        };
        let (go_r, go_w) = pipe();
        File::from(go_w).write_all(b"g").unwrap();
        let (sync_r, sync_w) = pipe();
        let (_out_r, out_w) = pipe();
        let (_err_r, err_w) = pipe();
        let mut sync = File::from(sync_w);
        let console = spec.process.terminal.then(|| pipe().1);
        let stdio = Stdio {
            go: go_r,
            stdin: None,
            stdout: out_w,
            stderr: err_w,
            console,
        };
        let error = match setup_and_exec(spec, sys, stdio, &mut sync) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        drop(sync);
        let messages = BufReader::new(File::from(sync_r))
            .lines()
            .map(|l| oci::parse(&l.unwrap()).unwrap())
            .collect();
        (error, messages)
    }

    fn position(calls: &[Call], what: impl Fn(&Call) -> bool) -> usize {
        calls
            .iter()
            .position(what)
            .unwrap_or_else(|| panic!("not called: {calls:#?}"))
    }

    #[test]
    fn the_init_goes_namespaces_mounts_pivot_ids_caps_nnp_seccomp_exec() {
        let mut sys = Recorder::default();
        let (error, messages) = run_init(&mut spec(true), &mut sys, true);
        // The recorder cannot exec: the last step is the exec, and it "fails".
        assert_eq!(error.stage(), Stage::Exec, "{error}");
        let calls = &sys.calls;
        assert_eq!(calls[0], Call::SetNonDumpable);
        assert_eq!(
            calls.last(),
            Some(&Call::Exec(
                "/bin/sh".into(),
                vec!["/bin/sh".into(), "-c".into(), "true".into()]
            ))
        );
        let order = [
            position(calls, |c| matches!(c, Call::HoldStartFifo(_))),
            position(calls, |c| matches!(c, Call::Join(Namespace::Network, _))),
            position(calls, |c| {
                *c == Call::Unshare(vec![Namespace::Mount, Namespace::Ipc])
            }),
            position(calls, |c| matches!(c, Call::Mount(Mount::Overlay { .. }))),
            position(calls, |c| matches!(c, Call::Mount(Mount::InRoot { .. }))),
            position(calls, |c| matches!(c, Call::Mount(Mount::Pivot(_)))),
            position(calls, |c| matches!(c, Call::Mount(Mount::Mask(_)))),
            position(calls, |c| *c == Call::EnterWorkingDir("/work".into(), true)),
            position(calls, |c| *c == Call::RedirectStdio),
            position(calls, |c| *c == Call::WaitForStart),
            position(calls, |c| *c == Call::SetOomScoreAdj(500)),
            position(calls, |c| matches!(c, Call::SetRlimit(_))),
            position(calls, |c| *c == Call::ResetSignals),
            position(calls, |c| matches!(c, Call::LimitBoundingSet(_))),
            position(calls, |c| *c == Call::SetGroups(vec![10])),
            position(calls, |c| *c == Call::SetGid(1000)),
            position(calls, |c| *c == Call::SetUid(1000)),
            position(calls, |c| *c == Call::SetNoNewPrivs),
            position(calls, |c| *c == Call::CloseOtherFds),
            position(calls, |c| *c == Call::LoadSeccomp(16)),
            calls.len() - 1,
        ];
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{order:?} in {calls:#?}"
        );
        // Not root: no capabilities kept.
        assert!(!calls.iter().any(|c| matches!(c, Call::SetCapabilities(..))));
        assert_eq!(
            calls
                .iter()
                .find(|c| matches!(c, Call::LimitBoundingSet(_))),
            Some(&Call::LimitBoundingSet(
                CapabilitySet::CHOWN | CapabilitySet::KILL
            ))
        );
        // The monitor heard "ready" (and nothing else: the exec failure is the caller's
        // to send).
        assert_eq!(messages, vec![Message::Ready { pid: None }]);
    }

    #[test]
    fn on_a_terminal_the_pty_is_the_stdio_made_in_the_containers_root_before_the_identity_drop() {
        let mut sys = Recorder::default();
        let mut s = spec(true);
        s.process.terminal = true;
        run_init(&mut s, &mut sys, false);
        let calls = &sys.calls;
        assert!(!calls.contains(&Call::RedirectStdio), "{calls:#?}");
        let pivot = position(calls, |c| matches!(c, Call::Mount(Mount::Pivot(_))));
        // The slave is given to the container's user while still root.
        let console = position(calls, |c| *c == Call::Console(1000));
        let uid = position(calls, |c| *c == Call::SetUid(1000));
        assert!(pivot < console && console < uid, "{calls:#?}");
    }

    #[test]
    fn without_no_new_privs_the_filter_is_loaded_while_still_privileged() {
        // A host whose root lacks CAP_KILL: asked for, it is not kept.
        let mut sys = Recorder {
            held: Some(CapabilitySet::CHOWN | CapabilitySet::SETUID),
            ..Default::default()
        };
        let mut s = spec(false);
        s.process.user.uid = 0;
        s.process.capabilities.effective = vec!["CAP_CHOWN".into(), "CAP_KILL".into()];
        s.process.capabilities.permitted = vec!["CAP_CHOWN".into(), "CAP_KILL".into()];
        run_init(&mut s, &mut sys, true);
        let calls = &sys.calls;
        let seccomp = position(calls, |c| matches!(c, Call::LoadSeccomp(_)));
        let bounding = position(calls, |c| matches!(c, Call::LimitBoundingSet(_)));
        let wait = position(calls, |c| *c == Call::WaitForStart);
        assert!(wait < seccomp && seccomp < bounding, "{calls:#?}");
        assert!(!calls.contains(&Call::SetNoNewPrivs));
        // Root keeps its capabilities, cut to what the process holds.
        assert!(calls.contains(&Call::SetCapabilities(
            CapabilitySet::CHOWN,
            CapabilitySet::CHOWN
        )));
    }

    #[test]
    fn the_apparmor_profile_is_set_for_the_exec_while_still_privileged() {
        for nnp in [true, false] {
            let mut sys = Recorder::default();
            let mut s = spec(nnp);
            s.process.apparmor_profile = Some("strata-default".into());
            run_init(&mut s, &mut sys, true);
            let calls = &sys.calls;
            let apparmor = position(calls, |c| *c == Call::AppArmorExec("strata-default".into()));
            let reset = position(calls, |c| *c == Call::ResetSignals);
            let seccomp = position(calls, |c| matches!(c, Call::LoadSeccomp(_)));
            let uid = position(calls, |c| matches!(c, Call::SetUid(_)));
            let exec = position(calls, |c| matches!(c, Call::Exec(..)));
            assert!(reset < apparmor, "{calls:#?}");
            assert!(
                apparmor < seccomp && apparmor < uid && uid < exec,
                "{calls:#?}"
            );
            if nnp {
                assert!(apparmor < position(calls, |c| *c == Call::SetNoNewPrivs));
            }
        }
        // Unconfined: the attribute is left alone.
        let mut sys = Recorder::default();
        run_init(&mut spec(true), &mut sys, true);
        assert!(!sys.calls.iter().any(|c| matches!(c, Call::AppArmorExec(_))));
        // Refused by the kernel: the init stops there, with its stage.
        let mut sys = Recorder {
            fail_on: Some(|c| matches!(c, Call::AppArmorExec(_))),
            ..Default::default()
        };
        let mut s = spec(true);
        s.process.apparmor_profile = Some("missing".into());
        let (error, _) = run_init(&mut s, &mut sys, false);
        assert_eq!(error.stage(), Stage::AppArmor);
        assert!(
            error.to_string().contains("AppArmor profile missing"),
            "{error}"
        );
        assert!(!sys.calls.iter().any(|c| matches!(c, Call::Exec(..))));
    }

    #[test]
    fn a_failed_step_stops_the_init_there_with_its_stage() {
        let mut sys = Recorder {
            fail_on: Some(|c| matches!(c, Call::Mount(Mount::Pivot(_)))),
            ..Default::default()
        };
        let (error, messages) = run_init(&mut spec(true), &mut sys, false);
        assert_eq!(error.stage(), Stage::Mounts);
        assert!(error.to_string().contains("pivot_root"), "{error}");
        assert!(matches!(
            sys.calls.last(),
            Some(Call::Mount(Mount::Pivot(_)))
        ));
        // Nothing after it: no ready, no identity change, no exec.
        assert!(messages.is_empty());
        assert!(
            !sys.calls
                .iter()
                .any(|c| matches!(c, Call::SetUid(_) | Call::Exec(..)))
        );
    }

    #[test]
    fn a_refused_oom_score_is_a_warning_and_the_start_goes_on() {
        let mut sys = Recorder {
            fail_on: Some(|c| matches!(c, Call::SetOomScoreAdj(_))),
            ..Default::default()
        };
        let (error, messages) = run_init(&mut spec(true), &mut sys, false);
        assert_eq!(error.stage(), Stage::Exec);
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            matches!(&messages[1], Message::Warning { message } if message.contains("oom_score_adj 500")),
            "{messages:?}"
        );
    }

    #[test]
    fn bad_specs_fail_before_anything_is_changed_on_their_account() {
        let mut s = spec(true);
        s.linux.namespaces.push(SpecNamespace {
            kind: "time".into(),
            path: None,
        });
        let mut sys = Recorder::default();
        let (error, _) = run_init(&mut s, &mut sys, false);
        assert!(matches!(error, Error::Spec(_)), "{error}");
        assert!(
            !sys.calls
                .iter()
                .any(|c| matches!(c, Call::Unshare(_) | Call::Mount(_)))
        );

        let mut s = spec(true);
        s.process.capabilities.bounding.push("CAP_NOPE".into());
        let mut sys = Recorder::default();
        let (error, _) = run_init(&mut s, &mut sys, false);
        assert!(error.to_string().contains("CAP_NOPE"), "{error}");
        assert!(
            !sys.calls
                .iter()
                .any(|c| matches!(c, Call::LimitBoundingSet(_)))
        );

        let mut s = spec(true);
        s.process.args = vec!["no-such-binary".into()];
        let mut sys = Recorder::default();
        let (error, messages) = run_init(&mut s, &mut sys, false);
        assert_eq!(error.stage(), Stage::NotFound);
        assert!(messages.is_empty(), "not ready: {messages:?}");
    }
}
