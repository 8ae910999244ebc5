//! What a report says, as plain text and as HTML, from the uptime figures of
//! each day (the same computation `/api/v1/uptime` serves, so the mail and
//! the API agree to the digit), and the deterministic `Message-ID` of each
//! (report, recipient).

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use weir_center::page::esc;
use weir_center::NodeCoverage;

/// One day of a report.
#[derive(Debug, Clone)]
pub struct DaySheet {
    /// The local day.
    pub day: NaiveDate,
    /// Its UTC window `[start, end)`.
    pub window: (DateTime<Utc>, DateTime<Utc>),
    /// Every node seen before the window ended, in node id order.
    pub nodes: Vec<NodeCoverage>,
    /// More nodes existed than a mail lists (`MAX_NODES_PER_DAY`).
    pub truncated: bool,
}

/// A rendered report: the same text for every recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// `Subject:`.
    pub subject: String,
    /// The text/plain part.
    pub text: String,
    /// The text/html part.
    pub html: String,
}

/// Fleet totals of one day.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Nodes observed during the day.
    pub nodes: usize,
    /// Seconds covered by reports, summed over nodes.
    pub covered_secs: f64,
    /// Seconds observed, summed over nodes.
    pub observed_secs: f64,
    /// Outages, summed over nodes.
    pub outages: usize,
    /// Reports, summed over nodes.
    pub reports: i64,
}

impl Totals {
    /// Totals of a day.
    pub fn of(sheet: &DaySheet) -> Totals {
        let mut t = Totals::default();
        for n in &sheet.nodes {
            if n.uptime.observed_secs > 0.0 {
                t.nodes += 1;
            }
            t.covered_secs += n.uptime.covered_secs;
            t.observed_secs += n.uptime.observed_secs;
            t.outages += n.outages.len();
            t.reports += n.reports;
        }
        t
    }

    /// Fleet uptime: covered ÷ observed over all nodes.
    pub fn uptime(&self) -> Option<f64> {
        (self.observed_secs > 0.0).then(|| (self.covered_secs / self.observed_secs).clamp(0.0, 1.0))
    }
}

/// Uptime as the mail shows it: a percentage with three decimals, or
/// `n/a` for a node not observed that day.
pub fn percent(u: Option<f64>) -> String {
    match u {
        Some(u) => format!("{:.3}%", u * 100.0),
        None => "n/a".into(),
    }
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Renders the report of `days` in zone `tz`.
pub fn render(tz: &str, days: &[DaySheet]) -> Rendered {
    let span = match (days.first(), days.last()) {
        (Some(a), Some(b)) if a.day != b.day => format!("{} to {}", a.day, b.day),
        (Some(a), _) => a.day.to_string(),
        _ => "no day".into(),
    };
    let subject = format!("Weir uptime report {span} ({tz})");
    let mut text = format!("{subject}\n");
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head><body>\n<h1>{}</h1>\n",
        esc(&subject),
        esc(&subject)
    );
    for sheet in days {
        let t = Totals::of(sheet);
        let _ = write!(
            text,
            "\nday {} window {} .. {}\nfleet nodes {} uptime {} covered {:.3} s of {:.3} s outages {} reports {}\n",
            sheet.day,
            instant(sheet.window.0),
            instant(sheet.window.1),
            t.nodes,
            percent(t.uptime()),
            t.covered_secs,
            t.observed_secs,
            t.outages,
            t.reports
        );
        let _ = write!(
            html,
            "<h2>{}</h2>\n<p>{} .. {}</p>\n<p>Fleet: {} nodes, uptime <b>{}</b>, covered {:.3} s of {:.3} s, {} outages, {} reports.</p>\n\
             <table border=\"1\" cellpadding=\"4\"><tr><th>node</th><th>uptime</th><th>covered s</th><th>observed s</th><th>reports</th><th>outages (UTC)</th></tr>\n",
            sheet.day,
            instant(sheet.window.0),
            instant(sheet.window.1),
            t.nodes,
            percent(t.uptime()),
            t.covered_secs,
            t.observed_secs,
            t.outages,
            t.reports
        );
        for n in &sheet.nodes {
            let u = &n.uptime;
            let _ = writeln!(
                text,
                "node {} uptime {} covered {:.3} s of {:.3} s reports {} outages {}",
                u.node_id,
                percent(u.uptime),
                u.covered_secs,
                u.observed_secs,
                n.reports,
                n.outages.len()
            );
            let mut cells = String::new();
            for (s, e) in &n.outages {
                let secs = (*e - *s).num_milliseconds() as f64 / 1000.0;
                let _ = writeln!(
                    text,
                    "  outage {} .. {} ({secs:.0} s)",
                    instant(*s),
                    instant(*e)
                );
                let _ = write!(
                    cells,
                    "{} .. {} ({secs:.0} s)<br>",
                    instant(*s),
                    instant(*e)
                );
            }
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td><td>{}</td></tr>",
                esc(&u.node_id),
                percent(u.uptime),
                u.covered_secs,
                u.observed_secs,
                n.reports,
                cells
            );
        }
        if sheet.nodes.is_empty() {
            text.push_str("no node was observed this day\n");
            html.push_str("<tr><td colspan=\"6\">no node was observed this day</td></tr>\n");
        }
        html.push_str("</table>\n");
        if sheet.truncated {
            text.push_str("(more nodes than a mail lists; see /api/v1/uptime)\n");
            html.push_str("<p>(more nodes than a mail lists; see /api/v1/uptime)</p>\n");
        }
    }
    html.push_str("</body></html>\n");
    Rendered {
        subject,
        text,
        html,
    }
}

