//! `/api/v1/uptime` pages through the fleet against the real PostgreSQL:
//! a cursor visits every node exactly once, in order, and a node list is
//! bounded.

use chrono::{Duration, Utc};
use weir_center::UptimeQuery;
use weir_consumers::MIGRATOR;
use weir_testkit::{stack, TestDb};

#[tokio::test]
async fn a_cursor_visits_every_node_once_in_order() {
    let st = stack();
    st.require_postgres();
    let db = TestDb::create(&st).await;
    let pool = db.pool().await;
    MIGRATOR.run(&pool).await.expect("migrations");
    let now = Utc::now();
    for i in 0..7 {
        sqlx::query(
            "INSERT INTO servers (node_id, first_seen, last_seen, reports, last_seq, agent_id, \
             service, endpoint, cdn_type, interval_ms, last_event) \
             VALUES ($1, $2, $3, 10, 10, 'a', 'edge', 'http://x', 'edge', 1000, '{}'::jsonb)",
        )
        .bind(format!("node-{i}"))
        .bind(now - Duration::hours(1))
        .bind(now)
        .execute(&pool)
        .await
        .expect("insert");
    }
    let q = UptimeQuery { pool: &pool };
    let (from, to) = (now - Duration::hours(2), now);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page = q
            .page(from, to, None, after.as_deref(), 3)
            .await
            .expect("page");
        assert!(page.len() <= 3);
        seen.extend(page.iter().map(|n| n.node_id.clone()));
        if page.len() < 3 {
            break;
        }
        after = page.last().map(|n| n.node_id.clone());
    }
    let want: Vec<String> = (0..7).map(|i| format!("node-{i}")).collect();
    assert_eq!(seen, want);
    // A list of nodes selects just those.
    let some = vec![
        "node-5".to_string(),
        "node-1".to_string(),
        "nope".to_string(),
    ];
    let page = q
        .page(from, to, Some(&some), None, 100)
        .await
        .expect("page");
    let ids: Vec<&str> = page.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(ids, ["node-1", "node-5"]);
}
