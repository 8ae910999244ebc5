//! Weir against a secured broker, as managed clusters run: a private Kafka
//! (started by `deploy/local/serve`, so the shared broker is never touched)
//! with a SASL_SSL listener (SCRAM-SHA-512, a throw-away CA made at its
//! first start, the SCRAM user created with Kafka's own `StorageTool`) and an
//! SSL listener that requires a client certificate. Every role goes through
//! the named `[kafka]` settings: the agent, both consumer groups, the
//! generator, `weir lag describe` and `weir topics`. A wrong password and a
//! wrong CA each end the process at once with one line naming the setting.

use std::time::{Duration, Instant};

use serde_json::Value;
use weir_testkit::{eventually, last_json, stack, unique, PrivateService, Proc, Stack, TestWorld};

use crate::{run_weir, weir, weir_config};

/// The SASL_SSL settings of `kafka`, as environment variables.
fn sasl_ssl_env(kafka: &PrivateService) -> Vec<(String, String)> {
    [
        ("WEIR_KAFKA_BROKERS", kafka.sasl_ssl_addr()),
        ("WEIR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL".into()),
        (
            "WEIR_KAFKA_SSL_CA_LOCATION",
            kafka.tls_dir().join("ca.pem").display().to_string(),
        ),
        ("WEIR_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".into()),
        ("WEIR_KAFKA_SASL_USERNAME", "weir".into()),
        ("WEIR_KAFKA_SASL_PASSWORD", "weir-secret".into()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec()
}

fn with(env: &[(String, String)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut e = env.to_vec();
    e.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    e
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Runs `weir args` to completion; exit code, stdout, stderr.
fn run(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let out = std::process::Command::new(weir())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run weir");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_over_sasl_ssl_and_refusals_name_the_setting() {
    let shared = stack();
    shared.require_redis().require_postgres();
    let kafka = PrivateService::start("kafka");
    // Topics are created through the broker's PLAINTEXT listener; everything
    // Weir does goes through SASL_SSL.
    let world = TestWorld::builder()
        .on(Stack {
            kafka: kafka.url(),
            ..shared.clone()
        })
        .partitions(2)
        .create()
        .await;
    let env = {
        let mut e = world.env();
        e.extend(sasl_ssl_env(&kafka));
        e
    };

    // The topics admin.
    let (code, out, err) = run(&["topics", "ensure"], &env);
    assert_eq!(code, 0, "weir topics ensure over SASL_SSL: {err}");
    // health, access, dead letters, report requests.
    assert_eq!(out.matches(" exists").count(), 4, "{out}");

    // Both consumer groups, the agent and the generator.
    let mut health = Proc::spawn("health", weir(), &["consume", "health"], &env);
    let mut access = Proc::spawn("access", weir(), &["consume", "access"], &env);
    let node = unique("tls-node");
    let mut agent = Proc::spawn(
        "agent",
        weir(),
        &["agent", "--interval", "200ms", "--node-id", &node],
        &env,
    );
    let mut gen = Proc::spawn(
        "gen",
        weir(),
        &[
            "gen",
            "access",
            "--count",
            "500",
            "--nodes",
            "3",
            "--objects",
            "10",
        ],
        &env,
    );
    let st = gen.wait(Duration::from_secs(60)).expect("gen finishes");
    assert!(st.success(), "gen over SASL_SSL:\n{}", gen.output());
    let totals = last_json(&gen.output()).expect("gen totals");
    let want_requests = totals["requests"].as_i64().expect("requests");

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&world.db.url)
        .await
        .expect("pool");
    eventually(Duration::from_secs(60), "health reports stored", || {
        let (pool, node) = (pool.clone(), node.clone());
        async move {
            let n: Option<i64> =
                sqlx::query_scalar("SELECT reports FROM servers WHERE node_id = $1")
                    .bind(&node)
                    .fetch_optional(&pool)
                    .await
                    .ok()
                    .flatten();
            n.filter(|n| *n >= 3)
        }
    })
    .await;
    eventually(Duration::from_secs(60), "access rollups complete", || {
        let pool = pool.clone();
        async move {
            let got: Option<i64> =
                sqlx::query_scalar("SELECT sum(requests)::bigint FROM access_minute")
                    .fetch_one(&pool)
                    .await
                    .ok()
                    .flatten();
            (got == Some(want_requests)).then_some(())
        }
    })
    .await;

    // The lag tools see the group and its members over SASL_SSL.
    let (code, out, err) = run(&["lag", "describe", &world.group, "--json"], &env);
    assert_eq!(code, 0, "weir lag describe over SASL_SSL: {err}\n{out}");
    let doc: Value = serde_json::from_str(&out).expect("lag JSON");
    assert_eq!(doc["state"], "Stable", "{doc}");
    assert_eq!(doc["members"], 2, "{doc}");
    assert_eq!(doc["partitions"].as_array().map(Vec::len), Some(4), "{doc}");

    let status = agent
        .terminate(Duration::from_secs(20))
        .expect("agent stops");
    assert!(status.success(), "agent:\n{}", agent.output());
    for m in [&mut health, &mut access] {
        let st = m.terminate(Duration::from_secs(30)).expect("member stops");
        assert!(st.success(), "{}:\n{}", m.name, m.output());
    }

    // Mutual TLS on the SSL listener: the client certificate with its
    // encrypted key, then without a certificate.
    let tls = kafka.tls_dir();
    let path = |f: &str| tls.join(f).display().to_string();
    let mtls = with(
        &world.env(),
        &[
            ("WEIR_KAFKA_BROKERS", &kafka.ssl_addr()),
            ("WEIR_KAFKA_SECURITY_PROTOCOL", "SSL"),
            ("WEIR_KAFKA_SSL_CA_LOCATION", &path("ca.pem")),
            ("WEIR_KAFKA_SSL_CERTIFICATE_LOCATION", &path("client.pem")),
            ("WEIR_KAFKA_SSL_KEY_LOCATION", &path("client.key")),
            ("WEIR_KAFKA_SSL_KEY_PASSWORD", "weir-secret"),
        ],
    );
    let (code, out, err) = run(&["topics", "ensure"], &mtls);
    assert_eq!(
        (code, out.matches(" exists").count()),
        (0, 4),
        "mutual TLS: {err}"
    );

    // Refusals: fast, exit 2, one line naming the setting.
    let ca_bundle = "/etc/ssl/certs/ca-certificates.crt";
    let no_cert: Vec<(String, String)> = mtls
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("WEIR_KAFKA_SSL_CERTIFICATE") && !k.starts_with("WEIR_KAFKA_SSL_KEY")
        })
        .cloned()
        .collect();
    for (what, env, key) in [
        (
            "wrong password",
            with(&env, &[("WEIR_KAFKA_SASL_PASSWORD", "not-the-password")]),
            "kafka.sasl_password",
        ),
        (
            "wrong user",
            with(&env, &[("WEIR_KAFKA_SASL_USERNAME", "mallory")]),
            "kafka.sasl_password",
        ),
        (
            "wrong CA (the system's public CAs)",
            with(&env, &[("WEIR_KAFKA_SSL_CA_LOCATION", ca_bundle)]),
            "kafka.ssl_ca_location",
        ),
        (
            "no client certificate",
            no_cert,
            "kafka.ssl_certificate_location",
        ),
        (
            "TLS spoken to the PLAINTEXT listener",
            with(&env, &[("WEIR_KAFKA_BROKERS", &kafka.url())]),
            "kafka.security_protocol",
        ),
    ] {
        // Should a refusal go unnoticed, the agent stops after one report
        // rather than hang the test.
        let env = with(
            &env,
            &[
                ("WEIR_AGENT_MAX_REPORTS", "1"),
                ("WEIR_AGENT_INTERVAL", "100ms"),
            ],
        );
        for args in [&["agent"][..], &["lag", "list"][..]] {
            let start = Instant::now();
            let (code, err) = run_weir(args, &pairs(&env));
            let took = start.elapsed();
            let lines: Vec<&str> = err.lines().collect();
            assert_eq!(code, 2, "{what}, weir {args:?}: {err}");
            assert_eq!(lines.len(), 1, "{what}: one line, got {err}");
            assert!(
                lines[0].starts_with(&format!("weir: config error: {key}: ")),
                "{what}: {err}"
            );
            assert!(!err.contains("weir-secret"), "{what}: {err}");
            assert!(took < Duration::from_secs(8), "{what}: took {took:?}");
        }
    }

    // The effective configuration prints without the secrets.
    let (code, text) = weir_config(&[], &pairs(&with(&mtls, &[])));
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("weir-secret"), "{text}");
    assert!(text.contains("ssl_key_password = \"***\""), "{text}");
    let (code, text) = weir_config(&[], &pairs(&env));
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("weir-secret"), "{text}");
    assert!(text.contains("sasl_password = \"***\""), "{text}");
}
