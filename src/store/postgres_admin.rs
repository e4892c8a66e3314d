//! PostgreSQL: the operator queries behind `/admin/*` (`admin_query.rs`
//! holds those both backends share). Concurrent redeliveries of the same
//! dead delivery meet at the unique index on `redelivery_of`: the second
//! waits for the first to commit, then does nothing.

use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};

use super::admin_query::{operator_queries, postgres_sql};
use super::{BulkRedelivery, PostgresStore, StoreError};
use crate::domain::EndpointId;

operator_queries! {
    store: PostgresStore,
    db: Postgres,
    row: PgRow,
    read: pool,
    write: pool,
    sql: postgres_sql,
    // Byte order, whatever the database's collation.
    collate: " COLLATE \"C\"",
    now: database_now,
}

impl PostgresStore {
    pub async fn redeliver_dead(
        &self,
        endpoints: &[EndpointId],
        outbox: bool,
        limit: Option<u32>,
    ) -> Result<BulkRedelivery, StoreError> {
        if endpoints.is_empty() {
            return Ok(BulkRedelivery::default());
        }
        let endpoints: Vec<&str> = endpoints.iter().map(|e| e.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        let now = database_now(self, &mut tx).await?;
        let event_ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, lease_until, \
             created_at, updated_at, redelivery_of) \
             SELECT d.event_id, d.endpoint_id, 'pending', 0, $1, 0, $1, $1, d.id FROM deliveries d \
             WHERE d.status = 'dead' AND d.endpoint_id = ANY($2) \
             AND NOT EXISTS (SELECT 1 FROM deliveries n WHERE n.redelivery_of = d.id) \
             ORDER BY d.id LIMIT $3 \
             ON CONFLICT DO NOTHING RETURNING event_id",
        )
        .bind(now)
        .bind(&endpoints)
        // LIMIT NULL is PostgreSQL's "no limit".
        .bind(limit.map(i64::from))
        .fetch_all(&mut *tx)
        .await?;
        if outbox && !event_ids.is_empty() {
            sqlx::query(
                "INSERT INTO outbox (event_id, created_at, publish_event) \
                 SELECT DISTINCT e, $2::BIGINT, false FROM UNNEST($1::text[]) AS e",
            )
            .bind(&event_ids)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let remaining: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries d WHERE d.status = 'dead' AND d.endpoint_id = ANY($1) \
             AND NOT EXISTS (SELECT 1 FROM deliveries n WHERE n.redelivery_of = d.id)",
        )
        .bind(&endpoints)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(BulkRedelivery {
            redelivered: u64::try_from(event_ids.len()).unwrap_or(u64::MAX),
            remaining: u64::try_from(remaining).unwrap_or(0),
        })
    }
}

/// The database's clock in epoch ms: redeliveries become due by the same
/// clock that dispatchers' claims compare with, whatever this process's
/// clock says (scaled mode runs on the database's clock).
async fn database_now(
    _: &PostgresStore,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT (extract(epoch from now()) * 1000)::int8")
            .fetch_one(&mut **tx)
            .await?,
    )
}
