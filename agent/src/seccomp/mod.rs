//! seccomp profiles: the OCI/Docker JSON format, the agent's RuntimeDefault, and their
//! compilation into the BPF program a container's init (and every exec) loads.
//!
//! The daemon compiles, with libseccomp (the compiler runc, crun and youki use: syscall
//! names resolved for every architecture, argument comparisons, a binary-tree filter); the
//! processes inside only load the finished program, so they need nothing but seccomp(2).

mod default;

use std::{
    collections::HashMap,
    io::{Read as _, Seek as _},
    path::Path,
    sync::Arc,
};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::{Deserialize, Serialize};

pub use default::runtime_default;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seccomp profile {path}: {reason}")]
    Profile { path: String, reason: String },
    #[error("seccomp profile: unknown action {0:?}")]
    Action(String),
    #[error("seccomp profile: unknown comparison {0:?}")]
    Operator(String),
    #[error("seccomp profile: {0}")]
    Invalid(String),
    #[error("compiling the seccomp filter: {0}")]
    Compile(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Which profile a container runs under (CRI `SecurityProfile` or the deprecated
/// `seccomp_profile_path` string).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Choice {
    #[default]
    Unconfined,
    RuntimeDefault,
    /// A profile file on the node, by absolute path.
    Localhost(String),
}

impl Choice {
    /// The deprecated string form: `runtime/default`, `docker/default`, `unconfined`,
    /// `localhost/<absolute path>`, or empty (unconfined). Anything else is refused.
    pub fn from_path_string(text: &str) -> Result<Choice> {
        match text {
            "" | "unconfined" => Ok(Choice::Unconfined),
            "runtime/default" | "docker/default" => Ok(Choice::RuntimeDefault),
            _ => match text.strip_prefix("localhost/") {
                Some(path) => Choice::localhost(path),
                None => Err(Error::Invalid(format!(
                    "{text:?} is none of runtime/default, docker/default, unconfined, localhost/<path>"
                ))),
            },
        }
    }

    /// A Localhost profile: its path must be absolute.
    pub fn localhost(path: &str) -> Result<Choice> {
        if Path::new(path).is_absolute() {
            Ok(Choice::Localhost(path.to_string()))
        } else {
            Err(Error::Invalid(format!(
                "the localhost profile path {path:?} must be absolute"
            )))
        }
    }
}

/// A profile, in the JSON format of the OCI runtime spec's `linux.seccomp` and Docker's
/// profiles (`archMap`, `includes`/`excludes`). Fields this agent does not act on (a
/// notify listener) are refused rather than ignored where they would weaken the profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub arch_map: Vec<ArchMap>,
    #[serde(default)]
    pub syscalls: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default)]
    pub sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub names: Vec<String>,
    /// The old single-name form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Arg>,
    #[serde(default)]
    pub includes: Condition,
    #[serde(default)]
    pub excludes: Condition,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

/// When a rule applies: capabilities the container holds, the node's architecture
/// (GOARCH names, as Docker's profiles use), a kernel version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arches: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

impl Profile {
    /// Reads a Localhost profile file (at most 1 MiB of JSON). Opened without blocking: a
    /// FIFO or a device there must not hang the create that asked for it.
    pub fn load(path: &str) -> Result<Profile> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let err = |reason: String| Error::Profile {
            path: path.to_string(),
            reason,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(err("not a regular file".into()));
        }
        let mut text = Vec::new();
        file.take(1 << 20)
            .read_to_end(&mut text)
            .map_err(|e| err(e.to_string()))?;
        serde_json::from_slice(&text).map_err(|e| err(e.to_string()))
    }
}

/// The node's architecture as Docker's profiles name it, with libseccomp's name for it.
fn native_arch() -> (&'static str, ScmpArch) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", ScmpArch::X8664),
        "aarch64" => ("arm64", ScmpArch::Aarch64),
        "x86" => ("386", ScmpArch::X86),
        "arm" => ("arm", ScmpArch::Arm),
        "s390x" => ("s390x", ScmpArch::S390X),
        "powerpc64" => ("ppc64le", ScmpArch::Ppc64Le),
        "riscv64" => ("riscv64", ScmpArch::Riscv64),
        other => (other, ScmpArch::Native),
    }
}

