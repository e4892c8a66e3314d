//! `application/x-www-form-urlencoded` decoding and the sorted `k=v&` signing
//! string used by cbb (and Alipay-style providers).

use super::super::provider::Rejection;

/// At most this many fields in a form body: no provider sends more than a few
/// dozen, and the limit keeps the work before the signature check small.
pub const MAX_FORM_FIELDS: usize = 256;

/// Decodes a form body once into `(key, value)` pairs, in order.
///
/// Refuses what a lenient decoder would silently "repair": invalid UTF-8 after
/// percent-decoding, and a key given twice (which value was signed would be
/// ambiguous). Linear in the body: the fields are counted before any is
/// decoded, and keys are checked for repeats with a hash set.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, Rejection> {
    let fields = body.split(|b| *b == b'&').filter(|part| !part.is_empty()).count();
    if fields > MAX_FORM_FIELDS {
        return Err(Rejection::BadRequest("too many fields"));
    }
    let mut pairs: Vec<(String, String)> = Vec::with_capacity(fields);
    let mut seen = std::collections::HashSet::with_capacity(fields);
    for part in body.split(|b| *b == b'&') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = match part.iter().position(|b| *b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &b""[..]),
        };
        let key = decode_component(k)?;
        let value = decode_component(v)?;
        if !seen.insert(key.clone()) {
            return Err(Rejection::BadRequest("duplicate form key"));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn decode_component(raw: &[u8]) -> Result<String, Rejection> {
    let plus_as_space: Vec<u8> = raw.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&plus_as_space).collect();
    String::from_utf8(bytes).map_err(|_| Rejection::BadRequest("form field is not UTF-8"))
}

/// Drops the fields named in `skip` and every field whose value is empty, sorts
/// the rest by key in byte order, and joins them as `k=v` with `&`.
pub fn sorted_signing_string(pairs: &[(String, String)], skip: &[&str]) -> String {
    let mut kept: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, v)| !v.is_empty() && !skip.contains(&k.as_str()))
        .collect();
    kept.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = String::new();
    for (i, (k, v)) in kept.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Encodes pairs as a form body (for sample callbacks).
pub fn encode_form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plus_and_percent() {
        let pairs = parse_form(b"a=x+y&b=%E6%B5%8B&c=").unwrap();
        assert_eq!(pairs[0], ("a".into(), "x y".into()));
        assert_eq!(pairs[1], ("b".into(), "测".into()));
        assert_eq!(pairs[2], ("c".into(), "".into()));
    }

    #[test]
    fn refuses_duplicates_and_bad_utf8() {
        assert_eq!(
            parse_form(b"a=1&a=2"),
            Err(Rejection::BadRequest("duplicate form key"))
        );
        assert!(parse_form(b"a=%FF").is_err());
    }

    #[test]
    fn at_most_256_fields() {
        let form = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join("&");
        assert_eq!(parse_form(form(256).as_bytes()).map(|p| p.len()), Ok(256));
        assert_eq!(
            parse_form(form(257).as_bytes()),
            Err(Rejection::BadRequest("too many fields"))
        );
        // Empty parts (`a=1&&b=2`) are not fields.
        assert_eq!(parse_form(b"a=1&&&b=2").map(|p| p.len()), Ok(2));
    }

    #[test]
    fn signing_string_sorts_and_drops() {
        let pairs = parse_form(b"b=2&sign=zzz&a=1&c=").unwrap();
        assert_eq!(sorted_signing_string(&pairs, &["sign"]), "a=1&b=2");
    }
}
