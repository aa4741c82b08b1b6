//! End to end, as an attacker inside an ordinary container would try it: a default
//! container must never reach the host. Each test is the regression test of one escape or
//! privilege gain that was found; each fails when its defence is taken out.

mod common;

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    cri::{Attempt, Env, container_config, env, env_with, pid_mode},
    oci::{Compression, ImageBuilder, LayerBuilder, busybox_layer},
};
use strata_api::cri::{self, ExecSyncRequest, RunPodSandboxRequest};
use tonic::Code;

/// A file on the host that no container may read, with a removal guard.
struct HostSecret {
    dir: tempfile::TempDir,
}

impl HostSecret {
    fn new() -> HostSecret {
        let dir = tempfile::Builder::new()
            .prefix("strata-secret-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(dir.path().join("secret"), "host-secret-value\n").unwrap();
        HostSecret { dir }
    }

    /// The secret's path relative to the host's `/`.
    fn relative(&self) -> String {
        self.dir
            .path()
            .join("secret")
            .strip_prefix("/")
            .unwrap()
            .display()
            .to_string()
    }
}

async fn exec(
    env: &Env,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<cri::ExecSyncResponse, tonic::Status> {
    env.rt
        .clone()
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits until the container has written `file` to its read-write layer.
async fn wait_for_file(env: &Env, id: &str, file: &str) {
    let path = env
        .daemon
        .root
        .join("containers")
        .join(id)
        .join("upper")
        .join(file);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "container {id} never wrote {file}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_caps(mut config: cri::ContainerConfig, add: &[&str]) -> cri::ContainerConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    let security = linux.security_context.get_or_insert_with(Default::default);
    security.capabilities = Some(cri::Capability {
        add_capabilities: add.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    config
}

/// The pid of the pod's PID-namespace holder, from the pod's record.
fn pid_holder(env: &Env, pod: &str) -> u32 {
    env.record("sandboxes", pod)["pid_holder"]
        .as_u64()
        .expect("a PID-namespace holder") as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_working_dir_never_leads_to_the_host() {
    let mut env = env().await;
    let secret = HostSecret::new();
    // PID mode POD: /proc/1 is a process outside the container's rootfs.
    let pod = env.pod("cwd").await;
    let image = env.image.clone();
    let mut config = container_config(
        "swap",
        &image,
        "rmdir /w && ln -s /proc/1/root /w && touch /swapped; exec sleep 1000",
    );
    config.working_dir = "/w".into();
    config.linux = Some(pid_mode(cri::NamespaceMode::Pod));
    let id = env.create(&pod, config).await.unwrap();
    env.start(&id).await;
    wait_for_file(&env, &id, "swapped").await;

    let read = exec(
        &env,
        &id,
        &["sh", "-c", &format!("cat {}", secret.relative())],
        10,
    )
    .await;
    let created = Path::new("/strata-exec-escape");
    let write = exec(&env, &id, &["sh", "-c", "touch strata-exec-escape"], 10).await;
    let escaped = created.exists();
    let _ = std::fs::remove_file(created);
    assert!(!escaped, "an exec created a file in the host's /");
    for result in [read, write] {
        match result {
            Ok(out) => {
                assert!(
                    !text(&out.stdout).contains("host-secret"),
                    "an exec read a host file"
                );
                assert_ne!(
                    out.exit_code, 0,
                    "the exec must fail to enter its working dir"
                );
                assert!(text(&out.stderr).contains("working directory"), "{out:?}");
            }
            Err(status) => assert!(status.message().contains("working directory"), "{status:?}"),
        }
    }

    // The init's working dir the same way: an image whose /w leads to /proc/1/root must not
    // make the init create (or enter) directories on the host. In the node's PID namespace
    // /proc/1 is the host's init, whose root is the host's.
    let trap = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new().symlink("w", "/proc/1/root").finish(),
            Compression::Gzip,
        )
        .build();
    let trap = env.publish("sec/cwd-trap", &trap).await;
    let host_dir = secret.dir.path().join("made-by-init");
    let mut config = container_config("trap", &trap, "pwd; cat secret");
    config.working_dir = format!("/w{}", host_dir.display());
    config.linux = Some(pid_mode(cri::NamespaceMode::Node));
    let attempt = env.attempt(&pod, config).await;
    assert!(
        !host_dir.exists(),
        "the init created a directory on the host"
    );
    let st = match attempt {
        Attempt::Refused(_) => None,
        Attempt::StartFailed(_, st) => Some(st),
        Attempt::Ran(st) => {
            assert_ne!(st.exit_code, 0, "{st:?}");
            Some(st)
        }
    };
    if let Some(st) = st {
        assert!(
            !common::cri::stdout_lines(&st)
                .iter()
                .any(|l| l.contains("host-secret"))
        );
    }
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pods_pid_1_is_confined_like_a_pause_container() {
    let mut env = env().await;
    let pod = env.pod("holder").await;
    let image = env.image.clone();
    // CAP_SYS_PTRACE, a common debug grant, lets the container look through /proc/1.
    let mut config = container_config(
        "peek",
        &image,
        "echo root=$(ls -A /proc/1/root/ | wc -l); echo cmd=$(tr '\\0' ' ' < /proc/1/cmdline); \
         grep CapEff /proc/1/status; grep '^Uid' /proc/1/status; echo fds=$(ls /proc/1/fd | wc -l); \
         echo cwd=$(ls -A /proc/1/cwd/ | wc -l); echo mounts=$(wc -l < /proc/1/mountinfo)",
    );
    config.linux = Some(pid_mode(cri::NamespaceMode::Pod));
    let config = with_caps(config, &["SYS_PTRACE"]);
    let (lines, st) = env.run_config(&pod, config).await;
    assert_eq!(st.exit_code, 0, "{lines:?}");
    let get = |key: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
            .trim()
            .to_string()
    };
    assert_eq!(get("root="), "0", "PID 1's root must be empty: {lines:?}");
    assert_eq!(get("cwd="), "0", "{lines:?}");
    assert_eq!(
        get("cmd="),
        "stratad __pidns",
        "no host path in PID 1's command line"
    );
    assert_eq!(get("CapEff:"), "0000000000000000");
    assert!(
        get("Uid:").split_whitespace().all(|u| u == "65535"),
        "{lines:?}"
    );
    assert_eq!(get("fds="), "0", "PID 1 holds no descriptor: {lines:?}");
    assert_eq!(
        get("mounts="),
        "1",
        "PID 1 sees only its empty root: {lines:?}"
    );

    // Seen from the host: not dumpable, and in the pod's cgroup.
    let holder = pid_holder(&env, &pod);
    let status = std::fs::read_to_string(format!("/proc/{holder}/status")).unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{holder}/cgroup")).unwrap();
    let leaf = format!("/{}/pod-{pod}/pidns", env.daemon.cgroup_parent);
    assert!(
        cgroups.lines().any(|l| l.ends_with(&leaf)),
        "the holder is in the pod's cgroup: {cgroups}"
    );
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");

    // Stopping the pod ends it.
    env.rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{holder}/cmdline"))
        .is_ok_and(|c| c.contains("__pidns"))
    {
        assert!(Instant::now() < deadline, "the holder outlived its pod");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_a_container_can_see_never_run_the_hosts_binary() {
    let mut env = env().await;
    let pod = env.pod("exe").await;
    let image = env.image.clone();
    // A created, not yet started container: its init waits in the pod's PID namespace.
    let mut waiting = container_config("waiting", &image, "true");
    waiting.linux = Some(pid_mode(cri::NamespaceMode::Pod));
    let waiting = env.create(&pod, waiting).await.unwrap();
    let host = std::fs::metadata(common::bin("stratad")).unwrap();
    let host_id = format!("{}:{}", host.dev(), host.ino());
    let host_len = host.len();

    // Every process the container can see, by the inode of its executable; and an attempt
    // to write to each.
    let mut peek = container_config(
        "peek",
        &image,
        "for p in /proc/[0-9]*; do stat -L -c \"$p %d:%i\" $p/exe 2>/dev/null; \
         echo \"exe $(readlink $p/exe)\"; echo \"cmd $(tr '\\0' ' ' < $p/cmdline)\"; \
         (printf x >> $p/exe) 2>/dev/null && echo wrote $p; done; echo done",
    );
    peek.linux = Some(pid_mode(cri::NamespaceMode::Pod));
    let peek = with_caps(peek, &["SYS_PTRACE"]);
    let (lines, st) = env.run_config(&pod, peek).await;
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{st:?}");
    // The container's kernel ids are the host's (no user namespace), so dev:ino compare.
    // The waiting init is visible, running from the sealed copy.
    assert!(
        lines.iter().any(|l| l.starts_with("exe /memfd:stratad")),
        "{lines:?}"
    );
    // No command line a container sees names a host path (the waiting init's is the
    // monitor's: `stratad __monitor`).
    let root = env.daemon.path("").display().to_string();
    assert!(
        lines.iter().any(|l| l.trim() == "cmd stratad __monitor"),
        "{lines:?}"
    );
    for line in &lines {
        assert!(
            !line.contains(root.trim_end_matches('/')),
            "a host path: {line}"
        );
        assert!(
            !line.ends_with(&format!(" {host_id}")),
            "runs the host binary: {line}"
        );
        assert!(!line.starts_with("wrote"), "{line}");
    }
    assert_eq!(
        std::fs::metadata(common::bin("stratad")).unwrap().len(),
        host_len
    );
    env.rt
        .remove_container(cri::RemoveContainerRequest {
            container_id: waiting,
        })
        .await
        .unwrap();
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execs_take_the_containers_limits_and_end_with_everything_they_started() {
    let mut env = env_with("[rlimits]\nnofile = 4096\n").await;
    let pod = env.pod("execs").await;
    let image = env.image.clone();
    let inherited: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let adj = (inherited + 100).min(1000);
    let mut config = container_config("main", &image, "exec sleep 1000");
    config.linux.get_or_insert_with(Default::default).resources =
        Some(cri::LinuxContainerResources {
            oom_score_adj: adj,
            ..Default::default()
        });
    let id = env.create(&pod, config).await.unwrap();
    env.start(&id).await;

    let out = exec(
        &env,
        &id,
        &["sh", "-c", "ulimit -n; cat /proc/self/oom_score_adj"],
        10,
    )
    .await
    .unwrap();
    assert_eq!(text(&out.stdout), format!("4096\n{adj}\n"), "{out:?}");

    // A background child keeps stdout open: the call still returns when the command exits,
    // with its output, and the child is gone.
    let started = Instant::now();
    let out = exec(&env, &id, &["sh", "-c", "sleep 9991 & echo hi"], 0)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(text(&out.stdout), "hi\n");
    // A timed-out command is killed, with its children.
    let err = exec(&env, &id, &["sh", "-c", "sleep 9992 & sleep 9993"], 1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let left = exec(
        &env,
        &id,
        &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
        10,
    )
    .await
    .unwrap();
    let left = text(&left.stdout);
    for sleeper in ["9991", "9992", "9993"] {
        assert!(
            !left.contains(sleeper),
            "sleep {sleeper} outlived its exec: {left}"
        );
    }
    // And no exec cgroup is left behind.
    let cgroup = format!("{}/pod-{pod}/{id}", env.daemon.cgroup_parent);
    for dir in common::cgroup_dirs(&cgroup) {
        let leaves: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leaves, ["main"], "in {}", dir.display());
    }
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_every_process_of_a_container_sharing_the_pods_pids() {
    let mut env = env().await;
    let pod = env.pod("stop").await;
    let image = env.image.clone();
    let mut config = container_config(
        "parent",
        &image,
        "sleep 8881 & sleep 8882 & exec sleep 8883",
    );
    config.linux = Some(pid_mode(cri::NamespaceMode::Pod));
    let id = env.create(&pod, config).await.unwrap();
    env.start(&id).await;
    let cgroup = format!("{}/pod-{pod}/{id}", env.daemon.cgroup_parent);
    // Processes in the container's cgroup and below, in its pids hierarchy.
    let procs = |cgroup: &str| -> usize {
        let Some(dir) = common::cgroup_dirs(cgroup)
            .into_iter()
            .find(|d| d.join("pids.max").exists())
        else {
            return 0;
        };
        let mut stack = vec![dir];
        let mut count = 0;
        while let Some(dir) = stack.pop() {
            count +=
                std::fs::read_to_string(dir.join("cgroup.procs")).map_or(0, |t| t.lines().count());
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        count
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs(&cgroup) < 3 {
        assert!(Instant::now() < deadline, "the sleepers never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    env.rt
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 2,
        })
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(procs(&cgroup), 0, "processes outlived StopContainer");
    assert_eq!(
        env.status(&id).await.state,
        cri::ContainerState::ContainerExited as i32
    );
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_layer_files_are_readable_by_any_user_and_pids_are_limited_by_default() {
    let mut env = env().await;
    let pod = env.pod("files").await;
    let image = env.image.clone();
    let mut config = container_config(
        "reader",
        &image,
        "stat -c '%a' /etc/hosts /etc/hostname /etc/resolv.conf; cat /etc/hostname; \
         cat /etc/hosts /etc/resolv.conf > /dev/null && echo read",
    );
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context = Some(cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value { value: 1000 }),
        ..Default::default()
    });
    let (lines, st) = env.run_config(&pod, config).await;
    assert_eq!(lines, ["644", "644", "644", "files-host", "read"], "{st:?}");
    let cgroup = format!("{}/pod-{pod}/{}", env.daemon.cgroup_parent, st.id);
    let max = common::cgroup_dirs(&cgroup)
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("pids.max")).ok())
        .expect("a pids controller");
    assert_eq!(max.trim(), "1024", "the default pids limit");
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_from_requests_never_leave_their_place() {
    let mut env = env().await;
    let run = |config: cri::PodSandboxConfig| {
        let mut rt = env.rt.clone();
        async move {
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
        }
    };
    let mut relative = common::cri::pod_config("rel");
    relative.log_directory = "relative/logs".into();
    let err = run(relative).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(!Path::new("relative").exists());

    let logs = env.daemon.path("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut config = common::cri::pod_config("paths");
    config.log_directory = logs.display().to_string();
    let pod = run(config.clone())
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let image = env.image.clone();
    let outside = env.daemon.path("escaped.log");
    for (what, change) in [
        ("a log path climbing out", "log:../escaped.log"),
        ("an absolute log path", "log:ABS"),
        ("a relative host path", "host:relative/dir"),
        ("a relative container path", "container:rel"),
    ] {
        let mut c = container_config("bad", &image, "true");
        match change.split_once(':').unwrap() {
            ("log", "ABS") => c.log_path = outside.display().to_string(),
            ("log", path) => c.log_path = path.into(),
            (kind, path) => c.mounts.push(cri::Mount {
                container_path: if kind == "container" {
                    path.into()
                } else {
                    "/data".into()
                },
                host_path: if kind == "host" {
                    path.into()
                } else {
                    "/tmp".into()
                },
                ..Default::default()
            }),
        }
        let err = env.create(&pod, c).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    assert!(!outside.exists());
    // A proper one is fine.
    let mut c = container_config("good", &image, "echo ok");
    c.log_path = "good/0.log".into();
    std::fs::create_dir_all(logs.join("good")).unwrap();
    let (lines, _) = env.run_config(&pod, c).await;
    assert_eq!(lines, ["ok"]);
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_users_are_ids_everywhere_and_never_names() {
    let mut env = env().await;
    // The attack: ImageStatus says uid 4294967296 (non-zero, so a kubelet admits the pod
    // for runAsNonRoot), and the passwd entry of that "name" is root.
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new()
                .file(
                    "etc/passwd",
                    b"root:x:0:0::/root:/bin/sh\n4294967296:x:0:0::/:/bin/sh\n",
                    0o644,
                )
                .finish(),
            Compression::Gzip,
        )
        .user("4294967296")
        .build();
    let reference = env.publish("sec/bad-uid", &image).await;
    let status = env.image_status(&reference).await;
    assert_eq!(
        status.uid, None,
        "an out-of-range uid is no uid: {status:?}"
    );
    assert_eq!(status.username, "4294967296");
    let pod = env.pod("uids").await;
    let err = env
        .create(&pod, container_config("bad", &reference, "id -u"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Image users that are no ids: a gid of -1, a uid of -1.
    for user in ["0:-1", "-1", "4294967295:0"] {
        let bad = ImageBuilder::new()
            .layer(busybox_layer(), Compression::Gzip)
            .user(user)
            .label(user)
            .build();
        let reference = env
            .publish(&format!("sec/user{}", bad.id().len() + user.len()), &bad)
            .await;
        let err = env
            .create(&pod, container_config("bad", &reference, "id -u"))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "image user {user:?}: {err:?}"
        );
    }

    let image = env.image.clone();
    for (what, user, group) in [
        ("run_as_user 2^32", Some(1i64 << 32), None),
        ("run_as_user -1 as u32", Some(u32::MAX as i64), None),
        ("run_as_group without run_as_user", None, Some(1000)),
    ] {
        let mut c = container_config("bad", &image, "id -u");
        c.linux
            .get_or_insert_with(Default::default)
            .security_context = Some(cri::LinuxContainerSecurityContext {
            run_as_user: user.map(|value| cri::Int64Value { value }),
            run_as_group: group.map(|value| cri::Int64Value { value }),
            ..Default::default()
        });
        let err = env.create(&pod, c).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_devices_cannot_be_opened_unless_mapped() {
    let mut env = env().await;
    let pod = env.pod("devices").await;
    let image = env.image.clone();
    // CAP_MKNOD is in the default set: making a node must not give the device.
    let try_open = |what: &str, node: &str, kind: &str, major: u32, minor: u32, mode: &str| {
        format!(
            "mknod /tmp/{node} {kind} {major} {minor} && (exec 3{mode}/tmp/{node}) 2>/dev/null \
             && echo {what}=open || echo {what}=refused; "
        )
    };
    let script = [
        try_open("null", "null2", "c", 1, 3, ">"),
        try_open("urandom", "urandom2", "c", 1, 9, "<"),
        try_open("kmsg", "kmsg", "c", 1, 11, ">"),
        try_open("mem", "mem", "c", 1, 1, "<"),
        try_open("tty1", "tty1", "c", 4, 1, ">"),
        try_open("disk", "sda", "b", 8, 0, "<"),
        "(exec 3</dev/mapped) 2>/dev/null && echo mapped-read=open || echo mapped-read=refused; "
            .into(),
        "(exec 3>/dev/mapped) 2>/dev/null && echo mapped-write=open || echo mapped-write=refused"
            .into(),
    ]
    .concat();
    let mut config = container_config("devs", &image, &script);
    config.devices = vec![cri::Device {
        container_path: "/dev/mapped".into(),
        // Not among the standard devices; opening it needs no capability.
        host_path: "/dev/net/tun".into(),
        permissions: "r".into(),
    }];
    let (lines, st) = env.run_config(&pod, config).await;
    assert_eq!(
        lines,
        [
            "null=open",
            "urandom=open",
            "kmsg=refused",
            "mem=refused",
            "tty1=refused",
            "disk=refused",
            "mapped-read=open",
            "mapped-write=refused",
        ],
        "{st:?}"
    );
    // A device path that is no device is refused at create.
    let mut bad = container_config("bad", &image, "true");
    bad.devices = vec![cri::Device {
        container_path: "/dev/x".into(),
        host_path: "/etc/hostname".into(),
        permissions: "rw".into(),
    }];
    let err = env.create(&pod, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    env.remove_pods(vec![pod]).await;
}

fn with_seccomp(
    mut config: cri::ContainerConfig,
    profile: Option<cri::SecurityProfile>,
    path: &str,
) -> cri::ContainerConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    let security = linux.security_context.get_or_insert_with(Default::default);
    security.seccomp = profile;
    #[allow(deprecated)]
    {
        security.seccomp_profile_path = path.into();
    }
    config
}

fn profile(kind: cri::security_profile::ProfileType, path: &str) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: path.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_in_every_form_for_the_init_and_every_exec() {
    use cri::security_profile::ProfileType;
    let mut env = env().await;
    let pod = env.pod("seccomp").await;
    let image = env.image.clone();
    // A Localhost profile that refuses mkdir and allows the rest.
    let local = env.daemon.path("no-mkdir.json");
    std::fs::write(
        &local,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let local = local.display().to_string();
    // Seccomp mode of the process; whether it may make a user namespace (RuntimeDefault
    // refuses it without CAP_SYS_ADMIN) and a directory.
    let script = "grep '^Seccomp:' /proc/self/status | tr -d '\\t'; \
                  unshare -U true 2>/dev/null && echo userns=yes || echo userns=no; \
                  mkdir /made 2>/dev/null && echo mkdir=yes || echo mkdir=no; exec sleep 1000";
    for (i, (what, profile, path, want)) in [
        ("none", None, "", ["Seccomp:0", "userns=yes", "mkdir=yes"]),
        (
            "RuntimeDefault",
            profile(ProfileType::RuntimeDefault, ""),
            "",
            ["Seccomp:2", "userns=no", "mkdir=yes"],
        ),
        (
            "Unconfined",
            profile(ProfileType::Unconfined, ""),
            "",
            ["Seccomp:0", "userns=yes", "mkdir=yes"],
        ),
        (
            "Localhost",
            profile(ProfileType::Localhost, &local),
            "",
            ["Seccomp:2", "userns=yes", "mkdir=no"],
        ),
        (
            "runtime/default",
            None,
            "runtime/default",
            ["Seccomp:2", "userns=no", "mkdir=yes"],
        ),
        (
            "docker/default",
            None,
            "docker/default",
            ["Seccomp:2", "userns=no", "mkdir=yes"],
        ),
        (
            "unconfined",
            None,
            "unconfined",
            ["Seccomp:0", "userns=yes", "mkdir=yes"],
        ),
        (
            "localhost/",
            None,
            &format!("localhost/{local}"),
            ["Seccomp:2", "userns=yes", "mkdir=no"],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("c{i}");
        let config = with_seccomp(container_config(&name, &image, script), profile, path);
        let id = env
            .create(&pod, config)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        env.start(&id).await;
        let log = env.status(&id).await.log_path;
        let deadline = Instant::now() + Duration::from_secs(10);
        let lines = loop {
            let lines: Vec<String> = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_once(" stdout F ").map(|(_, t)| t.to_string()))
                .collect();
            if lines.len() >= 3 {
                break lines;
            }
            assert!(Instant::now() < deadline, "{what}: {lines:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(lines, want, "{what}: the container's init");
        // Every exec runs under the same filter.
        let out = exec(&env, &id, &["sh", "-c", "grep '^Seccomp:' /proc/self/status | tr -d '\\t'; mkdir /exec-made 2>/dev/null && echo mkdir=yes || echo mkdir=no"], 10)
            .await
            .unwrap();
        assert_eq!(
            text(&out.stdout),
            format!("{}\n{}\n", want[0], want[2]),
            "{what}: an exec"
        );
    }

    // With CAP_SYS_ADMIN, RuntimeDefault lets a container make namespaces and set its
    // hostname; a privileged container gets no filter at all.
    let admin = with_caps(
        with_seccomp(
            container_config(
                "admin",
                &image,
                "unshare -U true && hostname changed && echo ok",
            ),
            profile(ProfileType::RuntimeDefault, ""),
            "",
        ),
        &["SYS_ADMIN"],
    );
    let (lines, _) = env.run_config(&pod, admin).await;
    assert_eq!(lines, ["ok"]);
    let mut privileged = with_seccomp(
        container_config(
            "priv",
            &image,
            "grep '^Seccomp:' /proc/self/status | tr -d '\\t'",
        ),
        None,
        "runtime/default",
    );
    privileged
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    let (lines, _) = env.run_config(&pod, privileged).await;
    assert_eq!(lines, ["Seccomp:0"]);

    // Profiles that cannot be had are refused at create, clearly.
    let missing = env.daemon.path("missing.json").display().to_string();
    let broken = env.daemon.path("broken.json");
    std::fs::write(&broken, "{not json").unwrap();
    let broken = broken.display().to_string();
    // A FIFO nobody writes: reading it would block the create for ever.
    let fifo = env.daemon.path("fifo.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo = fifo.display().to_string();
    for (what, profile, path) in [
        (
            "a missing Localhost profile",
            profile(ProfileType::Localhost, &missing),
            "",
        ),
        (
            "an invalid Localhost profile",
            profile(ProfileType::Localhost, &broken),
            "",
        ),
        (
            "a FIFO for a profile",
            profile(ProfileType::Localhost, &fifo),
            "",
        ),
        (
            "a relative Localhost path",
            profile(ProfileType::Localhost, "rel.json"),
            "",
        ),
        ("a path without localhost/", None, &local),
        ("an unknown name", None, "runtime/strict"),
    ] {
        let config = with_seccomp(container_config("bad", &image, "true"), profile, path);
        let err = env.create(&pod, config).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains("seccomp"), "{what}: {err:?}");
    }
    env.remove_pods(vec![pod]).await;
}

/// A static program that makes a cgroup namespace, mounts the v1 `CONTROLLER` hierarchy
/// and writes `VALUE` to `FILE` there: run under `unshare -U -r`, a container's root is
/// root of its own user namespace and owns those files.
const CGROUP_ATTACK: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char path[512];
    if (argc != 4) return 2;
    if (unshare(CLONE_NEWNS | CLONE_NEWCGROUP)) { printf("unshare: %s\n", strerror(errno)); return 1; }
    mkdir("/tmp/cg", 0755);
    if (mount("cgroup", "/tmp/cg", "cgroup", 0, argv[1])) { printf("mount: %s\n", strerror(errno)); return 1; }
    snprintf(path, sizeof path, "/tmp/cg/%s", argv[2]);
    int fd = open(path, O_WRONLY);
    if (fd < 0) { printf("open: %s\n", strerror(errno)); return 1; }
    if (write(fd, argv[3], strlen(argv[3])) < 0) { printf("write: %s\n", strerror(errno)); return 1; }
    printf("wrote %s\n", argv[2]);
    return 0;
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_cannot_raise_its_own_cgroup_limits() {
    let mut env = env().await;
    let attack = common::compile_static(&env.daemon.path("attack"), "attack", CGROUP_ATTACK);
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new()
                .dir("tmp", 0o1777)
                .file("attack", &attack, 0o755)
                .finish(),
            Compression::Gzip,
        )
        .build();
    let image = env.publish("sec/cgroup-attack", &image).await;
    let pod = env.pod("limits").await;
    let mut config = container_config(
        "raise",
        &image,
        "unshare -U -r /attack memory memory.limit_in_bytes 268435456; \
         unshare -U -r /attack pids pids.max 100000; \
         unshare -U -r /attack memory notify_on_release 1; \
         unshare -U -r /attack rdma release_agent /attack; \
         unshare -U -r /attack memory release_agent /attack; echo done",
    );
    config.linux.get_or_insert_with(Default::default).resources =
        Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        });
    // CVE-2022-0492: a release agent (at a hierarchy's root) runs on the host as root.
    let agents_before: Vec<(PathBuf, String)> = release_agents();
    let (lines, st) = env.run_config(&pod, config).await;
    // The attack itself works: it writes the files of the cgroup it sees.
    assert_eq!(
        lines[..2],
        ["wrote memory.limit_in_bytes", "wrote pids.max"],
        "{st:?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("wrote release_agent")),
        "a container wrote a release agent: {lines:?}"
    );
    assert_eq!(
        release_agents(),
        agents_before,
        "the host's release agents changed"
    );
    println!("the cgroup attack inside the container: {lines:?}");
    // On the host the container's limits are what the request said, whatever was written.
    let cgroup = format!("{}/pod-{pod}/{}", env.daemon.cgroup_parent, st.id);
    let read = |file: &str| {
        common::cgroup_dirs(&cgroup)
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .unwrap_or_else(|| panic!("no {file}"))
            .trim()
            .to_string()
    };
    assert_eq!(
        read("memory.limit_in_bytes"),
        (64u64 << 20).to_string(),
        "{lines:?}"
    );
    assert_eq!(read("pids.max"), "1024", "{lines:?}");
    assert_eq!(read("notify_on_release"), "0", "{lines:?}");
    env.remove_pods(vec![pod]).await;
}

/// Every v1 hierarchy's release agent on the host.
fn release_agents() -> Vec<(PathBuf, String)> {
    let mut agents: Vec<(PathBuf, String)> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("release_agent"))
        .filter_map(|p| Some((p.clone(), std::fs::read_to_string(&p).ok()?)))
        .collect();
    agents.sort();
    agents
}

/// An image's own symlinks at the places the runtime writes or mounts (`/etc/hosts`,
/// `/etc/resolv.conf`, `/etc/hostname`, `/etc`, `/dev`) and its own `/dev/null` cannot send
/// the runtime's writes to the host or take the place of the real device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_images_symlinks_and_devices_cannot_turn_the_runtime_on_the_host() {
    let mut env = env().await;
    let canaries = tempfile::Builder::new()
        .prefix("strata-canary-")
        .tempdir()
        .unwrap();
    let canary = |name: &str| canaries.path().join(name);
    for dir in ["dev", "etc"] {
        std::fs::create_dir(canary(dir)).unwrap();
    }
    let empty = |dir: &str| std::fs::read_dir(canary(dir)).unwrap().count() == 0;
    let path = |p: PathBuf| p.display().to_string();

    let links = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new()
                .symlink("etc/hosts", &path(canary("hosts")))
                .symlink(
                    "etc/resolv.conf",
                    &format!("../../../../..{}", path(canary("resolv"))),
                )
                .symlink("etc/hostname", &path(canary("hostname")))
                .symlink("dev", &path(canary("dev")))
                .finish(),
            Compression::Gzip,
        )
        .build();
    let links = env.publish("sec/etc-links", &links).await;
    let pod = env.pod("links").await;
    let script = "grep -q localhost /etc/hosts && echo hosts-ok; [ -c /dev/null ] && echo null-is-a-device; \
                  echo x > /dev/null && echo null-writable; hostname";
    let (out, st) = env
        .run_config(&pod, container_config("links", &links, script))
        .await;
    assert_eq!(st.exit_code, 0, "{out:?}");
    assert_eq!(
        out[..3],
        ["hosts-ok", "null-is-a-device", "null-writable"],
        "{out:?}"
    );
    for file in ["hosts", "resolv", "hostname"] {
        assert!(
            !canary(file).exists(),
            "the runtime wrote the host's {file} canary"
        );
    }
    assert!(empty("dev"), "the runtime made nodes in a host directory");

    // /etc itself a symlink out (over the lower layers' directory), and an image's own
    // /dev/null (a regular file).
    let etc = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new()
                .file("dev/null", b"the image's null", 0o666)
                .finish(),
            Compression::Gzip,
        )
        .layer(
            LayerBuilder::new()
                .symlink("etc", &path(canary("etc")))
                .finish(),
            Compression::Gzip,
        )
        .build();
    let etc = env.publish("sec/etc-dir-link", &etc).await;
    let script = "cat /etc/hosts >/dev/null && echo hosts-readable; [ -c /dev/null ] && echo null-is-a-device; \
                  cat /dev/null | wc -c";
    let (out, st) = env
        .run_config(&pod, container_config("etcdir", &etc, script))
        .await;
    assert_eq!(st.exit_code, 0, "{out:?}");
    assert_eq!(out, ["hosts-readable", "null-is-a-device", "0"], "{out:?}");
    assert!(
        empty("etc"),
        "the runtime wrote into the host directory /etc led to"
    );
    env.remove_pods(vec![pod]).await;
}

/// CVE-2024-21626: no fd of the runtime reaches an exec, and a working dir through
/// `/proc/self/fd/N` (a leaked fd to a host directory, in runc's case) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execs_get_no_host_fd_and_fd_working_dirs_are_refused() {
    let mut env = env().await;
    let pod = env.pod("fds").await;
    let image = env.image.clone();
    let id = env
        .create(&pod, container_config("sleeper", &image, "exec sleep 1000"))
        .await
        .unwrap();
    env.start(&id).await;
    // `ls` itself holds fd 3 (the directory it reads); anything more came from outside.
    let out = exec(&env, &id, &["sh", "-c", "ls /proc/self/fd"], 10)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    let fds: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "an exec's fds");
    let out = exec(&env, &id, &["sh", "-c", "ls -l /proc/1/fd/"], 10)
        .await
        .unwrap();
    assert!(
        !text(&out.stdout).contains("strata") && !text(&out.stdout).contains("/sys/fs/cgroup"),
        "the init holds a runtime fd: {}",
        text(&out.stdout)
    );

    for fd in 3..8 {
        let mut config = container_config("fdcwd", &image, "pwd; ls");
        config.working_dir = format!("/proc/self/fd/{fd}");
        let no_output = |st: &cri::ContainerStatus| {
            let lines = common::cri::stdout_lines(st);
            assert!(lines.is_empty(), "fd {fd}: it printed {lines:?}");
        };
        let outcome = match env.attempt(&pod, config).await {
            Attempt::Refused(e) => format!("refused at create: {e:?}"),
            Attempt::StartFailed(e, st) => {
                no_output(&st);
                format!("refused at start: {e:?} / exit {}", st.exit_code)
            }
            Attempt::Ran(st) => {
                assert_ne!(
                    st.exit_code,
                    0,
                    "fd {fd}: the container ran in {:?}",
                    common::cri::stdout_lines(&st)
                );
                no_output(&st);
                format!("refused at start: exit {}", st.exit_code)
            }
        };
        assert!(outcome.contains("refused"), "{outcome}");
    }
    env.remove_pods(vec![pod]).await;
}

/// CVE-2021-30465: a mount whose target lies in a volume another container of the pod keeps
/// swapping between a directory and a symlink to `/`. Wherever the race lands, the mount point
/// is made and the mount placed inside the container's own rootfs, never on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_target_swapped_for_a_symlink_never_reaches_the_host() {
    let mut env = env().await;
    let volume = env.daemon.path("volume");
    let payload = env.daemon.path("payload");
    for dir in [&volume, &payload] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(payload.join("marker"), "payload\n").unwrap();
    // A name nothing else on the host has: if a mount point were made through the symlink
    // on the host's side, it would appear at the host's root.
    let name = format!("strata-swap-{}", std::process::id());
    let host_canary = Path::new("/").join(&name);
    let pod = env.pod("swap").await;
    let image = env.image.clone();
    let mount = |host: &Path, container: &str| cri::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        ..Default::default()
    };
    let mut swapper = container_config(
        "swapper",
        &image,
        "while :; do mkdir /vol/x 2>/dev/null; rmdir /vol/x 2>/dev/null; \
         ln -s / /vol/x 2>/dev/null; rm -f /vol/x; done",
    );
    swapper.mounts.push(mount(&volume, "/vol"));
    let swapper = env.create(&pod, swapper).await.unwrap();
    env.start(&swapper).await;

    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for attempt in 0..12 {
        let mut victim = container_config(
            &format!("victim-{attempt}"),
            &image,
            &format!(
                "cat /vol/x/{name}/marker 2>/dev/null || cat /{name}/marker 2>/dev/null || echo unseen"
            ),
        );
        victim.mounts.push(mount(&volume, "/vol"));
        victim
            .mounts
            .push(mount(&payload, &format!("/vol/x/{name}")));
        let outcome = match env.attempt(&pod, victim).await {
            Attempt::Refused(e) => format!("refused ({:?})", e.code()),
            Attempt::StartFailed(e, _) => format!("failed to start ({:?})", e.code()),
            Attempt::Ran(st) => common::cri::stdout_lines(&st).join(" "),
        };
        *outcomes.entry(outcome).or_default() += 1;
        assert!(
            !host_canary.exists(),
            "attempt {attempt}: a mount point was made at the host's {}",
            host_canary.display()
        );
    }
    println!("the victims saw: {outcomes:?}");
    // The host's mount table has nothing of the payload's.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&name), "{mounts}");
    env.remove_pods(vec![pod]).await;
    let _ = std::fs::remove_dir(&host_canary);
}

/// A static program that asks for an io_uring instance and for an `AF_VSOCK` socket, and
/// prints what came of each: `io_uring_setup: ok` or the errno's name.
const IO_URING_PROBE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
static void report(const char *what, long rc) {
    if (rc < 0) printf("%s: %s\n", what, strerrorname_np(errno));
    else { printf("%s: ok\n", what); close((int)rc); }
}
int main(void) {
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    report("io_uring_setup", syscall(SYS_io_uring_setup, 4, &params));
    report("socket(AF_VSOCK)", socket(40, SOCK_STREAM, 0));
    return 0;
}
"#;

/// io_uring's operations never pass the seccomp filter (IORING_OP_SOCKET makes the
/// `AF_VSOCK` socket the filter refuses): RuntimeDefault refuses io_uring itself, with the
/// EPERM of every call it does not list, as Docker (25.0) and containerd (2.0) do. The
/// same program, Unconfined, gets its ring: the difference is the profile, not the kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_uring_is_refused_by_runtime_default_and_left_to_unconfined() {
    use cri::security_profile::ProfileType;
    // A kernel that refuses io_uring to all (2) or to the unprivileged (1) would make the
    // refusal prove nothing. Before 6.6 there is no such switch: io_uring is on.
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "0".into());
    assert_eq!(
        disabled, "0",
        "kernel.io_uring_disabled is {disabled}: the kernel refuses io_uring to containers \
         whatever their profile, so this test cannot show what RuntimeDefault does"
    );
    let mut env = env().await;
    let probe = common::compile_static(&env.daemon.path("uring"), "uring", IO_URING_PROBE);
    let image = ImageBuilder::new()
        .layer(busybox_layer(), Compression::Gzip)
        .layer(
            LayerBuilder::new().file("uring", &probe, 0o755).finish(),
            Compression::Gzip,
        )
        .build();
    let image = env.publish("sec/io-uring", &image).await;
    let pod = env.pod("uring").await;
    let mut seen = Vec::new();
    for (name, kind) in [
        ("default", ProfileType::RuntimeDefault),
        ("unconfined", ProfileType::Unconfined),
    ] {
        let config = with_seccomp(
            container_config(name, &image, "/uring"),
            profile(kind, ""),
            "",
        );
        let (lines, st) = env.run_config(&pod, config).await;
        assert_eq!(st.exit_code, 0, "{name}: {lines:?} {st:?}");
        println!("{name}: {lines:?}");
        seen.push(lines);
    }
    let setup = |lines: &[String]| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix("io_uring_setup: "))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no io_uring_setup line in {lines:?}"))
    };
    assert_eq!(
        setup(&seen[1]),
        "ok",
        "an Unconfined container cannot set up io_uring either (kernel without io_uring?): {:?}",
        seen[1]
    );
    assert!(
        seen[0].contains(&"socket(AF_VSOCK): EPERM".to_string()),
        "RuntimeDefault's filter is not there: {:?}",
        seen[0]
    );
    assert_eq!(
        setup(&seen[0]),
        "EPERM",
        "RuntimeDefault lets the container set up io_uring, whose operations bypass the filter"
    );
    env.remove_pods(vec![pod]).await;
}
