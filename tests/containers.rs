//! End to end: containers in pods, from images in a real registry, on the real kernel.

mod common;

use std::time::{Duration, Instant};

use common::{
    cri::{container_config, env, env_with, memory_hog, pid_mode},
    oci::{Compression, ImageBuilder, LayerBuilder, busybox_layer},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use strata_api::cri::{
    self, ContainerStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    StartContainerRequest, StopContainerRequest,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_in_its_pod_and_its_own_rootfs() {
    let mut env = env().await;
    let pod = env.pod("web").await;
    // `set -- /proc/[0-9]*` is expanded by the shell itself: no other process is running.
    let script = "echo $GREETING; hostname; cat /etc/hostname; set -- /proc/[0-9]*; echo $#; \
                  cat /etc/kept; test -e /etc/doomed && echo doomed-visible || echo doomed-gone; \
                  echo written > /newfile; ls /proc/self/fd | wc -l; id -u; exit 3";
    let (lines, st) = env.run(&pod, "first", script).await;
    assert_eq!(st.exit_code, 3, "{st:?} {lines:?}");
    assert_eq!(st.reason, "Error");
    assert_eq!(lines[0], "hello");
    assert_eq!(lines[1], "web-host", "the pod's hostname");
    assert_eq!(lines[2], "web-host", "/etc/hostname from the init layer");
    assert_eq!(
        lines[3], "1",
        "only the container's own process (its shell) in /proc: {lines:?}"
    );
    assert_eq!(lines[4], "kept");
    assert_eq!(lines[5], "doomed-gone", "the whiteout hides the file");
    // ls's own fds: 0-2 plus the directory it reads.
    assert_eq!(lines[6], "4", "only fds 0-2 are inherited: {lines:?}");
    assert_eq!(lines[7], "0");

    // The write went to the container's upper dir, not to any image layer.
    let containers = env.daemon.root.join("containers");
    let dir = std::fs::read_dir(&containers)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read_to_string(dir.join("upper/newfile")).unwrap(),
        "written\n"
    );
    assert!(
        !dir.join("upper/etc/hosts").exists(),
        "init layer files never reach the upper dir"
    );

    let id = dir.file_name().unwrap().to_str().unwrap().to_string();
    env.rt
        .remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    assert!(!dir.exists());
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_and_remove_cleans_up() {
    let mut env = env().await;
    let pod = env.pod("sleepy").await;
    let image = env.image.clone();
    let id = env
        .create(
            &pod,
            container_config(
                "sleeper",
                &image,
                "trap 'exit 0' TERM; echo trapped; while true; do sleep 0.1; done",
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        env.status(&id).await.state,
        cri::ContainerState::ContainerCreated as i32
    );
    env.start(&id).await;
    // A PID 1 ignores a signal it has no handler for yet: stop once the trap is set.
    wait_for_line(&mut env, &id, "trapped").await;
    assert_eq!(
        env.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let err = env
        .rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    env.rt
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
    let st = env.status(&id).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "SIGTERM was handled: {st:?}"
    );

    // One that ignores SIGTERM is killed after the timeout.
    let stubborn = env
        .create(
            &pod,
            container_config(
                "stubborn",
                &image,
                "trap '' TERM; while true; do sleep 0.1; done",
            ),
        )
        .await
        .unwrap();
    env.start(&stubborn).await;
    let started = Instant::now();
    env.rt
        .stop_container(StopContainerRequest {
            container_id: stubborn.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    let st = env.status(&stubborn).await;
    assert_eq!(st.exit_code, 137, "{st:?}");

    // Removing the pod removes its containers; nothing is left.
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_dir(env.daemon.root.join("containers"))
            .unwrap()
            .count(),
        0
    );
    assert!(common::cgroup_dirs(&format!("{}/pod-{pod}", env.daemon.cgroup_parent)).is_empty());
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(&id),
        "a monitor is left"
    );
}

/// Waits until the container's log has `line` on stdout.
async fn wait_for_line(env: &mut common::cri::Env, id: &str, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = env.status(id).await;
        if common::cri::stdout_lines(&st).iter().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never printed {line}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_container_requests() {
    let mut env = env().await;
    let pod = env.pod("bad").await;
    let image = env.image.clone();
    let err = env
        .create(
            &pod,
            container_config("x", "127.0.0.1:1/missing:v1", "true"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = env
        .create("0000000000", container_config("x", &image, "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    env.create(&pod, container_config("dup", &image, "true"))
        .await
        .unwrap();
    let err = env
        .create(&pod, container_config("dup", &image, "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let mut unknown_user = container_config("who", &image, "true");
    unknown_user.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "nobody-here".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = env.create(&pod, unknown_user).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut missing_mount = container_config("mnt", &image, "true");
    missing_mount.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: "/nonexistent/strata".into(),
        ..Default::default()
    }];
    let err = env.create(&pod, missing_mount).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // An entrypoint that is not in the image: the container reports it; the daemon lives on.
    let mut no_such = container_config("noexec", &image, "");
    no_such.command = vec!["/no/such/binary".into()];
    let id = env.create(&pod, no_such).await.unwrap();
    let err = env
        .rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let st = env.status(&id).await;
    assert_eq!(st.reason, "StartError");
    assert!(st.message.contains("/no/such/binary"), "{}", st.message);

    // A stopped pod takes no new containers.
    env.rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let err = env
        .create(&pod, container_config("late", &image, "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_dir(env.daemon.root.join("containers"))
            .unwrap()
            .count(),
        0
    );
}

fn ns_inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_share_loopback_and_namespaces() {
    let mut env = env().await;
    let pod = env.pod("shared").await;
    let image = env.image.clone();
    let listener = env
        .create(
            &pod,
            container_config(
                "server",
                &image,
                "for ns in net ipc uts; do readlink /proc/self/ns/$ns; done; nc -l -p 9090 -e sh -c 'read line; echo got-$line >&2'",
            ),
        )
        .await
        .unwrap();
    env.start(&listener).await;
    let (lines, st) = env
        .run(&pod, "client", "echo via-shm > /dev/shm/note; for i in $(seq 1 100); do echo over-loopback | nc 127.0.0.1 9090 && exit 0; sleep 0.05; done; exit 1")
        .await;
    assert_eq!(st.exit_code, 0, "the client never connected: {lines:?}");
    let server = env.wait_exit(&listener).await;
    let log = std::fs::read_to_string(&server.log_path).unwrap();
    // Printed by the listener's `nc -e` helper on stderr (stdin at EOF would let a plain
    // `nc -l` quit before it reads the socket).
    assert!(log.contains(" stderr F got-over-loopback"), "{log}");
    // The containers' namespaces are the pod's pinned ones.
    let pins = env.daemon.state_dir.join("sandboxes").join(&pod).join("ns");
    for (kind, pin) in [("net", "net"), ("ipc", "ipc"), ("uts", "uts")] {
        let expected = format!("{kind}:[{}]", ns_inode(&pins.join(pin)));
        assert!(log.contains(&expected), "{kind}: {expected} not in {log}");
    }
    // /dev/shm is the pod's: what one container wrote, another reads.
    let (shm, _) = env.run(&pod, "reader", "cat /dev/shm/note").await;
    assert_eq!(shm, ["via-shm"]);
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_groups_and_a_memory_limit() {
    let mut env = env().await;
    let pod = env.pod("limits").await;
    let image = env.image.clone();

    let mut as_user = container_config("user", &image, "id -u; id -g; id -G");
    as_user.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 1000 }),
            supplemental_groups: vec![2000, 3000],
            ..Default::default()
        }),
        ..Default::default()
    });
    let (out, _) = env.run_config(&pod, as_user).await;
    assert_eq!(out, ["1000", "1000", "1000 2000 3000"], "{out:?}");

    let (_, st) = env.run_config(&pod, memory_hog(&image)).await;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (137, "OOMKilled"),
        "{st:?}"
    );
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_stats_update_and_logs() {
    let mut env = env().await;
    let pod = env.pod("ops").await;
    let image = env.image.clone();
    let id = env
        .create(&pod, container_config("main", &image, "i=0; while [ $i -lt 500 ]; do echo line-$i; i=$((i+1)); done; printf no-newline; echo > /written; exec sleep 1000"))
        .await
        .unwrap();
    env.start(&id).await;

    let exec = |cmd: &[&str], timeout: i64| {
        // Each stream may carry 16 MiB; the default client limit is 4 MiB.
        let mut rt = env.rt.clone().max_decoding_message_size(64 << 20);
        let request = cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        async move { rt.exec_sync(request).await }
    };
    let out = exec(
        &[
            "sh",
            "-c",
            "echo $GREETING; hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /written",
        ],
        10,
    )
    .await
    .unwrap()
    .into_inner();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        out.exit_code,
        0,
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines[0], "hello");
    assert_eq!(lines[1], "ops-host");
    assert_eq!(lines[2].trim(), "sleep 1000", "PID 1 is the container's");
    assert_eq!(lines[3], "/written", "the container's own rootfs");
    assert_eq!(
        exec(&["sh", "-c", "echo oops >&2; exit 5"], 10)
            .await
            .unwrap()
            .into_inner()
            .exit_code,
        5
    );
    let err = exec(&["sh", "-c", "sleep 30"], 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let big = exec(&["sh", "-c", "head -c 20000000 /dev/zero"], 30)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.stdout.len(), 16 << 20, "output capped at 16 MiB");

    // Stats from the cgroups and the writable layer.
    let stats = env
        .rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(stats.writable_layer.unwrap().inodes_used.unwrap().value >= 1);
    let pod_stats = env
        .rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = pod_stats.linux.unwrap();
    assert_eq!(linux.containers.len(), 1);
    assert!(linux.process.unwrap().process_count.unwrap().value >= 1);
    let listed = env
        .rt
        .list_container_stats(cri::ListContainerStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);

    // New limits land in the cgroup.
    env.rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let cgroup = format!("{}/pod-{pod}/{id}", env.daemon.cgroup_parent);
    let limit = common::cgroup_dirs(&cgroup)
        .iter()
        .find_map(|d| {
            std::fs::read_to_string(d.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(d.join("memory.max")))
                .ok()
        })
        .unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());

    // The log is complete, in order, and the last partial line is marked.
    env.rt
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let st = env.status(&id).await;
    let log = std::fs::read_to_string(&st.log_path).unwrap();
    let out: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once(" stdout ").map(|(_, t)| t))
        .collect();
    assert_eq!(out.len(), 501, "{}", &log[log.len().saturating_sub(300)..]);
    for (i, line) in out.iter().take(500).enumerate() {
        assert_eq!(*line, format!("F line-{i}"));
    }
    assert_eq!(out[500], "F no-newline");
    let first = log.lines().next().unwrap();
    assert!(
        first.len() > 31 && first.as_bytes()[10] == b'T' && first.contains("Z stdout F "),
        "{first}"
    );
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_outlive_a_daemon_restart_and_exits_are_recorded_meanwhile() {
    let mut env = env().await;
    let pod = env.pod("survivor").await;
    let image = env.image.clone();
    let long = env
        .create(&pod, container_config("long", &image, "exec sleep 1000"))
        .await
        .unwrap();
    let short = env
        .create(
            &pod,
            container_config("short", &image, "sleep 1; echo done; exit 7"),
        )
        .await
        .unwrap();
    for id in [&long, &short] {
        env.start(id).await;
    }
    let pid = {
        let st = env
            .rt
            .container_status(ContainerStatusRequest {
                container_id: long.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
        info["pid"].as_u64().unwrap() as i32
    };

    // The daemon goes away; the containers do not; the short one exits meanwhile.
    assert!(env.daemon.stop().await.success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the container died with the daemon"
    );
    env.daemon.launch(common::Options::default()).await;
    env.rt = env.daemon.runtime().await;

    assert_eq!(
        env.status(&long).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let st = env.status(&short).await;
    assert_eq!(
        (st.state, st.exit_code),
        (cri::ContainerState::ContainerExited as i32, 7),
        "{st:?}"
    );
    assert!(
        std::fs::read_to_string(&st.log_path)
            .unwrap()
            .contains(" stdout F done")
    );
    // And the restarted daemon still controls the running one.
    env.rt
        .stop_container(StopContainerRequest {
            container_id: long.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    assert_eq!(env.status(&long).await.exit_code, 137);
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pids_limit_stops_a_fork_bomb() {
    let mut env = env_with("pids_limit = 16\n[rlimits]\nnofile = 4096\n").await;
    let pod = env.pod("bomb").await;
    // Bounded, so that even a missing limit cannot hurt the machine: 100 sleepers. `echo` is
    // a builtin, so the shell can still report once forks are refused.
    let (lines, st) = env
        .run(
            &pod,
            "bomb",
            "ulimit -n; (for i in $(seq 1 100); do sleep 30 & done) 2>/dev/null; echo survived",
        )
        .await;
    // The configured rlimit, then the shell still standing after the refused forks.
    assert_eq!(lines, ["4096", "survived"], "{st:?}");
    let cgroup = format!("{}/pod-{pod}/{}", env.daemon.cgroup_parent, st.id);
    let dirs = common::cgroup_dirs(&cgroup);
    // v1 counts a refused fork where the forking process was (the container's leaf), v2
    // where the limit is.
    let events = dirs
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("pids.events")).ok())
        .map(|container| {
            let leaf = dirs
                .iter()
                .find_map(|d| std::fs::read_to_string(d.join("main/pids.events")).ok());
            container + &leaf.unwrap_or_default()
        })
        .expect("a pids controller");
    let refused: u64 = events
        .lines()
        .filter_map(|l| l.strip_prefix("max "))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum();
    assert!(refused > 0, "no fork was refused: {events}");
    let max = dirs
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("pids.max")).ok())
        .unwrap();
    assert_eq!(max.trim(), "16");
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stratactl_drives_containers_like_crictl() {
    let env = env().await;
    let d = &env.daemon;
    let pod_json = d.path("pod.json");
    let log_dir = d.path("pod-logs");
    let pod_config = serde_json::json!({
        "metadata": {"name": "cli", "namespace": "default", "uid": "cli-uid"},
        "hostname": "cli-host",
        "log_directory": log_dir,
    });
    std::fs::write(&pod_json, pod_config.to_string()).unwrap();
    let ctr_yaml = d.path("container.yaml");
    std::fs::write(
        &ctr_yaml,
        format!(
            "metadata:\n  name: app\nimage:\n  image: {}\ncommand: [/bin/sh, -c, 'echo one; echo two; echo three; exec sleep 1000']\nlog_path: app.log\n",
            env.image
        ),
    )
    .unwrap();
    let pod = d
        .ctl(["runp", pod_json.to_str().unwrap()])
        .ok()
        .trim()
        .to_string();
    let id = d
        .ctl([
            "create",
            &pod,
            ctr_yaml.to_str().unwrap(),
            pod_json.to_str().unwrap(),
        ])
        .ok()
        .trim()
        .to_string();
    assert_eq!(d.ctl(["ps", "-q"]).ok().trim(), "", "created, not running");
    assert_eq!(d.ctl(["ps", "-a", "-q"]).ok().trim(), id);
    d.ctl(["start", &id]).ok();
    let table = d.ctl(["ps"]);
    let row = table.ok().lines().nth(1).unwrap_or_default().to_string();
    assert!(
        row.starts_with(&id[..13]) && row.contains("Running") && row.contains("app"),
        "{row}"
    );

    // Logs appear (the log file is in the pod's log directory), with --tail and timestamps.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.ctl(["logs", &id]).ok().contains("three") {
        assert!(Instant::now() < deadline, "no logs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(d.ctl(["logs", &id]).ok(), "one\ntwo\nthree\n");
    assert_eq!(d.ctl(["logs", "--tail", "1", &id]).ok(), "three\n");
    let stamped = d.ctl(["logs", "--timestamps", &id]).ok().to_string();
    assert!(stamped.lines().all(|l| l.contains("Z ")), "{stamped}");

    // exec passes output and status through.
    let out = d.ctl(["exec", &id, "sh", "-c", "echo from-exec; hostname"]);
    assert_eq!(out.ok(), "from-exec\ncli-host\n");
    let out = d.ctl(["exec", &id, "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4));

    let inspected: serde_json::Value = serde_json::from_str(d.ctl(["inspect", &id]).ok()).unwrap();
    assert_eq!(inspected["status"]["state"], "CONTAINER_RUNNING");
    assert_eq!(
        inspected["status"]["logPath"],
        log_dir.join("app.log").to_str().unwrap()
    );
    assert!(d.ctl(["stats"]).ok().contains(&id[..13]));
    assert!(d.ctl(["statsp"]).ok().contains(&pod[..13]));
    d.ctl(["update", "--memory", "67108864", &id]).ok();

    let line = d.ctl(["rm", &id]).failed().to_string();
    assert!(line.contains("running"), "{line}");
    d.ctl(["stop", "-s", "0", &id]).ok();
    assert!(d.ctl(["ps", "-a"]).ok().contains("Exited"));
    d.ctl(["rm", &id]).ok();
    d.ctl(["rmp", "-f", &pod]).ok();

    // `run`: pod, container and start in one go (the image is already here).
    let out = d.ctl([
        "run",
        ctr_yaml.to_str().unwrap(),
        pod_json.to_str().unwrap(),
    ]);
    let run_id = out.ok().trim().to_string();
    assert!(d.ctl(["ps", "-q"]).ok().contains(&run_id));
    d.ctl(["rmp", "--all", "--force"]).ok();
    assert!(d.ctl(["ps", "-a", "-q"]).ok().trim().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_container_log_after_rotation() {
    let mut env = env().await;
    let pod = env.pod("rotate").await;
    let image = env.image.clone();
    let id = env
        .create(
            &pod,
            container_config(
                "ticker",
                &image,
                "while true; do echo tick; sleep 0.05; done",
            ),
        )
        .await
        .unwrap();
    env.start(&id).await;
    let log = std::path::PathBuf::from(env.status(&id).await.log_path);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = log.with_extension("1");
    std::fs::rename(&log, &rotated).unwrap();
    env.rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    // Once lines reach the new file, the old one is closed for good.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 3 {
        assert!(
            Instant::now() < deadline,
            "nothing written to the reopened log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old_len = std::fs::metadata(&rotated).unwrap().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        std::fs::metadata(&rotated).unwrap().len(),
        old_len,
        "the rotated file still grows"
    );
    let fresh = std::fs::read_to_string(&log).unwrap();
    assert!(
        fresh.lines().count() >= 3 && fresh.lines().all(|l| l.ends_with(" stdout F tick")),
        "{fresh}"
    );
    env.rt
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let err = env
        .rt
        .reopen_container_log(cri::ReopenContainerLogRequest { container_id: id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_context_mounts_and_hostile_mount_points() {
    let mut env = env().await;
    let pod = env.pod("secure").await;
    let image = env.image.clone();
    let host_dir = env.daemon.path("shared-ro");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("data"), "from-host\n").unwrap();

    let mut config = container_config(
        "locked",
        &image,
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; cat /data/data; \
         touch /data/x 2>/dev/null && echo data-writable || echo data-ro; \
         touch /rootfile 2>/dev/null && echo root-writable || echo root-ro; \
         head -c 1 /proc/kcore 2>/dev/null | wc -c; \
         echo 1 > /proc/sys/kernel/hostname 2>/dev/null && echo sys-writable || echo sys-ro; pwd",
    );
    config.working_dir = "/work/dir".into();
    config.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: host_dir.to_str().unwrap().into(),
        readonly: true,
        ..Default::default()
    }];
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            readonly_rootfs: true,
            no_new_privs: true,
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                add_capabilities: vec!["CAP_CHOWN".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    // A read-only rootfs cannot create the working directory: the image must have it.
    config.working_dir = "/tmp".into();
    let (out, _) = env.run_config(&pod, config).await;
    assert_eq!(
        out[0].split_whitespace().collect::<Vec<_>>(),
        ["CapEff:", "0000000000000001"],
        "only CAP_CHOWN: {out:?}"
    );
    assert_eq!(
        out[1].split_whitespace().collect::<Vec<_>>(),
        ["NoNewPrivs:", "1"]
    );
    assert_eq!(
        &out[2..],
        ["from-host", "data-ro", "root-ro", "0", "sys-ro", "/tmp"],
        "{out:?}"
    );
    assert!(!host_dir.join("x").exists());

    // An image whose /proc and /dev/shm are symlinks out of the rootfs: mounts land inside.
    let outside = env.daemon.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let hostile = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new()
                .symlink("proc", outside.to_str().unwrap())
                .finish(),
            Compression::Gzip,
        )
        .build();
    let reference = env.publish("ctr/hostile", &hostile).await;
    let id = env
        .create(
            &pod,
            container_config(
                "hostile-img",
                &reference,
                "ls /proc/self/status >/dev/null && echo proc-ok",
            ),
        )
        .await;
    if let Ok(id) = id {
        env.rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .ok();
        env.wait_exit(&id).await;
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "a mount escaped the rootfs"
    );
    let mounts = common::mounts_below(&outside);
    assert!(mounts.is_empty(), "{mounts:?}");
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_score_adj_is_applied_or_left_when_the_host_refuses() {
    let mut env = env().await;
    let pod = env.pod("oomadj").await;
    let image = env.image.clone();
    let inherited = std::fs::read_to_string("/proc/self/oom_score_adj")
        .unwrap()
        .trim()
        .parse::<i64>()
        .unwrap();
    for (name, adj) in [("raise", (inherited + 100).min(1000)), ("lower", -999)] {
        let mut config = container_config(name, &image, "cat /proc/self/oom_score_adj");
        config.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                oom_score_adj: adj,
                ..Default::default()
            }),
            ..Default::default()
        });
        let (out, st) = env.run_config(&pod, config).await;
        assert_eq!(st.exit_code, 0, "{st:?}");
        let seen: i64 = out[0].trim().parse().unwrap();
        // Raising always works; lowering only where root has CAP_SYS_RESOURCE, and where it
        // has not, the container still runs with the inherited value.
        if name == "raise" {
            assert_eq!(seen, adj);
        } else {
            assert!(seen == adj || seen == inherited, "{seen}");
        }
    }
    let mut bad = container_config("badadj", &image, "true");
    bad.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            oom_score_adj: 5000,
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(
        env.create(&pod, bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_pid_namespace_sees_the_target() {
    let mut env = env().await;
    let pod = env.pod("debug").await;
    let image = env.image.clone();
    let target = env
        .create(&pod, container_config("app", &image, "exec sleep 1000"))
        .await
        .unwrap();
    env.start(&target).await;
    let mut debug = container_config(
        "debugger",
        &image,
        "cat /proc/1/cmdline | tr '\\0' ' '; echo",
    );
    debug.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Target as i32,
                target_id: target.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let (out, _) = env.run_config(&pod, debug).await;
    assert!(
        out.iter().any(|l| l.starts_with("sleep 1000")),
        "the target's init is PID 1: {out:?}"
    );
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_shares_one_pid_namespace_when_asked() {
    let mut env = env().await;
    // The pod's PID mode is POD (CRI's default): its containers in POD mode share one.
    let pod = env.pod("sharing").await;
    let image = env.image.clone();
    let mut first = container_config("first", &image, "exec sleep 1000");
    first.linux = Some(pid_mode(cri::NamespaceMode::Pod));
    let first = env.create(&pod, first).await.unwrap();
    env.start(&first).await;
    let mut second = container_config(
        "second",
        &image,
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo",
    );
    second.linux = Some(pid_mode(cri::NamespaceMode::Pod));
    let (out, _) = env.run_config(&pod, second).await;
    assert!(
        out[0].contains("__pidns"),
        "PID 1 is the pod's holder: {out:?}"
    );
    assert!(
        out[1].contains("sleep 1000"),
        "the other container's process is visible: {out:?}"
    );

    // Stopping the pod ends the namespace: the holder and the sleeper are gone.
    env.rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let holder = env.record("sandboxes", &pod)["pid_holder"]
        .as_u64()
        .expect("the holder's pid");
    assert!(
        !std::fs::read(format!("/proc/{holder}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__pidns")),
        "the PID namespace holder outlived the pod"
    );
    assert_eq!(
        env.status(&first).await.state,
        cri::ContainerState::ContainerExited as i32
    );
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_of_a_120_layer_image_and_the_init_layer_files() {
    let mut env = env().await;
    let mut builder = ImageBuilder::new().layer(busybox_layer(), Compression::Gzip);
    for i in 1..120 {
        builder = builder.layer(
            LayerBuilder::new()
                .file(
                    &format!("layers/{i:03}"),
                    format!("{i}\n").as_bytes(),
                    0o644,
                )
                .finish(),
            Compression::Gzip,
        );
    }
    let tall = builder.build();
    let reference = env.publish("ctr/tall", &tall).await;
    let pod = env.pod("tall").await;
    let (out, _) = env
        .run_config(
            &pod,
            container_config(
                "tall",
                &reference,
                "cat /layers/001 /layers/119; ls /layers | wc -l; cat /etc/resolv.conf /etc/hosts",
            ),
        )
        .await;
    assert_eq!(&out[..3], ["1", "119", "119"], "{out:?}");
    let pod_dir = env.daemon.root.join("sandboxes").join(&pod);
    let expected_resolv = std::fs::read_to_string(pod_dir.join("resolv.conf")).unwrap();
    let expected_hosts = std::fs::read_to_string(pod_dir.join("hosts")).unwrap();
    let rest = out[3..].join("\n") + "\n";
    assert_eq!(
        rest,
        expected_resolv + &expected_hosts,
        "/etc files come from the pod, through the init layer"
    );

    // Unknown ids and bad limits are refused, leaving nothing behind.
    let err = env
        .rt
        .container_status(ContainerStatusRequest {
            container_id: "feedface".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Stop, like remove, is idempotent: a container that is not there is stopped.
    env.rt
        .stop_container(StopContainerRequest {
            container_id: "feedface".into(),
            timeout: 0,
        })
        .await
        .expect("stopping a container that is not there succeeds");
    env.rt
        .remove_container(RemoveContainerRequest {
            container_id: "feedface".into(),
        })
        .await
        .unwrap();
    let mut bad = container_config("bad-limits", &reference, "true");
    bad.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_shares: 1,
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(
        env.create(&pod, bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        std::fs::read_dir(env.daemon.root.join("containers"))
            .unwrap()
            .count(),
        1
    );
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privileged_container_has_every_capability_and_the_hosts_devices() {
    let mut env = env().await;
    let pod = env.pod("priv").await;
    let image = env.image.clone();
    let mut config = container_config(
        "priv",
        &image,
        "grep CapEff /proc/self/status; test -e /dev/kmsg && echo host-devices; touch /sys/x 2>/dev/null; echo > /proc/sys/kernel/ns_last_pid 2>/dev/null; grep -c kcore /proc/mounts",
    );
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let (out, _) = env.run_config(&pod, config).await;
    let host_caps = std::fs::read_to_string("/proc/self/status").unwrap();
    let host_eff = host_caps
        .lines()
        .find(|l| l.starts_with("CapEff"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(
        out[0].split_whitespace().nth(1),
        Some(host_eff.as_str()),
        "all of root's capabilities: {out:?}"
    );
    assert_eq!(out[1], "host-devices");
    assert_eq!(out[2], "0", "nothing masked: {out:?}");
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_saves_the_read_write_layer_only() {
    let mut env = env().await;
    let pod = env.pod("builder").await;
    let image = env.image.clone();
    let id = env
        .start_sleeper(&pod, "changer", &image, "mkdir -p /newdir && echo new > /newdir/file; echo changed > /etc/kept; rm /etc/group; rm -rf /tmp; exec sleep 1000")
        .await;
    let new_id = env
        .daemon
        .ctl([
            "commit",
            "--pause",
            "-m",
            "my changes",
            "-a",
            "tester",
            &id,
            "local/committed:v1",
        ])
        .ok()
        .trim()
        .to_string();
    assert!(new_id.starts_with("sha256:"), "{new_id}");
    // The container runs on after a paused commit.
    assert!(
        env.daemon
            .ctl(["exec", "-s", &id, "sh", "-c", "true"])
            .status
            .success()
    );

    // The committed layer: the changes, in overlay form, and nothing of the init layer.
    let history: serde_json::Value =
        serde_json::from_str(env.daemon.ctl(["history", "-o", "json", &new_id]).ok()).unwrap();
    let top = &history["entries"][0];
    assert_eq!(top["comment"], "my changes");
    let blob = top["layerDigest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let layers = env.daemon.root.join("layers");
    let top_layer = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("fs"))
        .find(|fs| fs.join("newdir/file").exists())
        .expect("the committed layer is in the layer store");
    assert_eq!(
        std::fs::read_to_string(top_layer.join("etc/kept")).unwrap(),
        "changed\n"
    );
    for init_file in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        assert!(
            !top_layer.join(init_file).exists(),
            "{init_file} from the init layer was committed"
        );
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(top_layer.join("etc/group"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert!(env.daemon.root.join("blobs/sha256").join(&blob).is_file());

    // A container of the new image sees the changes; deletions stay deleted.
    let pod2 = env.pod("user").await;
    let (lines, st) = env
        .run_config(&pod2, container_config("reader", "local/committed:v1", "cat /newdir/file /etc/kept; test -e /etc/group || echo group-gone; test -e /tmp || echo tmp-gone; cat /etc/hostname"))
        .await;
    assert_eq!(
        lines,
        ["new", "changed", "group-gone", "tmp-gone", "user-host"],
        "{st:?}"
    );

    // A container with no changes commits too: an empty layer.
    let idle = env
        .create(&pod2, container_config("idle", &image, "exec sleep 1000"))
        .await
        .unwrap();
    env.start(&idle).await;
    assert!(
        env.daemon
            .ctl(["commit", &idle, "local/empty:v1"])
            .ok()
            .starts_with("sha256:")
    );
    let line = env
        .daemon
        .ctl(["commit", "feedface", "local/x:v1"])
        .failed()
        .to_string();
    assert!(line.contains("NotFound"), "{line}");
    let line = env
        .daemon
        .ctl(["commit", &idle, "Not A Ref"])
        .failed()
        .to_string();
    assert!(line.contains("InvalidArgument"), "{line}");
    for p in [pod, pod2] {
        env.rt
            .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: p })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_whose_monitor_dies_is_reported_exited_and_can_be_removed() {
    let mut env = env().await;
    let pod = env.pod("orphan").await;
    let image = env.image.clone();
    let id = env
        .start_sleeper(&pod, "watched", &image, "exec sleep 7771")
        .await;
    // The container's record names its monitor.
    let monitor = env.record("containers", &id)["monitor"][0]
        .as_i64()
        .expect("the monitor's pid") as i32;
    assert!(
        std::fs::read(format!("/proc/{monitor}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__monitor"))
    );
    kill(Pid::from_raw(monitor), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        let st = env.status(&id).await;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            break st;
        }
        assert!(Instant::now() < deadline, "still {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(st.exit_code, 255, "{st:?}");
    assert!(st.message.contains("monitor died"), "{st:?}");
    // Its processes went with it, and it stops and goes like any other.
    let cgroup = format!("{}/pod-{pod}/{id}", env.daemon.cgroup_parent);
    for dir in common::cgroup_dirs(&cgroup) {
        let procs = std::fs::read_to_string(dir.join("main/cgroup.procs")).unwrap_or_default();
        assert!(
            procs.trim().is_empty(),
            "left in {}: {procs}",
            dir.display()
        );
    }
    env.rt
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_create_does_not_stall_the_other_calls() {
    let mut env = env().await;
    let pod = env.pod("slow").await;
    let image = env.image.clone();
    let other = env
        .start_sleeper(&pod, "other", &image, "exec sleep 6661")
        .await;
    // A frozen pod cgroup holds the new container's init as soon as it joins its cgroup,
    // so the create waits (as one on a slow disk or a huge image would).
    let freezer = common::cgroup_dirs(&format!("{}/pod-{pod}", env.daemon.cgroup_parent))
        .into_iter()
        .find(|d| d.join("freezer.state").exists())
        .expect("a v1 freezer");
    std::fs::write(freezer.join("freezer.state"), "FROZEN").unwrap();
    let mut rt = env.rt.clone();
    let config = container_config("stalled", &image, "true");
    let pod_id = pod.clone();
    let create = tokio::spawn(async move {
        rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id,
            config: Some(config),
            sandbox_config: None,
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile the other container's status and the list answer at once.
    let started = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(2),
        env.rt.container_status(ContainerStatusRequest {
            container_id: other.clone(),
            verbose: false,
        }),
    )
    .await;
    let listed = tokio::time::timeout(
        Duration::from_secs(2),
        env.rt
            .list_containers(cri::ListContainersRequest::default()),
    )
    .await;
    let waited = started.elapsed();
    std::fs::write(freezer.join("freezer.state"), "THAWED").unwrap();
    let created = create.await.unwrap();
    assert!(
        status.is_ok() && listed.is_ok(),
        "status and list waited {waited:?} for a create"
    );
    assert!(created.is_ok(), "{created:?}");
    env.remove_pods(vec![pod]).await;
}

/// The state letter (`/proc/<pid>/stat`) of the process that has had `pid` since `started`,
/// while it is there (a zombie, `Z`, still is: nobody has reaped it yet).
fn still_there(pid: i32, started: u64) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22, the start time; a different one means the pid was reused.
    let start: u64 = fields.nth(18)?.parse().ok()?;
    (start == started).then_some(state)
}

/// The start time (`/proc/<pid>/stat`) of `what`, which must be running as `pid`.
fn start_time_of(pid: i32, what: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("{what} (pid {pid}) is not running: {e}"));
    stat[stat.rfind(')').expect("a stat line") + 1..]
        .split_whitespace()
        .nth(19)
        .and_then(|s| s.parse().ok())
        .expect("the start time in /proc/<pid>/stat")
}

/// Waits until the process that has had `pid` since `started` is gone and reaped: the
/// daemon tells a live monitor by its start time, which a zombie keeps.
async fn wait_reaped(pid: i32, started: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(state) = still_there(pid, started) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) is still there, in state {state}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILLs the process that has had `pid` since `started` (unless it is gone already) and
/// waits until it is reaped.
async fn kill_and_reap(pid: i32, started: u64, what: &str) {
    if still_there(pid, started).is_some() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    wait_reaped(pid, started, what).await;
}

/// Stops and removes a container and its pod, and checks that nothing of either is left:
/// no record, pin, mount, cgroup, and none of `processes` (pid, start time, what).
async fn remove_and_check_nothing_is_left(
    env: &mut common::cri::Env,
    pod: &str,
    id: &str,
    processes: &[(i32, u64, &'static str)],
) {
    env.rt
        .stop_container(StopContainerRequest {
            container_id: id.to_string(),
            timeout: 1,
        })
        .await
        .unwrap();
    env.rt
        .remove_container(RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .unwrap();
    assert!(!env.daemon.root.join("containers").join(id).exists());
    let err = env
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    env.rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .unwrap();
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .unwrap();
    common::assert_pod_gone(&env.daemon, pod);
    for dir in [&env.daemon.root, &env.daemon.state_dir] {
        let mounts = common::mounts_below(dir);
        assert!(
            mounts.is_empty(),
            "mounts left below {}: {mounts:?}",
            dir.display()
        );
    }
    for (pid, started, what) in processes {
        assert_eq!(
            still_there(*pid, *started),
            None,
            "{what} (pid {pid}) is back"
        );
    }
}

/// A container's monitor and init, by pid and start time: the init from the record, the
/// monitor as its parent (the process that forked it), which the record names too.
fn monitor_and_init(env: &common::cri::Env, id: &str) -> [(i32, u64, &'static str); 2] {
    let record = env.record("containers", id);
    let init = record["pid"].as_i64().expect("the init's pid") as i32;
    let init_started = start_time_of(init, "the container's init");
    let stat = std::fs::read_to_string(format!("/proc/{init}/stat")).expect("the init's stat");
    let monitor: i32 = stat[stat.rfind(')').expect("a stat line") + 1..]
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("the init's parent");
    let monitor_started = start_time_of(monitor, "the monitor");
    assert!(
        std::fs::read(format!("/proc/{monitor}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__monitor")),
        "pid {monitor}, the init's parent, is not a monitor"
    );
    if let Some(recorded) = record["monitor"][0].as_i64() {
        assert_eq!(recorded as i32, monitor, "the record names another monitor");
        assert_eq!(record["monitor"][1].as_u64(), Some(monitor_started));
    }
    [
        (monitor, monitor_started, "the monitor"),
        (init, init_started, "the container's init"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killed_with_its_monitor_while_the_daemon_is_down_is_exited_after_restart() {
    use std::os::unix::process::ExitStatusExt;
    let mut env = env().await;
    let pod = env.pod("crashed").await;
    let image = env.image.clone();
    let id = env
        .start_sleeper(&pod, "unwatched", &image, "exec sleep 7772")
        .await;
    let processes = monitor_and_init(&env, &id);
    let init = processes[1].0;
    assert!(
        std::fs::read(format!("/proc/{init}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("7772")),
        "the record's pid is not the container's sleep"
    );
    let holder = env.record("sandboxes", &pod)["pid_holder"]
        .as_i64()
        .map(|pid| pid as i32);
    let holder_started = holder.map(|pid| start_time_of(pid, "the pod's PID holder"));

    // The daemon crashes; then the monitor goes (first, so that no exit is recorded) and the
    // container's init with it.
    let status = env.daemon.stop_with(Signal::SIGKILL).await;
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
    for (pid, started, what) in processes {
        kill_and_reap(pid, started, what).await;
    }
    env.daemon.launch(common::Options::default()).await;
    env.rt = env.daemon.runtime().await;
    // Reconciled at start-up, before any call: the record says so already.
    let record = env.record("containers", &id);
    assert_eq!(record["state"], "exited", "{record}");
    assert_eq!(record["exit_code"], 255, "{record}");

    // The list (asked first: it looks at the monitor as well) and the status call it exited.
    let running = env
        .rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(running.is_empty(), "listed as running: {running:?}");
    let listed = env
        .rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(
        listed.iter().find(|c| c.id == id).map(|c| c.state),
        Some(cri::ContainerState::ContainerExited as i32),
        "{listed:?}"
    );
    let st = env.status(&id).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    assert_eq!(st.exit_code, 255, "{st:?}");
    assert!(st.message.contains("monitor died"), "{st:?}");

    // It stops and goes like any other, and so does its pod, leaving nothing.
    remove_and_check_nothing_is_left(&mut env, &pod, &id, &processes).await;
    if let (Some(pid), Some(started)) = (holder, holder_started) {
        // Killed by the stop; reaped by whoever adopted it when the first daemon died.
        wait_reaped(pid, started, "the pod's PID holder").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_namespaces_are_gone_after_a_reboot_is_not_ready_and_removable() {
    let mut env = env().await;
    let pod = env.pod("rebooted").await;
    let image = env.image.clone();
    let id = env
        .start_sleeper(&pod, "before", &image, "exec sleep 7773")
        .await;
    let mut processes = monitor_and_init(&env, &id).to_vec();
    if let Some(holder) = env.record("sandboxes", &pod)["pid_holder"].as_i64() {
        let holder = holder as i32;
        let started = start_time_of(holder, "the pod's PID holder");
        processes.push((holder, started, "the pod's PID holder"));
    }

    // A reboot: the daemon stops, every process goes (the monitor first, so that no exit
    // is recorded), and so do the mounts pinning the pod's namespaces and its /dev/shm.
    assert!(env.daemon.stop().await.success());
    for &(pid, started, what) in &processes {
        kill_and_reap(pid, started, what).await;
    }
    let pins = env.daemon.state_dir.join("sandboxes").join(&pod);
    let mounts = common::mounts_below(&env.daemon.state_dir);
    for pin in ["ns/net", "ns/ipc", "ns/uts", "shm"] {
        assert!(
            mounts.contains(&pins.join(pin)),
            "{pin} is not mounted: {mounts:?}"
        );
    }
    for mount_point in mounts.iter().rev() {
        nix::mount::umount2(mount_point, nix::mount::MntFlags::MNT_DETACH)
            .unwrap_or_else(|e| panic!("umount -l {}: {e}", mount_point.display()));
    }
    let left = common::mounts_below(&env.daemon.state_dir);
    assert!(left.is_empty(), "still mounted: {left:?}");
    // The state dir is a tmpfs (/run) on a real node: it is empty after a reboot.
    std::fs::remove_dir_all(&env.daemon.state_dir).unwrap();
    env.daemon.launch(common::Options::default()).await;
    env.rt = env.daemon.runtime().await;

    // The pod is NotReady and takes no new containers; its container is exited.
    let pod_status = env
        .rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        pod_status.state,
        cri::PodSandboxState::SandboxNotready as i32,
        "{pod_status:?}"
    );
    let err = env
        .create(&pod, container_config("after", &image, "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let st = env.status(&id).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    assert_eq!(st.exit_code, 255, "no exit was recorded: {st:?}");

    // Both stop and go, leaving nothing: no record, pin, mount, cgroup or process.
    remove_and_check_nothing_is_left(&mut env, &pod, &id, &processes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_config_json_is_an_oci_runtime_spec() {
    let mut env = env().await;
    let pod = env.pod("bundle").await;
    let image = env.image.clone();
    let id = env
        .start_sleeper(&pod, "bundled", &image, "exec sleep 8881")
        .await;
    let path = env
        .daemon
        .root
        .join("containers")
        .join(&id)
        .join("config.json");
    let text = std::fs::read_to_string(&path).expect("config.json");
    // Read by the OCI runtime spec's own types (as runc, crun and tools read a bundle).
    let spec: oci_spec::runtime::Spec =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not an OCI runtime spec: {e}"));
    let process = spec.process().as_ref().expect("process");
    assert_eq!(
        process.args().as_deref(),
        Some(&["/bin/sh".to_string(), "-c".into(), "exec sleep 8881".into()][..])
    );
    let root = spec.root().as_ref().expect("root");
    assert!(root.path().ends_with("rootfs"), "{root:?}");
    let linux = spec.linux().as_ref().expect("linux");
    use oci_spec::runtime::LinuxNamespaceType as Kind;
    let namespaces = linux.namespaces().clone().expect("namespaces");
    let find = |kind: Kind| namespaces.iter().find(|n| n.typ() == kind).cloned();
    for kind in [Kind::Mount, Kind::Pid] {
        let ns = find(kind).unwrap_or_else(|| panic!("no {kind:?} in {namespaces:?}"));
        assert!(ns.path().is_none(), "a new one: {ns:?}");
    }
    let net = find(Kind::Network).expect("the pod's network namespace");
    assert!(net.path().is_some(), "joined, not new: {net:?}");
    assert!(
        linux
            .cgroups_path()
            .as_ref()
            .is_some_and(|p| p.to_string_lossy().contains(&id)),
        "{:?}",
        linux.cgroups_path()
    );
    let bounding = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
        .expect("capabilities");
    assert!(
        bounding.contains(&oci_spec::runtime::Capability::Chown)
            && !bounding.contains(&oci_spec::runtime::Capability::SysAdmin),
        "{bounding:?}"
    );
    let mounts = spec.mounts().as_ref().expect("mounts");
    assert!(
        mounts
            .iter()
            .any(|m| m.destination() == std::path::Path::new("/proc")
                && m.typ().as_deref() == Some("proc")),
        "{mounts:?}"
    );
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_pid_namespace_holder_dies_is_not_ready_and_removable() {
    let mut env = env().await;
    let pod = env.pod("headless").await;
    let image = env.image.clone();
    let mut config = container_config("member", &image, "exec sleep 9991");
    config.linux = Some(pid_mode(cri::NamespaceMode::Pod));
    let id = env.create(&pod, config).await.unwrap();
    env.start(&id).await;
    let holder = env.record("sandboxes", &pod)["pid_holder"]
        .as_i64()
        .expect("the holder's pid") as i32;
    assert!(
        std::fs::read(format!("/proc/{holder}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__pidns")),
        "pid {holder} is not the pod's holder"
    );
    kill(Pid::from_raw(holder), Signal::SIGKILL).unwrap();
    // The PID namespace ends with its first process, and everything in it with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pod_status = env
            .rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .expect("a status");
        let st = env.status(&id).await;
        if pod_status.state == cri::PodSandboxState::SandboxNotready as i32
            && st.state == cri::ContainerState::ContainerExited as i32
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod {:?}, container {st:?}",
            pod_status.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The record says so too, and a new container is refused.
    assert_eq!(env.record("sandboxes", &pod)["state"], "notready");
    let refused = env
        .create(&pod, container_config("late", &image, "true"))
        .await
        .expect_err("a container in a pod without its PID namespace");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    env.rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    env.remove_pods(vec![pod.clone()]).await;
    common::assert_pod_gone(&env.daemon, &pod);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_processes_start_with_no_signal_ignored() {
    // The agent's own processes ignore SIGPIPE (the Rust runtime's doing), and an ignored
    // signal stays ignored across exec: a container's entrypoint and an exec must not
    // inherit that. (An exec'd command is no shell's child: nothing at all is ignored.)
    let mut env = env().await;
    let pod = env.pod("signals").await;
    let (lines, st) = env
        .run(&pod, "ignores", "grep SigIgn /proc/$$/status")
        .await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    // The shell may ignore signals of its own; SIGPIPE (13, bit 12) it got from its parent.
    let mask = lines
        .first()
        .and_then(|l| l.strip_prefix("SigIgn:\t"))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("no SigIgn line: {lines:?}"));
    assert_eq!(mask & (1 << 12), 0, "SIGPIPE ignored: {mask:#x}");
    let image = env.image.clone();
    let id = env
        .start_sleeper(&pod, "sleeper", &image, "exec sleep 9992")
        .await;
    let out = env
        .rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id,
            cmd: vec![
                "/bin/busybox".into(),
                "cat".into(),
                "/proc/self/status".into(),
            ],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.exit_code, 0, "{out:?}");
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.lines().any(|l| l == "SigIgn:\t0000000000000000"),
        "{status}"
    );
    env.remove_pods(vec![pod]).await;
}

/// The kubelet removes a pod with RemovePodSandbox, never removing its containers one by
/// one: the layers those containers used must be free again once the pod is gone, so that
/// removing the image frees them (they used to stay pinned until the daemon restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_pod_lets_go_of_its_containers_layers() {
    let mut env = env().await;
    let image = env.image.clone();
    let pod = env.pod("leaser").await;
    env.start_sleeper(&pod, "sleeper", &image, "exec sleep 1000")
        .await;
    let idle = env
        .create(&pod, container_config("idle", &image, "exec sleep 1000"))
        .await
        .unwrap();
    // PodSandboxStatus carries the pod's containers (the kubelet's evented PLEG reads them).
    let status = env
        .rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.timestamp > 0);
    let mut states: Vec<(String, i32)> = status
        .containers_statuses
        .iter()
        .map(|c| (c.metadata.as_ref().unwrap().name.clone(), c.state))
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            (
                "idle".to_string(),
                cri::ContainerState::ContainerCreated as i32
            ),
            (
                "sleeper".to_string(),
                cri::ContainerState::ContainerRunning as i32
            ),
        ]
    );
    assert!(status.containers_statuses.iter().any(|c| c.id == idle));
    let (layers, _) = common::store_listing(&env.daemon);
    assert_eq!(layers.len(), 3, "{layers:?}");

    // While the pod's containers exist, removing the image keeps their layers.
    env.daemon.ctl(["rmi", &image]).ok();
    let (layers, _) = common::store_listing(&env.daemon);
    assert_eq!(layers.len(), 3, "the containers' layers went: {layers:?}");

    // The pod goes the kubelet's way; its containers' layers, which no image has any
    // more, go with it.
    env.daemon.ctl(["stopp", &pod]).ok();
    env.daemon.ctl(["rmp", &pod]).ok();
    // (The collection runs in the background: wait until the layer directory is empty,
    // then check the store is whole.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let layers_dir = env.daemon.root.join("layers");
    while std::fs::read_dir(&layers_dir).unwrap().count() > 0 {
        assert!(
            Instant::now() < deadline,
            "left pinned after the pod went: {:?}",
            common::store_listing(&env.daemon)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (layers, blobs) = common::store_listing(&env.daemon);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );

    // The other order, as in a kubelet's image GC after the pod went: pod first, then
    // the image, which then frees everything at once.
    env.image = env
        .publish("ctr/again", &common::cri::busybox_image())
        .await;
    let image = env.image.clone();
    let pod = env.pod("leaser2").await;
    env.start_sleeper(&pod, "sleeper", &image, "exec sleep 1000")
        .await;
    env.daemon.ctl(["stopp", &pod]).ok();
    env.daemon.ctl(["rmp", &pod]).ok();
    env.daemon.ctl(["rmi", &image]).ok();
    let (layers, blobs) = common::store_listing(&env.daemon);
    assert!(
        layers.is_empty() && blobs.is_empty(),
        "{layers:?} {blobs:?}"
    );
}

/// The kubelet fills a pod's resources with the sum of the containers that declare limits,
/// and enforces pod limits itself on the parent cgroup it gives. A pod with a 64 MiB
/// container and an unlimited one: the unlimited one may use 128 MiB (it used to be
/// OOM-killed at the pod's 64 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_resources_cap_none_of_its_containers() {
    let mut env = env().await;
    let image = env.image.clone();
    let mut config = common::cri::pod_config("summed");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = env.pod_with(config).await;
    let mut limited = container_config("limited", &image, "exec sleep 1000");
    limited.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let limited = env.create(&pod, limited).await.unwrap();
    env.start(&limited).await;
    // tail keeps the whole line (128 MiB without a newline) in memory.
    let (lines, st) = env
        .run_config(
            &pod,
            container_config(
                "unlimited",
                &image,
                "head -c 134217728 /dev/zero | tail > /dev/null && echo survived",
            ),
        )
        .await;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "{lines:?}"
    );
    assert_eq!(lines, ["survived"]);
    env.remove_pods(vec![pod]).await;
}

/// Recursive read-only volumes (CRI `recursive_read_only`, Kubernetes 1.33 GA): a tmpfs
/// mounted below the volume's host path is read-only in the container too, where a plain
/// read-only bind leaves it writable; and the combinations the CRI forbids are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_read_only_volumes_reach_every_mount_below() {
    let mut env = env().await;
    let image = env.image.clone();
    let status = env
        .rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let default_handler = status
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .expect("the default handler");
    assert!(
        default_handler.features.unwrap().recursive_read_only_mounts,
        "claimed on a kernel with mount_setattr"
    );

    let host = env.daemon.path("volume");
    std::fs::create_dir_all(host.join("sub")).unwrap();
    let sub = host.join("sub");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    nix::mount::mount(
        Some("none"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let _unmount = Unmount(sub.clone());
    let pod = env.pod("rro").await;
    let volume = |recursive: bool, readonly: bool, propagation: cri::MountPropagation| {
        let mut c = container_config(
            if recursive { "recursive" } else { "plain" },
            &image,
            "touch /mnt/sub/file 2>&1; echo $?",
        );
        c.mounts = vec![cri::Mount {
            container_path: "/mnt".into(),
            host_path: host.display().to_string(),
            readonly,
            recursive_read_only: recursive,
            propagation: propagation as i32,
            ..Default::default()
        }];
        c
    };
    let private = cri::MountPropagation::PropagationPrivate;
    let (lines, _) = env.run_config(&pod, volume(false, true, private)).await;
    assert_eq!(
        lines,
        ["0"],
        "a plain read-only bind leaves the tmpfs below writable"
    );
    let (lines, _) = env.run_config(&pod, volume(true, true, private)).await;
    assert!(
        lines.len() == 2 && lines[0].contains("Read-only file system") && lines[1] == "1",
        "{lines:?}"
    );

    for (readonly, propagation) in [
        (false, private),
        (true, cri::MountPropagation::PropagationHostToContainer),
        (true, cri::MountPropagation::PropagationBidirectional),
    ] {
        let mut refused = volume(true, readonly, propagation);
        refused.metadata.as_mut().unwrap().attempt = 1 + propagation as u32 + readonly as u32;
        let err = env.create(&pod, refused).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{readonly} {propagation:?}: {err:?}"
        );
    }
    env.remove_pods(vec![pod]).await;
}

/// SupplementalGroupsPolicy (Kubernetes 1.35 GA): Merge (the default) adds the groups the
/// image's /etc/group gives the user to the requested ones; Strict uses only those asked
/// for. ContainerStatus.user reports what the process has, its primary group included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supplemental_groups_merge_or_stay_strict() {
    let mut env = env().await;
    let grouped = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new()
                .file(
                    "etc/passwd",
                    b"root:x:0:0:root:/root:/bin/sh\ndefault-user:x:1000:1000::/home:/bin/sh\n",
                    0o644,
                )
                .file(
                    "etc/group",
                    b"root:x:0:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n",
                    0o644,
                )
                .finish(),
            Compression::Gzip,
        )
        .build();
    let image = env.publish("ctr/grouped", &grouped).await;
    let status = env
        .rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(status.features.unwrap().supplemental_groups_policy);
    let pod = env.pod("groups").await;
    for (policy, expected) in [
        (
            cri::SupplementalGroupsPolicy::Merge,
            vec![1000, 1234, 50000],
        ),
        (cri::SupplementalGroupsPolicy::Strict, vec![1000, 1234]),
    ] {
        let name = format!("{policy:?}").to_lowercase();
        let mut config = container_config(&name, &image, "id -G");
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                supplemental_groups: vec![1234],
                supplemental_groups_policy: policy as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let (lines, st) = env.run_config(&pod, config).await;
        let printed: Vec<String> = expected.iter().map(i64::to_string).collect();
        assert_eq!(lines, [printed.join(" ")], "{policy:?}");
        let user = st.user.unwrap().linux.unwrap();
        let mut groups = user.supplemental_groups.clone();
        groups.sort();
        assert_eq!(
            (user.uid, user.gid, groups),
            (1000, 1000, expected),
            "{policy:?}"
        );
    }
    env.remove_pods(vec![pod]).await;
}

/// A container's own stop signal (CRI `stop_signal`, KEP-4960) replaces the image's and is
/// what StopContainer sends; ContainerStatus reports it. The Stream* list calls answer as
/// the List calls. And on this host, which has no AppArmor, a container asking for an
/// AppArmor profile is refused rather than run unconfined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_signals_apparmor_and_streamed_lists() {
    let mut env = env().await;
    let image = env.image.clone();
    let pod = env.pod("signals").await;
    let mut config = container_config(
        "usr1",
        &image,
        "trap 'echo got-usr1; exit 7' USR1; echo ready; while :; do sleep 1; done",
    );
    config.stop_signal = cri::Signal::Sigusr1 as i32;
    let id = env.create(&pod, config).await.unwrap();
    env.start(&id).await;
    assert_eq!(
        env.status(&id).await.stop_signal,
        cri::Signal::Sigusr1 as i32
    );
    env.rt
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
    let st = env.wait_exit(&id).await;
    assert_eq!(st.exit_code, 7, "stopped by {st:?}");
    assert_eq!(common::cri::stdout_lines(&st), ["ready", "got-usr1"]);

    // Without one, the runtime's default: SIGTERM.
    let plain = env
        .create(&pod, container_config("plain", &image, "exec sleep 1000"))
        .await
        .unwrap();
    assert_eq!(
        env.status(&plain).await.stop_signal,
        cri::Signal::RuntimeDefault as i32
    );
    env.start(&plain).await;

    // The Stream* list calls (Kubernetes 1.36) answer as the List calls do.
    let mut listed = Vec::new();
    let mut stream = env
        .rt
        .stream_containers(cri::StreamContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(message) = stream.message().await.unwrap() {
        listed.extend(message.containers.into_iter().map(|c| c.id));
    }
    listed.sort();
    let mut expected = vec![id.clone(), plain.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    let mut stats = env
        .rt
        .stream_container_stats(cri::StreamContainerStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let message = stats
        .message()
        .await
        .unwrap()
        .expect("stats of the running one");
    assert_eq!(message.container_stats.len(), 1);
    assert_eq!(
        message.container_stats[0].attributes.as_ref().unwrap().id,
        plain
    );
    let mut pods = env
        .rt
        .stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let message = pods.message().await.unwrap().expect("stats of the pod");
    assert_eq!(message.pod_sandbox_stats.len(), 1);
    let mut metrics = env
        .rt
        .stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    let message = metrics
        .message()
        .await
        .unwrap()
        .expect("metrics of the pod");
    assert_eq!(message.pod_sandbox_metrics.len(), 1);
    assert_eq!(message.pod_sandbox_metrics[0].pod_sandbox_id, pod);

    let host_has_apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y");
    let mut confined = container_config("confined", &image, "exec sleep 1000");
    confined.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let created = env.create(&pod, confined).await;
    if host_has_apparmor {
        created.expect("a host with AppArmor takes its runtime default profile");
    } else {
        let err = created.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("AppArmor"), "{err:?}");
    }
    env.remove_pods(vec![pod]).await;
}

/// What a kubelet reads back: after an in-place resize ContainerStatus reports the limits in
/// force (a field the update left alone keeps its value); the uid, gid and groups are
/// those the running process has; image_ref is the image's repo@digest (the pod's imageID)
/// beside its id; UpdatePodSandboxResources is taken for a pod there is; huge page limits
/// reach hugetlb where the node has it and are refused where it has not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_the_process_ids_and_the_image_are_read_back() {
    let mut env = env().await;
    let pod = env.pod("readback").await;
    let image = env.image.clone();
    let mut config = container_config("resized", &image, "exec sleep 1000");
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 96 << 20,
            ..Default::default()
        }),
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 2000 }),
            supplemental_groups: vec![3000],
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    let id = env.create(&pod, config).await.unwrap();
    env.start(&id).await;
    let resources = |st: &cri::ContainerStatus| st.resources.clone().unwrap().linux.unwrap();
    let st = env.status(&id).await;
    let before = resources(&st);
    assert_eq!(
        (before.cpu_shares, before.memory_limit_in_bytes),
        (512, 96 << 20)
    );

    // The ids the status reports are those `id` prints inside.
    let ids = env
        .rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "id -u; id -g; id -G".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let printed = String::from_utf8_lossy(&ids.stdout).to_string();
    let lines: Vec<&str> = printed.lines().collect();
    let user = st.user.clone().unwrap().linux.unwrap();
    assert_eq!(lines[0], user.uid.to_string(), "{printed}");
    assert_eq!(lines[1], user.gid.to_string(), "{printed}");
    let mut groups: Vec<i64> = lines[2]
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    groups.sort();
    let mut reported = user.supplemental_groups.clone();
    reported.sort();
    assert_eq!(groups, reported, "{printed}");
    assert_eq!((user.uid, user.gid), (1000, 2000));
    assert!(reported.contains(&3000));

    // The image: repo@digest of the repository asked for, and the id.
    let repository = image.rsplit_once(':').unwrap().0;
    assert!(
        st.image_ref.starts_with(&format!("{repository}@sha256:")),
        "{} for {image}",
        st.image_ref
    );
    assert!(st.image_id.starts_with("sha256:") && st.image_id != st.image_ref);

    // An in-place resize: the memory changes, the CPU shares stay.
    let update = |linux: cri::LinuxContainerResources| cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(linux),
        ..Default::default()
    };
    env.rt
        .update_container_resources(update(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }))
        .await
        .unwrap();
    let after = resources(&env.status(&id).await);
    assert_eq!(
        (after.cpu_shares, after.memory_limit_in_bytes),
        (512, 64 << 20)
    );
    // The stats say what is left under the new limit.
    let memory = env
        .rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .memory
        .unwrap();
    let (available, working_set) = (
        memory.available_bytes.unwrap().value,
        memory.working_set_bytes.unwrap().value,
    );
    assert_eq!(available + working_set, 64 << 20);

    // Huge pages: 0 is always taken; more only where hugetlb is.
    let pages = |limit: u64| cri::LinuxContainerResources {
        hugepage_limits: vec![cri::HugepageLimit {
            page_size: "2MB".into(),
            limit,
        }],
        ..Default::default()
    };
    env.rt
        .update_container_resources(update(pages(0)))
        .await
        .unwrap();
    let has_hugetlb = std::path::Path::new("/sys/fs/cgroup/hugetlb").is_dir()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.contains("hugetlb"));
    let more = env
        .rt
        .update_container_resources(update(pages(4 << 20)))
        .await;
    if has_hugetlb {
        more.unwrap();
    } else {
        let refused = more.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("hugetlb"), "{refused:?}");
    }
    let recorded = resources(&env.status(&id).await).hugepage_limits;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].page_size, "2MB");
    assert_eq!(recorded[0].limit, if has_hugetlb { 4 << 20 } else { 0 });
    let bad = env
        .rt
        .update_container_resources(update(cri::LinuxContainerResources {
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "../2MB".into(),
                limit: 0,
            }],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Pod-level resources: taken for the pod, NotFound for none.
    let pod_update = |pod_sandbox_id: &str| cri::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod_sandbox_id.into(),
        overhead: None,
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 256 << 20,
            ..Default::default()
        }),
    };
    env.rt
        .update_pod_sandbox_resources(pod_update(&pod))
        .await
        .unwrap();
    let missing = env
        .rt
        .update_pod_sandbox_resources(pod_update("no-such-pod"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // The limits in force survive a restart of the daemon.
    assert!(env.daemon.stop().await.success());
    env.daemon.launch(common::Options::default()).await;
    env.rt = env.daemon.runtime().await;
    let kept = resources(&env.status(&id).await);
    assert_eq!(
        (kept.cpu_shares, kept.memory_limit_in_bytes),
        (512, 64 << 20)
    );
    env.remove_pods(vec![pod]).await;
}

/// Image volumes (CRI `Mount.image`, KEP-4639): an image's layers from the shared store,
/// stacked read-only (whiteouts honoured), never copied; a directory of it with
/// image_sub_path; reported with its repo@digest; its layers kept while a container uses
/// it, across a daemon restart. An image the node lacks, a sub-path that climbs, leads out
/// through a symlink, is missing or is a file: each a clear refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volumes_mount_shared_layers_read_only() {
    let mut env = env().await;
    let data = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("data/a.txt", b"one\n", 0o644)
                .file("data/sub/b.txt", b"two\n", 0o644)
                .file("data/gone", b"x", 0o644)
                .file("data/plain", b"file\n", 0o644)
                .finish(),
            Compression::Gzip,
        )
        .layer(
            LayerBuilder::new()
                .whiteout("data/gone")
                .file("data/sub/c.txt", b"three\n", 0o644)
                .symlink("data/out", "/etc")
                .symlink("data/inner", "/data/sub")
                .finish(),
            Compression::Gzip,
        )
        .build();
    let data = env.publish("ctr/volume-data", &data).await;
    let data_id = env.image_status(&data).await.id;
    assert!(data_id.starts_with("sha256:"));
    // One layer: an overlay without an upper layer needs two lowers.
    let single = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("only.txt", b"single\n", 0o644)
                .finish(),
            Compression::Gzip,
        )
        .build();
    let single = env.publish("ctr/volume-single", &single).await;
    let (layers_before, _) = common::store_listing(&env.daemon);
    let pod = env.pod("volumes").await;
    let image = env.image.clone();
    let volume = |path: &str, image: &str, sub_path: &str| cri::Mount {
        container_path: path.into(),
        readonly: true,
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        ..Default::default()
    };
    let mut config = container_config(
        "reader",
        &image,
        "cat /vol/data/a.txt /vol/data/sub/c.txt /sub/b.txt /sub/c.txt /one/only.txt /inner/b.txt; \
         test -e /vol/data/gone && echo gone-is-there || echo gone-is-gone; \
         touch /vol/new 2>/dev/null && echo writable || echo read-only; \
         grep -c ' /vol overlay ro,' /proc/mounts; exec sleep 1000",
    );
    config.mounts = vec![
        volume("/vol", &data, ""),
        // By id, as the kubelet names it (PullImage's image_ref).
        volume("/sub", &data_id, "data/sub"),
        volume("/one", &single, ""),
        // A symlink of the image, followed inside it.
        volume("/inner", &data, "data/inner"),
    ];
    let id = env.create(&pod, config).await.unwrap();
    env.start(&id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let st = env.status(&id).await;
        let lines = common::cri::stdout_lines(&st);
        if lines.len() >= 9 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        lines,
        [
            "one",
            "three",
            "two",
            "three",
            "single",
            "two",
            "gone-is-gone",
            "read-only",
            "1"
        ]
    );
    // Nothing was copied: no new layer, and the staging directories are empty on the host
    // (the overlays exist in the container's mount namespace only).
    let (layers_now, _) = common::store_listing(&env.daemon);
    assert_eq!(layers_now, layers_before);
    let staging = env
        .daemon
        .root
        .join("containers")
        .join(&id)
        .join("image-volumes");
    for n in ["0", "1", "2", "3"] {
        assert_eq!(
            std::fs::read_dir(staging.join(n)).unwrap().count(),
            0,
            "{n}"
        );
    }

    // The status names each volume's image by repo@digest (the kubelet's volume digest).
    let st = env.status(&id).await;
    let sub = st
        .mounts
        .iter()
        .find(|m| m.container_path == "/sub")
        .unwrap();
    assert_eq!(sub.image_sub_path, "data/sub");
    let reported = sub.image.clone().unwrap();
    let repository = data.rsplit_once(':').unwrap().0;
    assert!(
        reported
            .image_ref
            .starts_with(&format!("{repository}@sha256:")),
        "{reported:?}"
    );

    // Bad volumes, each refused before anything runs.
    for (image, sub_path, code, expected) in [
        (
            "127.0.0.1:1/never/pulled:v1",
            "",
            Code::NotFound,
            "not found",
        ),
        (data.as_str(), "../etc", Code::InvalidArgument, "'..'"),
        (data.as_str(), "/data", Code::InvalidArgument, "relative"),
        (
            data.as_str(),
            "data/nowhere",
            Code::InvalidArgument,
            "does not exist in the image",
        ),
        (
            data.as_str(),
            "data/gone",
            Code::InvalidArgument,
            "does not exist in the image",
        ),
        // The symlink leads to the image's /etc, which it has not (not the host's).
        (
            data.as_str(),
            "data/out",
            Code::InvalidArgument,
            "does not exist in the image",
        ),
        (
            data.as_str(),
            "data/plain",
            Code::InvalidArgument,
            "is not a directory",
        ),
    ] {
        let mut config = container_config("bad", &env.image.clone(), "true");
        config.mounts = vec![volume("/v", image, sub_path)];
        let e = env
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config),
                sandbox_config: None,
            })
            .await
            .unwrap_err();
        assert!(
            e.message().contains(expected) && e.code() == code,
            "{sub_path}: {e:?}"
        );
    }

    // Removing the images keeps the layers the container mounts, across a restart too.
    assert!(env.daemon.stop().await.success());
    env.daemon.launch(common::Options::default()).await;
    env.rt = env.daemon.runtime().await;
    env.daemon.ctl(["rmi", &data]).ok();
    env.daemon.ctl(["rmi", &single]).ok();
    let (layers_kept, _) = common::store_listing(&env.daemon);
    assert_eq!(layers_kept, layers_before, "a volume's layers went");

    // The container goes: so do the layers no image has any more.
    env.remove_pods(vec![pod]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (layers, _) = common::store_listing(&env.daemon);
        if layers.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "left pinned: {layers:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CDI devices (CRI `CDI_devices`): fully-qualified names resolved from the configured spec
/// directories (JSON and YAML; a later directory wins) into device nodes with their cgroup
/// access, mounts, environment and groups. An unknown device, and one whose spec needs OCI
/// hooks (which strata does not run), fail the create with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_devices_become_nodes_mounts_env_and_groups() {
    let specs = tempfile::tempdir().unwrap();
    let (low, high, data) = (
        specs.path().join("low"),
        specs.path().join("high"),
        specs.path().join("data"),
    );
    for dir in [&low, &high, &data] {
        std::fs::create_dir(dir).unwrap();
    }
    std::fs::write(data.join("x"), "from-cdi\n").unwrap();
    std::fs::write(
        low.join("fake.json"),
        serde_json::json!({
            "cdiVersion": "0.7.0",
            "kind": "strata.test/fake",
            "containerEdits": {"env": ["FAKE_VENDOR=strata"]},
            "devices": [
                {
                    "name": "null0",
                    "containerEdits": {
                        "deviceNodes": [{"path": "/dev/fake-null", "hostPath": "/dev/null"}],
                        "env": ["FAKE_DEVICE=null0"],
                        "mounts": [{
                            "hostPath": data.to_str().unwrap(),
                            "containerPath": "/cdi-data",
                            "options": ["ro", "bind"]
                        }],
                        "additionalGids": [4242]
                    }
                },
                // Hidden by the higher directory's definition.
                {"name": "zero0", "containerEdits": {"env": ["FAKE_ZERO=low"]}},
                {
                    "name": "hooked",
                    "containerEdits": {
                        "hooks": [{"hookName": "createContainer", "path": "/bin/true"}]
                    }
                }
            ]
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        high.join("fake.yaml"),
        "cdiVersion: 0.6.0\nkind: strata.test/fake\ndevices:\n  - name: zero0\n    containerEdits:\n      env: [FAKE_ZERO=high]\n      deviceNodes:\n        - path: /dev/fake-zero\n          hostPath: /dev/zero\n        - path: /dev/fake-tun\n          hostPath: /dev/net/tun\n          permissions: r\n",
    )
    .unwrap();
    let config = format!(
        "cdi_spec_dirs = [{:?}, {:?}]\n",
        low.to_str().unwrap(),
        high.to_str().unwrap()
    );
    let mut env = env_with(&config).await;
    let pod = env.pod("cdi").await;
    let image = env.image.clone();
    let devices = |names: &[&str]| {
        names
            .iter()
            .map(|n| cri::CdiDevice {
                name: n.to_string(),
            })
            .collect::<Vec<_>>()
    };
    let mut config = container_config(
        "gpu",
        &image,
        "echo hi > /dev/fake-null && echo null-writable; \
         head -c 4 /dev/fake-zero | wc -c; \
         head -c 0 /dev/fake-tun && echo tun-readable; \
         ( : > /dev/fake-tun ) 2>/dev/null && echo tun-writable || echo tun-write-denied; \
         echo $FAKE_VENDOR $FAKE_DEVICE $FAKE_ZERO; cat /cdi-data/x; \
         touch /cdi-data/y 2>/dev/null || echo data-read-only; id -G",
    );
    config.cdi_devices = devices(&["strata.test/fake=null0", "strata.test/fake=zero0"]);
    let (lines, st) = env.run_config(&pod, config).await;
    assert_eq!(st.exit_code, 0, "{lines:?}");
    assert_eq!(
        lines[..7],
        [
            "null-writable",
            "4",
            "tun-readable",
            "tun-write-denied",
            "strata null0 high",
            "from-cdi",
            "data-read-only"
        ],
        "{lines:?}"
    );
    assert!(
        lines[7].split_whitespace().any(|g| g == "4242"),
        "{lines:?}"
    );

    for (names, code, expected) in [
        (
            vec!["strata.test/fake=missing"],
            Code::NotFound,
            "not defined by any spec file",
        ),
        (
            vec!["strata.test/fake=hooked"],
            Code::InvalidArgument,
            "hooks",
        ),
        (vec!["null0"], Code::InvalidArgument, "fully qualified"),
    ] {
        let mut config = container_config("refused", &image, "true");
        config.cdi_devices = devices(&names);
        let e = env.create(&pod, config).await.unwrap_err();
        assert_eq!(e.code(), code, "{names:?}: {e:?}");
        assert!(e.message().contains(expected), "{names:?}: {e:?}");
    }
    env.remove_pods(vec![pod]).await;
}
