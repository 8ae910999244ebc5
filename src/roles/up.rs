//! `weir up`: every role in one process, for the local stack, with a demo
//! so that the dashboard moves within seconds.

use std::net::SocketAddr;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::agent::agent;
use super::center::{bind_center, center};
use super::consume::{consume_access, consume_health};
use super::{migrate, pool};
use crate::config::Config;

/// The configuration of one role inside `weir up`: with `consumer.group`
/// set (one name for a whole deployment), each group gets its role as a
/// suffix, since the health and access groups must not share a name.
fn for_role(cfg: &Config, role: &str) -> Config {
    let mut c = cfg.clone();
    if !cfg.consumer.group.is_empty() {
        c.consumer.group = format!("{}-{role}", cfg.consumer.group);
    }
    c
}

/// `weir up`: topics and migrations, then the agent, the health group
/// (`up.consumers` members), the access group, the center, the edge with
/// its limiter, `weir lag export` for both groups and, unless `--no-demo`,
/// the demo ([`super::demo`]).
pub async fn up(cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    super::topics::ensure(&cfg.kafka, &cfg.topics)
        .await
        .context("ensuring topics (is Kafka running? try deploy/local/up)")?;
    let pool = pool(cfg)?;
    migrate(&pool, &shutdown).await?;
    let admin_key = ensure_admin_key(cfg);
    let listener = bind_center(cfg).await?;
    let addr = listener.local_addr()?;
    let (edge_client, edge_admin) = super::edge::bind(cfg).await?;
    let edge_addr = edge_client.local_addr()?;
    let health = for_role(cfg, "health");
    let mut access = for_role(cfg, "access");
    // The closed loop is part of the tour: the edge's access events are
    // paced by the access group's lag.
    access.limiter.enabled = true;
    let groups = vec![
        health.consumer.group_for("health"),
        access.consumer.group_for("access"),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (c, s) = (cfg.clone(), shutdown.clone());
        tasks.spawn(async move { center(&c, listener, s).await.map(|_| "center".to_string()) });
    }
    {
        // The mailer is cheap (idle until a report is requested); its
        // relay is mail.smtp_url (`deploy/local/up` starts one).
        let (c, s) = (for_role(cfg, "mail"), shutdown.clone());
        tasks.spawn(async move { super::report::mail(&c, s).await.map(|_| "mail".to_string()) });
    }
    {
        // The edge's limiter follows the access group's lag.
        let (c, s) = (access.clone(), shutdown.clone());
        tasks.spawn(async move {
            super::edge::run(&c, edge_client, edge_admin, None, s)
                .await
                .map(|_| "edge".to_string())
        });
    }
    for i in 0..cfg.up.consumers {
        let (c, s) = (health.clone(), shutdown.clone());
        tasks.spawn(async move {
            consume_health(&c, s).await.map(|r| {
                format!(
                    "health consumer {i}: applied {} records in {} batches",
                    r.applied, r.batches
                )
            })
        });
    }
    {
        let (c, s) = (access.clone(), shutdown.clone());
        tasks.spawn(async move {
            consume_access(&c, s).await.map(|r| {
                format!(
                    "access consumer: applied {} records in {} batches",
                    r.applied, r.batches
                )
            })
        });
    }
    {
        let (c, s, g) = (cfg.clone(), shutdown.clone(), groups.clone());
        tasks.spawn(async move {
            super::lag::export(&c, &g, s)
                .await
                .map(|_| "lag exporter".to_string())
        });
    }
    {
        let (c, s) = (cfg.clone(), shutdown.clone());
        tasks.spawn(async move {
            agent(&c, s).await.map(|r| {
                format!(
                    "agent {}: {} reports delivered of {}",
                    r.node_id, r.delivered, r.queued
                )
            })
        });
    }
    let mut demo_producer = None;
    if cfg.up.demo {
        let producer = super::producer(cfg, "demo")?;
        demo_producer = Some(producer.clone());
        let (c, s) = (cfg.clone(), shutdown.clone());
        tasks.spawn(async move { super::demo::run(c, edge_addr, producer, s).await });
    }
    print_banner(cfg, addr, edge_addr, &groups, &admin_key);
    let mut failed = false;
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(Ok(done)) => info!("{done}"),
            Ok(Err(e)) => {
                error!(
                    error = format!("{e:#}"),
                    "a role failed; stopping the others"
                );
                failed = true;
                shutdown.cancel();
            }
            Err(e) => {
                error!(error = %e, "a role panicked; stopping the others");
                failed = true;
                shutdown.cancel();
            }
        }
    }
    if let Some(p) = demo_producer {
        let _ = tokio::task::spawn_blocking(move || p.flush(super::PRODUCER_DRAIN)).await;
    }
    if failed {
        anyhow::bail!("weir up stopped because a role failed (see the log above)");
    }
    Ok(())
}

