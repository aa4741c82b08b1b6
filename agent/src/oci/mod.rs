//! The contract between the daemon and its shim processes: the container's runtime spec
//! (`config.json`), capability names, the exit record (`exit.json`), the one message type
//! every handshake speaks, and how a helper process is started.
//!
//! Both ends import this and nothing of each other: the daemon (`runtime/`) never reads
//! shim code, the shim never reads the daemon's.

pub mod caps;
mod exit;
mod message;
mod spawn;
pub mod spec;
mod tty;

pub use exit::Exit;
pub use message::{Message, Stage, parse, write_message};
pub use spawn::{Helper, attach_socket, helper_command, send_dir, write_dir};
pub use tty::{MAX_FRAME as MAX_TTY_FRAME, TtyInput};
