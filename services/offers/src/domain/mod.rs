//! The offers domain, pure: coupon codes and templates.

pub(crate) mod code;
pub(crate) mod template;
