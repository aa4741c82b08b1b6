//! The agent's configuration: a TOML file whose keys are all optional, overridden by flags.
//!
//! `deploy/config.toml` documents every key with its default.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Where the agent looks for its config file when `--config` is not given. A missing file
/// at this default path is not an error; a missing file named explicitly is.
pub const DEFAULT_CONFIG: &str = "/etc/strata/config.toml";
pub const DEFAULT_ROOT: &str = "/var/lib/strata";
pub const DEFAULT_STATE_DIR: &str = "/run/strata";
/// Most processes a container may have unless configured: CRI-O's default. A fork bomb in
/// one container must not exhaust the node's pids.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;
/// systemd's private API socket, which the systemd cgroup driver speaks to.
pub const DEFAULT_SYSTEMD_SOCKET: &str = "/run/systemd/private";

/// The resource limits `[rlimits]` may set, as `RLIMIT_<NAME>` without the prefix.
pub const RLIMIT_NAMES: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The file's form: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    socket_mode: Option<String>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    cgroup_parent: Option<String>,
    pids_limit: Option<i64>,
    cdi_spec_dirs: Option<Vec<PathBuf>>,
    #[serde(default)]
    rlimits: BTreeMap<String, u64>,
    #[serde(default)]
    images: ImagesConfig,
    #[serde(default)]
    registries: BTreeMap<String, RegistryConfig>,
    #[serde(default)]
    streaming: StreamingConfig,
    #[serde(default)]
    cni: CniConfig,
    #[serde(default)]
    events: EventsConfig,
    #[serde(default)]
    remote: RemoteConfig,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    cgroups: CgroupsConfig,
}

/// Which cgroup driver (`[cgroups]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Cgroups written through cgroupfs below `cgroup_parent`.
    #[default]
    Cgroupfs,
    /// Pods as transient slices and containers as transient scopes, made by systemd.
    Systemd,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupsConfig {
    pub driver: CgroupDriver,
    /// systemd's API socket (the systemd driver).
    pub systemd_socket: PathBuf,
}

impl Default for CgroupsConfig {
    fn default() -> Self {
        CgroupsConfig {
            driver: CgroupDriver::Cgroupfs,
            systemd_socket: PathBuf::from(DEFAULT_SYSTEMD_SOCKET),
        }
    }
}

/// The Prometheus page (`[metrics]`); off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `address:port` serving GET /metrics, e.g. "127.0.0.1:9464".
    pub listen: Option<String>,
}

/// The remote API over TCP with mutual TLS (`[remote]`); off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// `address:port` to listen on, e.g. "0.0.0.0:10010".
    pub listen: Option<String>,
    /// The server's certificate chain and key (PEM).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The CA (PEM; several may be concatenated) that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Client identities that may only read: a certificate's CN or SAN, or `OU=unit`.
    pub read_only: Vec<String>,
}

/// Container events (`[events]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events a subscriber may be behind before it is dropped.
    pub queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { queue: 1024 }
    }
}

/// The streaming server behind Exec's URLs (`[streaming]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// The address it listens on: loopback unless the kubelet reaches it from elsewhere.
    pub address: String,
    /// Its port; 0 picks a free one at every start.
    pub port: u16,
    /// A session that carries nothing either way for this long is closed (containerd's
    /// `stream_idle_timeout`, 4 hours by default).
    pub idle_timeout_secs: u64,
    /// Most sessions (exec, attach, port-forward) open at once; more are refused (503).
    pub max_sessions: usize,
    /// HTTPS instead of HTTP: with `tls_cert` and `tls_key` (PEM files), or, without them,
    /// a self-signed certificate made at every start (clients such as crictl and the kubelet
    /// do not verify the streaming server's certificate; the token is the credential).
    pub tls: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1".into(),
            port: 0,
            idle_timeout_secs: 4 * 3600,
            max_sessions: 256,
            tls: false,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// How images are pulled and stored (`[images]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Layers downloaded at once per pull (and blobs uploaded at once per push).
    pub max_concurrent_downloads: usize,
    /// A download that receives no byte (or an upload that sends none) for this long fails
    /// (and is retried).
    pub progress_timeout_secs: u64,
    /// A layer with more entries than this is refused.
    pub max_layer_entries: u64,
    /// A layer may inflate to this many times its compressed size (but always to
    /// [`ImagesConfig::LAYER_FLOOR`]): more is a decompression bomb.
    pub max_layer_ratio: u64,
    /// No layer inflates past this many bytes, whatever its compressed size.
    pub max_layer_bytes: u64,
    /// An image of more layers than this is refused (overlay stacks at most 500).
    pub max_layers: usize,
}

