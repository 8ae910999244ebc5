//! deploy/compose, deploy/k8s and deploy/grafana are for users and cannot run
//! here (no container engine); this checks them as files against the real
//! binary: every setting they pass is one `weir` accepts, and every metric the
//! dashboard plots is one the code emits.

use std::path::{Path, PathBuf};

use crate::weir_config;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Runs `weir config` with the given settings; panics with weir's message
/// if it rejects them.
fn accepts(args: &[&str], env: &[(String, String)], what: &str) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, out) = weir_config(args, &env);
    assert_eq!(code, 0, "{what}: weir rejects it: {out}");
}

/// `KEY: "value"` / `KEY: value` lines whose key starts with WEIR_.
fn compose_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(": ")?;
            k.starts_with("WEIR_")
                .then(|| (k.to_string(), v.trim().trim_matches('"').to_string()))
        })
        .filter(|(k, _)| k != "WEIR_CONFIG")
        .collect()
}

#[test]
fn compose_settings_are_accepted() {
    let env = compose_env(&read("deploy/compose/docker-compose.yml"));
    assert!(
        env.len() >= 5,
        "expected WEIR_* settings in the compose file"
    );
    for (k, v) in env {
        accepts(
            &[],
            &[(k.clone(), v.clone())],
            &format!("docker-compose.yml {k}={v}"),
        );
    }
}

#[test]
fn kubernetes_config_file_and_settings_are_accepted() {
    let cm = read("deploy/k8s/configmap.yaml");
    let start = cm.find("weir.toml: |").expect("configmap holds weir.toml");
    let toml: String = cm[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let file = std::env::temp_dir().join(format!("weir-k8s-{}.toml", std::process::id()));
    std::fs::write(&file, &toml).expect("write");
    accepts(
        &["--config", file.to_str().unwrap_or_default()],
        &[],
        "configmap weir.toml",
    );
    let _ = std::fs::remove_file(&file);

    // `- name: WEIR_X` followed by `value: v` in the workloads.
    for entry in std::fs::read_dir(root().join("deploy/k8s")).expect("k8s dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let Some(name) = l.trim().strip_prefix("- name: ") else {
                continue;
            };
            if !name.starts_with("WEIR_") || name == "WEIR_CONFIG" {
                continue;
            }
            let value = lines
                .get(i + 1)
                .and_then(|n| n.trim().strip_prefix("value: "))
                .map(|v| v.trim_matches('"').replace("$(HOST_IP)", "10.0.0.1"));
            let value = value.unwrap_or_else(|| match name {
                "WEIR_DATABASE_URL" => "postgres://weir:example@db:5432/weir".into(),
                "WEIR_AGENT_NODE_ID" => "node-a".into(),
                other => panic!("{}: {other} has no literal value to check", path.display()),
            });
            accepts(
                &[],
                &[(name.to_string(), value.clone())],
                &format!("{} {name}={value}", path.display()),
            );
        }
    }
}

fn rust_sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() && !p.ends_with("target") && !p.ends_with(".git") {
            rust_sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") && !p.ends_with("deploy_files.rs") {
            out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
}

#[test]
fn dashboard_plots_only_metrics_the_code_emits() {
    let dash: serde_json::Value = serde_json::from_str(&read("deploy/grafana/weir-dashboard.json"))
        .expect("dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if k == "expr" {
                        if let Some(s) = x.as_str() {
                            out.push(s.to_string());
                        }
                    }
                    walk(x, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() >= 6, "dashboard has panels");
    let mut code = String::new();
    // The binary and every crate of the workspace, wherever a metric moves.
    rust_sources(&root().join("src"), &mut code);
    for entry in std::fs::read_dir(root()).expect("workspace root").flatten() {
        if entry.path().join("Cargo.toml").exists() && entry.path().join("src").is_dir() {
            rust_sources(&entry.path().join("src"), &mut code);
        }
    }
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("weir_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                code.contains(&format!("\"{base}\"")),
                "dashboard plots {name}, which no code emits ({e})"
            );
        }
    }
}

#[test]
fn systemd_units_run_every_role_with_commands_weir_accepts() {
    let dir = root().join("deploy/systemd");
    let mut commands = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/systemd") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "service") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read unit");
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        for section in ["[Unit]", "[Service]", "[Install]"] {
            assert!(text.contains(section), "{name}: no {section}");
        }
        assert!(
            text.contains("Restart=on-failure"),
            "{name}: restarts on failure"
        );
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/weir "))
            .unwrap_or_else(|| panic!("{name}: ExecStart runs /usr/local/bin/weir"));
        // A template's instance is the consumer's role.
        let args: Vec<String> = exec
            .split_whitespace()
            .map(|a| a.replace("%i", "health"))
            .collect();
        let mut help: Vec<&str> = args.iter().map(String::as_str).collect();
        help.push("--help");
        let out = std::process::Command::new(crate::weir())
            .args(&help)
            .output()
            .expect("run weir --help");
        assert!(
            out.status.success(),
            "{name}: `weir {exec}` is not a command: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for l in text.lines() {
            if let Some((k, v)) = l
                .strip_prefix("Environment=")
                .and_then(|e| e.split_once('='))
            {
                if k.starts_with("WEIR_") && k != "WEIR_CONFIG" {
                    accepts(
                        &[],
                        &[(k.to_string(), v.to_string())],
                        &format!("{name} {k}"),
                    );
                }
            }
        }
        commands.push(args.first().cloned().unwrap_or_default());
    }
    commands.sort();
    // Every long-running role has its unit.
    for role in ["agent", "balance", "center", "consume", "edge", "lag"] {
        assert!(
            commands.iter().any(|c| c == role),
            "no unit runs `weir {role}`: {commands:?}"
        );
    }
    let install = read("deploy/systemd/install");
    assert!(
        install.starts_with("#!/usr/bin/env bash"),
        "install is a script"
    );
}
