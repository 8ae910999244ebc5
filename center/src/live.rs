//! The live stream: one Redis subscription per center fans every health
//! change out to this center's SSE clients, and a local sweep announces
//! nodes whose reports stopped (their expiry passed without a report).

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weir_schemas::health::EXPIRY_INTERVALS;
use weir_schemas::{HealthEvent, LagSignal};

use crate::api::CenterState;

/// A change pushed on the live stream.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    /// A node reported.
    Health {
        /// The report.
        health: Box<HealthEvent>,
    },
    /// A node stopped reporting for longer than its expiry.
    Down {
        /// Node.
        node_id: String,
        /// Its last report.
        last_seen: DateTime<Utc>,
    },
}

pub(crate) async fn stream(
    State(state): State<CenterState>,
    keepalive: Duration,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = state.changes.subscribe();
    let stop = state.shutdown.clone().cancelled_owned();
    let events = tokio_stream::wrappers::BroadcastStream::new(rx)
        .take_until(stop)
        .map(|item| {
            let ev = match item {
                Ok(change) => {
                    let name = match &change {
                        Change::Health { .. } => "health",
                        Change::Down { .. } => "down",
                    };
                    SseEvent::default()
                        .event(name)
                        .json_data(&change)
                        .unwrap_or_else(|_| SseEvent::default().comment("unencodable change"))
                }
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    SseEvent::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}"))
                }
            };
            Ok(ev)
        });
    Sse::new(events).keep_alive(KeepAlive::new().interval(keepalive))
}

/// Subscribes to the health channel (reconnecting as needed), forwards each
/// change to this center's clients, and announces nodes whose reports stop.
pub(crate) async fn feed_changes(state: CenterState, shutdown: CancellationToken) {
    // Nodes believed up: node → (last report, expiry).
    let mut live: HashMap<String, (DateTime<Utc>, chrono::Duration)> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_millis(500));
    while !shutdown.is_cancelled() {
        let pubsub = tokio::time::timeout(
            Duration::from_secs(2),
            state.redis.client().get_async_pubsub(),
        )
        .await;
        let mut pubsub = match pubsub {
            Ok(Ok(p)) => p,
            other => {
                debug!(error = ?other.err(), "cannot subscribe to health changes yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let channels = [state.keys.health_channel(), state.keys.lag_channel()];
        if let Err(e) = pubsub.subscribe(&channels).await {
            debug!(error = %e, "subscribe failed");
            continue;
        }
        info!(channels = ?channels, "subscribed to health changes and lag signals");
        // Whatever changed while unsubscribed: the dashboard starts from
        // Redis's state, then follows the channel.
        reload_hub(&state).await;
        let lag_channel = state.keys.lag_channel();
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sweep.tick() => {
                    let now = Utc::now();
                    let gone: Vec<String> = live.iter()
                        .filter(|(_, (seen, expiry))| now - *seen > *expiry)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in gone {
                        if let Some((seen, _)) = live.remove(&id) {
                            let _ = state.changes.send(Change::Down { node_id: id, last_seen: seen });
                        }
                    }
                }
                msg = messages.next() => {
                    let Some(msg) = msg else { break };
                    let payload: &[u8] = msg.get_payload_bytes();
                    if msg.get_channel_name() == lag_channel {
                        match serde_json::from_slice::<LagSignal>(payload) {
                            Ok(s) => state.hub.apply_lag(s),
                            Err(e) => warn!(error = %e, "unreadable lag signal"),
                        }
                        continue;
                    }
                    match serde_json::from_slice::<HealthEvent>(payload) {
                        Ok(h) => {
                            let expiry = chrono::Duration::milliseconds(h.interval_ms as i64 * EXPIRY_INTERVALS);
                            live.insert(h.node_id.clone(), (h.ts, expiry));
                            state.hub.apply_health(&h);
                            let _ = state.changes.send(Change::Health { health: Box::new(h) });
                        }
                        Err(e) => warn!(error = %e, "unreadable change on the health channel"),
                    }
                }
            }
        }
        warn!("health channel subscription lost; reconnecting");
    }
}

/// Loads the fleet from Redis into the dashboard's hub (best effort: a
/// failure leaves the hub as it was; the channel keeps it current).
async fn reload_hub(state: &CenterState) {
    match crate::api::load_nodes(state).await {
        Ok(nodes) => {
            let mut live = Vec::new();
            let mut known = Vec::new();
            for n in nodes {
                match n.health {
                    Some(h) => live.push(h),
                    None => {
                        known.push((n.node_id, n.last_seen.map_or(0, |t| t.timestamp_millis())))
                    }
                }
            }
            state.hub.reload(live, known);
        }
        Err(e) => debug!(error = ?e, "cannot load the fleet for the dashboard"),
    }
}
