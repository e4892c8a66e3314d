//! Reading fields out of JSON callback bodies, strictly: a field of the wrong
//! type is a bad request, never a silent default.

use serde_json::{Map, Value};

use super::provider::Rejection;
use crate::domain::AmountFen;

/// At most this many members at the top level of a body, as for form fields
/// (`../spec`, "Hostile input stays cheap"): no provider sends more than a few
/// dozen.
pub const MAX_TOP_LEVEL_FIELDS: usize = 256;

/// The body as a JSON object. Invalid UTF-8, invalid JSON, nesting deeper than
/// serde_json's recursion limit, non-objects, a member name given twice in any
/// object (which value was meant would be ambiguous: refused, never first- or
/// last-wins) and more than [`MAX_TOP_LEVEL_FIELDS`] members are all refused.
/// Parsing is one linear pass (member names are checked with a hash map).
pub fn object_body(body: &[u8]) -> Result<Map<String, Value>, Rejection> {
    match serde_json::from_slice::<StrictValue>(body) {
        Ok(StrictValue(Value::Object(map))) if map.len() > MAX_TOP_LEVEL_FIELDS => {
            Err(Rejection::BadRequest("too many fields"))
        }
        Ok(StrictValue(Value::Object(map))) => Ok(map),
        Ok(_) => Err(Rejection::BadRequest("body is not a JSON object")),
        Err(e) if e.to_string().starts_with(DUPLICATE) => Err(Rejection::BadRequest("duplicate JSON member")),
        Err(_) => Err(Rejection::BadRequest("body is not valid JSON")),
    }
}

const DUPLICATE: &str = "duplicate member";

/// A `serde_json::Value` whose objects refuse a member name seen twice.
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let StrictValue(value) = access.next_value()?;
            if map.insert(key, value).is_some() {
                return Err(serde::de::Error::custom(DUPLICATE));
            }
        }
        Ok(Value::Object(map))
    }
}

/// An optional string field; `null` counts as absent.
pub fn opt_str<'a>(body: &'a Map<String, Value>, key: &'static str) -> Result<Option<&'a str>, Rejection> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(Rejection::BadRequest("a text field has the wrong type")),
    }
}

/// A required, non-empty string field.
pub fn req_str<'a>(body: &'a Map<String, Value>, key: &'static str) -> Result<&'a str, Rejection> {
    match opt_str(body, key)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Rejection::BadRequest("a required field is missing")),
    }
}

/// An identifier sent either as a string or as a non-negative integer
/// (e.g. dryad's numeric `orderId`), as text.
pub fn req_id_text(body: &Map<String, Value>, key: &'static str) -> Result<String, Rejection> {
    match body.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(v), _) => Ok(v.to_string()),
            (None, Some(v)) if v >= 0 => Ok(v.to_string()),
            _ => Err(Rejection::BadRequest("an identifier is not a whole number")),
        },
        _ => Err(Rejection::BadRequest("a required identifier is missing")),
    }
}

/// A required fen amount: a JSON integer or a string of digits.
pub fn req_fen(body: &Map<String, Value>, key: &'static str) -> Result<AmountFen, Rejection> {
    match body.get(key) {
        None | Some(Value::Null) => Err(Rejection::BadRequest("a required amount is missing")),
        Some(v) => AmountFen::from_json_fen(v).map_err(|_| Rejection::BadRequest("an amount is invalid")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_a_bad_request_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(object_body(deep.as_bytes()).is_err());
    }

    #[test]
    fn duplicate_members_are_refused_at_any_depth() {
        let dup = Err(Rejection::BadRequest("duplicate JSON member"));
        assert_eq!(object_body(br#"{"amount":1,"amount":99900}"#), dup);
        assert_eq!(object_body(br#"{"a":{"b":1,"b":1}}"#), dup);
        assert_eq!(object_body(br#"{"a":[{"b":1,"b":2}]}"#), dup);
        // The same name in different objects is not a duplicate.
        let body = object_body(br#"{"a":{"b":1},"c":{"b":2},"b":3}"#).unwrap();
        assert_eq!(body["a"]["b"], 1);
        // Escapes decode before the comparison: "\u0061" is "a".
        assert_eq!(object_body(br#"{"a":1,"\u0061":2}"#), dup);
    }

    #[test]
    fn numbers_keep_their_exact_form() {
        let body = object_body(br#"{"big":12345678901234567890,"neg":-5,"f":1.5}"#).unwrap();
        assert_eq!(body["big"].as_u64(), Some(12_345_678_901_234_567_890));
        assert_eq!(body["neg"].as_i64(), Some(-5));
        assert_eq!(body["f"].as_f64(), Some(1.5));
    }

    #[test]
    fn at_most_256_top_level_members() {
        let members = |n: usize| {
            let inner: Vec<String> = (0..n).map(|i| format!("\"k{i}\":1")).collect();
            format!("{{{}}}", inner.join(","))
        };
        assert!(object_body(members(256).as_bytes()).is_ok());
        assert_eq!(
            object_body(members(257).as_bytes()),
            Err(Rejection::BadRequest("too many fields"))
        );
    }

    #[test]
    fn wrong_types_are_refused() {
        let body = object_body(br#"{"a":1,"b":"x","n":-3,"big":1e40}"#).unwrap();
        assert!(opt_str(&body, "a").is_err());
        assert_eq!(opt_str(&body, "b"), Ok(Some("x")));
        assert!(req_id_text(&body, "n").is_err());
        assert!(req_id_text(&body, "big").is_err());
        assert!(req_fen(&body, "big").is_err());
        assert!(req_fen(&body, "missing").is_err());
    }
}
