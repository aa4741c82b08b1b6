//! Capability names (as the OCI spec and CRI write them) and their bits.

use rustix::thread::CapabilitySet;

const NAMES: &[(&str, CapabilitySet)] = &[
    ("CAP_CHOWN", CapabilitySet::CHOWN),
    ("CAP_DAC_OVERRIDE", CapabilitySet::DAC_OVERRIDE),
    ("CAP_DAC_READ_SEARCH", CapabilitySet::DAC_READ_SEARCH),
    ("CAP_FOWNER", CapabilitySet::FOWNER),
    ("CAP_FSETID", CapabilitySet::FSETID),
    ("CAP_KILL", CapabilitySet::KILL),
    ("CAP_SETGID", CapabilitySet::SETGID),
    ("CAP_SETUID", CapabilitySet::SETUID),
    ("CAP_SETPCAP", CapabilitySet::SETPCAP),
    ("CAP_LINUX_IMMUTABLE", CapabilitySet::LINUX_IMMUTABLE),
    ("CAP_NET_BIND_SERVICE", CapabilitySet::NET_BIND_SERVICE),
    ("CAP_NET_BROADCAST", CapabilitySet::NET_BROADCAST),
    ("CAP_NET_ADMIN", CapabilitySet::NET_ADMIN),
    ("CAP_NET_RAW", CapabilitySet::NET_RAW),
    ("CAP_IPC_LOCK", CapabilitySet::IPC_LOCK),
    ("CAP_IPC_OWNER", CapabilitySet::IPC_OWNER),
    ("CAP_SYS_MODULE", CapabilitySet::SYS_MODULE),
    ("CAP_SYS_RAWIO", CapabilitySet::SYS_RAWIO),
    ("CAP_SYS_CHROOT", CapabilitySet::SYS_CHROOT),
    ("CAP_SYS_PTRACE", CapabilitySet::SYS_PTRACE),
    ("CAP_SYS_PACCT", CapabilitySet::SYS_PACCT),
    ("CAP_SYS_ADMIN", CapabilitySet::SYS_ADMIN),
    ("CAP_SYS_BOOT", CapabilitySet::SYS_BOOT),
    ("CAP_SYS_NICE", CapabilitySet::SYS_NICE),
    ("CAP_SYS_RESOURCE", CapabilitySet::SYS_RESOURCE),
    ("CAP_SYS_TIME", CapabilitySet::SYS_TIME),
    ("CAP_SYS_TTY_CONFIG", CapabilitySet::SYS_TTY_CONFIG),
    ("CAP_MKNOD", CapabilitySet::MKNOD),
    ("CAP_LEASE", CapabilitySet::LEASE),
    ("CAP_AUDIT_WRITE", CapabilitySet::AUDIT_WRITE),
    ("CAP_AUDIT_CONTROL", CapabilitySet::AUDIT_CONTROL),
    ("CAP_SETFCAP", CapabilitySet::SETFCAP),
    ("CAP_MAC_OVERRIDE", CapabilitySet::MAC_OVERRIDE),
    ("CAP_MAC_ADMIN", CapabilitySet::MAC_ADMIN),
    ("CAP_SYSLOG", CapabilitySet::SYSLOG),
    ("CAP_WAKE_ALARM", CapabilitySet::WAKE_ALARM),
    ("CAP_BLOCK_SUSPEND", CapabilitySet::BLOCK_SUSPEND),
    ("CAP_AUDIT_READ", CapabilitySet::AUDIT_READ),
    ("CAP_PERFMON", CapabilitySet::PERFMON),
    ("CAP_BPF", CapabilitySet::BPF),
    ("CAP_CHECKPOINT_RESTORE", CapabilitySet::CHECKPOINT_RESTORE),
];

/// The bit of a capability, by its name with or without `CAP_`, in any case.
pub fn bit(name: &str) -> Option<CapabilitySet> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES.iter().find(|(n, _)| *n == full).map(|(_, b)| *b)
}

/// The canonical name (`CAP_CHOWN`) of a capability given in any form CRI allows.
pub fn canonical(name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES
        .iter()
        .find(|(n, _)| *n == full)
        .map(|(n, _)| n.to_string())
}

/// Every capability the kernel knows, by name.
pub fn all() -> Vec<String> {
    NAMES.iter().map(|(n, _)| n.to_string()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert!(super::bit("chown").is_some());
        assert_eq!(
            super::canonical("net_admin").as_deref(),
            Some("CAP_NET_ADMIN")
        );
        assert!(super::bit("CAP_NOPE").is_none());
    }
}
