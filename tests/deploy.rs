//! deploy/: install.sh into a temporary prefix twice (the second run changes nothing), an
//! edited config kept, `--uninstall` twice; the installed unit passes `systemd-analyze
//! verify`, and the tmpfiles entry makes the daemon's directories.

mod common;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs deploy/install.sh with `args`; its output lines as (verb, path).
fn install(args: &[&str]) -> Vec<(String, String)> {
    let out = Command::new(repo().join("deploy/install.sh"))
        .args(args)
        .output()
        .expect("run install.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "install.sh {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| {
            let (verb, rest) = l.split_once(' ').unwrap_or((l, ""));
            (verb.to_string(), rest.trim().to_string())
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn install_twice_then_uninstall_twice() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("usr");
    let etc = dir.path().join("etc");
    let bin_dir = common::bin("stratad").parent().unwrap().to_path_buf();
    let args: Vec<String> = vec![
        "--prefix".into(),
        prefix.display().to_string(),
        "--sysconfdir".into(),
        etc.display().to_string(),
        "--bin-dir".into(),
        bin_dir.display().to_string(),
        "--no-start".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let first = install(&args);
    let installed: Vec<&str> = first
        .iter()
        .filter(|(verb, _)| verb == "installed")
        .map(|(_, path)| path.as_str())
        .collect();
    let unit = etc.join("systemd/system/stratad.service");
    let config = etc.join("strata/config.toml");
    for path in [
        prefix.join("bin/stratad"),
        prefix.join("bin/stratactl"),
        unit.clone(),
        etc.join("tmpfiles.d/strata.conf"),
        config.clone(),
        prefix.join("share/doc/strata/KUBELET.md"),
    ] {
        assert!(
            installed.contains(&path.to_str().unwrap()),
            "{} not said installed: {first:?}",
            path.display()
        );
    }
    assert_eq!(mode(&prefix.join("bin/stratad")), 0o755);
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(
        std::fs::read(&config).unwrap(),
        std::fs::read(repo().join("deploy/config.toml")).unwrap()
    );
    // Not the machine's /etc: neither enabled nor started, and it says so.
    assert!(first.iter().any(|(verb, _)| verb == "skipped"), "{first:?}");

    // The unit runs the installed binary with the installed config, and systemd accepts it.
    let text = std::fs::read_to_string(&unit).unwrap();
    let exec = format!(
        "ExecStart={} --config {}",
        prefix.join("bin/stratad").display(),
        config.display()
    );
    assert!(text.lines().any(|l| l == exec), "{text}");
    for line in [
        "Type=notify",
        "WatchdogSec=60s",
        "OOMScoreAdjust=-999",
        "LimitNOFILE=1048576",
        "ExecStartPre=-/sbin/modprobe overlay",
        "KillMode=process",
        "Delegate=yes",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The tmpfiles entry parses and makes the directories with the daemon's modes.
    let root = dir.path().join("tmpfiles-root");
    std::fs::create_dir(&root).unwrap();
    let made = Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.display()))
        .arg("--create")
        .arg(etc.join("tmpfiles.d/strata.conf"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    assert_eq!(mode(&root.join("run/strata")), 0o700);
    assert_eq!(mode(&root.join("var/lib/strata")), 0o700);

    // Again: nothing changes.
    let second = install(&args);
    assert!(
        second
            .iter()
            .all(|(verb, _)| verb == "unchanged" || verb == "skipped"),
        "{second:?}"
    );

    // An edited config stays; the shipped one goes beside it.
    std::fs::write(&config, "log_level = \"debug\"\n").unwrap();
    let third = install(&args);
    let kept = format!("{} (edited)", config.display());
    assert!(third.contains(&("kept".into(), kept.clone())), "{third:?}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "log_level = \"debug\"\n"
    );
    assert!(etc.join("strata/config.toml.default").exists());

    let mut uninstall = args.clone();
    uninstall.retain(|a| *a != "--no-start");
    uninstall.push("--uninstall");
    let removed = install(&uninstall);
    for path in [
        prefix.join("bin/stratad"),
        prefix.join("bin/stratactl"),
        unit.clone(),
    ] {
        assert!(!path.exists(), "{} left", path.display());
        assert!(
            removed.contains(&("removed".into(), path.display().to_string())),
            "{removed:?}"
        );
    }
    assert!(!etc.join("tmpfiles.d/strata.conf").exists());
    assert!(!prefix.join("share/doc/strata").exists());
    assert!(removed.contains(&("kept".into(), kept)), "{removed:?}");
    assert!(config.exists(), "an edited config is never removed");
    // Twice: nothing left to remove, and no error.
    let again = install(&uninstall);
    assert!(again.iter().all(|(verb, _)| verb == "kept"), "{again:?}");
}
