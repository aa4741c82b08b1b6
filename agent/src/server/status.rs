//! The one place where domain errors become gRPC statuses.

use std::io;

use tonic::{Code, Status};

use crate::{
    cgroup, cni,
    image::{self, content, manifest, registry, unpack},
    runtime, seccomp,
};

/// An I/O failure: a full disk is the caller's to fix (ResourceExhausted), the rest is ours.
/// Judged by kind, not by errno alone: an error copied across a thread keeps its kind only.
fn io_code(e: &io::Error) -> Code {
    match (e.raw_os_error(), e.kind()) {
        (Some(libc::ENOSPC | libc::EDQUOT), _)
        | (_, io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded) => Code::ResourceExhausted,
        _ => Code::Internal,
    }
}

/// Finds an I/O error in an error's chain.
fn io_in_chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = err.source();
    }
    None
}

fn code(e: &image::Error) -> Code {
    use image::Error as E;
    match e {
        E::Reference(_) => Code::InvalidArgument,
        E::Registry(r) => match r {
            registry::Error::NotFound(_) => Code::NotFound,
            registry::Error::Unauthorized(_) => Code::Unauthenticated,
            registry::Error::Unavailable(_) => Code::Unavailable,
            registry::Error::Protocol(_) => Code::Unknown,
        },
        E::Manifest(m) => match m {
            manifest::Error::NoPlatform { .. } => Code::NotFound,
            manifest::Error::MediaType(_) => Code::FailedPrecondition,
            manifest::Error::Malformed { .. } => Code::DataLoss,
            manifest::Error::TooManyLayers { .. } => Code::ResourceExhausted,
        },
        E::Content(c) => match c {
            content::Error::Size { .. } | content::Error::Digest { .. } => Code::DataLoss,
            content::Error::TooLarge { .. } => Code::ResourceExhausted,
            content::Error::Io { source, .. } => io_code(source),
        },
        E::Unpack { source, .. } => match source {
            unpack::Error::TooManyEntries(_) | unpack::Error::TooLarge(_) => {
                Code::ResourceExhausted
            }
            unpack::Error::BadWhiteout(_) => Code::DataLoss,
            other => match io_in_chain(other) {
                Some(io) if io_code(io) == Code::ResourceExhausted => Code::ResourceExhausted,
                _ => Code::DataLoss,
            },
        },
        E::Layers(l) => io_in_chain(l).map_or(Code::Internal, io_code),
        E::Records(r) => io_in_chain(r).map_or(Code::Internal, io_code),
        E::DiffId { .. } => Code::DataLoss,
        E::Invalid { .. } => Code::InvalidArgument,
        E::TooLarge { .. } => Code::ResourceExhausted,
        E::Stalled { .. } => Code::DeadlineExceeded,
        E::Download { .. } => Code::Unavailable,
        E::NotFound(_) => Code::NotFound,
        E::Internal(_) => Code::Internal,
        E::Shared(e) => code(e),
    }
}

impl From<image::Error> for Status {
    fn from(e: image::Error) -> Status {
        let code = code(&e);
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        Status::new(code, crate::report::error_line(&e))
    }
}

/// Where a container's init stopped, as a code: what the request asked for (a mount, the
/// working directory, the user, limits, a profile) is InvalidArgument; the host's part
/// (namespaces, cgroups, the helper itself) is Internal; the rest Unknown.
fn stage_code(stage: Option<crate::oci::Stage>) -> Code {
    use crate::oci::Stage as S;
    match stage {
        Some(
            S::Mounts
            | S::WorkingDir
            | S::User
            | S::Limits
            | S::Seccomp
            | S::AppArmor
            | S::NotFound,
        ) => Code::InvalidArgument,
        Some(S::Setup | S::Namespaces | S::Cgroup) => Code::Internal,
        Some(S::Start | S::Exec) | None => Code::Unknown,
    }
}

