//! The inventory in PostgreSQL: the operators' table (`server_inventory`)
//! joined with the health group's (`servers`), and every write guarded by
//! the version the client read.
//!
//! The join is a full outer join: a server registered but never reporting
//! has no `servers` row, a node reporting but never registered has no
//! `server_inventory` row (it shows with version 0, and the first operator
//! write creates its row). Every write compares the version in the same
//! statement that writes (`WHERE version = $n`, or an insert that conflicts
//! with a row created meanwhile), so of concurrent writers that read the
//! same version exactly one wins.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use super::cursor::{Cursor, Sort, SortField, SortKey};
use super::fields::OperatorFields;

/// What the health group measured of a server (absent until it reports).
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Service it reports.
    pub service: String,
    /// CDN role it reports.
    pub cdn_type: String,
    /// Endpoint it reports.
    pub endpoint: String,
    /// Agent that reports for it.
    pub agent_id: String,
    /// First report.
    pub first_seen: DateTime<Utc>,
    /// Last report.
    pub last_seen: DateTime<Utc>,
    /// Reports received.
    pub reports: i64,
}

/// One server as the inventory API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    /// Server id (the node id its agent reports).
    pub id: String,
    /// What operators wrote.
    #[serde(flatten)]
    pub fields: OperatorFields,
    /// `active` or `decommissioned`.
    pub status: String,
    /// Operator writes so far (0: reporting, never registered); the ETag.
    pub version: i64,
    /// Registration, or the first report of a server never registered.
    pub created_at: Option<DateTime<Utc>>,
    /// Last operator write.
    pub updated_at: Option<DateTime<Utc>>,
    /// When it was decommissioned.
    pub decommissioned_at: Option<DateTime<Utc>>,
    /// What the health group measured, `null` if it never reported.
    pub health: Option<Measured>,
}

impl ServerView {
    /// Whether it is decommissioned.
    pub fn decommissioned(&self) -> bool {
        self.status == "decommissioned"
    }

    /// Its key for `sort`.
    pub fn sort_key(&self, field: SortField) -> SortKey {
        let micros =
            |t: Option<DateTime<Utc>>| SortKey::Micros(t.map_or(0, |t| t.timestamp_micros()));
        match field {
            SortField::Id => SortKey::Text(self.id.clone()),
            SortField::Name => SortKey::Text(self.fields.name.clone().unwrap_or_default()),
            SortField::LastSeen => micros(self.health.as_ref().map(|h| h.last_seen)),
            SortField::CreatedAt => micros(self.created_at),
        }
    }

    fn from_row(r: &PgRow) -> Result<ServerView, sqlx::Error> {
        let last_seen: Option<DateTime<Utc>> = r.try_get("last_seen")?;
        let health = match last_seen {
            Some(last_seen) => Some(Measured {
                service: r.try_get("service")?,
                cdn_type: r.try_get("cdn_type")?,
                endpoint: r.try_get("endpoint")?,
                agent_id: r.try_get("agent_id")?,
                first_seen: r.try_get("first_seen")?,
                last_seen,
                reports: r.try_get("reports")?,
            }),
            None => None,
        };
        Ok(ServerView {
            id: r.try_get("node_id")?,
            fields: OperatorFields {
                name: r.try_get("name")?,
                owner: r.try_get("owner")?,
                location: r.try_get("location")?,
                tags: r.try_get("tags")?,
                expected_endpoint: r.try_get("expected_endpoint")?,
                notes: r.try_get("notes")?,
            },
            status: r.try_get("status")?,
            version: r.try_get("version")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            decommissioned_at: r.try_get("decommissioned_at")?,
            health,
        })
    }
}

/// The joined view, as a subquery `v`.
const VIEW: &str = "SELECT COALESCE(i.node_id, s.node_id) AS node_id, \
    i.name, i.owner, i.location, COALESCE(i.tags, '{}') AS tags, i.expected_endpoint, i.notes, \
    COALESCE(i.status, 'active') AS status, COALESCE(i.version, 0) AS version, \
    COALESCE(i.created_at, s.first_seen) AS created_at, i.updated_at, i.decommissioned_at, \
    s.service, s.cdn_type, s.endpoint, s.agent_id, s.first_seen, s.last_seen, s.reports \
    FROM server_inventory i FULL OUTER JOIN servers s ON s.node_id = i.node_id";

/// Filters of a list (all optional, combined with AND).
#[derive(Debug, Default)]
pub struct Filter {
    /// `active` or `decommissioned`.
    pub status: Option<String>,
    /// The service reported.
    pub service: Option<String>,
    /// The CDN role reported.
    pub cdn_type: Option<String>,
    /// One tag the server carries.
    pub tag: Option<String>,
    /// A substring of the id, name, owner, location or notes (any case).
    pub q: Option<String>,
}