/// FNV-1a, 64 bits: a stable hash (std's hasher is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The `Message-ID` of report `request_id` to `recipient`, the same on every
/// attempt, so that a resend after a crash is recognisable as the same
/// message (by mail clients, by a test counting them).
pub fn message_id(request_id: &str, recipient: &str) -> String {
    let h = fnv1a(recipient.to_ascii_lowercase().as_bytes());
    format!("<{request_id}.{h:016x}@weir.report>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_center::NodeUptime;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("instant")
    }

    #[test]
    fn renders_nodes_outages_and_totals_and_escapes_html() {
        let node = |id: &str, covered: f64| NodeCoverage {
            uptime: NodeUptime {
                node_id: id.into(),
                first_seen: t("2026-12-01T00:00:00Z"),
                last_seen: t("2026-12-01T12:00:00Z"),
                reports: 10,
                status: "up",
                covered_secs: covered,
                observed_secs: 86_400.0,
                uptime: Some(covered / 86_400.0),
                daily: Vec::new(),
            },
            outages: vec![(t("2026-12-01T03:00:00Z"), t("2026-12-01T03:05:00Z"))],
            reports: 7,
        };
        let sheet = DaySheet {
            day: "2026-12-01".parse().expect("day"),
            window: (t("2026-12-01T00:00:00Z"), t("2026-12-02T00:00:00Z")),
            nodes: vec![node("edge-1", 86_100.0), node("<b>x</b>", 43_200.0)],
            truncated: false,
        };
        let r = render("UTC", &[sheet]);
        assert!(
            r.text.contains(
                "node edge-1 uptime 99.653% covered 86100.000 s of 86400.000 s reports 7 outages 1"
            ),
            "{}",
            r.text
        );
        assert!(r
            .text
            .contains("outage 2026-12-01T03:00:00Z .. 2026-12-01T03:05:00Z (300 s)"));
        assert!(r.text.contains("fleet nodes 2 uptime 74.826% covered 129300.000 s of 172800.000 s outages 2 reports 14"), "{}", r.text);
        assert!(r.html.contains("&lt;b&gt;x&lt;/b&gt;") && !r.html.contains("<b>x</b>"));
        assert_eq!(r.subject, "Weir uptime report 2026-12-01 (UTC)");
    }

    #[test]
    fn message_ids_are_per_report_and_recipient() {
        let a = message_id("daily-2026-12-01", "ops@example.com");
        assert_eq!(a, message_id("daily-2026-12-01", "OPS@example.com"));
        assert_ne!(a, message_id("daily-2026-12-01", "dev@example.com"));
        assert_ne!(a, message_id("daily-2026-12-02", "ops@example.com"));
        assert!(a.starts_with("<daily-2026-12-01.") && a.ends_with("@weir.report>"));
    }
}
