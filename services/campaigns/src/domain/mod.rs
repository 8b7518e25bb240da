//! The campaigns rules as plain functions: no database, no network.

pub(crate) mod assign;
pub(crate) mod chain;
pub(crate) mod coupon_text;
pub(crate) mod outcomes;
pub(crate) mod plan;
pub(crate) mod policy;
pub(crate) mod presets;
pub(crate) mod quiet;
pub(crate) mod stats;
