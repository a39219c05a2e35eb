//! The crate's one error type: every shape or argument check that can fail reports here.

use crate::isa::Isa;

/// Why a kernel refused its arguments; the message says what was wrong and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A buffer's length does not match the shape the call implies.
    #[error("{what} has {actual} elements, expected {expected}")]
    Length {
        /// Which argument is wrong (for example "x" or "bias").
        what: &'static str,
        /// The length the shape implies.
        expected: usize,
        /// The length that was passed.
        actual: usize,
    },
    /// A shape product does not fit in `usize`.
    #[error("shape of {what} overflows usize")]
    Overflow {
        /// Which argument's shape overflowed.
        what: &'static str,
    },
    /// An argument is outside the range the kernel accepts.
    #[error("invalid argument {what}: {reason}")]
    Invalid {
        /// Which argument is wrong.
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// A quantized dimension or column range does not fall on block boundaries.
    #[error("{what} is {value}, not a multiple of the block size {block}")]
    Misaligned {
        /// Which dimension or range end is misaligned.
        what: &'static str,
        /// The value that was passed.
        value: usize,
        /// The block size it must be a multiple of.
        block: usize,
    },
    /// The pool was asked for an instruction set this CPU does not have.
    #[error("instruction set {0:?} is not available on this CPU")]
    IsaUnavailable(Isa),
    /// The operating system refused to start a worker thread.
    #[error("could not start a worker thread: {0}")]
    ThreadSpawn(String),
}

/// Fails with [`KernelError::Length`] unless `actual == expected`.
pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            actual,
        })
    }
}

/// `a * b`, or [`KernelError::Overflow`] naming `what`.
pub(crate) fn mul(what: &'static str, a: usize, b: usize) -> Result<usize, KernelError> {
    a.checked_mul(b).ok_or(KernelError::Overflow { what })
}
