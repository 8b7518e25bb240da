//! Pure rules of delivery: contacts, SMS segments, rendering, signed tracking tokens, retry
//! delays. No I/O.

pub(crate) mod contact;
pub(crate) mod render;
pub(crate) mod retry;
pub(crate) mod sms;
pub(crate) mod token;
