//! Which devices a container may use: an allow-list, applied by the v1 `devices`
//! controller or, on v2, by a `BPF_PROG_TYPE_CGROUP_DEVICE` program built here as data.
//!
//! Without it, a container with `CAP_MKNOD` (in the default set) makes a node for any host
//! device and opens it: raw disks, `/dev/kmsg`, `/dev/kvm`.

use std::fmt;

pub use crate::sys::bpf::Insn;

/// The kind of device a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// What a rule allows: bits as the kernel's `BPF_DEVCG_ACC_*` (mknod, read, write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u8);

impl Access {
    pub const MKNOD: Access = Access(1);
    pub const ALL: Access = Access(7);

    /// Parses CRI/OCI permissions: any of `r`, `w`, `m`, each at most once.
    pub fn parse(text: &str) -> Option<Access> {
        let mut bits = 0u8;
        for c in text.chars() {
            let bit = match c {
                'm' => 1,
                'r' => 2,
                'w' => 4,
                _ => return None,
            };
            if bits & bit != 0 {
                return None;
            }
            bits |= bit;
        }
        (bits != 0).then_some(Access(bits))
    }

    pub fn bits(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, c) in [(2, 'r'), (4, 'w'), (1, 'm')] {
            if self.0 & bit != 0 {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Allows `access` to devices of `kind` with this major and minor (`None`: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

impl DeviceRule {
    const fn char(major: u32, minor: Option<u32>) -> DeviceRule {
        DeviceRule {
            kind: DeviceKind::Char,
            major: Some(major),
            minor,
            access: Access::ALL,
        }
    }

    /// The line v1's `devices.allow` takes: `c 1:3 rwm`, `b *:* m`.
    pub fn v1_line(&self) -> String {
        let kind = match self.kind {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        };
        let number = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        format!(
            "{kind} {}:{} {}",
            number(self.major),
            number(self.minor),
            self.access
        )
    }
}

/// The OCI default: a node of any kind may be made (not opened), and the standard devices
/// used: null, zero, full, random, urandom, tty, ptmx and the pty slaves.
pub const DEFAULT_RULES: &[DeviceRule] = &[
    DeviceRule {
        kind: DeviceKind::Char,
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    DeviceRule {
        kind: DeviceKind::Block,
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    DeviceRule::char(1, Some(3)),
    DeviceRule::char(1, Some(5)),
    DeviceRule::char(1, Some(7)),
    DeviceRule::char(1, Some(8)),
    DeviceRule::char(1, Some(9)),
    DeviceRule::char(5, Some(0)),
    DeviceRule::char(5, Some(2)),
    DeviceRule::char(136, None),
];

// The opcodes the program uses (linux/bpf.h, linux/bpf_common.h).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
/// Compares the low 32 bits: majors, minors and the access type are 32-bit values, and a
/// 64-bit compare would sign-extend an immediate above i32::MAX.
const JMP32_JNE_K: u8 = 0x56; // BPF_JMP32 | BPF_JNE | BPF_K
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The device-cgroup program for `rules`: it allows an access (returns 1) when some rule
/// covers it, and denies it (0) otherwise. The context is `struct bpf_cgroup_dev_ctx`:
/// `access_type` (device type in the low 16 bits, access bits above), `major`, `minor`.
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut prog = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        // BPF_DEVCG_DEV_BLOCK = 1, BPF_DEVCG_DEV_CHAR = 2.
        let mut checks = vec![(
            2u8,
            if rule.kind == DeviceKind::Block {
                1i32
            } else {
                2
            },
        )];
        if let Some(major) = rule.major {
            checks.push((4, major as i32)); // the bits, as JMP32 compares them
        }
        if let Some(minor) = rule.minor {
            checks.push((5, minor as i32));
        }
        let partial = rule.access != Access::ALL;
        // Each check jumps past the rest of the rule when it fails: past the later checks,
        // the access test (3 instructions) and the allow (2).
        let len = checks.len() + if partial { 3 } else { 0 } + 2;
        for (i, (reg, value)) in checks.iter().enumerate() {
            let skip = (len - i - 1) as i16;
            prog.push(insn(JMP32_JNE_K, *reg, 0, skip, *value));
        }
        if partial {
            // Allowed only if the access asks for nothing outside the rule's bits.
            prog.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            prog.push(insn(
                ALU32_AND_K,
                1,
                0,
                0,
                i32::from(!rule.access.bits() & 7),
            ));
            prog.push(insn(JMP32_JNE_K, 1, 0, 2, 0));
        }
        prog.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        prog.push(insn(JMP_EXIT, 0, 0, 0, 0));
    }
    prog.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    prog.push(insn(JMP_EXIT, 0, 0, 0, 0));
    prog
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a program of the instructions above on one device access, as the kernel would.
    fn run(prog: &[Insn], kind: u32, access: u8, major: u32, minor: u32) -> u64 {
        let ctx = [kind | (u32::from(access) << 16), major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 10_000, "the program loops");
            let i = prog[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            pc += 1;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = u64::from(ctx[(i.off / 4) as usize]);
                }
                ALU32_AND_K => r[dst] = u64::from(r[dst] as u32 & i.imm as u32),
                ALU32_RSH_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
                ALU32_MOV_X => r[dst] = u64::from(r[src] as u32),
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                JMP32_JNE_K => {
                    if r[dst] as u32 != i.imm as u32 {
                        pc = (pc as isize + isize::from(i.off)) as usize;
                    }
                }
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
            assert!(pc < prog.len(), "jumped out of the program");
        }
    }

    const CHAR: u32 = 2;
    const BLOCK: u32 = 1;
    const R: u8 = 2;
    const W: u8 = 4;
    const M: u8 = 1;

    #[test]
    fn the_default_program_allows_the_standard_devices_only() {
        let prog = program(DEFAULT_RULES);
        for (what, kind, access, major, minor, allowed) in [
            ("read /dev/null", CHAR, R, 1, 3, true),
            ("write /dev/null", CHAR, W, 1, 3, true),
            ("rw /dev/urandom", CHAR, R | W, 1, 9, true),
            ("a pty slave", CHAR, R | W, 136, 17, true),
            ("/dev/ptmx", CHAR, R | W, 5, 2, true),
            ("mknod any char", CHAR, M, 4, 1, true),
            ("mknod any block", BLOCK, M, 8, 0, true),
            ("open /dev/kmsg", CHAR, R | W, 1, 11, false),
            ("open /dev/mem", CHAR, R, 1, 1, false),
            ("open a disk", BLOCK, R, 8, 0, false),
            ("open /dev/kvm", CHAR, R | W, 10, 232, false),
            ("a host tty", CHAR, W, 4, 1, false),
            ("mknod and read a disk", BLOCK, R | M, 8, 0, false),
            ("a block 1:3", BLOCK, R, 1, 3, false),
        ] {
            assert_eq!(
                run(&prog, kind, access, major, minor) == 1,
                allowed,
                "{what}"
            );
        }
    }

    #[test]
    fn rules_of_every_shape() {
        let rules = [
            DeviceRule {
                kind: DeviceKind::Block,
                major: Some(8),
                minor: Some(16),
                access: Access::parse("r").unwrap(),
            },
            DeviceRule {
                kind: DeviceKind::Char,
                major: Some(10),
                minor: None,
                access: Access::ALL,
            },
        ];
        let prog = program(&rules);
        assert_eq!(run(&prog, BLOCK, R, 8, 16), 1);
        assert_eq!(run(&prog, BLOCK, W, 8, 16), 0, "read-only");
        assert_eq!(run(&prog, BLOCK, R, 8, 17), 0);
        assert_eq!(run(&prog, CHAR, R, 8, 16), 0);
        assert_eq!(run(&prog, CHAR, R | W | M, 10, 200), 1);
        assert_eq!(run(&prog, BLOCK, R, 10, 1), 0, "a char rule");
        assert_eq!(run(&program(&[]), CHAR, R, 1, 3), 0, "no rule, no device");
    }

    #[test]
    fn v1_lines_and_permissions() {
        assert_eq!(DEFAULT_RULES[0].v1_line(), "c *:* m");
        assert_eq!(DEFAULT_RULES[2].v1_line(), "c 1:3 rwm");
        assert_eq!(DEFAULT_RULES[9].v1_line(), "c 136:* rwm");
        assert_eq!(
            Access::parse("rw").map(|a| a.to_string()),
            Some("rw".into())
        );
        for bad in ["", "x", "rr", "rwmx"] {
            assert_eq!(Access::parse(bad), None, "{bad:?}");
        }
        let bytes = insn(LDX_W, 2, 1, 4, 0).to_bytes();
        assert_eq!(bytes[..4], [0x61, 0x12, 4, 0]);
    }

    /// On the real kernel (as root): a shell in a cgroup with the default filter opens
    /// /dev/null and is refused /dev/kmsg.
    #[test]
    fn the_default_filter_holds_on_the_real_kernel() {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists() && !p.join("tasks").exists())
            .expect("a cgroup v2 hierarchy (unified or hybrid) to attach to");
        let dir = root.join(format!("strata-bpf-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let attached = crate::sys::bpf::attach_device_filter(&dir, &program(DEFAULT_RULES));
        let out = attached.as_ref().ok().map(|()| {
            std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs || exit 1; (exec 3</dev/null) && echo null; \
                     (exec 3</dev/kmsg) 2>/dev/null && echo kmsg; echo done",
                    dir.display()
                ))
                .output()
                .unwrap()
        });
        // The shell has exited: its cgroup can go.
        let mut removed = std::fs::remove_dir(&dir);
        for _ in 0..100 {
            if removed.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            removed = std::fs::remove_dir(&dir);
        }
        attached.unwrap();
        removed.unwrap();
        let out = out.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "null\ndone\n",
            "{out:?}"
        );
    }
}
