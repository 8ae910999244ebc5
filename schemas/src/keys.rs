//! The layout of Weir's Redis keys and channels.
//!
//! Several processes meet in Redis (the health group writes a node's state,
//! the center and the balancer read it; the lag exporter writes the signal,
//! producers read it), so the names are a contract like the topic names and
//! are defined once, here. Every name starts with a configurable prefix so
//! that deployments and tests can share one Redis.

/// Names of Weir's Redis keys and channels, in one place.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    /// The names under `prefix` (`weir` by default; tests and side-by-side
    /// deployments use their own).
    pub fn new(prefix: &str) -> Self {
        RedisKeys {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Latest health of one node; expires when the node stops reporting.
    pub fn node(&self, node_id: &str) -> String {
        format!("{}:node:{node_id}", self.prefix)
    }

    /// Sorted set of every node ever seen, scored by last report (unix ms).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Sorted set of object keys by requests in one minute (unix seconds of
    /// the minute's start).
    pub fn top_objects(&self, minute: i64) -> String {
        format!("{}:top:{minute}", self.prefix)
    }

    /// Hash of second (unix) → requests served by a node.
    pub fn node_rps(&self, node_id: &str) -> String {
        format!("{}:rps:{node_id}", self.prefix)
    }

    /// Pub/sub channel carrying every health change as JSON.
    pub fn health_channel(&self) -> String {
        format!("{}:health:changes", self.prefix)
    }

    /// Latest lag signal of one consumer group (JSON, expiring).
    pub fn lag(&self, group: &str) -> String {
        format!("{}:lag:{group}", self.prefix)
    }

    /// Log-end offsets of the deployment's topics ([`crate::TopicEnds`],
    /// JSON, expiring), written by the lag exporter.
    pub fn topic_ends(&self) -> String {
        format!("{}:topics", self.prefix)
    }

    /// Hash of producer → its limiter's state ([`crate::LimiterState`]).
    pub fn limiters(&self) -> String {
        format!("{}:limiters", self.prefix)
    }

    /// Pub/sub channel carrying every group's lag signal each interval.
    pub fn lag_channel(&self) -> String {
        format!("{}:lag:signals", self.prefix)
    }

    /// Set of decommissioned server ids (issue 12, M1), written by the
    /// center when a server is decommissioned (PostgreSQL's
    /// `server_inventory` is the truth; the center copies it here at
    /// start). The health group's Redis script checks it atomically with its
    /// write, so a decommissioned node never re-enters the fleet view that
    /// the center, the dashboard and the balancer read.
    pub fn decommissioned(&self) -> String {
        format!("{}:decommissioned", self.prefix)
    }

    /// Marks one revoked admin token (`weir-auth`): its issuer and `jti`,
    /// expiring when the token could no longer be accepted anyway.
    pub fn auth_revoked(&self, issuer: &str, jti: &str) -> String {
        format!("{}:auth:revoked:{issuer}:{jti}", self.prefix)
    }

    /// A subject's "not before" (unix seconds): its tokens issued at or
    /// before it are refused (log out everywhere).
    pub fn auth_not_before(&self, subject: &str) -> String {
        format!("{}:auth:nbf:{subject}", self.prefix)
    }
}
