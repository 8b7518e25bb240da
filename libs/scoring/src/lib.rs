//! Pure customer-base maths, no I/O: RFM scores today; segment rules, purchase cycles,
//! BG/NBD, Gamma-Gamma and CLV arrive with issue #4. The hot path of segmentation.

pub mod rfm;
