//! The only code that performs I/O: one adapter per port.

pub mod account;
pub mod alerts;
pub mod aws;
pub mod cache;
pub mod dead_letter;
pub mod errors;
pub mod heartbeats;
pub mod iam_auth;
pub mod object_store;
pub mod secret;
pub mod sns;
pub mod ticks;
