//! The rules of the profiles service, pure: what a valid customer, order or event is, and
//! how a customer's facts follow from what they did.

pub(crate) mod facts;
pub(crate) mod validate;