fn scmp_arch(name: &str) -> Option<ScmpArch> {
    Some(match name {
        "SCMP_ARCH_X86" => ScmpArch::X86,
        "SCMP_ARCH_X86_64" => ScmpArch::X8664,
        "SCMP_ARCH_X32" => ScmpArch::X32,
        "SCMP_ARCH_ARM" => ScmpArch::Arm,
        "SCMP_ARCH_AARCH64" => ScmpArch::Aarch64,
        "SCMP_ARCH_S390" => ScmpArch::S390,
        "SCMP_ARCH_S390X" => ScmpArch::S390X,
        "SCMP_ARCH_PPC64LE" => ScmpArch::Ppc64Le,
        "SCMP_ARCH_RISCV64" => ScmpArch::Riscv64,
        _ => return None,
    })
}

fn action(name: &str, errno: Option<u32>) -> Result<ScmpAction> {
    // EPERM when a profile gives no errno, as runc does.
    let errno = errno.unwrap_or(1) as i32;
    Ok(match name {
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        "SCMP_ACT_TRACE" => ScmpAction::Trace(errno as u16),
        // A notify action needs a listener the agent does not run: a profile relying on
        // one would be silently weaker, so it is refused.
        other => return Err(Error::Action(other.to_string())),
    })
}

fn compare(arg: &Arg) -> Result<ScmpArgCompare> {
    if arg.index > 5 {
        return Err(Error::Invalid(format!(
            "syscall argument {} does not exist",
            arg.index
        )));
    }
    let op = match arg.op.as_str() {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        // The mask is `value`, the datum compared with `valueTwo`.
        "SCMP_CMP_MASKED_EQ" => {
            return Ok(ScmpArgCompare::new(
                arg.index,
                ScmpCompareOp::MaskedEqual(arg.value),
                arg.value_two,
            ));
        }
        other => return Err(Error::Operator(other.to_string())),
    };
    Ok(ScmpArgCompare::new(arg.index, op, arg.value))
}

/// The running kernel's version as (major, minor).
fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_version(&release).unwrap_or((0, 0))
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether a rule applies to a container with capabilities `caps` on this node.
fn applies(rule: &Rule, caps: &[String], arch: &str, kernel: (u32, u32)) -> bool {
    let has = |c: &String| caps.iter().any(|held| held == c);
    let inc = &rule.includes;
    let exc = &rule.excludes;
    inc.caps.iter().all(has)
        && (inc.arches.is_empty() || inc.arches.iter().any(|a| a == arch))
        && inc
            .min_kernel
            .as_deref()
            .and_then(parse_version)
            .is_none_or(|min| kernel >= min)
        && !exc.caps.iter().any(has)
        && !exc.arches.iter().any(|a| a == arch)
        && exc
            .min_kernel
            .as_deref()
            .and_then(parse_version)
            .is_none_or(|min| kernel < min)
}

/// Compiled programs by profile and capabilities: libseccomp takes milliseconds for the
/// RuntimeDefault profile, and most containers of a node share a few such pairs.
#[derive(Default)]
pub struct Cache {
    programs: std::sync::Mutex<Programs>,
}

/// Programs by (the profile as JSON, the sorted capabilities).
type Programs = HashMap<(Vec<u8>, Vec<String>), Arc<Vec<u8>>>;

/// Past this many programs the cache starts over (a node of many distinct profiles).
const CACHE_ENTRIES: usize = 64;

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Programs> {
        self.programs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The program for `profile` and `caps`, compiled once.
    pub fn program(&self, profile: &Profile, caps: &[String]) -> Result<Arc<Vec<u8>>> {
        let mut caps = caps.to_vec();
        caps.sort();
        let key = (
            serde_json::to_vec(profile).map_err(|e| Error::Invalid(e.to_string()))?,
            caps,
        );
        if let Some(program) = self.lock().get(&key) {
            return Ok(Arc::clone(program));
        }
        let program = Arc::new(compile(profile, &key.1)?);
        let mut programs = self.lock();
        if programs.len() >= CACHE_ENTRIES {
            programs.clear();
        }
        programs.insert(key, Arc::clone(&program));
        Ok(program)
    }
}

