//! CRI messages to and from the runtime's domain types, in one place: the RPC handlers
//! call these and hold no conversions of their own.

pub mod container;
pub mod image;
pub mod pod;
