//! The object edge (`weir edge`): serves S3 objects to CDN clients from a
//! memory tier and a disk tier, with ranges, conditional requests, single
//! flight per object and slice, metadata shared through Redis, and one access
//! event per request.
#![warn(missing_docs)]

pub mod access;
pub mod flight;
pub mod keys;
pub mod meta;
pub mod objects;
pub mod origin;
pub mod ranges;
pub mod tiers;
pub mod upload;

pub use objects::{Edge, EdgeConfig};
pub use origin::S3Config;
