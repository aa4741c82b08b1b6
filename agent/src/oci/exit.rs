//! How a container ended, as its monitor records it in `exit.json`: a file rather than a
//! message, because the daemon may be down when the container exits.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// Why the entrypoint could not be executed, if it could not.
    pub exec_error: Option<String>,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
}
