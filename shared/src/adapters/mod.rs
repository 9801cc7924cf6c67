//! The only code that performs I/O: one adapter per port.

pub mod account;
pub mod aws;
pub mod cache;
pub mod dead_letter;
pub mod heartbeats;
pub mod iam_auth;
pub mod secret;
pub mod sns;
