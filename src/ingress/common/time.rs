//! Provider timestamps. Chinese providers write local time without a zone: it
//! is Asia/Shanghai, which has been UTC+8 without daylight saving since 1991,
//! so a fixed offset is exact for every timestamp a provider sends today.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

fn shanghai() -> FixedOffset {
    match FixedOffset::east_opt(8 * 3600) {
        Some(tz) => tz,
        None => unreachable!("+08:00 is a valid offset"),
    }
}

/// `yyyy-MM-dd HH:mm:ss` as Shanghai local time; also accepts ISO 8601 /
/// RFC 3339 with an explicit offset, and `yyyy-MM-ddTHH:mm:ss` as local time.
pub fn parse_shanghai_local(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, fmt) {
            return local_to_utc(naive);
        }
    }
    None
}

/// A separate date and time (e.g. ABC's `yyyy/MM/dd` + `HH:mm:ss`) as Shanghai
/// local time.
pub fn parse_shanghai_date_time(date: &str, date_fmt: &str, time: &str) -> Option<DateTime<Utc>> {
    let d = NaiveDate::parse_from_str(date.trim(), date_fmt).ok()?;
    let t = NaiveTime::parse_from_str(time.trim(), "%H:%M:%S").ok()?;
    local_to_utc(d.and_time(t))
}

fn local_to_utc(naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    shanghai()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// Epoch milliseconds, as text (Shouqianba, Dryad headers).
pub fn from_epoch_millis(text: &str) -> Option<DateTime<Utc>> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: i64 = text.parse().ok()?;
    DateTime::from_timestamp_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shanghai_local_is_utc_plus_8() {
        let t = parse_shanghai_local("2026-01-15 14:30:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-15T06:30:00+00:00");
        let iso = parse_shanghai_local("2026-01-15T14:30:00+08:00").unwrap();
        assert_eq!(iso, t);
        assert!(parse_shanghai_local("yesterday").is_none());
    }

    #[test]
    fn abc_date_time() {
        let t = parse_shanghai_date_time("2026/01/15", "%Y/%m/%d", "14:30:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-15T06:30:00+00:00");
    }

    #[test]
    fn epoch_millis() {
        let t = from_epoch_millis("1449569460430").unwrap();
        assert_eq!(t.timestamp_millis(), 1449569460430);
        assert!(from_epoch_millis("-5").is_none());
        assert!(from_epoch_millis("99999999999999999999").is_none());
    }
}
