//! Sorting and cursor pagination of `GET /api/v1/servers`.
//!
//! Pages are cut by keyset, not by offset: the cursor carries the sort it
//! was made for and the last row's sort key and id, and the next page is
//! the rows after `(key, id)` in that order. Rows inserted or removed
//! between two requests neither repeat nor vanish from the pages, and a
//! deep page costs what the first does.
//!
//! The cursor is opaque to clients (base64url of a small JSON array with
//! a version), and [`Cursor::decode`] refuses anything it did not make:
//! too long, not base64, not the array, another version, a key of the
//! wrong type for its sort. It never panics, whatever it is given.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use super::fields::{check_id, MAX_ID, MAX_LABEL};

/// Longest cursor accepted (an id and a name of the largest sizes fit).
pub const MAX_CURSOR: usize = 2048;
const VERSION: u64 = 1;

/// The fields a list may be sorted by (an allow-list: the SQL of each is
/// fixed here, never built from the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    /// The server id.
    Id,
    /// The operator's name (servers without one first).
    Name,
    /// The last health report (servers that never reported first).
    LastSeen,
    /// Registration, or the first report of a server never registered.
    CreatedAt,
}

impl SortField {
    /// Every field, for messages.
    pub const ALL: [SortField; 4] = [
        SortField::Id,
        SortField::Name,
        SortField::LastSeen,
        SortField::CreatedAt,
    ];

    /// Its name in `sort=`.
    pub fn as_str(self) -> &'static str {
        match self {
            SortField::Id => "id",
            SortField::Name => "name",
            SortField::LastSeen => "last_seen",
            SortField::CreatedAt => "created_at",
        }
    }

    fn parse(s: &str) -> Option<SortField> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// Whether its key is a time (unix microseconds) rather than text.
    pub fn is_time(self) -> bool {
        matches!(self, SortField::LastSeen | SortField::CreatedAt)
    }

    /// Its key as SQL over the inventory view `v` (never NULL, so that the
    /// keyset comparison is total).
    pub fn sql(self) -> &'static str {
        match self {
            SortField::Id => "v.node_id",
            SortField::Name => "COALESCE(v.name, '')",
            SortField::LastSeen => {
                "COALESCE((extract(epoch FROM v.last_seen) * 1000000)::bigint, 0)"
            }
            SortField::CreatedAt => {
                "COALESCE((extract(epoch FROM v.created_at) * 1000000)::bigint, 0)"
            }
        }
    }
}

/// A field and a direction (`sort=name`, `sort=-last_seen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    /// The field.
    pub field: SortField,
    /// Descending (`-` in front).
    pub desc: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Sort {
            field: SortField::Id,
            desc: false,
        }
    }
}

impl Sort {
    /// `field` or `-field`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Sort> {
        let (desc, name) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        SortField::parse(name).map(|field| Sort { field, desc })
    }

    /// As written in `sort=`.
    pub fn as_param(&self) -> String {
        format!(
            "{}{}",
            if self.desc { "-" } else { "" },
            self.field.as_str()
        )
    }
}

/// A row's sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKey {
    /// For `id` and `name`.
    Text(String),
    /// For times: unix microseconds (0 for none).
    Micros(i64),
}

/// Where a page ends: the sort it was made for, the last row's key and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The sort of the list this cursor pages.
    pub sort: Sort,
    /// The last row's sort key.
    pub key: SortKey,
    /// The last row's id (ties of the key are broken by id).
    pub id: String,
}

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Longer than [`MAX_CURSOR`].
    #[error("the cursor is longer than {MAX_CURSOR} characters")]
    TooLong,
    /// Not something this server made.
    #[error("the cursor is not one this server made; use next_cursor of the previous page as is")]
    Garbage,
}

