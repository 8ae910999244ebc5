//! Admin authentication across processes (issue 12, S1): keys and tokens
//! from `weir auth`, tokens made by an independent library (PyJWT, Debian's
//! `python3-jwt`), every admin endpoint of the edge refusing without a
//! token (401) and with a read token (403), a logout on one center refused
//! by a second center and an edge within a second, and Redis down → admin
//! 503, reads 200.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weir_testkit::{eventually, unique, PrivateService, TestWorld};

use crate::{answer, client, weir_ok, weir_output, Center, Edge};

/// A key file of the test's own, made with `weir auth keygen` (the
/// inventory tests use it too).
pub(crate) struct Keys {
    dir: PathBuf,
    file: PathBuf,
}

impl Keys {
    pub(crate) fn new(extra: &[&str]) -> Keys {
        let dir = std::env::temp_dir().join(unique("weir-auth-e2e"));
        let file = dir.join("keys.json");
        let mut args = vec![
            "auth",
            "keygen",
            "--key-file",
            file.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let out = weir_ok(&args, [("WEIR_LOG_LEVEL", "warn")]);
        assert!(out.contains("is now current"), "{out}");
        Keys { dir, file }
    }

    pub(crate) fn env(&self) -> (String, String) {
        ("WEIR_AUTH_KEY_FILE".into(), self.file.display().to_string())
    }

    /// `weir auth token`: the token (last line) and its jti (from stderr).
    pub(crate) fn token(&self, subject: &str, scope: &str, ttl: &str) -> (String, String) {
        let out = weir_output(
            &[
                "auth",
                "token",
                "--subject",
                subject,
                "--scope",
                scope,
                "--ttl",
                ttl,
            ],
            [self.env()],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "weir auth token: {stderr}");
        let token = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("a token line")
            .to_string();
        let jti = stderr
            .split("jti ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .expect("jti on stderr")
            .to_string();
        (token, jti)
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A token made by PyJWT from `spec` (see the script): the independent
/// implementation, so the suite does not only check Weir against itself.
fn pyjwt(key_file: &Path, spec: Value) -> String {
    const SCRIPT: &str = r#"
import base64, json, sys
import jwt
from cryptography.hazmat.primitives.serialization import load_der_private_key, Encoding, PublicFormat
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
spec = json.loads(sys.argv[1])
k = json.load(open(sys.argv[2]))["keys"][0]
der = base64.b64decode(k["secret"])
mode = spec["mode"]
headers = {"kid": k["kid"]}
headers.update(spec.get("headers", {}))
if mode == "eddsa":
    key, alg = load_der_private_key(der, None), "EdDSA"
elif mode == "hs256_with_public_key":
    key = load_der_private_key(der, None).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    alg = "HS256"
elif mode == "foreign_with_jwk":
    key, alg = Ed25519PrivateKey.generate(), "EdDSA"
    x = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    headers["jwk"] = {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(x).rstrip(b"=").decode()}
    headers["jku"] = "http://127.0.0.1:1/jwks.json"
elif mode == "none":
    key, alg = None, "none"
print(jwt.encode(spec["claims"], key, algorithm=alg, headers=headers))
"#;
    // Debian's python3-jwt, whatever python3 comes first on PATH.
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            SCRIPT,
            &spec.to_string(),
            key_file.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run /usr/bin/python3 (install python3-jwt)");
    assert!(
        out.status.success(),
        "PyJWT (Debian package python3-jwt) is needed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(sub: &str, jti: &str) -> Value {
    let now = now();
    json!({"iss": "weir", "sub": sub, "aud": "weir-admin", "iat": now, "exp": now + 300, "jti": jti, "scope": "admin"})
}

/// Status of `method url` with an optional bearer token.
async fn status(http: &reqwest::Client, method: &str, url: &str, token: Option<&str>) -> u16 {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = http.request(m, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if method == "POST" && url.ends_with("/fetch") {
        req = req.json(&json!({"url": "http://192.0.2.1/x", "key": "k"}));
    }
    answer(req).await.status().as_u16()
}

#[tokio::test]
async fn tokens_are_checked_and_a_logout_reaches_every_instance_within_a_second() {
    let world = TestWorld::create(1).await;
    let keys = Keys::new(&[]);
    let env = world.env_with(&[]);
    let mut env = env;
    env.push(keys.env());
    let (center_a, center_b, edge) =
        tokio::join!(Center::start(&env), Center::start(&env), Edge::start(&env));
    let http = client(Duration::from_secs(10));
    let issued = now();
    let (admin, admin_jti) = keys.token("alice", "admin", "5m");
    let (read, _) = keys.token("alice", "read", "5m");

    // Every admin endpoint of the edge: 401 without a token, 401 with
    // garbage, 403 with a read token.
    let e = edge.admin;
    let admin_endpoints = [
        ("DELETE", format!("http://{e}/cache?prefix=auth-e2e/")),
        ("DELETE", format!("http://{e}/cache/auth-e2e/one")),
        ("POST", format!("http://{e}/upload")),
        ("POST", format!("http://{e}/fetch")),
    ];
    for (m, url) in &admin_endpoints {
        assert_eq!(status(&http, m, url, None).await, 401, "{m} {url}");
        assert_eq!(status(&http, m, url, Some("a.b.c")).await, 401, "{m} {url}");
        assert_eq!(status(&http, m, url, Some(&read)).await, 403, "{m} {url}");
    }
    let purge = format!("http://{e}/cache?prefix=auth-e2e/");
    assert_eq!(status(&http, "DELETE", &purge, Some(&admin)).await, 200);
    // Reads stay open (auth.protect_reads is off); health stays open.
    let fleet = format!("http://{}/api/v1/fleet", center_a.addr);
    assert_eq!(status(&http, "GET", &fleet, None).await, 200);
    assert_eq!(
        status(&http, "GET", &format!("http://{e}/livez"), None).await,
        200
    );
    // The JWKS holds the Ed25519 public key.
    let jwks: Value = answer(http.get(format!("http://{}/api/v1/auth/jwks", center_b.addr)))
        .await
        .json()
        .await
        .expect("jwks");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519", "{jwks}");

    // Tokens from PyJWT: a good one passes; each hostile one is refused.
    let good = pyjwt(
        &keys.file,
        json!({"mode": "eddsa", "claims": claims("py", "py-good")}),
    );
    assert_eq!(
        status(&http, "DELETE", &purge, Some(&good)).await,
        200,
        "PyJWT EdDSA"
    );
    let mut hostile = vec![
        (
            "alg none",
            json!({"mode": "none", "claims": claims("py", "p1")}),
        ),
        (
            "HS256 keyed with the Ed25519 public key",
            json!({"mode": "hs256_with_public_key", "claims": claims("py", "p2")}),
        ),
        (
            "embedded jwk and jku",
            json!({"mode": "foreign_with_jwk", "claims": claims("py", "p3")}),
        ),
        (
            "unknown kid",
            json!({"mode": "eddsa", "headers": {"kid": "nope"}, "claims": claims("py", "p4")}),
        ),
        (
            "kid with ../",
            json!({"mode": "eddsa", "headers": {"kid": "../../keys.json"}, "claims": claims("py", "p5")}),
        ),
    ];
    let mut typed = |name: &'static str, f: &dyn Fn(&mut Value)| {
        let mut c = claims("py", "typed");
        f(&mut c);
        hostile.push((name, json!({"mode": "eddsa", "claims": c})));
    };
    typed("exp as a string", &|c| {
        c["exp"] = json!(c["exp"].to_string())
    });
    typed("nbf as a string", &|c| c["nbf"] = json!(now().to_string()));
    typed("missing jti", &|c| {
        c.as_object_mut().expect("object").remove("jti");
    });
    typed("expired beyond the leeway", &|c| {
        c["iat"] = json!(now() - 600);
        c["exp"] = json!(now() - 31);
    });
    typed("oversized", &|c| c["pad"] = json!("x".repeat(5000)));
    typed("another audience", &|c| c["aud"] = json!("someone-else"));
    for (name, spec) in hostile {
        let t = pyjwt(&keys.file, spec);
        assert_eq!(
            status(&http, "DELETE", &purge, Some(&t)).await,
            401,
            "{name}"
        );
    }

    // Logout on center A; center B and the edge refuse the token within 1 s.
    let logout = |c: &Center| format!("http://{}/api/v1/auth/logout", c.addr);
    let out: Value = answer(http.post(logout(&center_a)).bearer_auth(&admin))
        .await
        .json()
        .await
        .expect("logout body");
    let t0 = Instant::now();
    assert_eq!(out["revoked"], admin_jti.as_str(), "{out}");
    eventually(Duration::from_secs(1), "edge refuses the revoked token", || {
        let (http, purge, admin) = (http.clone(), purge.clone(), admin.clone());
        async move { (status(&http, "DELETE", &purge, Some(&admin)).await == 401).then_some(()) }
    })
    .await;
    assert_eq!(
        status(&http, "POST", &logout(&center_b), Some(&admin)).await,
        401
    );
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // The same claims signed again (PyJWT, another header) are still refused.
    let exp = now() + 300;
    let again = pyjwt(
        &keys.file,
        json!({"mode": "eddsa", "headers": {"typ": "JWT", "x-again": 1},
               "claims": {"iss": "weir", "sub": "alice", "aud": "weir-admin", "iat": now(), "exp": exp, "jti": admin_jti, "scope": "admin"}}),
    );
    assert_eq!(status(&http, "DELETE", &purge, Some(&again)).await, 401);
    // The deny-list entry lasts until exp + leeway, not exp.
    let prefix = env
        .iter()
        .find(|(k, _)| k == "WEIR_REDIS_KEY_PREFIX")
        .map(|(_, v)| v.clone())
        .expect("prefix");
    let redis_url = env
        .iter()
        .find(|(k, _)| k == "WEIR_REDIS_URL")
        .map(|(_, v)| v.clone())
        .expect("redis url");
    let mut conn = redis::Client::open(redis_url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}:auth:revoked:weir:{admin_jti}"))
        .query_async(&mut conn)
        .await
        .expect("ttl");
    // exp = issued + 300 (± a second), leeway 30 s.
    let want = (issued + 300 + 30) as i64 - now() as i64;
    assert!(
        (want - 2..=want + 2).contains(&ttl),
        "ttl {ttl}, want {want}"
    );

    // Log out everywhere: every earlier token of the subject is refused.
    let (bob1, _) = keys.token("bob", "admin", "5m");
    let (bob2, _) = keys.token("bob", "read", "5m");
    let url = format!("{}?all=true", logout(&center_b));
    assert_eq!(status(&http, "POST", &url, Some(&bob2)).await, 200);
    assert_eq!(status(&http, "DELETE", &purge, Some(&bob1)).await, 401);
}

#[tokio::test]
async fn with_redis_down_admin_requests_fail_closed_and_reads_go_on() {
    let mut redis = PrivateService::start("redis");
    let world = TestWorld::create(1).await;
    let keys = Keys::new(&["--alg", "hs256"]);
    let mut env = world.env_with(&[
        ("WEIR_REDIS_URL", &redis.url()),
        ("WEIR_REDIS_TIMEOUT", "500ms"),
        ("WEIR_AUTH_REVOCATION_CACHE", "500ms"),
    ]);
    env.push(keys.env());
    let (center, edge) = tokio::join!(Center::start(&env), Edge::start(&env));
    let http = client(Duration::from_secs(10));
    let (admin, _) = keys.token("carol", "admin", "5m");
    let purge = format!("http://{}/cache?prefix=auth-e2e/", edge.admin);
    assert_eq!(status(&http, "DELETE", &purge, Some(&admin)).await, 200);

    redis.stop(true);
    // A token not seen before is refused at once; one that Redis said was
    // good is trusted for auth.revocation_cache (500 ms here), no longer.
    let (fresh, _) = keys.token("carol", "admin", "5m");
    assert_eq!(status(&http, "DELETE", &purge, Some(&fresh)).await, 503);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(status(&http, "DELETE", &purge, Some(&admin)).await, 503);
    let logout = format!("http://{}/api/v1/auth/logout", center.addr);
    assert_eq!(status(&http, "POST", &logout, Some(&admin)).await, 503);
    // Without a token it is still 401, and reads that need no Redis go on.
    assert_eq!(status(&http, "DELETE", &purge, None).await, 401);
    let uptime = format!("http://{}/api/v1/uptime", center.addr);
    assert_eq!(status(&http, "GET", &uptime, None).await, 200);
    assert_eq!(
        status(&http, "GET", &format!("http://{}/livez", edge.admin), None).await,
        200
    );
}
