//! The ground floor: small helpers every layer may use. Nothing here imports another
//! module of the crate.

pub mod backoff;
pub mod clock;
pub mod pagination;
pub mod percentile;
pub mod tasks;
pub mod text_enum;
