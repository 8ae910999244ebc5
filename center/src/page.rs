//! The dashboard page at `/`: rendered on the server from the hub's state,
//! so that it works without JavaScript (a reload shows the current state);
//! the script then takes over the same markup and keeps it live from the
//! stream. The script and style are compiled into the binary
//! (`include_str!`): nothing is fetched from anywhere else, and no Node
//! toolchain is needed to build Weir.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;

use crate::api::CenterState;
use crate::dashboard::{NodeRow, NodeStatus, PipelineView};

const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// `GET /assets/{name}`: the page's script and style.
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return weir_core::http::ApiError::not_found("no such asset").into_response(),
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the dashboard.
pub(crate) async fn index(State(state): State<CenterState>) -> Html<String> {
    let now = Utc::now().timestamp_millis();
    Html(
        state
            .hub
            .with_state(|seq, nodes, pipeline| render(seq, nodes, pipeline, now)),
    )
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Bytes per second as people read them.
pub fn rate_bytes(v: f64) -> String {
    let units = ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"];
    let mut v = v.max(0.0);
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 || v >= 100.0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// A count per second.
pub fn rate(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}/s"),
        Some(v) => format!("{v:.1}/s"),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.0}%", v * 100.0))
}

/// Time since `ms` as "3s ago".
pub fn ago(now_ms: i64, ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let s = (now_ms - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// An SVG sparkline of `values` (oldest first).
pub fn sparkline<T: Into<f64> + Copy>(values: impl IntoIterator<Item = T>) -> String {
    let v: Vec<f64> = values.into_iter().map(Into::into).collect();
    if v.len() < 2 {
        return "<svg class=\"spark\" viewBox=\"0 0 100 24\" aria-hidden=\"true\"></svg>".into();
    }
    let max = v.iter().copied().fold(f64::MIN, f64::max);
    let min = v.iter().copied().fold(f64::MAX, f64::min).min(0.0);
    let span = (max - min).max(1e-9);
    let mut pts = String::new();
    for (i, x) in v.iter().enumerate() {
        let px = 100.0 * i as f64 / (v.len() - 1) as f64;
        let py = 22.0 - 20.0 * (x - min) / span;
        let _ = write!(pts, "{px:.1},{py:.1} ");
    }
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 100 24\" preserveAspectRatio=\"none\" aria-hidden=\"true\"><polyline points=\"{}\"/></svg>",
        pts.trim_end()
    )
}

fn node_row(n: &NodeRow, now: i64) -> String {
    let status = n.status.as_str();
    format!(
        "<tr class=\"{status}\" data-id=\"{id}\"><td><span class=\"badge {status}\">{status}</span></td>\
         <td class=\"id\">{id}</td><td>{ago}</td><td>{cpu:.0}%</td><td>{mem:.0}%</td><td>{load:.2}</td>\
         <td>{rx} ↓ · {tx} ↑</td><td>{spark}</td><td>{reports}</td></tr>",
        id = esc(&n.id),
        ago = ago(now, n.last_ms),
        cpu = n.cpu,
        mem = n.mem,
        load = n.load,
        rx = rate_bytes(n.rx as f64),
        tx = rate_bytes(n.tx as f64),
        spark = sparkline(n.cpu_hist.iter().copied()),
        reports = n.reports,
    )
}

/// The whole page from the hub's state at `now_ms`.
pub fn render(
    seq: u64,
    nodes: &BTreeMap<String, NodeRow>,
    p: &PipelineView,
    now_ms: i64,
) -> String {
    let count = |s: NodeStatus| nodes.values().filter(|n| n.status == s).count();
    let (up, stale, down) = (
        count(NodeStatus::Up),
        count(NodeStatus::Stale),
        count(NodeStatus::Down),
    );
    let total_lag: i64 = p.groups.iter().map(|g| g.total_lag).sum();
    let worst = p
        .groups
        .iter()
        .map(|g| g.status)
        .max_by_key(|s| {
            ["ok", "warning", "rewinding", "stalled", "stopped"]
                .iter()
                .position(|x| x == s)
        })
        .unwrap_or("–");
    let admitted = p
        .limiters
        .iter()
        .map(|l| l.fraction)
        .fold(None, |a: Option<f64>, f| Some(a.map_or(f, |a| a.min(f))));
    let mut h = String::with_capacity(4096 + nodes.len() * 400);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Weir · fleet and pipeline</title>
<link rel="stylesheet" href="/assets/style.css">
</head><body data-seq="{seq}">
<header><h1>Weir</h1><span class="sub">fleet and pipeline</span>
<span id="conn" class="conn">server-rendered · reload to refresh</span></header>
<main>
<section id="kpis" class="kpis">
<div class="kpi"><b id="k-nodes">{up}/{total}</b><span>nodes up</span></div>
<div class="kpi"><b id="k-rps">{rps}</b><span>requests</span></div>
<div class="kpi"><b id="k-bw">{bw}</b><span>served</span></div>
<div class="kpi"><b id="k-hit">{hit}</b><span>hit ratio</span></div>
<div class="kpi"><b id="k-lag">{total_lag}</b><span>lag · <i id="k-lagstatus" class="st-{worst}">{worst}</i></span></div>
<div class="kpi"><b id="k-dlq">{dlq}</b><span>dead letters</span></div>
<div class="kpi"><b id="k-lim">{lim}</b><span>access events admitted</span></div>
</section>
<div class="grid">
"#,
        total = nodes.len(),
        rps = rate(Some(p.access.req_per_s)),
        bw = rate_bytes(p.access.bytes_per_s),
        hit = pct(p.access.hit_ratio),
        dlq = p.dead_letters.total.map_or("–".into(), |t| t.to_string()),
        lim = pct(admitted),
    );
    // Topics.
    h.push_str("<section class=\"panel\"><h2>Topics</h2><div class=\"scroll\"><table id=\"topics\"><thead><tr><th>Topic</th><th>Produced</th><th>Consumed</th><th>Records</th></tr></thead><tbody>");
    for t in &p.topics {
        let consumed: Vec<String> = t
            .consumed
            .iter()
            .map(|c| format!("{} <small>{}</small>", rate(c.per_s), esc(&c.group)))
            .collect();
        let _ = write!(
            h,
            "<tr><td>{} <small>{}</small></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.topic),
            t.role,
            rate(t.produced_per_s),
            if consumed.is_empty() {
                "–".into()
            } else {
                consumed.join("<br>")
            },
            t.end
        );
    }
    h.push_str("</tbody></table></div></section>");
    // Groups.
    h.push_str("<section class=\"panel\"><h2>Consumer groups</h2><div class=\"scroll\"><table id=\"groups\"><thead><tr><th>Group</th><th>Status</th><th>Lag</th><th>Behind</th><th>Members</th><th>Lag history</th></tr></thead><tbody>");
    for g in &p.groups {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><span class=\"st-{s}\">{s}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&g.group),
            g.total_lag,
            g.lag_seconds.map_or("–".into(), |s| format!("{s:.1}s")),
            g.members,
            sparkline(g.hist.iter().map(|x| *x as f64)),
            s = g.status,
        );
    }
    h.push_str("</tbody></table></div></section>");
    // Access per node.
    h.push_str("<section class=\"panel\"><h2>Access by node</h2><div class=\"scroll\"><table id=\"access\"><thead><tr><th>Node</th><th>Requests</th><th>Bytes</th><th>Hit ratio</th></tr></thead><tbody>");
    for n in &p.access.nodes {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&n.node_id),
            rate(Some(n.req_per_s)),
            rate_bytes(n.bytes_per_s),
            pct(n.hit_ratio)
        );
    }
    h.push_str("</tbody></table></div></section>");
    // Top objects.
    h.push_str("<section class=\"panel\"><h2>Top objects this minute</h2><div class=\"scroll\"><table id=\"top\"><thead><tr><th>Object</th><th>Requests</th></tr></thead><tbody>");
    for o in &p.access.top {
        let _ = write!(
            h,
            "<tr><td class=\"id\">{}</td><td>{}</td></tr>",
            esc(&o.key),
            o.requests
        );
    }
    h.push_str("</tbody></table></div></section>");
    // Limiters.
    h.push_str("<section class=\"panel\"><h2>Limiters</h2><div class=\"scroll\"><table id=\"limiters\"><thead><tr><th>Producer</th><th>Paced by</th><th>Admitted</th><th>Updated</th></tr></thead><tbody>");
    for l in &p.limiters {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&l.source),
            esc(&l.group),
            pct(Some(l.fraction)),
            ago(now_ms, l.at_ms)
        );
    }
    h.push_str("</tbody></table></div></section></div>");
    // Fleet.
    let _ = write!(
        h,
        "<section id=\"fleet\" class=\"panel wide\"><h2>Fleet <span id=\"counts\">{total} nodes · {up} up · {stale} stale · {down} down</span></h2>\
         <div id=\"filters\" class=\"filters\" hidden></div>\
         <div class=\"scroll\"><table id=\"fleet-table\"><thead><tr><th>Status</th><th>Node</th><th>Last report</th><th>CPU</th><th>Mem</th><th>Load</th><th>Bandwidth</th><th>CPU history</th><th>Reports</th></tr></thead><tbody>",
        total = nodes.len()
    );
    for n in nodes.values() {
        h.push_str(&node_row(n, now_ms));
    }
    h.push_str("</tbody></table></div></section></main>\n<script src=\"/assets/app.js\" defer></script>\n</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_controls() {
        assert_eq!(
            esc("<script>\"a\"&'b'\u{0}</script>"),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;\u{fffd}&lt;/script&gt;"
        );
    }

    #[test]
    fn formats_read_well() {
        assert_eq!(rate_bytes(0.0), "0 B/s");
        assert_eq!(rate_bytes(1_234_567.0), "1.2 MB/s");
        assert_eq!(rate_bytes(f64::NAN.max(0.0)), "0 B/s");
        assert_eq!(rate(None), "–");
        assert_eq!(rate(Some(3.25)), "3.2/s");
        assert_eq!(ago(10_000, 7_000), "3s ago");
        assert_eq!(ago(10_000, 0), "never");
        assert!(sparkline([1.0f64]).contains("<svg"));
        let s = sparkline([0.0f64, 5.0, 10.0]);
        assert!(s.contains("0.0,22.0 50.0,12.0 100.0,2.0"), "{s}");
    }

    #[test]
    fn renders_rows_escaped() {
        let mut nodes = BTreeMap::new();
        let mut row = NodeRow::empty("<b>evil</b>");
        row.status = NodeStatus::Stale;
        nodes.insert(row.id.clone(), row);
        let html = render(7, &nodes, &PipelineView::default(), 0);
        assert!(html.contains("&lt;b&gt;evil&lt;/b&gt;"));
        assert!(!html.contains("<b>evil"));
        assert!(html.contains("1 nodes · 0 up · 1 stale · 0 down"), "{html}");
        assert!(html.contains("data-seq=\"7\""));
    }
}
