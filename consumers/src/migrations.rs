//! Schema migrations, one set per owner of tables: the runtime
//! (`consumer_offsets`), the health aggregator (`servers`, `node_sessions`,
//! and `server_inventory`, the operators' side that it reads per batch)
//! and the access aggregator (`access_minute`).
//!
//! Several migrators share one database and one `_sqlx_migrations` table, so
//! each ignores the versions applied by the others ([`shared`]); each set has
//! its own versions. An aggregator written outside this crate runs
//! [`runtime`] and its own migrator, and needs nothing from health or access.
//!
//! Migration files already released are never edited (sqlx records each
//! version's checksum): the health migration still creates
//! `consumer_offsets` too, which is harmless (`IF NOT EXISTS`, same shape).

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::PgPool;

/// Makes `m` tolerate versions in `_sqlx_migrations` that other migrators
/// applied to the same database.
pub fn shared(mut m: Migrator) -> Migrator {
    m.set_ignore_missing(true);
    m
}

/// The runtime's own table, `consumer_offsets`: every aggregator needs it.
pub fn runtime() -> Migrator {
    shared(sqlx::migrate!("./migrations/runtime"))
}

/// The health aggregator's tables.
pub fn health() -> Migrator {
    shared(sqlx::migrate!("./migrations/health"))
}

/// The access aggregator's tables.
pub fn access() -> Migrator {
    shared(sqlx::migrate!("./migrations/access"))
}

/// Every migration of this crate, runtime first.
pub async fn run_all(pool: &PgPool) -> Result<(), MigrateError> {
    for m in [runtime(), health(), access()] {
        m.run(pool).await?;
    }
    Ok(())
}

/// Every migration of this crate, as one value (`MIGRATOR.run(&pool)`), for
/// callers written before migrations were split per owner.
#[derive(Debug, Clone, Copy)]
pub struct AllMigrations;

impl AllMigrations {
    /// Runs [`run_all`].
    pub async fn run(&self, pool: &PgPool) -> Result<(), MigrateError> {
        run_all(pool).await
    }
}
