//! What an operator may write about a server, how it is checked, and JSON
//! merge patch (RFC 7396).
//!
//! Bodies are read as `serde_json::Value` and checked field by field here,
//! not deserialized straight into a struct: every refusal then names the
//! field (`tags[3]`), unknown fields are refused by name, and no field is
//! accepted without a bound on its size.

use serde::Serialize;
use serde_json::{Map, Value};

/// Largest request body of the inventory API, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest server id (as node ids elsewhere in Weir).
pub const MAX_ID: usize = 255;
/// Largest `name`, `owner` and `location`.
pub const MAX_LABEL: usize = 200;
/// Most tags per server.
pub const MAX_TAGS: usize = 64;
/// Largest tag.
pub const MAX_TAG: usize = 64;
/// Largest `expected_endpoint`.
pub const MAX_ENDPOINT: usize = 255;
/// Largest `notes`.
pub const MAX_NOTES: usize = 4096;

/// The fields an operator writes (`POST` and `PATCH`); the health group
/// never writes them.
const OPERATOR_FIELDS: [&str; 6] = [
    "name",
    "owner",
    "location",
    "tags",
    "expected_endpoint",
    "notes",
];

/// A refusal naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field (`name`, `tags[3]`).
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

impl FieldError {
    fn new(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            detail: detail.into(),
        }
    }
}

/// What operators say about a server.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct OperatorFields {
    /// A name for people.
    pub name: Option<String>,
    /// Who to call.
    pub owner: Option<String>,
    /// Where it is (site, rack).
    pub location: Option<String>,
    /// Free labels for filtering, distinct.
    pub tags: Vec<String>,
    /// The endpoint it should report (`host:port` or a URL).
    pub expected_endpoint: Option<String>,
    /// Free text; may span lines.
    pub notes: Option<String>,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A text field: a non-empty string of at most `max` bytes without control
/// characters (NUL included; `multiline` lets line breaks and tabs in), or
/// null.
fn text(field: &str, v: &Value, max: usize, multiline: bool) -> Result<Option<String>, FieldError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => {
            check_text(field, s, max, multiline)?;
            Ok(Some(s.clone()))
        }
        other => Err(FieldError::new(
            field,
            format!("{field} must be a string or null, not {}", kind(other)),
        )),
    }
}

