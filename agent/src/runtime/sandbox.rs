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
