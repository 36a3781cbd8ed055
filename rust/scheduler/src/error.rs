//! The one error type of the planner core.
//!
//! Three variants, because callers (and the Python shim, which maps each one to its own exception class)
//! react differently to them: a shape error is a programming bug in the caller, a parameter error is a bad
//! configuration value, and a non-finite input means the model produced NaN/inf upstream and the plan must not be
//! built from it (the spec says NaN is rejected, never propagated).

/// Why a planner call was refused. The message names the argument and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    /// Buffer lengths or dimensions that disagree with each other or with the sequence geometry.
    #[error("invalid shape: {0}")]
    InvalidShape(String),
    /// A scalar parameter or an integer input outside its documented range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// NaN (or, where the spec says so, infinity) in a floating-point input.
    #[error("non-finite input: {0}")]
    NonFiniteInput(String),
}

/// Result alias used by every public function of the crate.
pub type Result<T> = std::result::Result<T, SchedulerError>;

pub(crate) fn shape(msg: impl Into<String>) -> SchedulerError {
    SchedulerError::InvalidShape(msg.into())
}

pub(crate) fn param(msg: impl Into<String>) -> SchedulerError {
    SchedulerError::InvalidParameter(msg.into())
}

pub(crate) fn non_finite(msg: impl Into<String>) -> SchedulerError {
    SchedulerError::NonFiniteInput(msg.into())
}
