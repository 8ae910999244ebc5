//! An aggregator of your own on Weir's runtime: requests per node, counted exactly
//! once in its own table; offsets, retries, rebalances and dead letters are the runtime's.
//! `eval "$(deploy/local/env)"; cargo run -p weir-consumers --example custom_aggregator`
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use weir_consumers::{migrations, Aggregator, GroupRuntime, GroupRuntimeBuilder};
use weir_consumers::{Applied, Record, RuntimeError};
use weir_core::{DatabaseConfig, KafkaConfig};
use weir_schemas::AccessEvent;

const UPSERT: &str = "INSERT INTO example_node_requests SELECT n, count(*) FROM UNNEST($1::text[]) n \
    GROUP BY n ON CONFLICT (node_id) DO UPDATE SET requests = example_node_requests.requests + EXCLUDED.requests";

/// Counts access events per node into `example_node_requests`.
pub struct NodeRequests;

impl Aggregator for NodeRequests {
    type Event = AccessEvent;
    const ROLE: &'static str = "example-node-requests";
    async fn apply(&self, tx: &mut PgConnection, batch: &[Record<AccessEvent>]) -> Applied {
        let nodes: Vec<&str> = batch.iter().map(|r| r.event.node_id.as_str()).collect();
        sqlx::query(UPSERT).bind(&nodes).execute(tx).await?;
        Ok(())
    }
}

/// Migrates (the runtime's offsets, then our table); a member on `topic`.
pub async fn member(
    pool: PgPool,
    topic: &str,
) -> Result<GroupRuntimeBuilder<NodeRequests>, RuntimeError> {
    migrations::runtime().run(&pool).await?;
    let own = migrations::shared(sqlx::migrate!("./examples/migrations"));
    own.run(&pool).await?;
    Ok(GroupRuntime::builder(NodeRequests, topic, pool))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let var = |k: &str| std::env::var(k).ok();
    let (mut kafka, mut db) = (KafkaConfig::default(), DatabaseConfig::default());
    kafka.brokers = var("WEIR_KAFKA_BROKERS").unwrap_or(kafka.brokers);
    db.url = var("WEIR_DATABASE_URL").unwrap_or(db.url);
    let topic = var("WEIR_TOPICS_ACCESS").unwrap_or("weir.access.v1".into());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { (tokio::signal::ctrl_c().await, stop.cancel()) });
    let runtime = member(db.pool()?, &topic).await?.kafka(kafka).build()?;
    let report = runtime.run(shutdown).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
