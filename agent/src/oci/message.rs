//! The one message type of every handshake between the daemon, a container's monitor and
//! its init, one JSON object per line:
//!
//! - init → monitor (the sync pipe): `ready` once set up, `warning`s, or a `failure`; the
//!   pipe closes at the exec (close-on-exec), which is how the monitor knows it happened.
//! - monitor → daemon (its stdout, until the container is created): `ready` with the
//!   init's pid, or the `failure` that ended the create.
//! - init → daemon (the start FIFO, once StartContainer opens it): `started`, then end of
//!   file at the exec, or a `failure` if the exec failed.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

/// Where a container's set-up failed: a typed reason, logged by the daemon with the
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// Reading the spec, the pipes, forking.
    Setup,
    Namespaces,
    Cgroup,
    Mounts,
    WorkingDir,
    /// Waiting for StartContainer.
    Start,
    /// rlimits, OOM score.
    Limits,
    /// User, groups, capabilities, no_new_privs.
    User,
    Seccomp,
    /// Changing to the AppArmor profile at exec.
    AppArmor,
    /// The entrypoint is not there (or not executable).
    NotFound,
    Exec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Message {
    /// Set up and waiting for StartContainer. From the monitor, with the init's pid (as
    /// the host sees it).
    Ready {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    /// Something not applied that does not fail the container (an OOM score the host's
    /// root may not lower).
    Warning {
        message: String,
    },
    Failure {
        stage: Stage,
        message: String,
    },
    /// The init was released by StartContainer and goes on to exec.
    Started,
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("not a message: {text:?}: {source}")]
    Malformed {
        text: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Writes one message as one line.
pub fn write_message(out: &mut impl Write, message: &Message) -> io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// One line as a message.
pub fn parse(line: &str) -> Result<Message, MessageError> {
    serde_json::from_str(line.trim_end()).map_err(|source| MessageError::Malformed {
        text: line.trim_end().chars().take(200).collect(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_one_per_line() {
        let all = [
            Message::Ready { pid: Some(4242) },
            Message::Ready { pid: None },
            Message::Warning {
                message: "oom_score_adj -998 not applied\nsecond line".into(),
            },
            Message::Failure {
                stage: Stage::NotFound,
                message: "exec nope: executable file not found in $PATH".into(),
            },
            Message::Started,
        ];
        let mut wire = Vec::new();
        for m in &all {
            write_message(&mut wire, m).unwrap();
        }
        // Newlines inside a message are escaped: one line each.
        assert_eq!(wire.iter().filter(|b| **b == b'\n').count(), all.len());
        let text = String::from_utf8(wire).unwrap();
        let back: Vec<Message> = text.lines().map(|l| parse(l).unwrap()).collect();
        assert_eq!(back, all);
    }

    #[test]
    fn the_wire_form_is_tagged_json() {
        let mut wire = Vec::new();
        write_message(&mut wire, &Message::Ready { pid: Some(7) }).unwrap();
        assert_eq!(wire, b"{\"type\":\"ready\",\"pid\":7}\n");
        wire.clear();
        write_message(
            &mut wire,
            &Message::Failure {
                stage: Stage::WorkingDir,
                message: "x".into(),
            },
        )
        .unwrap();
        assert_eq!(
            wire,
            b"{\"type\":\"failure\",\"stage\":\"workingDir\",\"message\":\"x\"}\n"
        );
    }

    #[test]
    fn garbage_and_half_lines_are_errors_not_messages() {
        for bad in [
            "ready 42",
            "{\"type\":\"ready\"",
            "{\"type\":\"nope\"}",
            "\u{0}",
        ] {
            assert!(
                matches!(parse(bad), Err(MessageError::Malformed { .. })),
                "{bad:?}"
            );
        }
        // A failure must say where.
        assert!(parse("{\"type\":\"failure\",\"message\":\"x\"}").is_err());
    }
}
