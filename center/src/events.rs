//! The center's internal events: each writes its log line and its metric
//! together (`weir_core::telemetry`).

use weir_core::InternalEvent;

/// A dashboard client connected or went away.
pub struct DashboardClient {
    /// True on connect.
    pub connected: bool,
}

impl InternalEvent for DashboardClient {
    fn emit(self) {
        tracing::debug!(connected = self.connected, "dashboard client");
        let g = metrics::gauge!("weir_center_dashboard_clients");
        if self.connected {
            g.increment(1.0);
        } else {
            g.decrement(1.0);
        }
    }
}

/// The hub sent one delta to every connected client.
pub struct DashboardDeltaSent {
    /// Its size.
    pub bytes: usize,
}

impl InternalEvent for DashboardDeltaSent {
    fn emit(self) {
        metrics::counter!("weir_center_dashboard_deltas_total").increment(1);
        metrics::counter!("weir_center_dashboard_delta_bytes_total").increment(self.bytes as u64);
    }
}
