//! The object edge (`weir edge`): serves S3 objects to CDN clients from a
//! memory tier and a disk tier, with ranges, conditional requests, single
//! flight per object and slice, metadata shared through Redis, and one access
//! event per request.
//!
//! Where to find what: [`config`] (settings and their checks), [`edge`] (the
//! shared state; purge), [`lookup`] (memory → disk → origin), [`fill`]
//! (origin fills and slices), [`plan`] (request + metadata → reply plan),
//! [`reply`] (building replies), [`server`] (routers and listeners),
//! [`upload`] (admin writes), and the pieces they use: [`tiers`],
//! [`flight`], [`meta`], [`origin`], [`ranges`], [`keys`], [`access`].
#![warn(missing_docs)]

pub mod access;
pub mod config;
pub mod destination;
pub mod edge;
pub mod events;
pub mod fill;
pub mod flight;
pub mod generation;
pub mod keys;
pub mod lookup;
pub mod meta;
pub mod origin;
pub mod plan;
pub mod ranges;
pub mod reply;
pub mod server;
pub mod tiers;
pub mod upload;

pub use config::EdgeConfig;
pub use edge::Edge;
pub use origin::S3Config;
pub use server::{admin_router, router, serve};
