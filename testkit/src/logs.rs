//! The code under test's own logs, shown only when asked.

/// Shows the code under test's logs when `WEIR_TEST_LOGS=1` (quiet otherwise,
/// so parallel tests stay readable).
pub fn init_logs() {
    if std::env::var("WEIR_TEST_LOGS").is_ok_and(|v| v == "1") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
    }
}
