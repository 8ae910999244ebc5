//! Rebalance notifications. librdkafka runs these callbacks inside `recv`
//! (rebalance callbacks only run while the main queue is polled); they record
//! revoked partitions for the loop to act on right after.

use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;
use tracing::{info, warn};

/// The consumer's context: revoked partitions, collected in the callback.
#[derive(Default)]
pub(crate) struct GroupContext {
    revoked: Mutex<Vec<i32>>,
}

impl GroupContext {
    /// The partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<i32> {
        match self.revoked.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(_) => Vec::new(),
        }
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            info!(partitions = ?parts, "partitions revoked");
            if let Ok(mut r) = self.revoked.lock() {
                r.extend(parts);
            }
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(partitions = ?parts, "partitions assigned");
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}
