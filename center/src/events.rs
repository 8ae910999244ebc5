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

/// An operator wrote to the inventory (issue 12, M1).
pub struct ServerChanged<'a> {
    /// `created`, `patched` or `decommissioned`.
    pub action: &'static str,
    /// The server.
    pub id: &'a str,
    /// Its version after the write.
    pub version: i64,
}

impl InternalEvent for ServerChanged<'_> {
    fn emit(self) {
        tracing::info!(
            action = self.action,
            server = self.id,
            version = self.version,
            "inventory changed"
        );
        metrics::counter!("weir_center_inventory_writes_total", "action" => self.action)
            .increment(1);
    }
}

/// Help text of the center's metrics.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "weir_center_dashboard_clients",
        "Dashboard clients connected to this center's stream"
    );
    metrics::describe_counter!(
        "weir_center_dashboard_deltas_total",
        "Merged deltas the dashboard hub sent (once for every client)"
    );
    metrics::describe_counter!(
        "weir_center_dashboard_delta_bytes_total",
        "Bytes of the deltas the dashboard hub sent, counted once per delta"
    );
    metrics::describe_counter!(
        "weir_center_inventory_writes_total",
        "Inventory writes by operators, by action (created, patched, decommissioned)"
    );
}