fn runtime_code(e: &runtime::Error) -> Code {
    use runtime::Error as E;
    match e {
        E::SandboxNotFound(_) | E::ContainerNotFound(_) => Code::NotFound,
        E::SandboxExists { .. } | E::ContainerExists { .. } => Code::AlreadyExists,
        E::Precondition(_) => Code::FailedPrecondition,
        E::Internal(_) => Code::Internal,
        E::CreateFailed { stage, .. } => stage_code(*stage),
        E::Timeout(_) => Code::DeadlineExceeded,
        E::Invalid { .. } => Code::InvalidArgument,
        E::Cgroup(cgroup::Error::Resource { .. } | cgroup::Error::Path(_)) => Code::InvalidArgument,
        E::Cgroup(cgroup::Error::Io { source, .. }) | E::Io { source, .. } => io_code(source),
        E::Network(n) => match n {
            cni::Error::NotReady(_)
            | cni::Error::PluginMissing { .. }
            | cni::Error::Unready { .. } => Code::FailedPrecondition,
            cni::Error::Plugin { .. } | cni::Error::Output { .. } => Code::Unknown,
            cni::Error::Timeout { .. } => Code::DeadlineExceeded,
            cni::Error::Spawn { .. } => Code::Internal,
        },
        E::Systemd(sd) => match sd {
            cgroup::systemd::Error::Slice { .. } => Code::InvalidArgument,
            cgroup::systemd::Error::Unreachable { .. } => Code::Unavailable,
            cgroup::systemd::Error::Timeout { .. } => Code::DeadlineExceeded,
            cgroup::systemd::Error::Call { .. } | cgroup::systemd::Error::Job { .. } => {
                Code::Internal
            }
        },
        E::Image(e) => code(e),
        E::Cdi(crate::cdi::Error::UnknownDevice { .. }) => Code::NotFound,
        E::Cdi(crate::cdi::Error::Dir { .. }) => Code::FailedPrecondition,
        E::Cdi(_) => Code::InvalidArgument,
        E::AppArmor(crate::apparmor::Error::NotLoaded(_)) => Code::InvalidArgument,
        E::AppArmor(crate::apparmor::Error::Load { .. }) => Code::FailedPrecondition,
        E::Seccomp(seccomp::Error::Compile(_)) => Code::Internal,
        E::Seccomp(_) => Code::InvalidArgument,
        E::Cgroup(cgroup::Error::NoHierarchy(_) | cgroup::Error::Survivors(..))
        | E::Namespaces(_)
        | E::Corrupt { .. } => Code::Internal,
    }
}

impl From<runtime::Error> for Status {
    fn from(e: runtime::Error) -> Status {
        let code = runtime_code(&e);
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        Status::new(code, crate::report::error_line(&e))
    }
}

impl From<super::streaming::Error> for Status {
    fn from(e: super::streaming::Error) -> Status {
        use super::streaming::Error as E;
        let code = match &e {
            E::TooMany => Code::ResourceExhausted,
            E::Token(_) | E::Bind { .. } | E::Tls(_) => Code::Internal,
        };
        Status::new(code, crate::report::error_line(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::Digest;

    fn unpack_failure(source: io::Error) -> Code {
        let digest = Digest::parse(&format!("sha256:{}", "0".repeat(64))).expect("digest");
        code(&image::Error::Unpack {
            digest,
            source: unpack::Error::Entry {
                entry: "big".into(),
                source,
            },
        })
    }

    #[test]
    fn a_full_disk_is_resource_exhausted_even_when_copied_across_threads() {
        let errno = io::Error::from_raw_os_error(libc::ENOSPC);
        let copied = io::Error::new(errno.kind(), errno.to_string());
        assert_eq!(copied.raw_os_error(), None);
        assert_eq!(unpack_failure(errno), Code::ResourceExhausted);
        assert_eq!(unpack_failure(copied), Code::ResourceExhausted);
        let quota = io::Error::from_raw_os_error(libc::EDQUOT);
        assert_eq!(unpack_failure(quota), Code::ResourceExhausted);
        let broken = io::Error::new(io::ErrorKind::InvalidData, "bad tar header");
        assert_eq!(unpack_failure(broken), Code::DataLoss);
    }

    #[test]
    fn where_an_init_failed_decides_its_code() {
        use crate::oci::Stage;
        let failed = |stage| {
            runtime_code(&runtime::Error::CreateFailed {
                stage,
                message: "x".into(),
            })
        };
        // The request's part.
        for stage in [
            Stage::Mounts,
            Stage::WorkingDir,
            Stage::User,
            Stage::Limits,
            Stage::Seccomp,
            Stage::AppArmor,
        ] {
            assert_eq!(failed(Some(stage)), Code::InvalidArgument, "{stage:?}");
        }
        // The host's.
        for stage in [Stage::Setup, Stage::Namespaces, Stage::Cgroup] {
            assert_eq!(failed(Some(stage)), Code::Internal, "{stage:?}");
        }
        assert_eq!(failed(None), Code::Unknown);
    }
}
