//! Winback in one process: every service on one port (the embedded default), and the
//! operator commands behind the `winback` binary.

pub mod admin;
pub mod campaign_report;
pub mod demo;
pub mod embedded;
pub mod import;
pub mod segments;
