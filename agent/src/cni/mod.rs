//! Pod networks through CNI plugins (the CNI spec, 1.0.0): the network configs of a
//! directory, the plugins of the bin dirs, and `ADD` / `CHECK` / `DEL` of a pod's netns.
//!
//! The agent only runs plugins; the plugins make veths, bridges, leases and iptables rules.
//! What an `ADD` used (the exact config, runtime config and result) is cached with the pod,
//! so that its `DEL` works after a restart or a change of the config dir.

mod config;
mod result;

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

pub use config::{NetworkList, Plugin};
pub use result::Addresses;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable network config: the node's network is not ready.
    #[error("cni config uninitialized: {0}")]
    NotReady(String),
    /// A plugin's `STATUS` said its network cannot take pods now.
    #[error("network {network:?} is not ready: {reason}")]
    Unready {
        network: String,
        #[source]
        reason: Box<Error>,
    },
    #[error("CNI plugin {plugin:?} of network {network:?} is in none of {dirs}")]
    PluginMissing {
        network: String,
        plugin: String,
        dirs: String,
    },
    #[error("CNI plugin {plugin} failed ({command}): {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("CNI plugin {plugin} ({command}) gave no valid result: {reason}")]
    Output {
        plugin: String,
        command: &'static str,
        reason: String,
    },
    #[error("CNI plugin {plugin} ({command}) did not finish within {secs} s")]
    Timeout {
        plugin: String,
        command: &'static str,
        secs: u64,
    },
    #[error("running CNI plugin {plugin}: {source}")]
    Spawn {
        plugin: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

pub use crate::config::CniConfig as Settings;

/// A pod's DNS: the kubelet's settings, or what a plugin's result gives a pod that has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A pod's side of a network setup.
#[derive(Debug, Clone, Default)]
pub struct PodNetwork {
    pub id: String,
    pub netns: PathBuf,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub port_mappings: Vec<PortMapping>,
    /// Bits per second, from the pod's bandwidth annotations.
    pub ingress_rate: Option<u64>,
    pub egress_rate: Option<u64>,
    pub dns: Option<Dns>,
    pub cgroup_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: String,
    pub container_port: u16,
    pub host_port: u16,
    pub host_ip: String,
}

/// One network a pod joined: everything its `DEL` and `CHECK` need, kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub container_id: String,
    pub args: String,
    /// The config list as it was when the pod joined.
    pub list: Value,
    pub runtime_config: Map<String, Value>,
    /// The last plugin's result, once `ADD` succeeded.
    pub result: Option<Value>,
}

impl Attachment {
    pub fn addresses(&self) -> Addresses {
        self.result
            .as_ref()
            .map(result::addresses)
            .unwrap_or_default()
    }
}

/// The lists of a config dir, or why it has none.
type Loaded = std::result::Result<Vec<NetworkList>, String>;

pub struct Cni {
    settings: Settings,
    /// The kubelet's pod CIDR (`UpdateRuntimeConfig`), for plugins that take `ipRanges`.
    pod_cidr: Mutex<Option<String>>,
    loaded: Mutex<Option<(config::Fingerprint, Loaded)>>,
}

impl Cni {
    pub fn new(settings: Settings) -> Cni {
        Cni {
            settings,
            pod_cidr: Mutex::new(None),
            loaded: Mutex::new(None),
        }
    }

