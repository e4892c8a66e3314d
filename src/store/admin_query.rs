//! The `WHERE` clauses of the operator listings, written once for both
//! backends: `sqlite_admin.rs` and `postgres_admin.rs` differ only in how
//! they compare text in byte order (SQLite's default `BINARY` collation;
//! PostgreSQL needs `COLLATE "C"` whatever the database's collation).

use sqlx::{Database, Encode, QueryBuilder, Type};

use super::EventFilter;

/// A text that sorts after every string that starts with a given prefix, in
/// byte order: the highest code point (4 UTF-8 bytes, `F4 8F BF BF`).
const PREFIX_END: char = '\u{10FFFF}';

/// How far an event's id (a ULID, stamped from the system clock when the
/// event was made) may be from its `received_at` (from the clock that judges
/// freshness). The id bounds derived from a time range are widened by this,
/// so they only narrow the scan (the primary key's order is the time order)
/// and never drop an event; `received_at` decides exactly.
const ID_TIME_MARGIN_MS: i64 = 3_600_000;

/// For `deliveries d`: no delivery redelivers it (yet).
pub(super) const NOT_REDELIVERED: &str =
    "NOT EXISTS (SELECT 1 FROM deliveries n WHERE n.redelivery_of = d.id)";

/// The lowest event id made at `ms` (ULID with zero randomness).
pub(super) fn event_id_floor(ms: i64) -> String {
    let ms = u64::try_from(ms.max(0)).unwrap_or(0);
    format!("evt_{}", ulid::Ulid::from_parts(ms, 0))
}

/// The conditions of `filter` (except the cursor and limit), each starting
/// with ` AND `. `collate` is appended to every text column that is compared
/// by range (empty for SQLite, ` COLLATE "C"` for PostgreSQL).
pub(super) fn push_event_conditions<'a, DB>(q: &mut QueryBuilder<'a, DB>, filter: &EventFilter, collate: &str)
where
    DB: Database,
    String: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    let exact = [
        ("account", &filter.account),
        ("provider", &filter.provider),
        ("event_type", &filter.event_type),
        ("merchant_order_no", &filter.merchant_order_no),
    ];
    for (column, value) in exact {
        if let Some(value) = value {
            q.push(format_args!(" AND {column} = "));
            q.push_bind(value.clone());
        }
    }
    if let Some(prefix) = &filter.search {
        // A prefix is a range in byte order, which an index can serve (the
        // primary key, `merchant_order_no`'s index), unlike `LIKE`, which is
        // also case-insensitive in SQLite and case-sensitive in PostgreSQL.
        // Something that looks like an event id is only looked for there.
        let columns: &[&str] = if prefix.starts_with("evt_") {
            &["id"]
        } else {
            &["id", "provider_trade_no", "merchant_order_no"]
        };
        let end = format!("{prefix}{PREFIX_END}");
        q.push(" AND (");
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push(format_args!("({column}{collate} >= "));
            q.push_bind(prefix.clone());
            q.push(format_args!(" AND {column}{collate} < "));
            q.push_bind(end.clone());
            q.push(")");
        }
        q.push(")");
    }
    if let Some(since) = filter.received_since_ms {
        q.push(" AND received_at >= ");
        q.push_bind(since);
        q.push(format_args!(" AND id{collate} >= "));
        q.push_bind(event_id_floor(since.saturating_sub(ID_TIME_MARGIN_MS)));
    }
    if let Some(until) = filter.received_until_ms {
        q.push(" AND received_at < ");
        q.push_bind(until);
        q.push(format_args!(" AND id{collate} < "));
        q.push_bind(event_id_floor(until.saturating_add(ID_TIME_MARGIN_MS)));
    }
    if let Some(before) = &filter.before {
        // Keyset pagination: ULIDs sort by time in byte order.
        q.push(format_args!(" AND id{collate} < "));
        q.push_bind(before.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_floors_sort_by_time() {
        let a = event_id_floor(1_700_000_000_000);
        let b = event_id_floor(1_700_000_000_001);
        assert!(a < b);
        assert!(crate::domain::EventId::parse(&a).is_ok(), "{a}");
        // An id made in that millisecond sorts at or above the floor.
        let made = format!("evt_{}", ulid::Ulid::from_parts(1_700_000_000_000, 12345));
        assert!(made >= a && made < b);
        assert_eq!(event_id_floor(-5), event_id_floor(0));
    }

    #[test]
    fn the_prefix_end_sorts_after_every_continuation() {
        let end = format!("M-1{PREFIX_END}");
        for inside in ["M-1", "M-10", "M-1\u{7f}", "M-1中文", "M-1\u{10FFFE}"] {
            assert!(inside.as_bytes() < end.as_bytes(), "{inside}");
            assert!(inside >= "M-1");
        }
        assert!("M-2".as_bytes() > end.as_bytes());
    }
}
