//! The seam between the shim and the kernel: every privileged call a container's init or
//! an exec makes goes through [`Syscall`]. [`Linux`] makes the calls; [`Recorder`] (tests
//! only) writes down what would have been called, in order, so that the init's sequence
//! can be tested as data without root.

use std::{
    ffi::{CStr, CString},
    fs::File,
    io::{self, Write},
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

use rustix::thread::CapabilitySet;

use super::{
    mount::{self, Mount},
    rootdir::RootDir,
};

/// A namespace a process creates or joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    Mount,
    Network,
    Ipc,
    Uts,
    Pid,
}

impl Namespace {
    /// As the OCI spec names it (`network`, `mount`…).
    pub fn from_oci(kind: &str) -> Option<Namespace> {
        Some(match kind {
            "mount" => Namespace::Mount,
            "network" => Namespace::Network,
            "ipc" => Namespace::Ipc,
            "uts" => Namespace::Uts,
            "pid" => Namespace::Pid,
            _ => return None,
        })
    }

    /// As /proc/<pid>/ns names it.
    pub fn proc_name(self) -> &'static str {
        match self {
            Namespace::Mount => "mnt",
            Namespace::Network => "net",
            Namespace::Ipc => "ipc",
            Namespace::Uts => "uts",
            Namespace::Pid => "pid",
        }
    }

    fn flag(self) -> nix::sched::CloneFlags {
        use nix::sched::CloneFlags;
        match self {
            Namespace::Mount => CloneFlags::CLONE_NEWNS,
            Namespace::Network => CloneFlags::CLONE_NEWNET,
            Namespace::Ipc => CloneFlags::CLONE_NEWIPC,
            Namespace::Uts => CloneFlags::CLONE_NEWUTS,
            Namespace::Pid => CloneFlags::CLONE_NEWPID,
        }
    }
}

/// A resource limit (`setrlimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: rustix::process::Resource,
    pub soft: u64,
    pub hard: u64,
}

/// The resource an OCI `RLIMIT_*` name stands for.
pub fn rlimit_resource(name: &str) -> Option<rustix::process::Resource> {
    use rustix::process::Resource;
    Some(match name {
        "RLIMIT_AS" => Resource::As,
        "RLIMIT_CORE" => Resource::Core,
        "RLIMIT_CPU" => Resource::Cpu,
        "RLIMIT_DATA" => Resource::Data,
        "RLIMIT_FSIZE" => Resource::Fsize,
        "RLIMIT_LOCKS" => Resource::Locks,
        "RLIMIT_MEMLOCK" => Resource::Memlock,
        "RLIMIT_MSGQUEUE" => Resource::Msgqueue,
        "RLIMIT_NICE" => Resource::Nice,
        "RLIMIT_NOFILE" => Resource::Nofile,
        "RLIMIT_NPROC" => Resource::Nproc,
        "RLIMIT_RSS" => Resource::Rss,
        "RLIMIT_RTPRIO" => Resource::Rtprio,
        "RLIMIT_RTTIME" => Resource::Rttime,
        "RLIMIT_SIGPENDING" => Resource::Sigpending,
        "RLIMIT_STACK" => Resource::Stack,
        _ => return None,
    })
}