/// `s` as a LIKE pattern matching it anywhere, its wildcards escaped.
fn contains_pattern(s: &str) -> String {
    let mut p = String::with_capacity(s.len() + 2);
    p.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// One page of servers in `sort` order after `after`, at most `limit`; and
/// whether more follow.
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    sort: Sort,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<(Vec<ServerView>, bool), sqlx::Error> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new("SELECT * FROM (");
    qb.push(VIEW);
    qb.push(") v WHERE TRUE");
    if let Some(s) = &filter.status {
        qb.push(" AND v.status = ").push_bind(s.clone());
    }
    if let Some(s) = &filter.service {
        qb.push(" AND v.service = ").push_bind(s.clone());
    }
    if let Some(s) = &filter.cdn_type {
        qb.push(" AND v.cdn_type = ").push_bind(s.clone());
    }
    if let Some(t) = &filter.tag {
        qb.push(" AND ").push_bind(t.clone()).push(" = ANY(v.tags)");
    }
    if let Some(q) = &filter.q {
        let p = contains_pattern(q);
        qb.push(" AND (");
        for (i, col) in ["v.node_id", "v.name", "v.owner", "v.location", "v.notes"]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                qb.push(" OR ");
            }
            qb.push(col)
                .push(" ILIKE ")
                .push_bind(p.clone())
                .push(" ESCAPE '\\'");
        }
        qb.push(")");
    }
    let key = sort.field.sql();
    let (cmp, dir) = if sort.desc {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some(c) = after {
        qb.push(format_args!(" AND ({key}, v.node_id) {cmp} ("));
        match &c.key {
            SortKey::Text(s) => qb.push_bind(s.clone()).push("::text"),
            SortKey::Micros(n) => qb.push_bind(*n).push("::bigint"),
        };
        qb.push(", ").push_bind(c.id.clone()).push(")");
    }
    qb.push(format_args!(
        " ORDER BY {key} {dir}, v.node_id {dir} LIMIT "
    ));
    qb.push_bind(limit + 1);
    let rows = qb.build().fetch_all(pool).await?;
    let mut out = rows
        .iter()
        .map(ServerView::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let more = out.len() as i64 > limit;
    out.truncate(limit.max(0) as usize);
    Ok((out, more))
}

/// One server, registered or reporting.
pub async fn get(pool: &PgPool, id: &str) -> Result<Option<ServerView>, sqlx::Error> {
    let sql = format!("SELECT * FROM ({VIEW} WHERE COALESCE(i.node_id, s.node_id) = $1) v");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(ServerView::from_row).transpose()
}

/// Registers `id`; `false` if it is registered already (or was, and was
/// decommissioned: ids are not reused).
pub async fn insert(pool: &PgPool, id: &str, f: &OperatorFields) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO server_inventory (node_id, name, owner, location, tags, expected_endpoint, notes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (node_id) DO NOTHING",
    )
    .bind(id)
    .bind(&f.name)
    .bind(&f.owner)
    .bind(&f.location)
    .bind(&f.tags)
    .bind(&f.expected_endpoint)
    .bind(&f.notes)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Writes `f` if the server is still at `version`; the new version, or
/// `None` if someone else wrote first. Version 0 (a reporting server never
/// registered) creates its row, which fails the same way if another writer
/// created it first.
pub async fn update(
    pool: &PgPool,
    id: &str,
    version: i64,
    f: &OperatorFields,
) -> Result<Option<i64>, sqlx::Error> {
    if version == 0 {
        return Ok(insert(pool, id, f).await?.then_some(1));
    }
    sqlx::query_scalar(
        "UPDATE server_inventory SET name = $3, owner = $4, location = $5, tags = $6, \
         expected_endpoint = $7, notes = $8, version = version + 1, updated_at = now() \
         WHERE node_id = $1 AND version = $2 RETURNING version",
    )
    .bind(id)
    .bind(version)
    .bind(&f.name)
    .bind(&f.owner)
    .bind(&f.location)
    .bind(&f.tags)
    .bind(&f.expected_endpoint)
    .bind(&f.notes)
    .fetch_optional(pool)
    .await
}

/// Marks `id` decommissioned (creating its row if it only ever reported),
/// if it is still at `version` when one is given; the new version, or
/// `None` if it changed meanwhile or was decommissioned already.
pub async fn decommission(
    pool: &PgPool,
    id: &str,
    version: Option<i64>,
) -> Result<Option<i64>, sqlx::Error> {
    if let Some(v) = version.filter(|v| *v > 0) {
        return sqlx::query_scalar(
            "UPDATE server_inventory SET status = 'decommissioned', decommissioned_at = now(), \
             updated_at = now(), version = version + 1 \
             WHERE node_id = $1 AND status = 'active' AND version = $2 RETURNING version",
        )
        .bind(id)
        .bind(v)
        .fetch_optional(pool)
        .await;
    }
    // No row yet (version 0: it only ever reported), or no version asked
    // for: an upsert. With version 0 asked for, a row created meanwhile
    // wins (the conflict updates nothing).
    sqlx::query_scalar(
        "INSERT INTO server_inventory (node_id, status, decommissioned_at) \
         VALUES ($1, 'decommissioned', now()) \
         ON CONFLICT (node_id) DO UPDATE SET status = 'decommissioned', \
           decommissioned_at = now(), updated_at = now(), version = server_inventory.version + 1 \
         WHERE server_inventory.status = 'active' AND $2::bigint IS NULL \
         RETURNING version",
    )
    .bind(id)
    .bind(version)
    .fetch_optional(pool)
    .await
}

/// Ids of every decommissioned server (copied into Redis at start).
pub async fn decommissioned(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT node_id FROM server_inventory WHERE status = 'decommissioned'")
        .fetch_all(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn search_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
        assert_eq!(contains_pattern("paris"), "%paris%");
    }
}
