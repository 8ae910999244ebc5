//! Admin tokens for Weir's center and edge (issue 12, S1): one mechanism both
//! servers share, so an operator's token works on every admin address and a
//! logout on one instance is honoured by all of them.
//!
//! - [`config`]: the `[auth]` section and where the key file lives by default;
//! - [`keys`]: the key file (current and previous key, each with its `kid`
//!   and its one algorithm), key generation and rotation, the JWKS document;
//! - [`token`]: issuing tokens and verifying them (strict claims, bounded
//!   length and leeway, the key's own algorithm only);
//! - [`revoke`]: the deny-list in Redis (`(iss, jti)` and a per-subject "not
//!   before");
//! - [`layer`]: the axum middleware and the `/api/v1/auth/*` routes.
//!
//! It is a crate of its own, not part of `weir-core`, because the signature
//! code (jsonwebtoken with RustCrypto: Ed25519, HMAC and, unavoidably, RSA
//! and the NIST curves) is needed only by the two HTTP servers and the CLI,
//! not by every producer and consumer that links `weir-core`.
#![warn(missing_docs)]

mod cache;
pub mod config;
mod events;
pub mod keys;
pub mod layer;
pub mod revoke;
pub mod token;

pub use config::AuthConfig;
pub use keys::{Alg, KeyFile, KeySet};
pub use layer::{auth_routes, require_admin, require_read, AdminAuth, Verified};
pub use revoke::Revocations;
pub use token::{Claims, Refusal, Scope, Verifier};