/// Compiles `profile` for a container whose bounding capabilities are `caps` into the BPF
/// program (an array of `struct sock_filter`) that seccomp(2) loads.
pub fn compile(profile: &Profile, caps: &[String]) -> Result<Vec<u8>> {
    let fail = |e: libseccomp::error::SeccompError| Error::Compile(e.to_string());
    let default = action(&profile.default_action, profile.default_errno_ret)?;
    let mut ctx = ScmpFilterContext::new(default).map_err(fail)?;
    // The filter must not set no_new_privs itself: that is the container's choice.
    ctx.set_ctl_nnp(false).map_err(fail)?;
    // A binary tree of the syscall numbers rather than a list: every system call of the
    // container is checked against the program, so its length is paid all the time.
    ctx.set_ctl_optimize(2).map_err(fail)?;
    let (arch, native) = native_arch();
    // The native architecture is always there; the others a profile lists are added when
    // they run on this node (x86 and x32 on x86-64), so that a 32-bit call cannot bypass it.
    let mut extra: Vec<String> = profile.architectures.clone();
    for map in &profile.arch_map {
        if scmp_arch(&map.architecture) == Some(native) {
            extra.extend(map.sub_architectures.iter().flatten().cloned());
        }
    }
    for name in extra {
        match scmp_arch(&name) {
            Some(a) if a == native => {}
            Some(a @ (ScmpArch::X86 | ScmpArch::X32)) if native == ScmpArch::X8664 => {
                ctx.add_arch(a).map_err(fail)?;
            }
            Some(a @ ScmpArch::Arm) if native == ScmpArch::Aarch64 => {
                ctx.add_arch(a).map_err(fail)?;
            }
            Some(_) => {}
            None => return Err(Error::Invalid(format!("unknown architecture {name:?}"))),
        }
    }
    let kernel = kernel_version();
    for rule in &profile.syscalls {
        let act = action(&rule.action, rule.errno_ret)?;
        if !applies(rule, caps, arch, kernel) || act == default {
            continue;
        }
        let comparisons: Vec<ScmpArgCompare> =
            rule.args.iter().map(compare).collect::<Result<_>>()?;
        // Two conditions on one argument mean either (libseccomp takes one per argument
        // and rule): one rule each. Otherwise all of them, in one rule.
        let mut indexes: Vec<u32> = rule.args.iter().map(|a| a.index).collect();
        indexes.sort_unstable();
        let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
        let groups: Vec<Vec<ScmpArgCompare>> = if repeated {
            comparisons.into_iter().map(|c| vec![c]).collect()
        } else {
            vec![comparisons]
        };
        for name in rule.names.iter().chain(rule.name.iter()) {
            // A name this architecture does not have (or libseccomp does not know yet) is
            // skipped, as other runtimes do: the profile is for every architecture.
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                continue;
            };
            for group in &groups {
                let added = if group.is_empty() {
                    ctx.add_rule(act, syscall)
                } else {
                    ctx.add_rule_conditional(act, syscall, group)
                };
                added.map_err(|e| Error::Compile(format!("rule for {name}: {e}")))?;
            }
        }
    }
    // libseccomp writes the program to a descriptor.
    let mut out = tempfile::tempfile().map_err(|e| Error::Compile(e.to_string()))?;
    ctx.export_bpf(&out).map_err(fail)?;
    let mut bytes = Vec::new();
    out.rewind()
        .and_then(|_| out.read_to_end(&mut bytes))
        .map_err(|e| Error::Compile(e.to_string()))?;
    if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
        return Err(Error::Compile(format!(
            "a program of {} bytes",
            bytes.len()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_deprecated_strings_and_their_mistakes() {
        assert_eq!(Choice::from_path_string("").unwrap(), Choice::Unconfined);
        assert_eq!(
            Choice::from_path_string("unconfined").unwrap(),
            Choice::Unconfined
        );
        assert_eq!(
            Choice::from_path_string("runtime/default").unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(
            Choice::from_path_string("docker/default").unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(
            Choice::from_path_string("localhost//etc/p.json").unwrap(),
            Choice::Localhost("/etc/p.json".into())
        );
        for bad in [
            "/etc/p.json",
            "localhost/relative.json",
            "Unconfined",
            "runtime/defaults",
        ] {
            assert!(Choice::from_path_string(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn conditions_follow_capabilities_architecture_and_kernel() {
        let rule = |includes: Condition, excludes: Condition| Rule {
            names: vec!["x".into()],
            action: "SCMP_ACT_ALLOW".into(),
            includes,
            excludes,
            ..Default::default()
        };
        let admin = Condition {
            caps: caps(&["CAP_SYS_ADMIN"]),
            ..Default::default()
        };
        let with = caps(&["CAP_SYS_ADMIN", "CAP_CHOWN"]);
        let without = caps(&["CAP_CHOWN"]);
        assert!(applies(
            &rule(admin.clone(), Condition::default()),
            &with,
            "amd64",
            (6, 1)
        ));
        assert!(!applies(
            &rule(admin.clone(), Condition::default()),
            &without,
            "amd64",
            (6, 1)
        ));
        assert!(!applies(
            &rule(Condition::default(), admin.clone()),
            &with,
            "amd64",
            (6, 1)
        ));
        assert!(applies(
            &rule(Condition::default(), admin),
            &without,
            "amd64",
            (6, 1)
        ));
        let arm = Condition {
            arches: vec!["arm64".into()],
            ..Default::default()
        };
        assert!(!applies(
            &rule(arm.clone(), Condition::default()),
            &with,
            "amd64",
            (6, 1)
        ));
        assert!(applies(
            &rule(arm, Condition::default()),
            &with,
            "arm64",
            (6, 1)
        ));
        let new = Condition {
            min_kernel: Some("4.8".into()),
            ..Default::default()
        };
        assert!(applies(
            &rule(new.clone(), Condition::default()),
            &with,
            "amd64",
            (5, 10)
        ));
        assert!(!applies(
            &rule(new, Condition::default()),
            &with,
            "amd64",
            (4, 4)
        ));
        assert_eq!(parse_version("6.18.44-fc-v657"), Some((6, 18)));
    }

    #[test]
    fn the_cache_compiles_once_per_profile_and_capabilities() {
        let cache = Cache::default();
        let profile = runtime_default();
        let a = cache
            .program(&profile, &caps(&["CAP_CHOWN", "CAP_KILL"]))
            .unwrap();
        let b = cache
            .program(&profile, &caps(&["CAP_KILL", "CAP_CHOWN"]))
            .unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "the same set in another order is the same entry"
        );
        let admin = cache.program(&profile, &caps(&["CAP_SYS_ADMIN"])).unwrap();
        assert!(!Arc::ptr_eq(&a, &admin));
        assert_eq!(
            *a,
            compile(&profile, &caps(&["CAP_CHOWN", "CAP_KILL"])).unwrap()
        );
    }

    #[test]
    fn profiles_compile_and_bad_ones_are_refused() {
        let bpf = compile(&runtime_default(), &caps(&["CAP_CHOWN"])).unwrap();
        assert!(bpf.len() > 8 * 100, "a real program: {} bytes", bpf.len());
        // With CAP_SYS_ADMIN the program differs (mount, unshare, sethostname allowed).
        let admin = compile(&runtime_default(), &caps(&["CAP_SYS_ADMIN"])).unwrap();
        assert_ne!(bpf, admin);

        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["sethostname","setdomainname"],"action":"SCMP_ACT_ERRNO"},
            {"name":"chmod","action":"SCMP_ACT_ERRNO","errnoRet":13,
             "args":[{"index":1,"value":256,"op":"SCMP_CMP_EQ"}]},
            {"names":["no_such_call"],"action":"SCMP_ACT_ERRNO"}]}"#;
        let profile: Profile = serde_json::from_str(json).unwrap();
        compile(&profile, &[]).unwrap();

        for bad in [
            r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_BOGUS"}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":1,"op":"SCMP_CMP_SOMETIMES"}]}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_Z80"]}"#,
        ] {
            let profile: Profile = serde_json::from_str(bad).unwrap();
            assert!(compile(&profile, &[]).is_err(), "{bad}");
        }
    }
}