impl Cursor {
    /// The opaque text of the cursor.
    pub fn encode(&self) -> String {
        let key = match &self.key {
            SortKey::Text(s) => Value::String(s.clone()),
            SortKey::Micros(n) => json!(n),
        };
        let doc = json!([
            VERSION,
            self.sort.field.as_str(),
            self.sort.desc,
            key,
            self.id
        ]);
        URL_SAFE_NO_PAD.encode(doc.to_string())
    }

    /// The cursor of `text`, if this server made it.
    pub fn decode(text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR {
            return Err(CursorError::TooLong);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| CursorError::Garbage)?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|_| CursorError::Garbage)?;
        let Some([v, field, desc, key, id]) = doc.as_array().map(Vec::as_slice) else {
            return Err(CursorError::Garbage);
        };
        if v.as_u64() != Some(VERSION) {
            return Err(CursorError::Garbage);
        }
        let field = field
            .as_str()
            .and_then(SortField::parse)
            .ok_or(CursorError::Garbage)?;
        let desc = desc.as_bool().ok_or(CursorError::Garbage)?;
        let id = id.as_str().ok_or(CursorError::Garbage)?;
        check_id("cursor", id).map_err(|_| CursorError::Garbage)?;
        let key = match (field.is_time(), key) {
            (true, Value::Number(n)) => SortKey::Micros(n.as_i64().ok_or(CursorError::Garbage)?),
            (false, Value::String(s)) if s.len() <= MAX_ID.max(MAX_LABEL) => {
                if s.chars().any(char::is_control) {
                    return Err(CursorError::Garbage);
                }
                SortKey::Text(s.clone())
            }
            _ => return Err(CursorError::Garbage),
        };
        Ok(Cursor {
            sort: Sort { field, desc },
            key,
            id: id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cursors() -> impl Strategy<Value = Cursor> {
        let text = "[^\\p{Cc}]{0,60}";
        (
            0..4usize,
            any::<bool>(),
            text,
            any::<i64>(),
            "[a-zA-Z0-9._:/-]{1,60}",
        )
            .prop_map(|(f, desc, s, n, id)| {
                let field = SortField::ALL[f];
                Cursor {
                    sort: Sort { field, desc },
                    key: if field.is_time() {
                        SortKey::Micros(n)
                    } else {
                        SortKey::Text(s)
                    },
                    id,
                }
            })
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(c in cursors()) {
            prop_assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        }

        #[test]
        fn garbage_is_refused_without_panicking(s in ".{0,3000}") {
            // Almost all of it is refused; none of it may panic.
            let _ = Cursor::decode(&s);
        }

        #[test]
        fn base64_of_arbitrary_json_is_refused_or_valid(doc in prop_oneof![
            Just(json!([1, "id", false, 5, "n1"])),
            Just(json!([1, "last_seen", false, "x", "n1"])),
            Just(json!([2, "id", false, "a", "n1"])),
            Just(json!([1, "weight", false, "a", "n1"])),
            Just(json!([1, "id", "no", "a", "n1"])),
            Just(json!([1, "id", false, "a", ""])),
            Just(json!([1, "id", false, "a", "n\u{0}1"])),
            Just(json!({"v": 1})),
            Just(json!([1, "last_seen", false, 1e300, "n1"])),
        ]) {
            let text = URL_SAFE_NO_PAD.encode(doc.to_string());
            prop_assert_eq!(Cursor::decode(&text), Err(CursorError::Garbage));
        }
    }

    #[test]
    fn sorts_parse_from_the_allow_list_only() {
        assert_eq!(
            Sort::parse("-last_seen"),
            Some(Sort {
                field: SortField::LastSeen,
                desc: true
            })
        );
        assert_eq!(
            Sort::parse("name").map(|s| s.as_param()),
            Some("name".into())
        );
        for bad in ["", "-", "--id", "weight", "id;DROP TABLE servers", "ID"] {
            assert_eq!(Sort::parse(bad), None, "{bad}");
        }
        assert_eq!(Cursor::decode(&"A".repeat(3000)), Err(CursorError::TooLong));
    }
}
