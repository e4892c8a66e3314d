//! Reading fields out of JSON callback bodies, strictly: a field of the wrong
//! type is a bad request, never a silent default.

use serde_json::{Map, Value};

use super::provider::Rejection;
use crate::domain::AmountFen;

/// The body as a JSON object. Invalid UTF-8, invalid JSON, nesting deeper than
/// serde_json's recursion limit, and non-objects are all refused.
pub fn object_body(body: &[u8]) -> Result<Map<String, Value>, Rejection> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::BadRequest("body is not a JSON object")),
        Err(_) => Err(Rejection::BadRequest("body is not valid JSON")),
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
