//! Authentication as axum middleware, and the `/api/v1/auth/*` routes, for
//! the center and the edge alike.
//!
//! Decisions, in order: no `Authorization: Bearer` → 401; no key configured
//! → 503 (fail closed: admin endpoints are never open by accident); a token
//! that does not verify → 401; a valid token whose scope does not allow the
//! endpoint → 403; Redis cannot say whether it is revoked → 503 (fail
//! closed); revoked → 401. Read endpoints pass without a token unless
//! `auth.protect_reads` is set; with it, a valid read token passes even
//! while Redis cannot be asked about revocations (reads go on).

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use weir_core::{ApiError, InternalEvent};

use crate::cache::TokenCache;
use crate::events::{AuthDecided, TokenRevoked};
use crate::revoke::{Revocations, Standing};
use crate::token::{now_secs, Claims, Refusal, Scope, Verifier};

/// The claims of the request's verified token, for handlers behind the
/// layer.
#[derive(Debug, Clone)]
pub struct Verified(pub Claims);

enum Mode {
    /// Tokens verified and checked against the deny-list.
    Enforced {
        verifier: Arc<Verifier>,
        revocations: Revocations,
        cache: TokenCache,
    },
    /// No key could be loaded: admin endpoints answer 503.
    Unconfigured,
    /// `auth.disabled = true`: nothing is checked.
    Disabled,
}

/// How one server authenticates its admin (and, optionally, read)
/// requests.
pub struct AdminAuth {
    mode: Mode,
    protect_reads: bool,
    server: &'static str,
}

/// What an endpoint needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A read endpoint: open unless `auth.protect_reads`.
    Read,
    /// An admin endpoint.
    Admin,
    /// Any valid token (logout).
    AnyToken,
}

impl AdminAuth {
    /// Tokens verified by `verifier`, revocations in `revocations`.
    pub fn enforced(
        server: &'static str,
        verifier: Arc<Verifier>,
        revocations: Revocations,
    ) -> Arc<Self> {
        let protect_reads = verifier.config().protect_reads;
        let cache = TokenCache::new(verifier.config().revocation_cache);
        Arc::new(AdminAuth {
            mode: Mode::Enforced {
                verifier,
                revocations,
                cache,
            },
            protect_reads,
            server,
        })
    }

    /// No usable key: every admin endpoint answers 503 until the process
    /// is started with one; reads stay open.
    pub fn unconfigured(server: &'static str) -> Arc<Self> {
        Arc::new(AdminAuth {
            mode: Mode::Unconfigured,
            protect_reads: false,
            server,
        })
    }

    /// No authentication at all (`auth.disabled`, or an in-process test of
    /// something else). Logged as a warning at start.
    pub fn disabled(server: &'static str) -> Arc<Self> {
        tracing::warn!(
            server,
            "admin authentication is DISABLED (auth.disabled = true): anyone who reaches the admin address can purge, upload and fetch"
        );
        Arc::new(AdminAuth {
            mode: Mode::Disabled,
            protect_reads: false,
            server,
        })
    }

    fn decided(&self, outcome: &'static str) {
        AuthDecided {
            server: self.server,
            outcome,
        }
        .emit();
    }

    async fn authorize(&self, headers: &HeaderMap, need: Need) -> Result<Option<Claims>, Response> {
        let (verifier, revocations, cache) = match &self.mode {
            Mode::Disabled => return Ok(None),
            _ if need == Need::Read && !self.protect_reads => return Ok(None),
            Mode::Unconfigured => {
                self.decided("unconfigured");
                return Err(refuse(Refusal::Unconfigured));
            }
            Mode::Enforced {
                verifier,
                revocations,
                cache,
            } => (verifier, revocations, cache),
        };
        let token = match bearer(headers) {
            Some(t) => t,
            None => {
                self.decided(Refusal::Missing.label());
                return Err(refuse(Refusal::Missing));
            }
        };
        let now = now_secs();
        // The key set before verifying: a token is cached only against the
        // set it was verified with, so a rotation that drops its key (or a
        // reload during the check) sends it through the signature again.
        let keys = verifier.reload();
        let (claims, fresh) = match cache.get(token, &keys) {
            Some(hit) => match verifier.check_times(&hit.claims, now) {
                Ok(()) => (hit.claims, hit.fresh),
                Err(r) => {
                    self.decided(r.label());
                    return Err(refuse(r));
                }
            },
            None => match verifier.verify(token, now) {
                Ok(c) => (c, false),
                Err(r) => {
                    self.decided(r.label());
                    return Err(refuse(r));
                }
            },
        };
        if need == Need::Admin && !claims.scope.allows(Scope::Admin) {
            self.decided(Refusal::Scope.label());
            return Err(refuse(Refusal::Scope));
        }
        if fresh {
            self.decided("ok");
            return Ok(Some(claims));
        }
        let epoch = cache.epoch();
        let asked = std::time::Instant::now();
        let standing = revocations.standing(&claims).await;
        let cacheable = Arc::ptr_eq(&keys, &verifier.keys());
        match standing {
            Ok(Standing::Good) => {
                if cacheable {
                    cache.put(token, &claims, keys, Some(asked), epoch, now);
                }
                self.decided("ok");
                Ok(Some(claims))
            }
            Ok(Standing::Revoked) => {
                self.decided(Refusal::Revoked.label());
                Err(refuse(Refusal::Revoked))
            }
            // Reads go on while Redis is down (the token's signature and
            // times were checked; only a logout could be missed); admin
            // requests fail closed.
            Err(e) if need == Need::Read => {
                if cacheable {
                    cache.put(token, &claims, keys, None, epoch, now);
                }
                tracing::warn!(server = self.server, error = %e, "cannot check revocations; letting a read through");
                self.decided("ok_unchecked");
                Ok(Some(claims))
            }
            Err(e) => {
                if cacheable {
                    cache.put(token, &claims, keys, None, epoch, now);
                }
                self.decided("redis_down");
                Err(ApiError::from(e).into_response())
            }
        }
    }
}

