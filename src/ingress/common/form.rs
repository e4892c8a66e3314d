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
    parse_form_bytes(body)?
        .into_iter()
        .map(|(key, value)| Ok((utf8(key)?, utf8(value)?)))
        .collect()
}

/// A form's `(key, value)` pairs as decoded bytes, in order.
pub type BytePairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Decodes a form body once into `(key, value)` byte pairs, in order, without
/// reading them as text: for providers that sign the decoded bytes and name
/// their text's charset in a field (Alipay). The same limits as
/// [`parse_form`]: at most [`MAX_FORM_FIELDS`] fields (counted before any is
/// decoded) and no key given twice (compared as decoded bytes). Linear in
/// the body.
pub fn parse_form_bytes(body: &[u8]) -> Result<BytePairs, Rejection> {
    let fields = body.split(|b| *b == b'&').filter(|part| !part.is_empty()).count();
    if fields > MAX_FORM_FIELDS {
        return Err(Rejection::BadRequest("too many fields"));
    }
    let mut pairs: BytePairs = Vec::with_capacity(fields);
    for part in body.split(|b| *b == b'&') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = match part.iter().position(|b| *b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &b""[..]),
        };
        pairs.push((decode_bytes(k), decode_bytes(v)));
    }
    let mut seen = std::collections::HashSet::with_capacity(pairs.len());
    if !pairs.iter().all(|(key, _)| seen.insert(key.as_slice())) {
        return Err(Rejection::BadRequest("duplicate form key"));
    }
    Ok(pairs)
}

/// One key or value, percent-decoded once with `+` read as a space.
fn decode_bytes(raw: &[u8]) -> Vec<u8> {
    let plus_as_space: Vec<u8> = raw.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect();
    percent_encoding::percent_decode(&plus_as_space).collect()
}

fn utf8(bytes: Vec<u8>) -> Result<String, Rejection> {
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
    fn decodes_to_bytes() {
        let pairs = parse_form_bytes(b"a=x+y&b=%D6%D0&c=&d&=e&&f=%zz%2").unwrap();
        let want: Vec<(&[u8], &[u8])> = vec![
            (b"a", b"x y"),
            (b"b", b"\xd6\xd0"),
            (b"c", b""),
            (b"d", b""),
            (b"", b"e"),
            (b"f", b"%zz%2"),
        ];
        let got: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        assert_eq!(got, want);
        assert_eq!(
            parse_form_bytes(b"a=1&%61=2"),
            Err(Rejection::BadRequest("duplicate form key"))
        );
        let form = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join("&");
        assert_eq!(parse_form_bytes(form(256).as_bytes()).map(|p| p.len()), Ok(256));
        assert_eq!(
            parse_form_bytes(form(257).as_bytes()),
            Err(Rejection::BadRequest("too many fields"))
        );
    }

    #[test]
    fn signing_string_sorts_and_drops() {
        let pairs = parse_form(b"b=2&sign=zzz&a=1&c=").unwrap();
        assert_eq!(sorted_signing_string(&pairs, &["sign"]), "a=1&b=2");
    }
}