    pub fn set_pod_cidr(&self, cidr: &str) {
        let cidr = Some(cidr.to_string()).filter(|c| !c.is_empty());
        *self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()) = cidr;
    }

    /// The networks a pod would join now, re-read when the config dir changed.
    pub fn networks(&self) -> Result<Vec<NetworkList>> {
        let fingerprint = config::Fingerprint::of(&self.settings.conf_dir);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        match &*loaded {
            Some((seen, lists)) if *seen == fingerprint => {}
            _ => {
                let lists = config::load(&self.settings.conf_dir, self.settings.max_conf_num);
                if let Err(reason) = &lists {
                    tracing::warn!(%reason, "no usable CNI network config");
                }
                *loaded = Some((fingerprint, lists));
            }
        }
        let lists = match &*loaded {
            Some((_, Ok(lists))) => lists.clone(),
            Some((_, Err(reason))) => return Err(Error::NotReady(reason.clone())),
            None => return Err(Error::NotReady("not loaded".into())),
        };
        drop(loaded);
        for list in &lists {
            for plugin in &list.plugins {
                self.binary(&list.name, &plugin.kind)?;
            }
        }
        Ok(lists)
    }

    fn binary(&self, network: &str, kind: &str) -> Result<PathBuf> {
        let missing = || Error::PluginMissing {
            network: network.to_string(),
            plugin: kind.to_string(),
            dirs: self
                .settings
                .bin_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        if kind.is_empty() || kind.contains('/') || kind.starts_with('.') {
            return Err(missing());
        }
        self.settings
            .bin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .ok_or_else(missing)
    }

    /// The attachments a pod is about to make, before any plugin ran: saved first, so that
    /// a crash during `ADD` still leaves what its `DEL` needs.
    pub fn plan(&self, pod: &PodNetwork) -> Result<Vec<Attachment>> {
        let lists = self.networks()?;
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace, pod.name, pod.id, pod.uid
        );
        let runtime_config = self.runtime_config(pod);
        Ok(lists
            .into_iter()
            .enumerate()
            .map(|(i, list)| Attachment {
                network: list.name.clone(),
                ifname: format!("eth{i}"),
                netns: pod.netns.clone(),
                container_id: pod.id.clone(),
                args: args.clone(),
                list: list.raw,
                runtime_config: runtime_config.clone(),
                result: None,
            })
            .collect())
    }

    fn runtime_config(&self, pod: &PodNetwork) -> Map<String, Value> {
        let mut rc = Map::new();
        let ports: Vec<Value> = pod
            .port_mappings
            .iter()
            .filter(|p| p.host_port != 0)
            .map(|p| {
                let mut m = json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": p.protocol,
                });
                if !p.host_ip.is_empty() {
                    m["hostIP"] = json!(p.host_ip);
                }
                m
            })
            .collect();
        if !ports.is_empty() {
            rc.insert("portMappings".into(), Value::Array(ports));
        }
        if pod.ingress_rate.is_some() || pod.egress_rate.is_some() {
            // Bursts as the kubelet's dockershim and containerd give them: unbounded.
            let mut bw = Map::new();
            if let Some(rate) = pod.ingress_rate {
                bw.insert("ingressRate".into(), json!(rate));
                bw.insert("ingressBurst".into(), json!(i32::MAX));
            }
            if let Some(rate) = pod.egress_rate {
                bw.insert("egressRate".into(), json!(rate));
                bw.insert("egressBurst".into(), json!(i32::MAX));
            }
            rc.insert("bandwidth".into(), Value::Object(bw));
        }
        if let Some(dns) = &pod.dns {
            rc.insert(
                "dns".into(),
                json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
            );
        }
        if let Some(cidr) = self
            .pod_cidr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            rc.insert("ipRanges".into(), json!([[{"subnet": cidr}]]));
        }
        if !pod.cgroup_path.is_empty() {
            rc.insert("cgroupPath".into(), json!(pod.cgroup_path));
        }
        rc
    }

    /// `ADD` through the list; on failure the list's `DEL` runs before the error returns.
    pub async fn add(&self, attachment: &mut Attachment) -> Result<()> {
        let list = NetworkList::parse_value(&attachment.list).map_err(|reason| {
            Error::NotReady(format!("network {}: {reason}", attachment.network))
        })?;
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let out = self
                .run(&list, plugin, "ADD", attachment, prev.as_ref())
                .await;
            match out {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    if let Err(cleanup) = self.del(attachment).await {
                        tracing::warn!(error = %cleanup, "undoing a failed CNI ADD");
                    }
                    return Err(e);
                }
            }
        }
        attachment.result = prev;
        Ok(())
    }

    /// `DEL` through the list in reverse, with the cached result; plugins treat a missing
    /// netns or lease as already gone.
    pub async fn del(&self, attachment: &Attachment) -> Result<()> {
        let list = NetworkList::parse_value(&attachment.list).map_err(|reason| {
            Error::NotReady(format!("network {}: {reason}", attachment.network))
        })?;
        let mut first_error = None;
        for plugin in list.plugins.iter().rev() {
            if let Err(e) = self
                .run(&list, plugin, "DEL", attachment, attachment.result.as_ref())
                .await
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// `CHECK` through the list, for a pod that joined with a result.
    pub async fn check(&self, attachment: &Attachment) -> Result<()> {
        let list = NetworkList::parse_value(&attachment.list).map_err(|reason| {
            Error::NotReady(format!("network {}: {reason}", attachment.network))
        })?;
        for plugin in &list.plugins {
            self.run(
                &list,
                plugin,
                "CHECK",
                attachment,
                attachment.result.as_ref(),
            )
            .await?;
        }
        Ok(())
    }

    /// One plugin command of an attachment; `ADD` returns the plugin's result.
    async fn run(
        &self,
        list: &NetworkList,
        plugin: &Plugin,
        command: &'static str,
        attachment: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Value> {
        let stdin = plugin.stdin(list, &attachment.runtime_config, prev);
        // A namespace that is gone (its pin lost with a reboot) is given as none, as the
        // spec has it for `DEL`: plugins then release what they hold outside it.
        let netns = if command == "DEL" && !crate::sys::mount::is_namespace(&attachment.netns) {
            std::ffi::OsStr::new("")
        } else {
            attachment.netns.as_os_str()
        };
        let env = [
            ("CNI_CONTAINERID", attachment.container_id.as_ref()),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", attachment.ifname.as_ref()),
            ("CNI_ARGS", attachment.args.as_ref()),
        ];
        let stdout = self.exec(list, plugin, command, &env, &stdin).await?;
        if command != "ADD" {
            return Ok(Value::Null);
        }
        result::parse(&stdout).map_err(|reason| Error::Output {
            plugin: plugin.kind.clone(),
            command,
            reason,
        })
    }

    /// Runs a plugin with `CNI_COMMAND`, `CNI_PATH` and `env`, `stdin` on its standard input,
    /// in a process group of its own: one that runs past the timeout is killed with
    /// everything it started. Returns what it printed, if it succeeded.
    async fn exec(
        &self,
        list: &NetworkList,
        plugin: &Plugin,
        command: &'static str,
        env: &[(&str, &std::ffi::OsStr)],
        stdin: &[u8],
    ) -> Result<Vec<u8>> {
        let binary = self.binary(&list.name, &plugin.kind)?;
        let path = std::env::join_paths(&self.settings.bin_dirs).unwrap_or_default();
        let mut child = tokio::process::Command::new(&binary)
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", path)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn {
                plugin: plugin.kind.clone(),
                source,
            })?;
        let group = child.id();
        let secs = self.settings.setup_timeout_secs;
        let finished = tokio::time::timeout(Duration::from_secs(secs), async {
            if let Some(mut input) = child.stdin.take() {
                // A plugin that exits without reading its config is judged by its exit.
                let _ = input.write_all(stdin).await;
            }
            child.wait_with_output().await
        })
        .await;
        let output = match finished {
            Err(_) => {
                if let Some(group) = group {
                    crate::sys::process::kill_group(group);
                }
                return Err(Error::Timeout {
                    plugin: plugin.kind.clone(),
                    command,
                    secs,
                });
            }
            Ok(Err(source)) => {
                return Err(Error::Spawn {
                    plugin: plugin.kind.clone(),
                    source,
                });
            }
            Ok(Ok(output)) => output,
        };
        if !output.status.success() {
            return Err(Error::Plugin {
                plugin: plugin.kind.clone(),
                command,
                message: result::failure(&output.stdout, &output.stderr, output.status),
            });
        }
        Ok(output.stdout)
    }

    /// The networks a pod would join, each asked whether it is ready (`STATUS`, for lists
    /// of CNI 1.1.0 and later; older plugins have no such command).
    pub async fn status(&self) -> Result<Vec<NetworkList>> {
        let lists = self.networks()?;
        for list in lists.iter().filter(|l| l.at_least(1, 1)) {
            for plugin in &list.plugins {
                let stdin = serde_json::to_vec(&plugin.conf(list)).unwrap_or_default();
                self.exec(list, plugin, "STATUS", &[], &stdin)
                    .await
                    .map_err(|reason| Error::Unready {
                        network: list.name.clone(),
                        reason: Box::new(reason),
                    })?;
            }
        }
        Ok(lists)
    }

    /// `GC` of every network of CNI 1.1.0 and later: plugins release whatever they hold
    /// for attachments not in `valid` (network, container id, interface).
    pub async fn gc(&self, valid: &[(String, String, String)]) {
        let Ok(lists) = self.networks() else {
            return;
        };
        for list in lists.iter().filter(|l| l.at_least(1, 1)) {
            let attachments: Vec<Value> = valid
                .iter()
                .filter(|(network, _, _)| *network == list.name)
                .map(|(_, id, ifname)| json!({"containerID": id, "ifname": ifname}))
                .collect();
            for plugin in &list.plugins {
                let mut conf = plugin.conf(list);
                conf.insert(
                    "cni.dev/valid-attachments".into(),
                    Value::Array(attachments.clone()),
                );
                let stdin = serde_json::to_vec(&conf).unwrap_or_default();
                if let Err(e) = self.exec(list, plugin, "GC", &[], &stdin).await {
                    tracing::warn!(network = %list.name, error = %e, "CNI GC failed");
                }
            }
        }
    }
}

