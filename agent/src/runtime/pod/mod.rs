//! The runtime's pod operations, one a file: the records (store), run, stop, remove, the
//! pod's networks and its resource updates. The pod's types are in `runtime::sandbox`.

mod network;
mod remove;
mod run;
mod stop;
mod store;
mod update;

pub(in crate::runtime) use network::read_attachments;
