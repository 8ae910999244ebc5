//! Internal events of authentication: each writes its log line and its
//! metric together.

use weir_core::{CounterCache, InternalEvent};

static DECISIONS: CounterCache<2> =
    CounterCache::new("weir_auth_decisions_total", ["server", "outcome"]);

/// One request's authentication decision (`ok`, `open`, or why it was
/// refused). The token itself is never logged.
pub(crate) struct AuthDecided {
    pub server: &'static str,
    pub outcome: &'static str,
}

impl InternalEvent for AuthDecided {
    fn emit(self) {
        if self.outcome != "ok" && self.outcome != "open" {
            tracing::debug!(
                server = self.server,
                outcome = self.outcome,
                "admin request refused"
            );
        }
        DECISIONS.get([self.server, self.outcome]).increment(1);
    }
}

/// A token revoked through `POST /api/v1/auth/logout`.
pub(crate) struct TokenRevoked<'a> {
    pub server: &'static str,
    pub subject: &'a str,
    pub jti: &'a str,
    pub everywhere: bool,
}

impl InternalEvent for TokenRevoked<'_> {
    fn emit(self) {
        tracing::info!(
            server = self.server,
            subject = self.subject,
            jti = self.jti,
            everywhere = self.everywhere,
            "token revoked"
        );
        metrics::counter!("weir_auth_revocations_total", "server" => self.server).increment(1);
    }
}
