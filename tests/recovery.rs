//! The daemon goes away and comes back: a SIGTERM and a SIGKILL of `stratad` with 50
//! running containers in 10 pods (host-network ones and ones sharing the pod's PIDs among
//! them). Every container keeps running, every pod and container comes back with its
//! state, exits that happened meanwhile are recorded with their codes and times, logs have
//! no gap or repeated line, and the recovered containers answer exec, stats and stop.

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::cri::{Env, container_config, env, host_network, pid_mode, pod_config};
use nix::sys::signal::Signal;
use strata_api::cri::{
    self, ContainerStatsRequest, ExecSyncRequest, ListContainersRequest, ListPodSandboxRequest,
    StopContainerRequest,
};

const PODS: usize = 10;
const LONG_PER_POD: usize = 4;

/// A container that writes numbered lines for good: its log shows any gap or repeat.
const COUNTER: &str = "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.1; done";

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

struct Fleet {
    pods: Vec<String>,
    /// Container id → its pod's index.
    long: BTreeMap<String, usize>,
}

async fn run_pod(env: &mut Env, i: usize) -> String {
    let mut config = pod_config(&format!("fleet-{i}"));
    if i < 3 {
        config.linux = Some(host_network());
    }
    env.pod_with(config).await
}

async fn container(env: &mut Env, pod: &str, i: usize, name: &str, script: &str) -> String {
    let image = env.image.clone();
    let mut config = container_config(name, &image, script);
    // Pods 3 to 5 share one PID namespace among their containers.
    if (3..6).contains(&i) {
        config.linux = Some(pid_mode(cri::NamespaceMode::Pod));
    }
    let id = env.create(pod, config).await.unwrap();
    env.start(&id).await;
    id
}

/// Starts one short-lived container per pod that exits (with code 10 + pod index) about
/// `after_secs` from now: while the daemon is away.
async fn start_short_ones(
    env: &mut Env,
    fleet: &Fleet,
    round: &str,
    after_secs: u32,
) -> Vec<(String, i32)> {
    let mut short = Vec::new();
    for (i, pod) in fleet.pods.iter().enumerate() {
        let code = 10 + i as i32;
        let script = format!("sleep {after_secs}; echo bye; exit {code}");
        let id = container(env, pod, i, &format!("short-{round}"), &script).await;
        short.push((id, code));
    }
    short
}

/// `line N` numbers of a log: consecutive from 0, or why not.
fn check_counter_log(path: &str) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut expected = 0usize;
    for line in text.lines() {
        // CRI log lines: time stream tag content.
        let content = line.splitn(4, ' ').nth(3).unwrap_or("");
        let n: usize = content
            .strip_prefix("line ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{path}: unexpected line {line:?}"))?;
        if n != expected {
            return Err(format!("{path}: line {n} where {expected} was due"));
        }
        expected += 1;
    }
    Ok(expected)
}

/// The live monitor of each long-running container, by the pid its record names.
fn monitors(env: &Env, fleet: &Fleet) -> BTreeMap<String, i64> {
    fleet
        .long
        .keys()
        .filter_map(|id| {
            let pid = env.record("containers", id)["monitor"][0].as_i64()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains("__monitor")
                .then(|| (id.clone(), pid))
        })
        .collect()
}

async fn check_recovered(env: &mut Env, fleet: &Fleet, short: &[(String, i32)], down: (i64, i64)) {
    let pods = env
        .rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), PODS);
    assert!(
        pods.iter()
            .all(|p| p.state == cri::PodSandboxState::SandboxReady as i32),
        "{pods:?}"
    );
    let listed = env
        .rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    let state_of: BTreeMap<&str, i32> = listed.iter().map(|c| (c.id.as_str(), c.state)).collect();
    for id in fleet.long.keys() {
        assert_eq!(
            state_of.get(id.as_str()),
            Some(&(cri::ContainerState::ContainerRunning as i32)),
            "{id} is not listed running"
        );
    }
    for (id, code) in short {
        let st = env.status(id).await;
        assert_eq!(
            (st.state, st.exit_code),
            (cri::ContainerState::ContainerExited as i32, *code),
            "{st:?}"
        );
        assert!(
            st.finished_at > down.0 && st.finished_at < down.1,
            "{id} finished at {}, not while the daemon was away ({down:?})",
            st.finished_at
        );
        let log = std::fs::read_to_string(&st.log_path).unwrap();
        assert_eq!(log.matches(" stdout F bye").count(), 1, "{log}");
    }
    for (id, _) in fleet.long.iter().take(PODS) {
        let out = env
            .rt
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["sh".into(), "-c".into(), "echo still here".into()],
                timeout: 10,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((out.exit_code, out.stdout), (0, b"still here\n".to_vec()));
        let stats = env
            .rt
            .container_stats(ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        assert!(stats.memory.is_some_and(|m| m.working_set_bytes.is_some()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_containers_outlive_a_sigkill_and_a_sigterm_of_the_daemon() {
    let mut env = env().await;
    let mut fleet = Fleet {
        pods: Vec::new(),
        long: BTreeMap::new(),
    };
    for i in 0..PODS {
        let pod = run_pod(&mut env, i).await;
        for n in 0..LONG_PER_POD {
            let id = container(&mut env, &pod, i, &format!("counter-{n}"), COUNTER).await;
            fleet.long.insert(id, i);
        }
        fleet.pods.push(pod);
    }
    let monitors_before = monitors(&env, &fleet);
    assert_eq!(monitors_before.len(), PODS * LONG_PER_POD);

    for (round, signal) in [("kill", Signal::SIGKILL), ("term", Signal::SIGTERM)] {
        let short = start_short_ones(&mut env, &fleet, round, 2).await;
        let went = now_ns();
        env.daemon.stop_with(signal).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let back = now_ns();
        env.daemon.launch(common::Options::default()).await;
        env.node.rt = env.daemon.runtime().await;
        check_recovered(&mut env, &fleet, &short, (went, back)).await;
        assert_eq!(
            monitors(&env, &fleet),
            monitors_before,
            "{round}: the running containers' monitors are the ones from before"
        );
        for (id, _) in &short {
            env.rt
                .remove_container(cri::RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .unwrap();
        }
    }

    let mut lines = 0;
    for id in fleet.long.keys() {
        env.rt
            .stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await
            .unwrap();
        let st = env.status(id).await;
        assert_eq!(st.exit_code, 137, "{st:?}");
        lines += check_counter_log(&st.log_path).unwrap();
    }
    assert!(lines > 40 * 40, "the counters wrote {lines} lines in all");
    env.remove_pods(fleet.pods.clone()).await;
    assert!(common::mounts_below(&env.daemon.path("")).is_empty());
    env.daemon.stop().await;
}
