//! Container logs: the CRI log format, the logging binary the shim runs,
//! and reading logs back (tail, follow, previous).

pub mod cri;
pub mod read;
pub mod shim_logger;
