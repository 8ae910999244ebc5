//! `weir servers`: the inventory API from the command line, so an operator
//! can script it without curl. Every call is one HTTP request to the
//! center; the center does every check.

use std::time::Duration;

use anyhow::Context;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::cli::{ServersAction, ServersArgs};
use crate::config::Config;

/// `weir servers …`: prints the answer's JSON (and the ETag for `show`);
/// a refusal is an error carrying the problem's detail.
pub async fn servers(cfg: &Config, args: ServersArgs) -> anyhow::Result<()> {
    let base = args
        .center
        .clone()
        .unwrap_or_else(|| format!("http://{}", cfg.center.addr));
    let base = base.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let one = |id: &str| {
        format!(
            "{base}/api/v1/servers/{}",
            utf8_percent_encode(id, NON_ALPHANUMERIC)
        )
    };
    let parse = |what: &str, text: &str| -> anyhow::Result<String> {
        let v: Value = serde_json::from_str(text).with_context(|| format!("{what} is not JSON"))?;
        Ok(v.to_string())
    };
    let req = match &args.action {
        ServersAction::List { query } => http.get(format!("{base}/api/v1/servers?{query}")),
        ServersAction::Show { id } => http.get(one(id)),
        ServersAction::Add { json } => http
            .post(format!("{base}/api/v1/servers"))
            .header("content-type", "application/json")
            .body(parse("the body", json)?),
        ServersAction::Patch { id, if_match, json } => http
            .patch(one(id))
            .header("content-type", "application/merge-patch+json")
            .header("if-match", format!("\"{if_match}\""))
            .body(parse("the patch", json)?),
        ServersAction::Rm { id } => http.delete(one(id)),
    };
    let req = match &args.token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the center at {base} (--center)"))?;
    let status = resp.status();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.text().await.context("reading the center's answer")?;
    if !status.is_success() {
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        let detail = v["detail"].as_str().unwrap_or(body.as_str());
        match v["field"].as_str() {
            Some(f) => anyhow::bail!("{status}: {detail} (field {f})"),
            None => anyhow::bail!("{status}: {detail}"),
        }
    }
    if let Some(e) = etag {
        eprintln!("ETag {e}");
    }
    println!("{body}");
    Ok(())
}
