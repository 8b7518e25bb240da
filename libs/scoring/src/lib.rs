//! Pure customer-base maths, no I/O: RFM scores, segment rule tables, purchase cycles and
//! lifecycle states, BG/NBD and MBG/NBD, Gamma-Gamma, CLV, and simulation from the models.
//! The hot path of segmentation; `score::score_tenant` scores a whole tenant.

pub mod gamma_gamma;
pub mod lifecycle;
pub mod nbd;
pub mod optimize;
pub mod rfm;
pub mod score;
pub mod segments;
pub mod simulate;
pub mod special;

/// Why a model could not be fitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// An observation is impossible.
    #[error("observation {index}: {reason}")]
    InvalidObservation {
        /// Its position in the input.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Too little data to fit.
    #[error("not enough data: {0}")]
    NotEnoughData(&'static str),
}
