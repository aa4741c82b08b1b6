//! A container's root filesystem as data: [`plan`] turns the runtime spec into the list of
//! mount operations the init carries out in order (the overlay of the init layer and the
//! image's layers under the read-write layer, the spec's mounts, the pivot, masked and
//! read-only paths, device nodes), and [`write_init_layer`] writes the init layer: the
//! pod's /etc/hosts, /etc/hostname and /etc/resolv.conf, and every mount point, so that
//! none of them is ever written to the container's read-write layer.

use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use crate::{
    oci::spec::Spec,
    sys::{
        mount::{Flags, Mount},
        rootdir::{NodeKind, RootDir},
    },
};

/// The mount operations of the container's rootfs, in the order they must happen.
pub fn plan(spec: &Spec) -> Vec<Mount> {
    let root = spec.root.path.clone();
    let mut plan = Vec::new();
    // A bidirectional (rshared) volume needs its source to stay a peer of the host's
    // mount: then only the mount holding the rootfs is made private (the rootfs and what
    // is mounted in it are private from the start; only the volume's bind joins the
    // host's peer group). Otherwise every mount becomes a slave.
    let bidirectional = spec
        .mounts
        .iter()
        .any(|m| m.options.iter().any(|o| o == "rshared"));
    plan.push(if bidirectional {
        Mount::PrivateHolderOf(root.clone())
    } else {
        Mount::SlaveAll
    });
    plan.push(Mount::Overlay {
        lowers: spec.strata.lowers.clone(),
        upper: spec.strata.upper.clone(),
        work: spec.strata.work.clone(),
        target: root.clone(),
    });
    for m in &spec.mounts {
        if let Some(volume) = spec
            .strata
            .image_volumes
            .iter()
            .find(|v| m.kind == "overlay" && v.destination == m.destination)
        {
            plan.push(Mount::ImageVolume {
                root: root.clone(),
                destination: PathBuf::from(&m.destination),
                layers: volume.layers.clone(),
                sub_path: PathBuf::from(&volume.sub_path),
                staging: volume.staging.clone(),
            });
            continue;
        }
        let (flags, propagation, data) = mount_options(&m.options);
        let destination = PathBuf::from(&m.destination);
        let is_bind = flags.contains(Flags::MS_BIND);
        plan.push(Mount::InRoot {
            root: root.clone(),
            destination: destination.clone(),
            fstype: if is_bind {
                "bind".into()
            } else {
                m.kind.clone()
            },
            source: m.source.clone(),
            flags,
            propagation,
            data,
        });
        if is_bind && m.options.iter().any(|o| o == "rro") {
            plan.push(Mount::RecursiveReadOnly {
                root: root.clone(),
                destination: destination.clone(),
            });
        }
        if m.destination == "/dev" && !is_bind {
            plan.push(Mount::PopulateDev {
                root: root.clone(),
                dev: destination,
            });
        }
    }
    plan.push(Mount::Pivot(root));
    plan.extend(
        spec.linux
            .masked_paths
            .iter()
            .map(|p| Mount::Mask(p.into())),
    );
    plan.extend(
        spec.linux
            .readonly_paths
            .iter()
            .map(|p| Mount::ReadOnly(p.into())),
    );
    plan.extend(spec.linux.devices.iter().map(|d| Mount::Device {
        path: PathBuf::from(&d.path),
        kind: if d.kind == "b" {
            NodeKind::Block
        } else {
            NodeKind::Char
        },
        major: d.major,
        minor: d.minor,
        mode: d.file_mode,
        uid: d.uid,
        gid: d.gid,
    }));
    if spec.root.readonly {
        plan.push(Mount::RootReadOnly);
    }
    plan
}

/// Splits OCI mount options into flags, propagation and filesystem data.
pub fn mount_options(options: &[String]) -> (Flags, Flags, String) {
    let mut flags = Flags::empty();
    let mut propagation = Flags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= Flags::MS_RDONLY,
            // Recursive read-only: a step of its own after the mount (see `plan`).
            "rro" => flags |= Flags::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= Flags::MS_NOSUID,
            "nodev" => flags |= Flags::MS_NODEV,
            "noexec" => flags |= Flags::MS_NOEXEC,
            "strictatime" => flags |= Flags::MS_STRICTATIME,
            "relatime" => flags |= Flags::MS_RELATIME,
            "noatime" => flags |= Flags::MS_NOATIME,
            "bind" => flags |= Flags::MS_BIND,
            "rbind" => flags |= Flags::MS_BIND | Flags::MS_REC,
            "rprivate" => propagation |= Flags::MS_PRIVATE | Flags::MS_REC,
            "private" => propagation |= Flags::MS_PRIVATE,
            "rslave" => propagation |= Flags::MS_SLAVE | Flags::MS_REC,
            "slave" => propagation |= Flags::MS_SLAVE,
            "rshared" => propagation |= Flags::MS_SHARED | Flags::MS_REC,
            "shared" => propagation |= Flags::MS_SHARED,
            other => data.push(other.to_string()),
        }
    }
    (flags, propagation, data.join(","))
}

