//! Weir's HTTP servers: the center API (`weir center`), which serves the
//! fleet's live health from Redis and its uptime from PostgreSQL, and the
//! object edge (`weir edge`), which serves S3 objects to CDN clients from a
//! memory tier and a disk tier.
#![warn(missing_docs)]

pub mod access;
pub mod center;
pub mod flight;
pub mod http;
pub mod keys;
pub mod meta;
pub mod objects;
pub mod origin;
pub mod ranges;
pub mod tiers;
pub mod upload;

pub use center::{CenterConfig, CenterState};
pub use objects::{Edge, EdgeConfig};
pub use origin::S3Config;
