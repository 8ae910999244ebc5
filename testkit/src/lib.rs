//! Test support shared by every Weir crate's tests.
//!
//! Each test gets its own topics, Redis key prefix and PostgreSQL database,
//! so tests run in parallel against one local stack and leave nothing behind.
//! Services come from `deploy/local` (started by `./dev test`); a test that
//! needs one that is not answering fails with a message naming it. Fault
//! tests start *private* instances (`PrivateService`) so that stopping one
//! does not disturb the other tests.
//!
//! [`TestWorld`] gives a test all of these in one call, with the `WEIR_*`
//! environment a `weir` child process needs to use exactly them.
//!
//! One module per concern; every public name is re-exported here, so tests
//! import from the crate root (`weir_testkit::{stack, TestTopics, Proc}`).
#![warn(missing_docs)]

mod blocking;
mod bucket;
mod db;
mod dead_letters;
mod faults;
pub mod groups;
mod kafka;
mod logs;
mod names;
mod origin;
mod private;
mod process;
mod redis_prefix;
mod stack;
mod wait;
mod world;

pub use bucket::TestBucket;
pub use db::TestDb;
pub use dead_letters::{read_dead_letters, read_topic, DeadLetter, TopicRecord};
pub use faults::black_hole;
pub use kafka::TestTopics;
pub use logs::init_logs;
pub use names::{free_addr, free_port, unique};
pub use origin::{Origin, OriginState};
pub use private::PrivateService;
pub use process::{last_json, weir_env, Proc};
pub use redis_prefix::TestRedis;
pub use stack::{repo_root, require, s3_credentials, stack, Stack};
pub use wait::eventually;
pub use world::{TestWorld, WorldBuilder};
