//! Pod sandboxes: what a pod is to the agent, and the files that make its environment
//! (hostname, hosts, resolv.conf).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a pod or container gets a namespace (CRI's NamespaceMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    #[default]
    Pod,
    Container,
    Node,
    Target,
}

pub use crate::cni::Dns;

/// Everything the agent keeps of a pod's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodSpec {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<Dns>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub network: NamespaceMode,
    pub ipc: NamespaceMode,
    pub pid: NamespaceMode,
    pub runtime_handler: String,
    /// Namespaced sysctls, set in the pod's own namespaces when they are made.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// Ports the pod's network publishes on the node (CNI's `portMappings`).
    #[serde(default)]
    pub port_mappings: Vec<crate::cni::PortMapping>,
    /// The pod-level resources the kubelet gives (recorded, not enforced: see `run_pod`),
    /// updated by UpdatePodSandboxResources.
    #[serde(default)]
    pub resources: crate::cgroup::Resources,
    /// The runtime class's overhead, recorded likewise.
    #[serde(default)]
    pub overhead: crate::cgroup::Resources,
}

impl PodSpec {
    /// Unique among the node's pods, as the kubelet expects.
    pub fn full_name(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Ready,
    NotReady,
}

/// A pod sandbox as recorded in `sandboxes/<id>/state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub spec: PodSpec,
    pub state: SandboxState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// The pod's cgroup, relative to the hierarchy's root.
    pub cgroup: String,
    /// Namespaces pinned for the pod (`net`, `ipc`, `uts`), by kind → file.
    pub namespaces: BTreeMap<String, std::path::PathBuf>,
    /// The pod's /dev/shm (a tmpfs its containers share), unless it uses the node's IPC.
    #[serde(default)]
    pub shm: Option<std::path::PathBuf>,
    /// The process holding the pod's shared PID namespace, for a pod in PID mode POD.
    #[serde(default)]
    pub pid_holder: Option<u32>,
    /// When the holder started (`/proc/<pid>/stat`), which tells it from a recycled pid.
    #[serde(default)]
    pub pid_holder_started: Option<u64>,
    /// The pod's addresses from its networks, IPv4 first.
    #[serde(default)]
    pub ips: Vec<String>,
}

/// The state changes of a pod record, and the guard of what needs a ready pod.
impl Sandbox {
    /// Stopped, or found broken (its namespaces or its PID-namespace holder gone): no new
    /// container joins it. Returns whether it was ready.
    pub fn not_ready(&mut self) -> bool {
        let was = self.state == SandboxState::Ready;
        self.state = SandboxState::NotReady;
        was
    }

    /// CreateContainer, PortForward: only a ready pod.
    pub fn can_host(&self) -> Result<(), String> {
        match self.state {
            SandboxState::Ready => Ok(()),
            SandboxState::NotReady => Err(format!("pod sandbox {} is not ready", self.id)),
        }
    }

    /// Whether its PID-namespace holder (`start_time` tells a pid's start, as
    /// `/proc/<pid>/stat` has it) has died: then the pod is marked not ready, and true is
    /// returned if that changed it.
    pub fn check_holder(&mut self, start_time: impl Fn(u32) -> Option<u64>) -> bool {
        let gone = match (self.pid_holder, self.pid_holder_started) {
            (Some(pid), Some(started)) => start_time(pid) != Some(started),
            _ => false,
        };
        gone && self.not_ready()
    }
}

/// `/etc/hosts` for the pod.
pub fn hosts_file(hostname: &str) -> String {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        text.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    text
}

/// `/etc/resolv.conf` for the pod: its DNS config, or the node's file when it has none.
pub fn resolv_conf(dns: Option<&Dns>, node: &str) -> String {
    let Some(dns) = dns else {
        return node.to_string();
    };
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    text
}

/// The namespace a sysctl belongs to (`net`, `ipc`, `uts`), for the ones that belong to
/// one; names may use `.` or `/` between their parts. A sysctl of no namespace would change
/// the whole node, and is not the pod's to set.
pub fn sysctl_namespace(name: &str) -> Option<&'static str> {
    let name = name.replace('/', ".");
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&name.as_str()) || name.starts_with("fs.mqueue.") {
        Some("ipc")
    } else if name.starts_with("net.") {
        Some("net")
    } else if name == "kernel.domainname" || name == "kernel.hostname" {
        Some("uts")
    } else {
        None
    }
}

/// The file under `/proc/sys` of a sysctl named with dots (`net.ipv4.ip_forward`) or
/// slashes (`net/ipv4/conf/eth0.100/forwarding`, where a part holds a dot).
pub fn sysctl_path(name: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else {
        name.replace('.', "/")
    }
}

/// A hostname the kernel and resolvers accept: 1 to 64 characters of letters, digits,
/// `-` and `.`, not starting or ending with `-` or `.`.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(holder: Option<(u32, u64)>) -> Sandbox {
        Sandbox {
            id: "p1".into(),
            spec: PodSpec::default(),
            state: SandboxState::Ready,
            created_at: 1,
            cgroup: "strata/pod-p1".into(),
            namespaces: BTreeMap::new(),
            shm: None,
            pid_holder: holder.map(|(pid, _)| pid),
            pid_holder_started: holder.map(|(_, started)| started),
            ips: vec![],
        }
    }

    #[test]
    fn a_pod_hosts_containers_until_it_is_not_ready() {
        let mut p = pod(None);
        assert!(p.can_host().is_ok());
        assert!(p.not_ready(), "it was ready");
        assert_eq!(p.can_host().unwrap_err(), "pod sandbox p1 is not ready");
        assert!(!p.not_ready(), "already not ready");
    }

    #[test]
    fn a_dead_pid_namespace_holder_makes_the_pod_not_ready_once() {
        // Alive: the same start time.
        let mut p = pod(Some((40, 7)));
        assert!(!p.check_holder(|_| Some(7)));
        assert_eq!(p.state, SandboxState::Ready);
        // Gone, or its pid taken by another process: not ready, once.
        assert!(p.check_holder(|_| None));
        assert_eq!(p.state, SandboxState::NotReady);
        assert!(!p.check_holder(|_| None));
        let mut p = pod(Some((40, 7)));
        assert!(p.check_holder(|_| Some(8)));
        // No holder (a pod without a shared PID namespace): nothing to check.
        let mut p = pod(None);
        assert!(!p.check_holder(|_| None));
        assert!(p.can_host().is_ok());
    }

    #[test]
    fn files_for_the_pod() {
        let dns = Dns {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns), "node"),
            "search ns.svc.cluster.local cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        assert_eq!(
            resolv_conf(None, "nameserver 1.1.1.1\n"),
            "nameserver 1.1.1.1\n"
        );
        assert!(hosts_file("web-0").ends_with("127.0.1.1\tweb-0\n"));
        assert!(valid_hostname("web-0.example"));
        for bad in ["", "-a", "a.", "has space", &"x".repeat(65)] {
            assert!(!valid_hostname(bad), "{bad:?}");
        }
    }
}
