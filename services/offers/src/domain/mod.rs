//! The offers domain, pure: coupon codes (issue #5 builds templates, ladders, issue and
//! redemption on top; the service's RPCs answer UNIMPLEMENTED until then).

// Used by coupon issue and redemption, which are not built yet; tested here already.
#[allow(dead_code)]
pub(crate) mod code;