/// The checks of [`text`] on a string.
pub fn check_text(field: &str, s: &str, max: usize, multiline: bool) -> Result<(), FieldError> {
    if s.is_empty() {
        return Err(FieldError::new(
            field,
            format!("{field} must not be empty (send null to clear it)"),
        ));
    }
    if s.len() > max {
        return Err(FieldError::new(
            field,
            format!("{field} is {} bytes; at most {max} are allowed", s.len()),
        ));
    }
    let allowed = |c: char| multiline && matches!(c, '\n' | '\r' | '\t');
    if let Some(c) = s.chars().find(|c| c.is_control() && !allowed(*c)) {
        return Err(FieldError::new(
            field,
            format!(
                "{field} contains the control character U+{:04X}; control characters (NUL included) are refused",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// A server id: what agents report as `node_id` (1 to 255 bytes, no
/// control characters, no surrounding spaces).
pub fn check_id(field: &str, id: &str) -> Result<(), FieldError> {
    check_text(field, id, MAX_ID, false)?;
    if id.trim() != id {
        return Err(FieldError::new(
            field,
            format!("{field} must not start or end with spaces"),
        ));
    }
    Ok(())
}

fn tags(v: &Value) -> Result<Vec<String>, FieldError> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        other => {
            return Err(FieldError::new(
                "tags",
                format!("tags must be an array of strings, not {}", kind(other)),
            ))
        }
    };
    if items.len() > MAX_TAGS {
        return Err(FieldError::new(
            "tags",
            format!(
                "tags has {} items; at most {MAX_TAGS} are allowed",
                items.len()
            ),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let field = format!("tags[{i}]");
        let Value::String(s) = t else {
            return Err(FieldError::new(
                &field,
                format!("{field} must be a string, not {}", kind(t)),
            ));
        };
        check_text(&field, s, MAX_TAG, false)?;
        if out.contains(s) {
            return Err(FieldError::new(&field, format!("{field} repeats {s:?}")));
        }
        out.push(s.clone());
    }
    Ok(out)
}

impl OperatorFields {
    /// The fields of a JSON object; a field that is absent is empty. Unknown
    /// fields are refused by name.
    pub fn from_json(obj: &Map<String, Value>) -> Result<Self, FieldError> {
        if let Some(k) = obj.keys().find(|k| !OPERATOR_FIELDS.contains(&k.as_str())) {
            let shown: String = k.chars().take(64).collect();
            return Err(FieldError::new(
                shown.clone(),
                format!(
                    "unknown field {shown:?}; the fields are {}",
                    OPERATOR_FIELDS.join(", ")
                ),
            ));
        }
        let get = |k: &str| obj.get(k).unwrap_or(&Value::Null);
        Ok(OperatorFields {
            name: text("name", get("name"), MAX_LABEL, false)?,
            owner: text("owner", get("owner"), MAX_LABEL, false)?,
            location: text("location", get("location"), MAX_LABEL, false)?,
            tags: tags(get("tags"))?,
            expected_endpoint: text(
                "expected_endpoint",
                get("expected_endpoint"),
                MAX_ENDPOINT,
                false,
            )?,
            notes: text("notes", get("notes"), MAX_NOTES, true)?,
        })
    }

    /// The fields as the JSON object a merge patch applies to (absent
    /// values as absent members, as RFC 7396 removes them).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(s) = v {
                m.insert(k.into(), Value::String(s.clone()));
            }
        };
        put("name", &self.name);
        put("owner", &self.owner);
        put("location", &self.location);
        put("expected_endpoint", &self.expected_endpoint);
        put("notes", &self.notes);
        if !self.tags.is_empty() {
            m.insert(
                "tags".into(),
                Value::Array(self.tags.iter().cloned().map(Value::String).collect()),
            );
        }
        Value::Object(m)
    }
}

/// The body of `POST /api/v1/servers`: `id` and the operator fields.
pub fn parse_create(v: &Value) -> Result<(String, OperatorFields), FieldError> {
    let Value::Object(obj) = v else {
        return Err(FieldError::new(
            "",
            format!("the body must be a JSON object, not {}", kind(v)),
        ));
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(FieldError::new(
                "id",
                format!("id must be a string, not {}", kind(other)),
            ))
        }
        None => {
            return Err(FieldError::new(
                "id",
                "id is required: the node id the server's agent reports",
            ))
        }
    };
    check_id("id", &id)?;
    let mut rest = obj.clone();
    rest.remove("id");
    Ok((id, OperatorFields::from_json(&rest)?))
}

/// Applies a JSON merge patch (RFC 7396) to `target`: members of an object
/// patch replace the target's, `null` removes, nested objects merge, and
/// anything that is not an object replaces the target whole.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// The examples of RFC 7396, appendix A.
    #[test]
    fn merge_patch_follows_the_rfc_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, want, "{target} + {patch}");
        }
    }

    #[test]
    fn operator_fields_name_the_field_they_refuse() {
        let refuse = |v: Value| {
            let Value::Object(m) = v else { unreachable!() };
            OperatorFields::from_json(&m).expect_err("refused").field
        };
        assert_eq!(refuse(json!({"name": "a\u{0}b"})), "name");
        assert_eq!(refuse(json!({"name": 7})), "name");
        assert_eq!(refuse(json!({"owner": ""})), "owner");
        assert_eq!(refuse(json!({"location": "x".repeat(201)})), "location");
        assert_eq!(refuse(json!({"tags": "edge"})), "tags");
        assert_eq!(refuse(json!({"tags": ["a", 1]})), "tags[1]");
        assert_eq!(refuse(json!({"tags": ["a", "a"]})), "tags[1]");
        assert_eq!(refuse(json!({"tags": vec!["t"; 65]})), "tags");
        assert_eq!(refuse(json!({"notes": "x".repeat(4097)})), "notes");
        assert_eq!(refuse(json!({"status": "up"})), "status");
        // Notes may span lines; names may not.
        let Value::Object(m) = json!({"notes": "line 1\nline 2\tend"}) else {
            unreachable!()
        };
        assert!(OperatorFields::from_json(&m).is_ok());
        assert_eq!(refuse(json!({"name": "a\nb"})), "name");
    }

    #[test]
    fn create_needs_a_valid_id() {
        let field = |v: Value| parse_create(&v).expect_err("refused").field;
        assert_eq!(field(json!({})), "id");
        assert_eq!(field(json!({"id": 5})), "id");
        assert_eq!(field(json!({"id": " n1"})), "id");
        assert_eq!(field(json!({"id": "x".repeat(256)})), "id");
        assert_eq!(field(json!({"id": "n1", "nope": 1})), "nope");
        let (id, f) =
            parse_create(&json!({"id": "n1", "name": "Paris 1", "tags": ["edge"]})).expect("valid");
        assert_eq!(id, "n1");
        assert_eq!(f.name.as_deref(), Some("Paris 1"));
        assert_eq!(f.tags, ["edge"]);
    }

    fn fields() -> impl Strategy<Value = OperatorFields> {
        let label = proptest::option::of("[a-zA-Z0-9 ._-]{1,40}");
        (
            label.clone(),
            label.clone(),
            label.clone(),
            proptest::collection::btree_set("[a-z0-9-]{1,16}", 0..8),
            label,
            proptest::option::of("[a-zA-Z0-9 .\n]{1,200}"),
        )
            .prop_map(|(name, owner, location, tags, expected_endpoint, notes)| {
                OperatorFields {
                    name,
                    owner,
                    location,
                    tags: tags.into_iter().collect(),
                    expected_endpoint,
                    notes,
                }
            })
    }

    proptest! {
        /// Patching `a` with `b`'s fields (and nulls for what `b` lacks)
        /// gives `b`; an empty patch changes nothing.
        #[test]
        fn a_patch_of_every_field_gives_the_patch(a in fields(), b in fields()) {
            let mut doc = a.to_json();
            let mut patch = b.to_json();
            if let Value::Object(p) = &mut patch {
                for k in OPERATOR_FIELDS {
                    p.entry(k).or_insert(Value::Null);
                }
            }
            merge_patch(&mut doc, &patch);
            let Value::Object(m) = &doc else { panic!("an object") };
            prop_assert_eq!(OperatorFields::from_json(m).expect("valid"), b);
            let mut same = a.to_json();
            merge_patch(&mut same, &json!({}));
            prop_assert_eq!(same, a.to_json());
        }

        /// Whatever JSON a client sends, checking it answers (accept or a
        /// named refusal) and never panics.
        #[test]
        fn arbitrary_patches_are_checked_without_panicking(
            key in "[a-z_]{1,20}", s in ".{0,300}", n in any::<f64>(), pick in 0..4u8,
        ) {
            let v = match pick {
                0 => Value::String(s),
                1 => json!(n),
                2 => json!([s]),
                _ => json!({"x": s}),
            };
            let mut doc = OperatorFields::default().to_json();
            let mut patch = Map::new();
            patch.insert(key, v);
            merge_patch(&mut doc, &Value::Object(patch));
            if let Value::Object(m) = &doc {
                if let Err(e) = OperatorFields::from_json(m) {
                    prop_assert!(!e.field.is_empty());
                }
            }
        }
    }
}
