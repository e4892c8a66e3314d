//! The operator queries behind `/admin/*`, written once for both backends
//! ([`operator_queries!`] expands them in `sqlite_admin.rs` and
//! `postgres_admin.rs`, which keep only what really differs). The SQL is
//! written with PostgreSQL's `$n` parameters; SQLite's `?n` is derived
//! ([`sqlite_sql`]). Text ranges are compared in byte order: SQLite's
//! default `BINARY` collation, PostgreSQL's `COLLATE "C"` whatever the
//! database's collation.

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

pub(super) const EVENT_COLUMNS: &str =
    "SELECT id, account, provider, event_type, payload, received_at FROM events";

/// A delivery, and which delivery redelivered it (if one did).
pub(super) const DELIVERY_COLUMNS: &str = "SELECT d.id, d.event_id, d.endpoint_id, d.status, d.attempts, \
     d.next_attempt_at, d.last_error, d.created_at, d.updated_at, d.redelivery_of, \
     (SELECT n.id FROM deliveries n WHERE n.redelivery_of = d.id) AS redelivered_as \
     FROM deliveries d";

/// Inserts one pending delivery, due now; it redelivers the newest dead
/// delivery of the same event to the same endpoint that nothing redelivered
/// yet, if there is one.
pub(super) const INSERT_REDELIVERY: &str =
    "INSERT INTO deliveries (event_id, endpoint_id, status, attempts, \
     next_attempt_at, lease_until, created_at, updated_at, redelivery_of) \
     VALUES ($1, $2, 'pending', 0, $3, 0, $3, $3, \
     (SELECT d.id FROM deliveries d WHERE d.event_id = $1 AND d.endpoint_id = $2 AND d.status = 'dead' \
      AND NOT EXISTS (SELECT 1 FROM deliveries n WHERE n.redelivery_of = d.id) ORDER BY d.id DESC LIMIT 1)) \
     ON CONFLICT DO NOTHING RETURNING id";

pub(super) const INSERT_PLAIN: &str = "INSERT INTO deliveries (event_id, endpoint_id, status, attempts, \
     next_attempt_at, lease_until, created_at, updated_at) \
     VALUES ($1, $2, 'pending', 0, $3, 0, $3, $3) RETURNING id";

/// A jobs-only outbox row (RabbitMQ mode): the event was published when it
/// was stored; its new deliveries are published from this row.
pub(super) const INSERT_JOBS_OUTBOX: &str =
    "INSERT INTO outbox (event_id, created_at, publish_event) VALUES ($1, $2, $3)";

/// `$1` → `?1`: SQLite's numbered parameters, for SQL written for
/// PostgreSQL (no statement here has a `$` elsewhere).
pub(super) fn sqlite_sql(pg: &str) -> String {
    pg.replace('$', "?")
}

/// PostgreSQL runs the SQL as written.
pub(super) fn postgres_sql(pg: &str) -> String {
    pg.to_owned()
}

