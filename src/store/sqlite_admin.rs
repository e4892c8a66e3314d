//! SQLite: the operator queries behind `/admin/*` (`admin_query.rs` holds
//! those both backends share). Reads use the read-only pool; redeliveries
//! are one transaction on the single write connection.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use super::admin_query::{operator_queries, sqlite_sql};
use super::{BulkRedelivery, SqliteStore, StoreError};
use crate::domain::EndpointId;

operator_queries! {
    store: SqliteStore,
    db: Sqlite,
    row: SqliteRow,
    read: read,
    write: write,
    sql: sqlite_sql,
    // SQLite's default collation already compares in byte order.
    collate: "",
    now: local_now,
}

/// Embedded mode has one clock: this process's (injected).
async fn local_now(store: &SqliteStore, _: &mut Transaction<'_, Sqlite>) -> Result<i64, StoreError> {
    Ok(store.clock.now_ms())
}

impl SqliteStore {
    pub async fn redeliver_dead(
        &self,
        endpoints: &[EndpointId],
        outbox: bool,
        limit: Option<u32>,
    ) -> Result<BulkRedelivery, StoreError> {
        if endpoints.is_empty() {
            return Ok(BulkRedelivery::default());
        }
        let now = self.clock.now_ms();
        let mut tx = self.write.begin().await?;
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, lease_until, \
             created_at, updated_at, redelivery_of) SELECT d.event_id, d.endpoint_id, 'pending', 0, ",
        );
        q.push_bind(now);
        q.push(", 0, ");
        q.push_bind(now);
        q.push(", ");
        q.push_bind(now);
        q.push(", d.id FROM deliveries d WHERE ");
        push_not_redelivered_dead(&mut q, endpoints);
        // LIMIT -1 is SQLite's "no limit".
        q.push(" ORDER BY d.id LIMIT ");
        q.push_bind(limit.map_or(-1, i64::from));
        q.push(" ON CONFLICT DO NOTHING RETURNING event_id");
        let event_ids: Vec<String> = q.build_query_scalar().fetch_all(&mut *tx).await?;
        if outbox {
            let mut distinct = event_ids.clone();
            distinct.sort_unstable();
            distinct.dedup();
            for event_id in &distinct {
                sqlx::query(&sqlite_sql(INSERT_JOBS_OUTBOX))
                    .bind(event_id)
                    .bind(now)
                    .bind(false)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let mut count: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT COUNT(*) FROM deliveries d WHERE ");
        push_not_redelivered_dead(&mut count, endpoints);
        let remaining: i64 = count.build_query_scalar().fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(BulkRedelivery {
            redelivered: u64::try_from(event_ids.len()).unwrap_or(u64::MAX),
            remaining: u64::try_from(remaining).unwrap_or(0),
        })
    }
}

/// The condition for `deliveries d` that bulk redelivery picks: dead, not
/// redelivered yet, to one of `endpoints` (those still configured).
fn push_not_redelivered_dead<'a>(q: &mut QueryBuilder<'a, Sqlite>, endpoints: &'a [EndpointId]) {
    q.push(
        "d.status = 'dead' AND NOT EXISTS (SELECT 1 FROM deliveries n WHERE n.redelivery_of = d.id) \
         AND d.endpoint_id IN (",
    );
    let mut sep = q.separated(", ");
    for endpoint in endpoints {
        sep.push_bind(endpoint.as_str());
    }
    q.push(")");
}
