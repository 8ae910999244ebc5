//! Migrations per owner share one database: a database migrated before the
//! split (health + access versions, `consumer_offsets` created by health)
//! upgrades in place, and migrators of other owners (the example's) coexist.

use weir_consumers::migrations;
use weir_testkit::{stack, TestDb};

async fn tables(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables")
}

#[tokio::test]
async fn a_database_migrated_before_the_split_upgrades_and_owners_coexist() {
    let s = stack();
    let db = TestDb::create(&s).await;
    let pool = db.pool().await;
    // The pre-split layout: one migrator with exactly these two versions.
    let mut old = migrations::health();
    old.migrations = old
        .migrations
        .iter()
        .chain(migrations::access().iter())
        // Only the two versions of that time: the inventory and the access index drop came later.
        .filter(|m| m.version < 20261202000000)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    old.set_ignore_missing(false);
    old.run(&pool).await.expect("old layout");
    sqlx::query("INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) VALUES ('g', 't', 0, 42)")
        .execute(&pool)
        .await
        .expect("an offset stored before the upgrade");

    migrations::run_all(&pool).await.expect("upgrade in place");
    let example = migrations::shared(sqlx::migrate!("./examples/migrations"));
    example.run(&pool).await.expect("another owner's migrator");
    migrations::run_all(&pool)
        .await
        .expect("again, with foreign versions present");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(
        applied, 6,
        "health (2), access (2), runtime, example: each once"
    );
    let kept: i64 = sqlx::query_scalar("SELECT next_offset FROM consumer_offsets")
        .fetch_one(&pool)
        .await
        .expect("offset");
    assert_eq!(kept, 42, "stored offsets survive the upgrade");
    assert_eq!(
        tables(&pool).await,
        [
            "access_minute",
            "consumer_offsets",
            "example_node_requests",
            "node_sessions",
            "server_inventory",
            "servers"
        ]
    );

    // A fresh database for an aggregator of its own: the runtime's table
    // alone, nothing of health's or access's.
    let fresh = TestDb::create(&s).await;
    let fresh_pool = fresh.pool().await;
    migrations::runtime()
        .run(&fresh_pool)
        .await
        .expect("runtime only");
    assert_eq!(tables(&fresh_pool).await, ["consumer_offsets"]);
}