pub(super) fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The operator queries, for one backend: `store` is its store type, `db`
/// its sqlx database, `row` its row type, `read` and `write` the pool
/// fields reads and redeliveries use, `sql` turns `$n` SQL into the
/// backend's, `collate` makes text compare in byte order, and `now` gives
/// the time redeliveries become due (inside their transaction).
macro_rules! operator_queries {
    (
        store: $store:ty,
        db: $db:ty,
        row: $row:ty,
        read: $read:ident,
        write: $write:ident,
        sql: $sql:path,
        collate: $collate:expr,
        now: $now:path $(,)?
    ) => {
        use $crate::store::admin_query::{
            limit_param, push_event_conditions, DELIVERY_COLUMNS, EVENT_COLUMNS, INSERT_JOBS_OUTBOX,
            INSERT_PLAIN, INSERT_REDELIVERY, NOT_REDELIVERED,
        };
        use $crate::store::{
            DeliveryDetail, DeliveryFilter, DeliveryRow, EventFilter, NewDelivery, StoredAttempt, StoredEvent,
        };

        fn stored_event(row: &$row) -> Result<StoredEvent, StoreError> {
            Ok(StoredEvent {
                id: row.try_get("id")?,
                account: row.try_get("account")?,
                provider: row.try_get("provider")?,
                event_type: row.try_get("event_type")?,
                payload: row.try_get("payload")?,
                received_at_ms: row.try_get("received_at")?,
            })
        }

        fn delivery_detail(row: &$row) -> Result<DeliveryDetail, StoreError> {
            Ok(DeliveryDetail {
                id: row.try_get("id")?,
                event_id: row.try_get("event_id")?,
                endpoint_id: row.try_get("endpoint_id")?,
                status: $crate::store::delivery_status(&row.try_get::<String, _>("status")?)?,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts")?)
                    .map_err(|_| StoreError::Corrupt("attempts".into()))?,
                next_attempt_at_ms: row.try_get("next_attempt_at")?,
                last_error: row.try_get("last_error")?,
                created_at_ms: row.try_get("created_at")?,
                updated_at_ms: row.try_get("updated_at")?,
                redelivery_of: row.try_get("redelivery_of")?,
                redelivered_as: row.try_get("redelivered_as")?,
            })
        }

        impl $store {
            pub async fn deliveries_for_event(&self, event_id: &str) -> Result<Vec<DeliveryRow>, StoreError> {
                let rows = sqlx::query(&$sql(
                    "SELECT id, event_id, endpoint_id, status, attempts, next_attempt_at, last_error \
                     FROM deliveries WHERE event_id = $1 ORDER BY id",
                ))
                .bind(event_id)
                .fetch_all(&self.$read)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(DeliveryRow {
                            id: r.try_get("id")?,
                            event_id: r.try_get("event_id")?,
                            endpoint_id: r.try_get("endpoint_id")?,
                            status: $crate::store::delivery_status(&r.try_get::<String, _>("status")?)?,
                            attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                            next_attempt_at_ms: r.try_get("next_attempt_at")?,
                            last_error: r.try_get("last_error")?,
                        })
                    })
                    .collect()
            }

            pub async fn attempts_for_delivery(
                &self,
                delivery_id: i64,
            ) -> Result<Vec<StoredAttempt>, StoreError> {
                let rows = sqlx::query(&$sql(
                    "SELECT attempt, started_at, duration_ms, outcome, http_status, error, response_excerpt \
                     FROM attempts WHERE delivery_id = $1 ORDER BY attempt",
                ))
                .bind(delivery_id)
                .fetch_all(&self.$read)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(StoredAttempt {
                            attempt: u32::try_from(r.try_get::<i64, _>("attempt")?).unwrap_or(0),
                            started_at_ms: r.try_get("started_at")?,
                            duration_ms: r.try_get("duration_ms")?,
                            outcome: $crate::store::attempt_outcome(&r.try_get::<String, _>("outcome")?)?,
                            http_status: r
                                .try_get::<Option<i64>, _>("http_status")?
                                .and_then(|s| u16::try_from(s).ok()),
                            error: r.try_get("error")?,
                            response_excerpt: r.try_get("response_excerpt")?,
                        })
                    })
                    .collect()
            }

            pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<StoredEvent>, StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new(EVENT_COLUMNS);
                q.push(" WHERE 1 = 1");
                push_event_conditions(&mut q, filter, $collate);
                q.push(format_args!(" ORDER BY id{} DESC LIMIT ", $collate));
                q.push_bind(limit_param(filter.limit));
                let rows = q.build().fetch_all(&self.$read).await?;
                rows.iter().map(stored_event).collect()
            }

            pub async fn event(&self, event_id: &str) -> Result<Option<StoredEvent>, StoreError> {
                let row = sqlx::query(&$sql(&format!("{EVENT_COLUMNS} WHERE id = $1")))
                    .bind(event_id)
                    .fetch_optional(&self.$read)
                    .await?;
                row.as_ref().map(stored_event).transpose()
            }

            pub async fn delivery_details_for_event(
                &self,
                event_id: &str,
            ) -> Result<Vec<DeliveryDetail>, StoreError> {
                let sql = $sql(&format!(
                    "{DELIVERY_COLUMNS} WHERE d.event_id = $1 ORDER BY d.id"
                ));
                let rows = sqlx::query(&sql)
                    .bind(event_id)
                    .fetch_all(&self.$read)
                    .await?;
                rows.iter().map(delivery_detail).collect()
            }

            pub async fn delivery_details_for_events(
                &self,
                event_ids: &[String],
            ) -> Result<Vec<DeliveryDetail>, StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new(DELIVERY_COLUMNS);
                q.push(" WHERE d.event_id IN (");
                let mut ids = q.separated(", ");
                for id in event_ids {
                    ids.push_bind(id.as_str());
                }
                q.push(") ORDER BY d.id");
                let rows = q.build().fetch_all(&self.$read).await?;
                rows.iter().map(delivery_detail).collect()
            }

            pub async fn count_dead_unresolved(&self) -> Result<u64, StoreError> {
                let n: i64 = sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM deliveries d WHERE d.status = 'dead' AND {NOT_REDELIVERED}"
                ))
                .fetch_one(&self.$read)
                .await?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            pub async fn list_deliveries(
                &self,
                filter: &DeliveryFilter,
            ) -> Result<Vec<DeliveryDetail>, StoreError> {
                let mut q: QueryBuilder<$db> = QueryBuilder::new(DELIVERY_COLUMNS);
                q.push(" WHERE 1 = 1");
                if let Some(status) = filter.status {
                    q.push(" AND d.status = ");
                    q.push_bind(status.as_str());
                }
                if filter.unresolved {
                    q.push(format_args!(" AND {NOT_REDELIVERED}"));
                }
                if let Some(before) = filter.before {
                    q.push(" AND d.id < ");
                    q.push_bind(before);
                }
                q.push(" ORDER BY d.id DESC LIMIT ");
                q.push_bind(limit_param(filter.limit));
                let rows = q.build().fetch_all(&self.$read).await?;
                rows.iter().map(delivery_detail).collect()
            }

            pub async fn redeliver_event(
                &self,
                event_id: &str,
                endpoints: &[EndpointId],
                outbox: bool,
            ) -> Result<Vec<NewDelivery>, StoreError> {
                if endpoints.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = self.$write.begin().await?;
                let now = $now(self, &mut tx).await?;
                let (linked_sql, plain_sql) = ($sql(INSERT_REDELIVERY), $sql(INSERT_PLAIN));
                let mut created = Vec::with_capacity(endpoints.len());
                for endpoint in endpoints {
                    let linked: Option<i64> = sqlx::query_scalar(&linked_sql)
                        .bind(event_id)
                        .bind(endpoint.as_str())
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let id = match linked {
                        Some(id) => id,
                        // The dead delivery was redelivered meanwhile: a plain new one.
                        None => {
                            sqlx::query_scalar(&plain_sql)
                                .bind(event_id)
                                .bind(endpoint.as_str())
                                .bind(now)
                                .fetch_one(&mut *tx)
                                .await?
                        }
                    };
                    created.push(NewDelivery {
                        id,
                        event_id: event_id.to_owned(),
                        endpoint_id: endpoint.to_string(),
                    });
                }
                if outbox {
                    sqlx::query(&$sql(INSERT_JOBS_OUTBOX))
                        .bind(event_id)
                        .bind(now)
                        .bind(false)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(created)
            }
        }
    };
}

pub(super) use operator_queries;

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