/// Writes the init layer at `init`: the pod's `hosts`, `hostname` and `resolv.conf` from
/// `pod_dir` (readable by every user the container may run as), and every mount point of
/// the spec, created inside the layer (a symlink cannot lead out of it).
pub fn write_init_layer(init: &Path, pod_dir: &Path, spec: &Spec) -> io::Result<()> {
    let context = |what: &str, path: &Path| {
        let path = path.display().to_string();
        let what = what.to_string();
        move |e: io::Error| io::Error::new(e.kind(), format!("{what} {path}: {e}"))
    };
    std::fs::create_dir_all(init.join("etc")).map_err(context("cannot create", init))?;
    let root = RootDir::open(init).map_err(context("cannot open", init))?;
    for name in ["hosts", "hostname", "resolv.conf"] {
        let target = init.join("etc").join(name);
        std::fs::copy(pod_dir.join(name), &target).map_err(context("cannot write", &target))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))
            .map_err(context("cannot write", &target))?;
    }
    for m in &spec.mounts {
        let dest = Path::new(&m.destination);
        let is_file =
            m.kind == "bind" && Path::new(&m.source).metadata().is_ok_and(|md| !md.is_dir());
        let made = if is_file {
            root.ensure_file(dest)
        } else {
            root.ensure_dir(dest)
        };
        made.map_err(context(
            "cannot create mount point",
            &init.join(dest.strip_prefix("/").unwrap_or(dest)),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::spec::{self, Device, Mount as SpecMount};

    fn spec() -> Spec {
        let mut s = Spec::default();
        s.root.path = "/c/rootfs".into();
        s.strata.lowers = vec![
            "/c/init".into(),
            "/layers/top".into(),
            "/layers/base".into(),
        ];
        s.strata.upper = "/c/upper".into();
        s.strata.work = "/c/work".into();
        let m = |dest: &str, kind: &str, source: &str, options: &[&str]| SpecMount {
            destination: dest.into(),
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        s.mounts = vec![
            m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            m(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755"],
            ),
            m(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            ),
            m("/data", "bind", "/host/data", &["rbind", "ro", "rslave"]),
        ];
        s.linux.masked_paths = spec::MASKED_PATHS.iter().map(|p| p.to_string()).collect();
        s.linux.readonly_paths = vec!["/proc/sys".into()];
        s.linux.devices = vec![Device {
            path: "/dev/fuse".into(),
            kind: "c".into(),
            major: 10,
            minor: 229,
            file_mode: 0o666,
            uid: 0,
            gid: 0,
        }];
        s
    }

    #[test]
    fn an_image_volume_is_mounted_in_its_place_among_the_mounts() {
        let mut s = spec();
        s.mounts.push(SpecMount {
            destination: "/models".into(),
            kind: "overlay".into(),
            source: "registry/models:v1".into(),
            options: vec!["ro".into()],
        });
        s.strata.image_volumes = vec![spec::ImageVolume {
            destination: "/models".into(),
            layers: vec!["/layers/m2".into(), "/layers/m1".into(), "/c/floor".into()],
            sub_path: "weights".into(),
            staging: "/c/image-volumes/0".into(),
        }];
        let plan = plan(&s);
        let at = |want: &dyn Fn(&Mount) -> bool| plan.iter().position(want).unwrap();
        let volume = at(&|m| matches!(m, Mount::ImageVolume { .. }));
        assert_eq!(
            plan[volume],
            Mount::ImageVolume {
                root: "/c/rootfs".into(),
                destination: "/models".into(),
                layers: vec!["/layers/m2".into(), "/layers/m1".into(), "/c/floor".into()],
                sub_path: "weights".into(),
                staging: "/c/image-volumes/0".into(),
            }
        );
        assert!(
            volume
                > at(
                    &|m| matches!(m, Mount::InRoot { destination, .. } if destination == Path::new("/data"))
                )
        );
        assert!(volume < at(&|m| matches!(m, Mount::Pivot(_))));
        // It is no bind of a host path.
        assert!(!plan.iter().any(|m| matches!(m, Mount::InRoot { destination, .. } if destination == Path::new("/models"))));
    }

    #[test]
    fn the_overlay_comes_first_with_the_specs_layers_in_their_order() {
        let plan = plan(&spec());
        assert_eq!(plan[0], Mount::SlaveAll);
        assert_eq!(
            plan[1],
            Mount::Overlay {
                lowers: vec![
                    "/c/init".into(),
                    "/layers/top".into(),
                    "/layers/base".into()
                ],
                upper: "/c/upper".into(),
                work: "/c/work".into(),
                target: "/c/rootfs".into(),
            }
        );
    }

    #[test]
    fn mounts_land_inside_the_rootfs_before_the_pivot_and_masks_after_it() {
        let plan = plan(&spec());
        let pivot = plan
            .iter()
            .position(|m| *m == Mount::Pivot("/c/rootfs".into()))
            .expect("a pivot");
        for (i, m) in plan.iter().enumerate() {
            match m {
                Mount::InRoot { root, .. } | Mount::PopulateDev { root, .. } => {
                    assert!(i < pivot, "{m:?} after the pivot");
                    assert_eq!(root, Path::new("/c/rootfs"));
                }
                Mount::Mask(_) | Mount::ReadOnly(_) | Mount::Device { .. } => {
                    assert!(i > pivot, "{m:?} before the pivot")
                }
                _ => {}
            }
        }
        let masks: Vec<&Mount> = plan
            .iter()
            .filter(|m| matches!(m, Mount::Mask(_)))
            .collect();
        assert_eq!(masks.len(), spec::MASKED_PATHS.len());
        assert!(plan.contains(&Mount::Mask("/proc/kcore".into())));
        assert!(plan.contains(&Mount::ReadOnly("/proc/sys".into())));
        // Not read-only unless asked.
        assert!(!plan.contains(&Mount::RootReadOnly));
    }

    #[test]
    fn dev_is_populated_right_after_its_tmpfs() {
        let plan = plan(&spec());
        let dev = plan
            .iter()
            .position(|m| matches!(m, Mount::InRoot { destination, .. } if destination == Path::new("/dev")))
            .unwrap();
        assert_eq!(
            plan[dev + 1],
            Mount::PopulateDev {
                root: "/c/rootfs".into(),
                dev: "/dev".into()
            }
        );
        assert!(plan.contains(&Mount::Device {
            path: "/dev/fuse".into(),
            kind: NodeKind::Char,
            major: 10,
            minor: 229,
            mode: 0o666,
            uid: 0,
            gid: 0,
        }));
    }

    #[test]
    fn options_become_flags_propagation_and_data() {
        let plan = plan(&spec());
        let find = |dest: &str| {
            plan.iter()
                .find_map(|m| match m {
                    Mount::InRoot {
                        destination,
                        fstype,
                        source,
                        flags,
                        propagation,
                        data,
                        ..
                    } if destination == Path::new(dest) => Some((
                        fstype.clone(),
                        source.clone(),
                        *flags,
                        *propagation,
                        data.clone(),
                    )),
                    _ => None,
                })
                .unwrap()
        };
        let (fstype, source, flags, propagation, data) = find("/data");
        assert_eq!((fstype.as_str(), source.as_str()), ("bind", "/host/data"));
        assert_eq!(flags, Flags::MS_BIND | Flags::MS_REC | Flags::MS_RDONLY);
        assert_eq!(propagation, Flags::MS_SLAVE | Flags::MS_REC);
        assert_eq!(data, "");
        let (fstype, _, flags, propagation, data) = find("/dev");
        assert_eq!(fstype, "tmpfs");
        assert_eq!(flags, Flags::MS_NOSUID | Flags::MS_STRICTATIME);
        assert!(propagation.is_empty());
        assert_eq!(data, "mode=755");
        let (_, _, flags, _, _) = find("/sys");
        assert!(flags.contains(Flags::MS_RDONLY | Flags::MS_NOEXEC));
    }

    #[test]
    fn a_bidirectional_volume_keeps_the_host_shared_and_a_read_only_root_is_last() {
        let mut s = spec();
        s.mounts[3].options = vec!["rbind".into(), "rshared".into()];
        s.root.readonly = true;
        let plan = plan(&s);
        assert_eq!(plan[0], Mount::PrivateHolderOf("/c/rootfs".into()));
        assert_eq!(plan.last(), Some(&Mount::RootReadOnly));
    }

    #[test]
    fn the_init_layer_has_the_pods_files_and_every_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        let (pod, init) = (dir.path().join("pod"), dir.path().join("init"));
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::create_dir_all(&init).unwrap();
        for (name, text) in [
            ("hosts", "127.0.0.1 localhost\n"),
            ("hostname", "web\n"),
            ("resolv.conf", "nameserver 10.0.0.10\n"),
        ] {
            std::fs::write(pod.join(name), text).unwrap();
        }
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let mut s = spec();
        s.mounts.push(SpecMount {
            destination: "/etc/config.yaml".into(),
            kind: "bind".into(),
            source: file.display().to_string(),
            options: vec!["rbind".into()],
        });
        // A mount point through a symlink that leads out of the layer stays inside it.
        std::os::unix::fs::symlink("/", init.join("escape")).unwrap();
        s.mounts.push(SpecMount {
            destination: "/escape/strata-init-layer-test".into(),
            kind: "bind".into(),
            source: "/tmp".into(),
            options: vec!["rbind".into()],
        });
        write_init_layer(&init, &pod, &s).unwrap();
        assert_eq!(
            std::fs::read_to_string(init.join("etc/hostname")).unwrap(),
            "web\n"
        );
        let mode = std::fs::metadata(init.join("etc/resolv.conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        assert!(init.join("proc").is_dir() && init.join("data").is_dir());
        assert!(init.join("etc/config.yaml").is_file());
        assert!(!Path::new("/strata-init-layer-test").exists());
        assert!(init.join("strata-init-layer-test").is_dir());
    }
}