/// The token of `Authorization: Bearer <token>`, if that is what is sent.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The answer to a refusal: 401 with `WWW-Authenticate`, 403 for scope, 503
/// when no key is configured.
fn refuse(r: Refusal) -> Response {
    let (status, code) = match &r {
        Refusal::Scope => (StatusCode::FORBIDDEN, "insufficient_scope"),
        Refusal::Unconfigured => (StatusCode::SERVICE_UNAVAILABLE, "auth_unconfigured"),
        Refusal::Missing => (StatusCode::UNAUTHORIZED, "unauthorized"),
        _ => (StatusCode::UNAUTHORIZED, "invalid_token"),
    };
    let mut resp = ApiError::new(status, code, r.to_string()).into_response();
    if status == StatusCode::UNAUTHORIZED {
        let v = if r == Refusal::Missing {
            "Bearer realm=\"weir\"".to_string()
        } else {
            format!("Bearer realm=\"weir\", error=\"invalid_token\", error_description=\"{r}\"")
        };
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    resp
}

async fn guard(auth: Arc<AdminAuth>, need: Need, mut req: Request, next: Next) -> Response {
    match auth.authorize(req.headers(), need).await {
        Ok(Some(claims)) => {
            req.extensions_mut().insert(Verified(claims));
            next.run(req).await
        }
        Ok(None) => next.run(req).await,
        Err(resp) => resp,
    }
}

/// Middleware for admin endpoints: an admin-scope token that is not
/// revoked (`axum::middleware::from_fn_with_state(auth, require_admin)`).
pub async fn require_admin(
    State(auth): State<Arc<AdminAuth>>,
    req: Request,
    next: Next,
) -> Response {
    guard(auth, Need::Admin, req, next).await
}

/// Middleware for read-only endpoints: open, or any valid token when
/// `auth.protect_reads` is set.
pub async fn require_read(
    State(auth): State<Arc<AdminAuth>>,
    req: Request,
    next: Next,
) -> Response {
    guard(auth, Need::Read, req, next).await
}

async fn require_token(State(auth): State<Arc<AdminAuth>>, req: Request, next: Next) -> Response {
    guard(auth, Need::AnyToken, req, next).await
}

#[derive(Deserialize)]
struct LogoutQuery {
    /// Revoke every token of the subject, not only this one.
    #[serde(default)]
    all: bool,
}

/// `POST /api/v1/auth/logout[?all=true]`: revokes the presented token (or,
/// with `all`, every token of its subject issued until now).
async fn logout(
    State(auth): State<Arc<AdminAuth>>,
    claims: Option<Extension<Verified>>,
    Query(q): Query<LogoutQuery>,
) -> Result<Response, ApiError> {
    let (
        Mode::Enforced {
            revocations, cache, ..
        },
        Some(Extension(Verified(c))),
    ) = (&auth.mode, claims)
    else {
        return Err(ApiError::bad_request(
            "authentication is disabled here: there is no token to revoke",
        ));
    };
    let now = now_secs();
    // Forgotten here before Redis is told, and checks under way are not
    // stored: this instance refuses the token from now on.
    cache.forget(&c.jti, &c.sub, q.all);
    let ttl = revocations.revoke(&c, now).await?;
    if q.all {
        revocations.revoke_subject(&c.sub, now).await?;
    }
    // And again once Redis has it: a check that began between the two saw
    // the token still good, and must not keep it.
    cache.forget(&c.jti, &c.sub, q.all);
    TokenRevoked {
        server: auth.server,
        subject: &c.sub,
        jti: &c.jti,
        everywhere: q.all,
    }
    .emit();
    Ok(Json(json!({
        "revoked": c.jti,
        "subject": c.sub,
        "all": q.all,
        "denied_for_seconds": ttl,
    }))
    .into_response())
}

/// `GET /api/v1/auth/jwks`: the public keys (Ed25519 only).
async fn jwks(State(auth): State<Arc<AdminAuth>>) -> Response {
    match &auth.mode {
        Mode::Enforced { verifier, .. } => Json(verifier.keys().jwks()).into_response(),
        _ => Json(json!({ "keys": [] })).into_response(),
    }
}

/// `POST /api/v1/auth/logout` (any valid token) and `GET
/// /api/v1/auth/jwks` (open: public keys), for merging into a server's
/// router of any state.
pub fn auth_routes<S: Clone + Send + Sync + 'static>(auth: Arc<AdminAuth>) -> Router<S> {
    Router::new()
        .route(
            "/api/v1/auth/logout",
            post(logout).layer(axum::middleware::from_fn_with_state(
                auth.clone(),
                require_token,
            )),
        )
        .route("/api/v1/auth/jwks", get(jwks))
        .with_state(auth)
}