impl ImagesConfig {
    /// What any layer may inflate to, however small its compressed size.
    pub const LAYER_FLOOR: u64 = 64 << 20;

    /// The uncompressed bytes a layer of `compressed` bytes may amount to.
    pub fn max_layer_size(&self, compressed: u64) -> u64 {
        self.max_layer_ratio
            .saturating_mul(compressed)
            .max(Self::LAYER_FLOOR)
            .min(self.max_layer_bytes)
    }
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            max_concurrent_downloads: 3,
            progress_timeout_secs: 60,
            max_layer_entries: 1_000_000,
            max_layer_ratio: 16,
            max_layer_bytes: 64 << 30,
            max_layers: 256,
        }
    }
}

/// `[cni]`: where network configs and plugins are (read by `cni`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Network configs (`.conflist`, `.conf`, `.json`); the lexically first valid ones win.
    pub conf_dir: PathBuf,
    /// Where plugins are looked for, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// How many networks a pod joins (the first gets `eth0`, the next `eth1`, …).
    pub max_conf_num: usize,
    /// Longest a plugin may run for one command.
    pub setup_timeout_secs: u64,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            max_conf_num: 1,
            setup_timeout_secs: 60,
        }
    }
}

/// Settings for one registry host (`[registries."host:port"]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Speak http instead of https. Unset: http for loopback registries only.
    pub plain_http: Option<bool>,
    /// Accept any TLS certificate from this registry.
    pub insecure_skip_verify: bool,
    /// Base URLs tried in order before the registry itself, e.g. "http://127.0.0.1:5001".
    pub mirrors: Vec<String>,
}

/// The socket's group and mode: root only (0600) unless a group is named, whose members
/// may then connect too (0660).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SocketAccess {
    pub gid: Option<u32>,
    pub mode: u32,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess {
            gid: None,
            mode: 0o600,
        }
    }
}

impl SocketAccess {
    /// From `socket_group` (a name or a number) and `socket_mode` (octal, e.g. "0660").
    fn resolve(group: Option<&str>, mode: Option<&str>) -> Result<SocketAccess> {
        let gid = match group {
            None => None,
            Some(g) => Some(match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => nix::unistd::Group::from_name(g)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw())
                    .ok_or_else(|| Error::Invalid {
                        what: "socket_group",
                        value: g.to_string(),
                        reason: "no such group on this machine".into(),
                    })?,
            }),
        };
        let mode = match mode {
            None if gid.is_some() => 0o660,
            None => 0o600,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777 && m & 0o600 == 0o600 && m & 0o007 == 0)
                .ok_or_else(|| Error::Invalid {
                    what: "socket_mode",
                    value: m.to_string(),
                    reason: "an octal mode such as \"0660\": read and write for root, \
                             nothing for others"
                        .into(),
                })?,
        };
        Ok(SocketAccess { gid, mode })
    }
}

/// Values given on the command line; each one wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
}

/// The effective configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file it was read from, if any.
    pub config_file: Option<PathBuf>,
    /// Persistent data: images, layers, container records.
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot.
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Who may use the socket besides root.
    pub socket_access: SocketAccess,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Where pod cgroups go when a pod names no parent of its own.
    pub cgroup_parent: String,
    /// Most processes a container may have (0: no limit), as CRI-O's `pids_limit`: CRI
    /// itself has no field for it.
    pub pids_limit: i64,
    /// Where CDI device specs are read from, lowest priority first.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Resource limits every container starts with (soft = hard), by lowercase name
    /// (`nofile`, `nproc`, …). CRI has no field for them.
    pub rlimits: BTreeMap<String, u64>,
    pub images: ImagesConfig,
    pub registries: BTreeMap<String, RegistryConfig>,
    pub streaming: StreamingConfig,
    pub cni: CniConfig,
    pub events: EventsConfig,
    pub remote: RemoteConfig,
    pub metrics: MetricsConfig,
    pub cgroups: CgroupsConfig,
}

