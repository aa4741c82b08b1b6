//! containerd + runc (Debian's packages) beside strata, for the benchmarks that compare
//! them: on a root, state directory and socket of its own, with a pause image and a
//! registry mirror from the test's registry; stopped and cleaned up when dropped.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    oci::{Compression, ImageBuilder, busybox_layer},
    registry::Registry,
};

pub struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub endpoint: String,
    /// Whether the machine had containerd's `k8s.io` cgroup before (else it is removed).
    had_parent: bool,
}

impl Containerd {
    /// Pushes a pause image to `registry`, starts containerd and waits until it serves.
    pub async fn start(registry: &Registry) -> Containerd {
        Self::start_with_cni(registry, None).await
    }

    /// As `start`, with pod networks from `cni_conf_dir` (plugins from Debian's dir).
    pub async fn start_with_cni(
        registry: &Registry,
        cni_conf_dir: Option<&std::path::Path>,
    ) -> Containerd {
        let pause = ImageBuilder::new()
            .layer(busybox_layer(), Compression::Gzip)
            .cmd(&[
                "/bin/sh",
                "-c",
                "trap 'exit 0' TERM; while true; do sleep 3600 & wait; done",
            ])
            .label("pause")
            .build();
        registry.push("bench/pause", "3.6", &pause).await;
        let dir = tempfile::Builder::new()
            .prefix("strata-bench-containerd-")
            .tempdir()
            .expect("dir");
        let socket = dir.path().join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This machine's root cannot lower oom_score_adj (no CAP_SYS_RESOURCE); without this,
  # runc fails to start the sandbox when containerd asks for -998.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{host}"]
    endpoint = ["http://{host}"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
            cni = cni_conf_dir.map_or_else(
                || dir.path().join("root/cni").display().to_string(),
                |d| d.display().to_string()
            ),
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            socket = socket.display(),
            pause = registry.reference("bench/pause", "3.6"),
            host = registry.host,
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("config");
        // containerd makes its parent cgroup (`k8s.io`) and leaves it.
        let had_parent = !super::cgroup_dirs("k8s.io").is_empty();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("containerd.log")).expect("log"))
            .spawn()
            .expect("containerd (apt-get install containerd runc)");
        let containerd = Containerd {
            child: Some(child),
            endpoint: format!("unix://{}", socket.display()),
            dir,
            had_parent,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while strata_api::connect(&containerd.endpoint).await.is_err() {
            assert!(Instant::now() < deadline, "containerd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        containerd
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Stops containerd and clears what it leaves: its shims' mounts and its cgroup parent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = child.wait();
        // Shims and containers a failed run left (a run that ends well removed its pods):
        // what names this directory, and what is in containerd's cgroups unless the
        // machine had them before.
        super::kill_leftovers(self.dir.path(), (!self.had_parent).then_some("k8s.io"));
        for mount in super::mounts_below(self.dir.path()).into_iter().rev() {
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
        if !self.had_parent {
            super::remove_cgroup_tree("k8s.io");
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}
