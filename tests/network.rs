//! End to end: pod networks through Debian's CNI plugins (bridge, host-local, portmap,
//! loopback) on the real kernel. Each test has a bridge, a 10.x subnet and a lease
//! directory of its own, and counts veths, leases and iptables rules before and after.

mod common;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::cri::{Env, container_config, env_with};
use serde_json::{Value, json};
use strata_api::cri::{
    self, PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StatusRequest,
    StopPodSandboxRequest,
};
use tonic::Code;

static NETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A test's own network: its bridge, subnet, conf dir, extra plugin dir and leases.
struct Net {
    dir: tempfile::TempDir,
    name: String,
    bridge: String,
    /// The subnet's first three octets.
    prefix: String,
    shapers_before: BTreeSet<String>,
    /// Dropped after the fields above: the pods' own rules are gone by then.
    _portmap: common::Portmap,
}

impl Net {
    fn new() -> Net {
        let n = NETS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix("strata-net-")
            .tempdir()
            .unwrap();
        for sub in ["conf", "bin", "leases"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Net {
            dir,
            name: format!("strata-test-{pid}-{n}"),
            bridge: format!("stt{}x{n}", pid % 100_000),
            prefix: format!("10.{}.{}", 180 + n, pid % 250),
            shapers_before: shapers(),
            _portmap: common::Portmap::hold(),
        }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// The daemon's `[cni]` section for this network.
    fn daemon_config(&self, timeout_secs: u64) -> String {
        format!(
            "[cni]\nconf_dir = {:?}\nbin_dirs = [{:?}, \"/usr/lib/cni\"]\nsetup_timeout_secs = {timeout_secs}\n",
            self.path("conf"),
            self.path("bin"),
        )
    }

    /// bridge + host-local (a pool of `pool` addresses) + portmap, then `extra`.
    fn conflist(&self, pool: u8, extra: &[Value]) -> Value {
        let mut plugins = vec![
            json!({
                "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local", "dataDir": self.path("leases"),
                    "ranges": [[{"subnet": format!("{}.0/24", self.prefix),
                                 "rangeStart": format!("{}.10", self.prefix),
                                 "rangeEnd": format!("{}.{}", self.prefix, 9 + pool)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }),
            json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
        ];
        plugins.extend(extra.iter().cloned());
        json!({"cniVersion": "1.0.0", "name": self.name, "plugins": plugins})
    }

    fn install(&self, file: &str, conflist: &str) {
        let conf = self.path("conf");
        for old in std::fs::read_dir(&conf).unwrap() {
            std::fs::remove_file(old.unwrap().path()).unwrap();
        }
        std::fs::write(conf.join(file), conflist).unwrap();
    }

    /// A plugin of the test's own: a shell script.
    fn plugin(&self, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path("bin").join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Addresses host-local has leased.
    fn leases(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.path("leases").join(&self.name))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// Interfaces attached to the bridge (the pods' veths).
    fn veths(&self) -> usize {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for Net {
    /// Also after a failed test, whose pods' DEL never ran: the network's iptables rules
    /// (the plugins name the network in each rule's comment) and chains, and the bridge.
    fn drop(&mut self) {
        let tag = format!("name: \\\"{}\\\"", self.name);
        for (iptables, table) in [
            ("iptables", "nat"),
            ("iptables", "filter"),
            ("ip6tables", "nat"),
            ("ip6tables", "filter"),
        ] {
            let out = Command::new(iptables)
                .args(["-w", "-t", table, "-S"])
                .output();
            let listing = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            let mut chains = BTreeSet::new();
            for rule in listing
                .iter()
                .flat_map(|l| l.lines())
                .filter(|l| l.contains(&tag))
            {
                let Some(spec) = rule.strip_prefix("-A ") else {
                    continue;
                };
                if let Some(target) = spec
                    .split(" -j ")
                    .nth(1)
                    .and_then(|t| t.split_whitespace().next())
                    && target.starts_with("CNI-")
                    && !target.starts_with("CNI-HOSTPORT")
                {
                    chains.insert(target.to_string());
                }
                // `-S` quotes as a shell does: the rule is given back through one.
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(format!("{iptables} -w -t {table} -D {spec}"))
                    .status();
            }
            for chain in chains {
                let _ = Command::new(iptables)
                    .args(["-w", "-t", table, "-F", &chain])
                    .status();
                let _ = Command::new(iptables)
                    .args(["-w", "-t", table, "-X", &chain])
                    .status();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        // The bandwidth plugin's ifb devices of pods whose DEL never ran.
        for ifb in shapers().difference(&self.shapers_before) {
            let _ = Command::new("ip").args(["link", "del", ifb]).status();
        }
    }
}

/// The bandwidth plugin's ifb devices on the node (it names them `bwp…`).
fn shapers() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "type", "ifb"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| name.starts_with("bwp"))
        .collect()
}

/// iptables and ip6tables rules (every table) that name a pod.
fn rules_of(pod: &str) -> usize {
    ["iptables-save", "ip6tables-save"]
        .iter()
        .map(|save| {
            let out = Command::new(save).output().expect(save);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(pod))
                .count()
        })
        .sum()
}

fn pod_config(name: &str, ports: &[(u16, u16)]) -> cri::PodSandboxConfig {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(container, host)| json!({"container_port": container, "host_port": host}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "net", "uid": format!("uid-{name}")},
        "hostname": name,
        "port_mappings": ports,
    }))
    .unwrap()
}

async fn run_pod(env: &mut Env, name: &str, ports: &[(u16, u16)]) -> Result<String, tonic::Status> {
    env.rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config(name, ports)),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn pod_ips(env: &mut Env, id: &str) -> Vec<String> {
    let st = env
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let net = st.network.unwrap();
    std::iter::once(net.ip)
        .chain(net.additional_ips.into_iter().map(|i| i.ip))
        .filter(|ip| !ip.is_empty())
        .collect()
}

async fn stop_and_remove(env: &mut Env, id: &str) {
    env.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap();
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap();
}

async fn network_ready(env: &mut Env) -> (bool, String) {
    let st = env
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let c = st
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("a NetworkReady condition");
    (c.status, c.message)
}

/// An HTTP GET from the host, retried for up to 20 s while the server starts.
fn http_get(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(
                &addr.parse().unwrap(),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(body) if body.contains("200") => return body,
            other => assert!(
                Instant::now() < deadline,
                "GET http://{addr}/ never answered: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

const SERVE: &str = "mkdir -p /www && echo \"hello from $(hostname)\" > /www/index.html && exec httpd -f -p 8080 -h /www";

/// Two pods get addresses of the subnet and reach each other; a hostPort reaches a pod
/// from 127.0.0.1; stop and removal leave no veth, lease or iptables rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_each_other_and_a_host_port_and_leave_nothing() {
    let net = Net::new();
    net.install(
        "10-test.conflist",
        &net.conflist(20, &[json!({"type": "loopback"})]).to_string(),
    );
    let mut env = env_with(&net.daemon_config(30)).await;
    assert_eq!(network_ready(&mut env).await, (true, String::new()));

    let host_port = common::free_port();
    let server = run_pod(&mut env, "server", &[(8080, host_port)])
        .await
        .unwrap();
    let client = run_pod(&mut env, "client", &[]).await.unwrap();
    let server_ips = pod_ips(&mut env, &server).await;
    let client_ips = pod_ips(&mut env, &client).await;
    assert_eq!(server_ips.len(), 1, "{server_ips:?}");
    assert!(
        server_ips[0].starts_with(&format!("{}.", net.prefix)),
        "{server_ips:?}"
    );
    assert_ne!(server_ips, client_ips);
    assert_eq!(
        net.leases(),
        server_ips.iter().chain(&client_ips).cloned().collect()
    );
    assert_eq!(net.veths(), 2);
    assert!(rules_of(&server) > 0, "no portmap rule names the pod");

    let image = env.image.clone();
    let web = env
        .create(&server, container_config("web", &image, SERVE))
        .await
        .unwrap();
    env.start(&web).await;
    let fetch = format!(
        "for i in $(seq 50); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {} 8080 2>&1 | tail -n 1 | grep . && exit 0; sleep 0.2; done; ip addr; ip route; exit 1",
        server_ips[0]
    );
    let (out, st) = env.run(&client, "fetch", &fetch).await;
    let served = std::fs::read_to_string(env.status(&web).await.log_path).unwrap_or_default();
    assert_eq!(st.exit_code, 0, "{out:?}; the server's log: {served}");
    assert_eq!(out, ["hello from server"]);
    // The pod's own interface, from inside.
    let (out, _) = env.run(&client, "addr", "ip -4 -o addr show eth0").await;
    assert!(out.join("\n").contains(&client_ips[0]), "{out:?}");

    let body = http_get(&format!("127.0.0.1:{host_port}"));
    assert!(body.ends_with("hello from server\n"), "{body}");

    for pod in [&server, &client] {
        stop_and_remove(&mut env, pod).await;
        assert_eq!(rules_of(pod), 0, "iptables rules of {pod} left");
    }
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    assert_eq!(net.veths(), 0);
    assert!(!env.daemon.root.join("sandboxes").join(&server).exists());
    env.daemon.stop().await;
}

/// The cached ADD lets a restarted daemon release the pod's network, and a changed
/// config dir does not change what the pod's DEL runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_run_and_stop_still_cleans_up() {
    let net = Net::new();
    net.install("10-test.conflist", &net.conflist(5, &[]).to_string());
    let mut env = env_with(&net.daemon_config(30)).await;
    let pod = run_pod(&mut env, "survivor", &[(80, common::free_port())])
        .await
        .unwrap();
    let ips = pod_ips(&mut env, &pod).await;
    assert_eq!(net.leases(), ips.iter().cloned().collect());

    env.daemon.stop().await;
    // The node's config changes while the daemon is down: DEL still uses the pod's own.
    net.install(
        "10-other.conflist",
        r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge","bridge":"unused0"}]}"#,
    );
    env.daemon
        .launch(common::Options {
            config: net.daemon_config(30),
            ..Default::default()
        })
        .await;
    env.node.rt = env.daemon.runtime().await;
    assert_eq!(pod_ips(&mut env, &pod).await, ips);
    stop_and_remove(&mut env, &pod).await;
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    assert_eq!(net.veths(), 0);
    assert_eq!(rules_of(&pod), 0);
    env.daemon.stop().await;
}

/// After a reboot the pod's netns is gone (its pin is a plain file): `DEL` is given no
/// netns, as the spec has it, and the plugins still release the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_netns_still_releases_the_lease() {
    let net = Net::new();
    net.install(
        "10-test.conflist",
        &net.conflist(5, &[json!({"type": "loopback"})]).to_string(),
    );
    let mut env = env_with(&net.daemon_config(30)).await;
    let pod = run_pod(&mut env, "rebooted", &[]).await.unwrap();
    assert_eq!(net.leases().len(), 1);
    let pin = env
        .daemon
        .state_dir
        .join("sandboxes")
        .join(&pod)
        .join("ns/net");
    let st = Command::new("umount").arg("-l").arg(&pin).status().unwrap();
    assert!(st.success(), "cannot unmount {}", pin.display());
    // The namespace goes with its last holder, and the kernel removes the veth pair.
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.veths() != 0 {
        assert!(Instant::now() < deadline, "the veth outlived its netns");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_and_remove(&mut env, &pod).await;
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    env.daemon.stop().await;
}

/// 20 pods started and stopped at once: distinct addresses, nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_pods_at_once() {
    let net = Net::new();
    // Without portmap: its CHECK (1.1.1) fails on a pod without IPv6, a bug of the plugin's.
    let mut list = net.conflist(30, &[]);
    list["plugins"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["type"] != "portmap");
    net.install("10-test.conflist", &list.to_string());
    let env = env_with(&net.daemon_config(60)).await;
    let started = Instant::now();
    let runs = (0..20).map(|i| {
        let mut rt = env.rt.clone();
        async move {
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config(&format!("crowd-{i}"), &[])),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
        }
    });
    let pods: Vec<String> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    eprintln!("20 pods with networks in {:?}", started.elapsed());
    let mut env = env;
    let mut all = BTreeSet::new();
    for pod in &pods {
        let ips = pod_ips(&mut env, pod).await;
        assert_eq!(ips.len(), 1);
        assert!(all.insert(ips[0].clone()), "duplicate address {ips:?}");
    }
    assert_eq!(net.leases(), all);
    assert_eq!(net.veths(), 20);
    let info = env
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pods[0].clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let details: Value = serde_json::from_str(&info["info"]).unwrap();
    assert_eq!(details["networks"][0]["check"], "ok", "{details}");
    let stops = pods.iter().map(|id| {
        let mut rt = env.rt.clone();
        async move {
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
        }
    });
    for r in futures_util::future::join_all(stops).await {
        r.unwrap();
    }
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    assert_eq!(net.veths(), 0);
    env.daemon.stop().await;
}

/// Bad configs and plugins: a clear error naming the plugin, nothing half-built, the
/// daemon fine; the config dir is re-read when it changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_and_plugins_fail_cleanly() {
    let net = Net::new();
    net.plugin("failing", r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":7,"msg":"the failing plugin says no"}'; exit 1"#);
    net.plugin("garbage", "cat >/dev/null; echo 'this is not json'");
    // A plugin that hangs, with a child of its own: both are killed at the timeout.
    let child_pid = net.path("hanging.child");
    net.plugin(
        "hanging",
        &format!("sleep 600 &\necho $! > {child_pid:?}\nexec sleep 600"),
    );
    net.install("10-test.conflist", "{ not json");
    let mut env = env_with(&net.daemon_config(2)).await;
    let pins = env.daemon.state_dir.join("sandboxes");

    let (ready, message) = network_ready(&mut env).await;
    assert!(!ready && message.contains("10-test.conflist"), "{message}");
    let err = run_pod(&mut env, "unparsable", &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("10-test.conflist"), "{err:?}");

    net.install(
        "10-test.conflist",
        &net.conflist(5, &[json!({"type": "nosuchplugin"})])
            .to_string(),
    );
    let (ready, message) = network_ready(&mut env).await;
    assert!(!ready && message.contains("nosuchplugin"), "{message}");
    let err = run_pod(&mut env, "missing", &[]).await.unwrap_err();
    assert!(err.message().contains("nosuchplugin"), "{err:?}");

    for (plugin, code, said) in [
        (
            "failing",
            Code::Unknown,
            "the failing plugin says no (code 7)",
        ),
        ("garbage", Code::Unknown, "this is not json"),
        (
            "hanging",
            Code::DeadlineExceeded,
            "did not finish within 2 s",
        ),
    ] {
        net.install(
            "10-test.conflist",
            &net.conflist(5, &[json!({"type": plugin})]).to_string(),
        );
        assert!(network_ready(&mut env).await.0);
        let err = run_pod(&mut env, plugin, &[]).await.unwrap_err();
        assert_eq!(err.code(), code, "{plugin}: {err:?}");
        assert!(
            err.message().contains(plugin) && err.message().contains(said),
            "{err:?}"
        );
        assert!(
            net.leases().is_empty(),
            "{plugin}: leases {:?}",
            net.leases()
        );
        assert_eq!(net.veths(), 0, "{plugin}: veths left");
        assert_eq!(
            std::fs::read_dir(&pins).unwrap().count(),
            0,
            "{plugin}: pins left"
        );
    }
    let hung = Command::new("pgrep")
        .args(["-f", &net.path("bin").join("hanging").display().to_string()])
        .output()
        .unwrap();
    assert!(hung.stdout.is_empty(), "the hanging plugin still runs");
    let child: u32 = std::fs::read_to_string(&child_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    // Gone, or a zombie waiting for whoever reaps orphans here.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    while alive() {
        assert!(
            Instant::now() < deadline,
            "the hanging plugin's child {child} outlived it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A pool of one address: the second pod fails with host-local's own message.
    net.install("10-test.conflist", &net.conflist(1, &[]).to_string());
    let first = run_pod(&mut env, "first", &[]).await.unwrap();
    let err = run_pod(&mut env, "second", &[]).await.unwrap_err();
    assert!(
        err.message().contains("host-local") || err.message().contains("no IP addresses available"),
        "{err:?}"
    );
    assert_eq!(net.leases().len(), 1);
    assert_eq!(net.veths(), 1);
    stop_and_remove(&mut env, &first).await;
    assert!(net.leases().is_empty());
    assert_eq!(net.veths(), 0);
    assert!(network_ready(&mut env).await.0);
    env.daemon.stop().await;
}

/// Dual stack and traffic shaping: host-local hands out an IPv4 and an IPv6 address (the
/// pod's `ip` and `additional_ips`), the bandwidth plugin shapes the pod's traffic at the
/// rates of its annotations, and stop removes the shaper, the rules and both leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_and_bandwidth_annotations() {
    let net = Net::new();
    let v6 = format!(
        "fd00:5374:{:x}:{:x}",
        NETS.load(std::sync::atomic::Ordering::SeqCst),
        std::process::id() % 0xffff
    );
    let conflist = json!({"cniVersion": "1.0.0", "name": net.name, "plugins": [
        {"type": "bridge", "bridge": net.bridge, "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "dataDir": net.path("leases"),
                  "ranges": [[{"subnet": format!("{}.0/24", net.prefix)}],
                             [{"subnet": format!("{v6}::/64")}]],
                  "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
        {"type": "bandwidth", "capabilities": {"bandwidth": true}},
    ]});
    net.install("10-dual.conflist", &conflist.to_string());
    let mut env = env_with(&net.daemon_config(30)).await;
    let mut config = pod_config("shaped", &[]);
    config.annotations.extend([
        (
            "kubernetes.io/ingress-bandwidth".to_string(),
            "1M".to_string(),
        ),
        (
            "kubernetes.io/egress-bandwidth".to_string(),
            "2M".to_string(),
        ),
    ]);
    let before = shapers();
    let pod = env
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let ips = pod_ips(&mut env, &pod).await;
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(ips[0].starts_with(&format!("{}.", net.prefix)), "{ips:?}");
    assert!(ips[1].starts_with(&format!("{v6}:")), "{ips:?}");
    assert_eq!(net.leases(), ips.iter().cloned().collect());

    // Ingress (towards the pod) is shaped on the host's end of the veth; egress through an
    // ifb device of the plugin's.
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", &net.bridge])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let veth = listing
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .next()
        .unwrap_or_else(|| panic!("no veth on the bridge: {listing}"));
    let qdiscs = |dev: &str| {
        let out = Command::new("tc")
            .args(["qdisc", "show", "dev", dev])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let on_veth = qdiscs(&veth);
    assert!(
        on_veth.contains("tbf") && on_veth.contains("rate 1Mbit"),
        "{veth}: {on_veth}"
    );
    let added: Vec<String> = shapers().difference(&before).cloned().collect();
    assert_eq!(added.len(), 1, "one ifb device for the pod: {added:?}");
    let on_ifb = qdiscs(&added[0]);
    assert!(on_ifb.contains("rate 2Mbit"), "{}: {on_ifb}", added[0]);

    stop_and_remove(&mut env, &pod).await;
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    assert_eq!(net.veths(), 0);
    assert_eq!(shapers(), before, "the pod's ifb device is left");
    assert_eq!(
        rules_of(&pod),
        0,
        "iptables/ip6tables rules of the pod left"
    );
    env.daemon.stop().await;
}

/// Without any network config, a pod of its own network is refused before anything is
/// built (as containerd and CRI-O refuse it); host-network pods still run. A loopback-only
/// network gives a pod no address of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network_config_refuses_pods_and_builds_nothing() {
    let net = Net::new();
    let mut env = env_with(&net.daemon_config(10)).await;
    let (ready, message) = network_ready(&mut env).await;
    assert!(
        !ready && message.contains("cni config uninitialized"),
        "{message}"
    );
    let err = run_pod(&mut env, "netless", &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("cni config uninitialized")
            && err
                .message()
                .contains(&net.path("conf").display().to_string()),
        "{err:?}"
    );
    for dir in [
        env.daemon.state_dir.join("sandboxes"),
        env.daemon.root.join("sandboxes"),
    ] {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    }
    assert!(
        common::cgroup_dirs(&env.daemon.cgroup_parent).is_empty(),
        "a refused pod made cgroups"
    );
    assert!(common::mounts_below(env.daemon.path("").as_path()).is_empty());

    let mut host = pod_config("hostnet", &[]);
    host.linux = Some(common::cri::host_network());
    let hostnet = env
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(host),
            runtime_handler: String::new(),
        })
        .await
        .expect("a host-network pod needs no network config")
        .into_inner()
        .pod_sandbox_id;
    stop_and_remove(&mut env, &hostnet).await;

    // The config dir is watched: a loopback-only network makes the node ready.
    net.install(
        "10-lo.conflist",
        r#"{"cniVersion":"1.0.0","name":"lo-only","plugins":[{"type":"loopback"}]}"#,
    );
    assert!(network_ready(&mut env).await.0);
    let pod = run_pod(&mut env, "loopback", &[]).await.unwrap();
    assert_eq!(
        pod_ips(&mut env, &pod).await,
        Vec::<String>::new(),
        "loopback addresses are not the pod's"
    );
    stop_and_remove(&mut env, &pod).await;
    env.daemon.stop().await;
}

/// CNI 1.1.0: `STATUS` gates the node's readiness and every pod's `ADD`; `GC` at start-up is
/// given the attachments of the pods that still hold one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_1_1_status_gates_pods_and_gc_keeps_live_attachments() {
    let net = Net::new();
    let down = net.path("down");
    let gc = net.path("gc.json");
    let calls = net.path("calls");
    net.plugin(
        "gate",
        &format!(
            r#"input=$(cat)
echo "$CNI_COMMAND $CNI_CONTAINERID" >> {calls:?}
case "$CNI_COMMAND" in
STATUS) if [ -e {down:?} ]; then echo '{{"cniVersion":"1.1.0","code":50,"msg":"the gate is down"}}'; exit 1; fi ;;
GC) printf '%s' "$input" > {gc:?} ;;
ADD) echo '{{"cniVersion":"1.1.0","interfaces":[{{"name":"eth0","sandbox":"'"$CNI_NETNS"'"}}],"ips":[{{"interface":0,"address":"10.177.0.9/24"}}]}}' ;;
esac"#
        ),
    );
    net.install(
        "10-gate.conflist",
        &json!({"cniVersion": "1.1.0", "name": net.name, "plugins": [{"type": "gate"}]})
            .to_string(),
    );
    std::fs::write(&down, "").unwrap();
    let mut env = env_with(&net.daemon_config(10)).await;
    let (ready, message) = network_ready(&mut env).await;
    assert!(!ready && message.contains("the gate is down"), "{message}");
    let err = run_pod(&mut env, "gated", &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("the gate is down (code 50)"),
        "{err:?}"
    );
    let added = || {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("ADD"))
            .count()
    };
    assert_eq!(added(), 0, "ADD ran while STATUS said not ready");

    std::fs::remove_file(&down).unwrap();
    assert!(network_ready(&mut env).await.0);
    let kept = run_pod(&mut env, "kept", &[]).await.unwrap();
    let gone = run_pod(&mut env, "gone", &[]).await.unwrap();
    assert_eq!(pod_ips(&mut env, &kept).await, ["10.177.0.9"]);
    env.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: gone.clone(),
        })
        .await
        .unwrap();

    env.daemon.stop().await;
    let _ = std::fs::remove_file(&gc);
    env.daemon
        .launch(common::Options {
            config: net.daemon_config(10),
            ..Default::default()
        })
        .await;
    env.node.rt = env.daemon.runtime().await;
    let given: Value = serde_json::from_str(&std::fs::read_to_string(&gc).expect("GC ran"))
        .expect("GC's stdin is JSON");
    assert_eq!(given["name"], net.name);
    assert_eq!(given["cniVersion"], "1.1.0");
    assert_eq!(
        given["cni.dev/valid-attachments"],
        json!([{"containerID": kept, "ifname": "eth0"}]),
        "the stopped pod's attachment is not valid, the ready one's is"
    );
    stop_and_remove(&mut env, &kept).await;
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: gone,
        })
        .await
        .unwrap();
    env.daemon.stop().await;
}