/// What a container's init and an exec ask of the kernel.
pub trait Syscall {
    /// Not dumpable until exec: nothing can ptrace or read /proc of the half-set-up process.
    fn set_non_dumpable(&mut self) -> io::Result<()>;
    /// Joins an existing namespace (a pinned file or /proc/<pid>/ns/…).
    fn join(&mut self, namespace: Namespace, path: &Path) -> io::Result<()>;
    /// Creates new namespaces for this process (PID: for its next child).
    fn unshare(&mut self, namespaces: &[Namespace]) -> io::Result<()>;
    /// One operation of the rootfs plan.
    fn mount(&mut self, mount: &Mount) -> io::Result<()>;
    /// Opens the start FIFO while the host's paths are in reach (O_PATH, no blocking).
    fn hold_start_fifo(&mut self, fifo: &Path) -> io::Result<()>;
    /// Blocks until StartContainer opens the held FIFO, then tells it `started` on it. The
    /// FIFO stays open (close-on-exec) so that the daemon reads its end at the exec.
    fn wait_for_start(&mut self, started: &[u8]) -> io::Result<()>;
    /// Writes on the held start FIFO (a failure after the release).
    fn tell_starter(&mut self, message: &[u8]) -> io::Result<()>;
    /// Enters the working directory, resolved inside the container's root (`/` by now);
    /// the init creates a missing one, an exec does not.
    fn enter_working_dir(&mut self, cwd: &Path, create: bool) -> io::Result<()>;
    /// `stdin` (or /dev/null) in, these out.
    fn redirect_stdio(
        &mut self,
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> io::Result<()>;
    /// The container's terminal: a new pty of the devpts at /dev/pts (the container's, by
    /// now), its slave owned by `uid`, this process's controlling terminal and its stdin,
    /// stdout and stderr; its master sent over `socket` to the monitor.
    fn console(&mut self, uid: u32, socket: OwnedFd) -> io::Result<()>;
    /// The first executable `name` in the directories of `path` (a `PATH` value).
    fn find_executable(&mut self, name: &str, path: &str) -> Option<PathBuf>;
    fn set_oom_score_adj(&mut self, adj: i64) -> io::Result<()>;
    fn set_rlimit(&mut self, limit: Rlimit) -> io::Result<()>;
    fn load_seccomp(&mut self, program: &[u8]) -> io::Result<()>;
    /// Drops every capability not in `keep` from the bounding set.
    fn limit_bounding_set(&mut self, keep: CapabilitySet) -> io::Result<()>;
    fn set_groups(&mut self, gids: &[u32]) -> io::Result<()>;
    fn set_gid(&mut self, gid: u32) -> io::Result<()>;
    fn set_uid(&mut self, uid: u32) -> io::Result<()>;
    /// The capabilities this process may still hold (its permitted set).
    fn permitted_capabilities(&mut self) -> io::Result<CapabilitySet>;
    fn set_capabilities(
        &mut self,
        effective: CapabilitySet,
        permitted: CapabilitySet,
    ) -> io::Result<()>;
    fn set_no_new_privs(&mut self) -> io::Result<()>;
    /// Marks every descriptor but 0-2 and `keep` close-on-exec.
    fn close_other_fds(&mut self, keep: &[RawFd]) -> io::Result<()>;
    /// Signal dispositions back to their defaults (what this process ignores, an exec keeps).
    fn reset_signals(&mut self) -> io::Result<()>;
    /// Confines the program this process execs next to the AppArmor profile `profile`
    /// (`exec <profile>` on the process's AppArmor exec attribute).
    fn set_apparmor_exec_profile(&mut self, profile: &str) -> io::Result<()>;
    /// Replaces this process; returns only the error.
    fn exec(&mut self, exe: &CStr, args: &[CString], env: &[CString]) -> io::Error;
}

/// The real kernel.
#[derive(Default)]
pub struct Linux {
    start_fifo: Option<OwnedFd>,
    starter: Option<File>,
}

impl Syscall for Linux {
    fn set_non_dumpable(&mut self) -> io::Result<()> {
        super::process::set_non_dumpable()
    }

    fn join(&mut self, namespace: Namespace, path: &Path) -> io::Result<()> {
        let file = File::open(path)?;
        nix::sched::setns(file.as_fd(), namespace.flag()).map_err(io::Error::from)
    }

    fn unshare(&mut self, namespaces: &[Namespace]) -> io::Result<()> {
        let flags = namespaces
            .iter()
            .fold(nix::sched::CloneFlags::empty(), |f, n| f | n.flag());
        nix::sched::unshare(flags).map_err(io::Error::from)
    }