impl Config {
    /// Reads the config file (the named one, or the default if it exists) and applies the
    /// command-line overrides.
    pub fn load(overrides: Overrides) -> Result<Config> {
        let (file, config_file) = match &overrides.config {
            Some(path) => (read_file(path)?, Some(path.clone())),
            None => {
                let path = Path::new(DEFAULT_CONFIG);
                match std::fs::metadata(path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        (FileConfig::default(), None)
                    }
                    _ => (read_file(path)?, Some(path.to_path_buf())),
                }
            }
        };
        let state_dir = overrides
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let config = Config {
            config_file,
            root: overrides
                .root
                .or(file.root)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
            socket: overrides
                .socket
                .or(file.socket)
                .unwrap_or_else(|| state_dir.join("strata.sock")),
            socket_access: SocketAccess::resolve(
                file.socket_group.as_deref(),
                file.socket_mode.as_deref(),
            )?,
            state_dir,
            log_level: overrides
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_string()),
            log_format: overrides.log_format.or(file.log_format).unwrap_or_default(),
            // With the systemd driver, a slice (systemd names the cgroups).
            cgroup_parent: file
                .cgroup_parent
                .unwrap_or_else(|| match file.cgroups.driver {
                    CgroupDriver::Cgroupfs => "strata".to_string(),
                    CgroupDriver::Systemd => "strata.slice".to_string(),
                }),
            pids_limit: file.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT),
            cdi_spec_dirs: file
                .cdi_spec_dirs
                .unwrap_or_else(crate::cdi::Registry::default_dirs),
            rlimits: file.rlimits,
            images: file.images,
            registries: file.registries,
            streaming: file.streaming,
            cni: file.cni,
            events: file.events,
            remote: file.remote,
            metrics: file.metrics,
            cgroups: file.cgroups,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        for (what, path) in [
            ("root", &self.root),
            ("state_dir", &self.state_dir),
            ("socket", &self.socket),
        ]
        .into_iter()
        .chain(self.cdi_spec_dirs.iter().map(|d| ("cdi_spec_dirs", d)))
        {
            if !path.is_absolute() {
                return Err(Error::Invalid {
                    what,
                    value: path.display().to_string(),
                    reason: "must be an absolute path".into(),
                });
            }
        }
        if self.socket.file_name().is_none() {
            return Err(Error::Invalid {
                what: "socket",
                value: self.socket.display().to_string(),
                reason: "must name a file".into(),
            });
        }
        // (That the parent is a slice systemd accepts, the driver checks: `daemon::run`.)
        if self.cgroups.driver == CgroupDriver::Systemd
            && !self.cgroups.systemd_socket.is_absolute()
        {
            return Err(Error::Invalid {
                what: "cgroups.systemd_socket",
                value: self.cgroups.systemd_socket.display().to_string(),
                reason: "must be an absolute path".into(),
            });
        }
        let parent = self.cgroup_parent.trim_matches('/');
        if parent.is_empty()
            || parent
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::Invalid {
                what: "cgroup_parent",
                value: self.cgroup_parent.clone(),
                reason: "must be a plain relative path like \"strata\"".into(),
            });
        }
        for name in self.rlimits.keys() {
            if !RLIMIT_NAMES.contains(&name.as_str()) {
                return Err(Error::Invalid {
                    what: "rlimits",
                    value: name.clone(),
                    reason: format!("unknown limit (one of {})", RLIMIT_NAMES.join(", ")),
                });
            }
        }
        if self.pids_limit < 0 {
            return Err(Error::Invalid {
                what: "pids_limit",
                value: self.pids_limit.to_string(),
                reason: "must be 0 (no limit) or positive".into(),
            });
        }
        if self.images.max_concurrent_downloads == 0 {
            return Err(Error::Invalid {
                what: "images.max_concurrent_downloads",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        for (what, value) in [
            (
                "images.progress_timeout_secs",
                self.images.progress_timeout_secs,
            ),
            ("images.max_layer_ratio", self.images.max_layer_ratio),
            ("images.max_layer_bytes", self.images.max_layer_bytes),
            ("images.max_layers", self.images.max_layers as u64),
        ] {
            if value == 0 {
                return Err(Error::Invalid {
                    what,
                    value: "0".into(),
                    reason: "must be at least 1".into(),
                });
            }
        }
        if let Some(listen) = &self.metrics.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(Error::Invalid {
                what: "metrics.listen",
                value: listen.clone(),
                reason: "must be address:port, e.g. \"127.0.0.1:9464\"".into(),
            });
        }
        if let Some(listen) = &self.remote.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(Error::Invalid {
                    what: "remote.listen",
                    value: listen.clone(),
                    reason: "must be address:port, e.g. \"0.0.0.0:10010\"".into(),
                });
            }
            let r = &self.remote;
            for (what, path) in [
                ("remote.cert", &r.cert),
                ("remote.key", &r.key),
                ("remote.client_ca", &r.client_ca),
            ] {
                if !path.as_ref().is_some_and(|p| p.is_absolute()) {
                    return Err(Error::Invalid {
                        what,
                        value: path
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                        reason: "the remote API needs it, as an absolute path".into(),
                    });
                }
            }
        }
        if self.events.queue == 0 {
            return Err(Error::Invalid {
                what: "events.queue",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let streaming = &self.streaming;
        if streaming.idle_timeout_secs == 0 || streaming.max_sessions == 0 {
            return Err(Error::Invalid {
                what: "streaming.idle_timeout_secs / streaming.max_sessions",
                value: format!(
                    "{} / {}",
                    streaming.idle_timeout_secs, streaming.max_sessions
                ),
                reason: "must be at least 1".into(),
            });
        }
        if streaming.tls_cert.is_some() != streaming.tls_key.is_some()
            || (streaming.tls_cert.is_some() && !streaming.tls)
        {
            return Err(Error::Invalid {
                what: "streaming.tls_cert / streaming.tls_key",
                value: format!("{:?} / {:?}", streaming.tls_cert, streaming.tls_key),
                reason: "give both, with tls = true (or neither, for a self-signed certificate)"
                    .into(),
            });
        }
        if self.cni.max_conf_num == 0 || self.cni.setup_timeout_secs == 0 {
            return Err(Error::Invalid {
                what: "cni.max_conf_num / cni.setup_timeout_secs",
                value: format!(
                    "{} / {}",
                    self.cni.max_conf_num, self.cni.setup_timeout_secs
                ),
                reason: "must be at least 1".into(),
            });
        }
        for (host, registry) in &self.registries {
            for mirror in &registry.mirrors {
                if !(mirror.starts_with("http://") || mirror.starts_with("https://")) {
                    return Err(Error::Invalid {
                        what: "registry mirror",
                        value: mirror.clone(),
                        reason: format!("mirrors of {host} must be http:// or https:// URLs"),
                    });
                }
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log_level) {
            return Err(Error::Invalid {
                what: "log_level",
                value: self.log_level.clone(),
                reason: format!("{e} (use error, warn, info, debug, trace or a filter directive)"),
            });
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|message| Error::Parse {
        path: path.to_path_buf(),
        message,
    })
}

fn parse(text: &str) -> std::result::Result<FileConfig, String> {
    // toml's messages span several lines with a source excerpt; keep one line: the
    // position, the message, and the offending line of the file.
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_string();
        let Some(span) = e.span() else {
            return message;
        };
        let start = span.start.min(text.len());
        let line = text[..start].matches('\n').count() + 1;
        let source: String = text
            .lines()
            .nth(line - 1)
            .unwrap_or_default()
            .trim()
            .chars()
            .take(80)
            .collect();
        format!("line {line}: {message} (in `{source}`)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, overrides: Overrides) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Overrides {
            config: Some(path),
            ..overrides
        })
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load_text("", Overrides::default()).unwrap();
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.socket, PathBuf::from("/run/strata/strata.sock"));
        assert_eq!(c.log_level, "info");
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_override_the_file_and_socket_follows_state_dir() {
        let c = load_text(
            "root = \"/srv/a\"\nstate_dir = \"/srv/run\"\nlog_format = \"json\"\n",
            Overrides {
                root: Some("/srv/b".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/b"));
        assert_eq!(c.socket, PathBuf::from("/srv/run/strata.sock"));
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let err = load_text("root = \"/a\"\nbogus = 1\n", Overrides::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn bad_values_are_refused() {
        let err = load_text("root = \"relative\"", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        let err = load_text("log_format = \"xml\"", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("xml"), "{err}");
        let err = load_text("log_format = 7", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("log_format = 7"), "{err}");
        let err = load_text("log_level = \"info,,=[\"", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("log_level"), "{err}");
    }

    #[test]
    fn registries_and_images_sections() {
        let c = load_text(
            "[images]\nprogress_timeout_secs = 5\n[registries.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:5001\"]\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.images.progress_timeout_secs, 5);
        assert_eq!(c.images.max_concurrent_downloads, 3);
        assert_eq!(
            c.registries["docker.io"].mirrors,
            vec!["http://127.0.0.1:5001"]
        );
        let err = load_text(
            "[registries.x]\nmirrors = [\"ftp://m\"]\n",
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("ftp://m"), "{err}");
        let err = load_text("[images]\nparallel = 2\n", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("parallel"), "{err}");
        let c = load_text("[rlimits]\nnofile = 4096\n", Overrides::default()).unwrap();
        assert_eq!(c.rlimits["nofile"], 4096);
        let err = load_text("[rlimits]\nfiles = 1\n", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("files"), "{err}");
    }

    #[test]
    fn named_missing_file_is_an_error() {
        let err = Config::load(Overrides {
            config: Some("/nonexistent/strata.toml".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, Error::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/strata.toml"));
    }
}
