//! Weir's HTTP servers. For now the center API (`weir center`), which serves
//! the fleet's live health from Redis and its uptime from PostgreSQL; the
//! object edge and the balancer join it here.
#![warn(missing_docs)]

pub mod center;
pub mod http;

pub use center::{CenterConfig, CenterState};