/// The local stack's admin endpoints need a signing key; `weir up` makes
/// one (Ed25519) the first time, as `weir auth keygen` would, so that
/// `weir auth token` works at once. A key already there is kept. Returns
/// what the banner says about admin access.
fn ensure_admin_key(cfg: &Config) -> String {
    if cfg.auth.disabled {
        return "admin endpoints open (auth.disabled)".to_string();
    }
    let made = (|| -> anyhow::Result<(std::path::PathBuf, bool)> {
        let path = cfg.auth.resolved_key_file()?;
        let mut file = weir_auth::KeyFile::read(&path)?;
        if file.keys.is_empty() {
            file.rotate(weir_auth::Alg::EdDSA, &chrono::Utc::now().to_rfc3339())?;
            file.write(&path)?;
            return Ok((path, true));
        }
        Ok((path, false))
    })();
    match made {
        Ok((path, fresh)) => format!(
            "admin token: TOKEN=$(weir auth token --subject $USER)   (key {}{})",
            path.display(),
            if fresh { ", made now" } else { "" }
        ),
        Err(e) => {
            error!(error = %format!("{e:#}"), "no admin signing key; admin endpoints answer 503");
            format!("admin endpoints answer 503: no signing key ({e:#})")
        }
    }
}

fn print_banner(
    cfg: &Config,
    addr: SocketAddr,
    edge: SocketAddr,
    groups: &[String],
    admin_key: &str,
) {
    let node = cfg.agent.resolved_node_id();
    let demo = if cfg.up.demo {
        format!(
            "demo: {} objects in s3://{}/{}, {} requests/s through the edge, {} simulated nodes (--no-demo turns it off)",
            cfg.up.demo_objects,
            cfg.s3.bucket,
            super::demo::PREFIX,
            cfg.up.load_rate,
            cfg.up.demo_nodes
        )
    } else {
        "no demo (--no-demo)".to_string()
    };
    println!(
        "\nweir up: agent ({node}) → Kafka {brokers} → health ×{n} and access groups → Redis + PostgreSQL → center\n\
         \n  Dashboard    http://{addr}/\n\
         \n  API          http://{addr}/api/v1/nodes   (also /api/v1/fleet, /api/v1/uptime, /api/v1/stream)\n\
         \n  Edge         http://{edge}/<key>   (S3 {s3}, bucket {bucket}; upload and purge on http://{admin}/)\n\
         \n  Admin        {admin_key}\n\
         \n  Lag          weir lag describe {hg}   ·   weir lag describe {ag}\n\
         \n  Metrics      http://{metrics}/metrics\n\
         \n  {demo}\n\
         \n  Ctrl-C stops every role cleanly.\n",
        brokers = cfg.kafka.brokers,
        n = cfg.up.consumers,
        s3 = cfg.s3.endpoint,
        bucket = cfg.s3.bucket,
        admin = cfg.edge.admin_addr,
        hg = groups[0],
        ag = groups[1],
        metrics = if cfg.metrics.addr.is_empty() { "(disabled)" } else { cfg.metrics.addr.as_str() },
    );
}
