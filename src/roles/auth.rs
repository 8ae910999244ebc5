//! `weir auth keygen` and `weir auth token`, and the admin authentication
//! the center and the edge are wired with.

use std::sync::Arc;

use anyhow::Context;
use weir_auth::token::now_secs;
use weir_auth::{AdminAuth, Alg, KeyFile, Revocations, Scope, Verifier};
use weir_core::RedisHandle;

use crate::cli::{AuthKeygenArgs, AuthTokenArgs, KeyAlg, TokenScope};
use crate::config::Config;

/// `weir auth keygen`: a new current key; the old current stays accepted as
/// the previous one.
pub fn keygen(cfg: &Config, args: &AuthKeygenArgs) -> anyhow::Result<()> {
    let path = cfg.auth.resolved_key_file()?;
    let mut file = KeyFile::read(&path)?;
    let alg = match args.alg {
        KeyAlg::Eddsa => Alg::EdDSA,
        KeyAlg::Hs256 => Alg::HS256,
    };
    let kid = file
        .rotate(alg, &chrono::Utc::now().to_rfc3339())?
        .kid
        .clone();
    file.write(&path)?;
    println!(
        "key {kid} ({}) is now current in {}",
        alg.name(),
        path.display()
    );
    match file.keys.get(1) {
        Some(prev) => println!(
            "key {} ({}) is the previous key, still accepted until the next keygen",
            prev.kid,
            prev.alg.name()
        ),
        None => println!("no previous key"),
    }
    Ok(())
}

/// `weir auth token`: a token signed with the current key, alone on the
/// last line of standard output (what it is for goes to standard error).
pub fn token(cfg: &Config, args: &AuthTokenArgs) -> anyhow::Result<()> {
    let verifier = Verifier::new(cfg.auth.clone())?;
    let scope = match args.scope {
        TokenScope::Admin => Scope::Admin,
        TokenScope::Read => Scope::Read,
    };
    let (token, claims) = verifier
        .issue(&args.subject, scope, args.ttl, now_secs())
        .map_err(anyhow::Error::msg)
        .with_context(|| {
            format!(
                "issuing a token with the key file {}",
                cfg.auth
                    .resolved_key_file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        })?;
    let expires = chrono::DateTime::from_timestamp(claims.exp as i64, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    eprintln!(
        "token for {} (scope {:?}, jti {}), expires {expires}",
        claims.sub, claims.scope, claims.jti
    );
    println!("{token}");
    Ok(())
}

/// The authentication of a server (`center`, `edge`): disabled only when
/// `auth.disabled` says so; otherwise tokens are verified with the key file
/// (read again when a token names a key it does not know, so a key made
/// after start is picked up) and checked against the deny-list in Redis.
pub fn admin_auth(
    cfg: &Config,
    redis: Arc<RedisHandle>,
    server: &'static str,
) -> anyhow::Result<Arc<AdminAuth>> {
    if cfg.auth.disabled {
        return Ok(AdminAuth::disabled(server));
    }
    let path = match cfg.auth.resolved_key_file() {
        Ok(p) => p,
        Err(e) => {
            // No HOME and no auth.key_file (a bare service account): the
            // server still runs, its admin endpoints answer 503.
            tracing::warn!(server, error = %e, "no key file location: admin endpoints answer 503");
            return Ok(AdminAuth::unconfigured(server));
        }
    };
    let verifier = Verifier::new(cfg.auth.clone())
        .with_context(|| format!("auth.key_file {}", path.display()))?;
    if verifier.keys().is_empty() {
        tracing::warn!(
            server,
            key_file = %path.display(),
            "no signing key: admin endpoints answer 503 until one is made with `weir auth keygen`"
        );
    } else {
        tracing::info!(server, key_file = %path.display(), protect_reads = cfg.auth.protect_reads, "admin endpoints require a token");
    }
    let revocations = Revocations::new(redis, cfg.redis.keys(), cfg.auth.leeway, cfg.auth.max_ttl);
    Ok(AdminAuth::enforced(server, Arc::new(verifier), revocations))
}