    fn mount(&mut self, m: &Mount) -> io::Result<()> {
        mount::apply(m)
    }

    fn hold_start_fifo(&mut self, fifo: &Path) -> io::Result<()> {
        use rustix::fs::{Mode, OFlags};
        self.start_fifo = Some(rustix::fs::open(
            fifo,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        Ok(())
    }

    fn wait_for_start(&mut self, started: &[u8]) -> io::Result<()> {
        let fifo = self
            .start_fifo
            .take()
            .ok_or_else(|| io::Error::other("no start FIFO held"))?;
        // Blocks until StartContainer opens the other end. Reached through this
        // (non-dumpable, so root-owned) process's /proc entry: the FIFO's own path may be
        // out of reach after the pivot.
        let mut starter = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", fifo.as_raw_fd()))?;
        starter.write_all(started)?;
        self.starter = Some(starter);
        Ok(())
    }

    fn tell_starter(&mut self, message: &[u8]) -> io::Result<()> {
        match &mut self.starter {
            Some(starter) => starter.write_all(message),
            None => Ok(()),
        }
    }

    fn enter_working_dir(&mut self, cwd: &Path, create: bool) -> io::Result<()> {
        let root = RootDir::open_crossing_mounts(Path::new("/"))?;
        if create {
            root.ensure_dir(cwd)
                .map_err(|e| io::Error::new(e.kind(), format!("creating it: {e}")))?;
        }
        root.enter_dir(cwd)
    }

    fn redirect_stdio(
        &mut self,
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> io::Result<()> {
        let stdin = match stdin {
            Some(stdin) => stdin,
            None => File::open("/dev/null")?.into(),
        };
        nix::unistd::dup2_stdin(&stdin)?;
        nix::unistd::dup2_stdout(&stdout)?;
        nix::unistd::dup2_stderr(&stderr)?;
        Ok(())
    }

    fn console(&mut self, uid: u32, socket: OwnedFd) -> io::Result<()> {
        use nix::{fcntl::OFlag, pty};
        let master = pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
        pty::grantpt(&master)?;
        pty::unlockpt(&master)?;
        let name = pty::ptsname_r(&master)?;
        nix::unistd::setsid()?;
        // A session leader without a terminal acquires the first it opens.
        let slave: OwnedFd = File::options().read(true).write(true).open(&name)?.into();
        nix::unistd::fchown(&slave, Some(nix::unistd::Uid::from_raw(uid)), None)?;
        super::process::send_fd(socket.as_fd(), master.as_fd())?;
        nix::unistd::dup2_stdin(&slave)?;
        nix::unistd::dup2_stdout(&slave)?;
        nix::unistd::dup2_stderr(&slave)?;
        Ok(())
    }

    fn find_executable(&mut self, name: &str, path: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|dir| Path::new(dir).join(name))
            .find(|candidate| {
                std::fs::metadata(candidate)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    }

    fn set_oom_score_adj(&mut self, adj: i64) -> io::Result<()> {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
    }

    fn set_rlimit(&mut self, limit: Rlimit) -> io::Result<()> {
        rustix::process::setrlimit(
            limit.resource,
            rustix::process::Rlimit {
                current: Some(limit.soft),
                maximum: Some(limit.hard),
            },
        )?;
        Ok(())
    }

    fn load_seccomp(&mut self, program: &[u8]) -> io::Result<()> {
        super::seccomp::load_filter(program)
    }

    fn limit_bounding_set(&mut self, keep: CapabilitySet) -> io::Result<()> {
        super::process::limit_bounding_set(keep)
    }

    fn set_groups(&mut self, gids: &[u32]) -> io::Result<()> {
        let groups: Vec<nix::unistd::Gid> = gids
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups).map_err(io::Error::from)
    }

    fn set_gid(&mut self, gid: u32) -> io::Result<()> {
        let gid = nix::unistd::Gid::from_raw(gid);
        nix::unistd::setresgid(gid, gid, gid).map_err(io::Error::from)
    }

    fn set_uid(&mut self, uid: u32) -> io::Result<()> {
        let uid = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setresuid(uid, uid, uid).map_err(io::Error::from)
    }

    fn permitted_capabilities(&mut self) -> io::Result<CapabilitySet> {
        Ok(rustix::thread::capabilities(None)?.permitted)
    }

    fn set_capabilities(
        &mut self,
        effective: CapabilitySet,
        permitted: CapabilitySet,
    ) -> io::Result<()> {
        rustix::thread::set_capabilities(
            None,
            rustix::thread::CapabilitySets {
                effective,
                permitted,
                inheritable: CapabilitySet::empty(),
            },
        )?;
        Ok(())
    }

    fn set_no_new_privs(&mut self) -> io::Result<()> {
        Ok(rustix::thread::set_no_new_privs(true)?)
    }

    fn close_other_fds(&mut self, keep: &[RawFd]) -> io::Result<()> {
        super::process::close_other_fds(keep)
    }

    fn reset_signals(&mut self) -> io::Result<()> {
        super::process::reset_signal_dispositions()
    }

    fn set_apparmor_exec_profile(&mut self, profile: &str) -> io::Result<()> {
        // The per-LSM file (kernel 5.8 and later), else the shared one older kernels have.
        let line = format!("exec {profile}");
        let thread = |attr: &str| format!("/proc/thread-self/attr/{attr}");
        match std::fs::OpenOptions::new()
            .write(true)
            .open(thread("apparmor/exec"))
        {
            Ok(mut file) => file.write_all(line.as_bytes()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::OpenOptions::new()
                .write(true)
                .open(thread("exec"))?
                .write_all(line.as_bytes()),
            Err(e) => Err(e),
        }
    }

    fn exec(&mut self, exe: &CStr, args: &[CString], env: &[CString]) -> io::Error {
        match nix::unistd::execve(exe, args, env) {
            Err(e) => io::Error::from(e),
            Ok(never) => match never {},
        }
    }
}

/// One call a [`Recorder`] saw.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    SetNonDumpable,
    Join(Namespace, PathBuf),
    Unshare(Vec<Namespace>),
    Mount(Mount),
    HoldStartFifo(PathBuf),
    WaitForStart,
    TellStarter(Vec<u8>),
    EnterWorkingDir(PathBuf, bool),
    RedirectStdio,
    Console(u32),
    SetOomScoreAdj(i64),
    SetRlimit(Rlimit),
    LoadSeccomp(usize),
    LimitBoundingSet(CapabilitySet),
    SetGroups(Vec<u32>),
    SetGid(u32),
    SetUid(u32),
    SetCapabilities(CapabilitySet, CapabilitySet),
    SetNoNewPrivs,
    CloseOtherFds,
    ResetSignals,
    AppArmorExec(String),
    Exec(String, Vec<String>),
}

/// A fake kernel for tests: records every call, and fails the one `fail_on` matches.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    pub calls: Vec<Call>,
    /// Makes the first call for which it returns true fail with EPERM.
    pub fail_on: Option<fn(&Call) -> bool>,
    /// What `permitted_capabilities` answers (all, by default).
    pub held: Option<CapabilitySet>,
}

#[cfg(test)]
impl Recorder {
    fn record(&mut self, call: Call) -> io::Result<()> {
        let fails = self.fail_on.is_some_and(|f| f(&call));
        self.calls.push(call);
        if fails {
            self.fail_on = None;
            Err(io::Error::from_raw_os_error(libc::EPERM))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
impl Syscall for Recorder {
    fn set_non_dumpable(&mut self) -> io::Result<()> {
        self.record(Call::SetNonDumpable)
    }
    fn join(&mut self, namespace: Namespace, path: &Path) -> io::Result<()> {
        self.record(Call::Join(namespace, path.to_path_buf()))
    }
    fn unshare(&mut self, namespaces: &[Namespace]) -> io::Result<()> {
        self.record(Call::Unshare(namespaces.to_vec()))
    }
    fn mount(&mut self, m: &Mount) -> io::Result<()> {
        self.record(Call::Mount(m.clone()))
    }
    fn hold_start_fifo(&mut self, fifo: &Path) -> io::Result<()> {
        self.record(Call::HoldStartFifo(fifo.to_path_buf()))
    }
    fn wait_for_start(&mut self, _started: &[u8]) -> io::Result<()> {
        self.record(Call::WaitForStart)
    }
    fn tell_starter(&mut self, message: &[u8]) -> io::Result<()> {
        self.record(Call::TellStarter(message.to_vec()))
    }
    fn enter_working_dir(&mut self, cwd: &Path, create: bool) -> io::Result<()> {
        self.record(Call::EnterWorkingDir(cwd.to_path_buf(), create))
    }
    fn redirect_stdio(
        &mut self,
        _stdin: Option<OwnedFd>,
        _stdout: OwnedFd,
        _stderr: OwnedFd,
    ) -> io::Result<()> {
        self.record(Call::RedirectStdio)
    }
    fn console(&mut self, uid: u32, _socket: OwnedFd) -> io::Result<()> {
        self.record(Call::Console(uid))
    }
    fn find_executable(&mut self, name: &str, _path: &str) -> Option<PathBuf> {
        (name == "sh").then(|| PathBuf::from("/bin/sh"))
    }
    fn set_oom_score_adj(&mut self, adj: i64) -> io::Result<()> {
        self.record(Call::SetOomScoreAdj(adj))
    }
    fn set_rlimit(&mut self, limit: Rlimit) -> io::Result<()> {
        self.record(Call::SetRlimit(limit))
    }
    fn load_seccomp(&mut self, program: &[u8]) -> io::Result<()> {
        self.record(Call::LoadSeccomp(program.len()))
    }
    fn limit_bounding_set(&mut self, keep: CapabilitySet) -> io::Result<()> {
        self.record(Call::LimitBoundingSet(keep))
    }
    fn set_groups(&mut self, gids: &[u32]) -> io::Result<()> {
        self.record(Call::SetGroups(gids.to_vec()))
    }
    fn set_gid(&mut self, gid: u32) -> io::Result<()> {
        self.record(Call::SetGid(gid))
    }
    fn set_uid(&mut self, uid: u32) -> io::Result<()> {
        self.record(Call::SetUid(uid))
    }
    fn permitted_capabilities(&mut self) -> io::Result<CapabilitySet> {
        Ok(self.held.unwrap_or(CapabilitySet::all()))
    }
    fn set_capabilities(
        &mut self,
        effective: CapabilitySet,
        permitted: CapabilitySet,
    ) -> io::Result<()> {
        self.record(Call::SetCapabilities(effective, permitted))
    }
    fn set_no_new_privs(&mut self) -> io::Result<()> {
        self.record(Call::SetNoNewPrivs)
    }
    fn close_other_fds(&mut self, _keep: &[RawFd]) -> io::Result<()> {
        self.record(Call::CloseOtherFds)
    }
    fn reset_signals(&mut self) -> io::Result<()> {
        self.record(Call::ResetSignals)
    }
    fn set_apparmor_exec_profile(&mut self, profile: &str) -> io::Result<()> {
        self.record(Call::AppArmorExec(profile.to_string()))
    }
    fn exec(&mut self, exe: &CStr, args: &[CString], _env: &[CString]) -> io::Error {
        let call = Call::Exec(
            exe.to_string_lossy().into_owned(),
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        );
        match self.record(call) {
            Err(e) => e,
            // A recorder cannot replace the process: the exec "fails" once recorded.
            Ok(()) => io::Error::other("recorded"),
        }
    }
}