/// A Kubernetes quantity (`10M`, `1Gi`, `500k`) as a number: bandwidth annotations.
pub fn quantity(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    let bits = value * factor;
    (bits.is_finite() && bits >= 1.0 && bits < u64::MAX as f64).then_some(bits as u64)
}

/// Bandwidth annotations → bits per second (ingress, egress).
pub fn bandwidth(annotations: &BTreeMap<String, String>) -> (Option<u64>, Option<u64>) {
    let rate = |key: &str| annotations.get(key).and_then(|v| quantity(v));
    (
        rate("kubernetes.io/ingress-bandwidth"),
        rate("kubernetes.io/egress-bandwidth"),
    )
}

/// Where a pod's attachments are cached.
pub fn cache_path(pod_dir: &Path) -> PathBuf {
    pod_dir.join("network.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity("10M"), Some(10_000_000));
        assert_eq!(quantity("1Ki"), Some(1024));
        assert_eq!(quantity("1.5k"), Some(1500));
        assert_eq!(quantity("100"), Some(100));
        for bad in ["", "M", "10X", "-1", "0"] {
            assert_eq!(quantity(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn runtime_config_follows_the_pod() {
        let cni = Cni::new(Settings::default());
        cni.set_pod_cidr("10.88.0.0/16");
        let pod = PodNetwork {
            port_mappings: vec![
                PortMapping {
                    protocol: "tcp".into(),
                    container_port: 80,
                    host_port: 8080,
                    host_ip: String::new(),
                },
                PortMapping {
                    protocol: "tcp".into(),
                    container_port: 81,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            ingress_rate: Some(1000),
            cgroup_path: "strata/pod-x".into(),
            ..Default::default()
        };
        let rc = cni.runtime_config(&pod);
        assert_eq!(
            rc["portMappings"],
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
        );
        assert_eq!(rc["bandwidth"]["ingressRate"], json!(1000));
        assert!(rc["bandwidth"].get("egressRate").is_none());
        assert_eq!(rc["ipRanges"], json!([[{"subnet": "10.88.0.0/16"}]]));
        assert_eq!(rc["cgroupPath"], json!("strata/pod-x"));
        assert!(!rc.contains_key("dns"));
    }
}
