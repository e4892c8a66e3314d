//! SQLite: the operator queries behind `/admin/*`. Reads use the read-only
//! pool; redeliveries are one transaction on the single write connection.

use super::admin_query::{push_event_conditions, NOT_REDELIVERED};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{
    now_ms, BulkRedelivery, DeliveryDetail, DeliveryFilter, EventFilter, NewDelivery, SqliteStore,
    StoreError, StoredEvent,
};
use crate::domain::EndpointId;

/// How text is compared in byte order here (see `admin_query`).
const COLLATE: &str = "";

const EVENT_COLUMNS: &str = "SELECT id, account, provider, event_type, payload, received_at FROM events";

/// A delivery, and which delivery redelivered it (if one did).
const DELIVERY_COLUMNS: &str = "SELECT d.id, d.event_id, d.endpoint_id, d.status, d.attempts, \
     d.next_attempt_at, d.last_error, d.created_at, d.updated_at, d.redelivery_of, \
     (SELECT n.id FROM deliveries n WHERE n.redelivery_of = d.id) AS redelivered_as \
     FROM deliveries d";

fn stored_event(row: &SqliteRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        id: row.try_get("id")?,
        account: row.try_get("account")?,
        provider: row.try_get("provider")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        received_at_ms: row.try_get("received_at")?,
    })
}

fn delivery_detail(row: &SqliteRow) -> Result<DeliveryDetail, StoreError> {
    Ok(DeliveryDetail {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        status: row.try_get("status")?,
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

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Inserts one pending delivery, due now; it redelivers the newest dead
/// delivery of the same event to the same endpoint that nothing redelivered
/// yet, if there is one.
const INSERT_REDELIVERY: &str = "INSERT INTO deliveries (event_id, endpoint_id, status, attempts, \
     next_attempt_at, lease_until, created_at, updated_at, redelivery_of) \
     VALUES (?1, ?2, 'pending', 0, ?3, 0, ?3, ?3, \
     (SELECT d.id FROM deliveries d WHERE d.event_id = ?1 AND d.endpoint_id = ?2 AND d.status = 'dead' \
      AND NOT EXISTS (SELECT 1 FROM deliveries n WHERE n.redelivery_of = d.id) ORDER BY d.id DESC LIMIT 1)) \
     ON CONFLICT DO NOTHING RETURNING id";

const INSERT_PLAIN: &str = "INSERT INTO deliveries (event_id, endpoint_id, status, attempts, \
     next_attempt_at, lease_until, created_at, updated_at) \
     VALUES (?1, ?2, 'pending', 0, ?3, 0, ?3, ?3) RETURNING id";

impl SqliteStore {
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<StoredEvent>, StoreError> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(EVENT_COLUMNS);
        q.push(" WHERE 1 = 1");
        push_event_conditions(&mut q, filter, COLLATE);
        q.push(format_args!(" ORDER BY id{COLLATE} DESC LIMIT "));
        q.push_bind(limit_param(filter.limit));
        let rows = q.build().fetch_all(&self.read).await?;
        rows.iter().map(stored_event).collect()
    }

    pub async fn event(&self, event_id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let row = sqlx::query(&format!("{EVENT_COLUMNS} WHERE id = ?1"))
            .bind(event_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(stored_event).transpose()
    }

    pub async fn delivery_details_for_event(
        &self,
        event_id: &str,
    ) -> Result<Vec<DeliveryDetail>, StoreError> {
        let rows = sqlx::query(&format!("{DELIVERY_COLUMNS} WHERE d.event_id = ?1 ORDER BY d.id"))
            .bind(event_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(delivery_detail).collect()
    }

    pub async fn delivery_details_for_events(
        &self,
        event_ids: &[String],
    ) -> Result<Vec<DeliveryDetail>, StoreError> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(DELIVERY_COLUMNS);
        q.push(" WHERE d.event_id IN (");
        let mut ids = q.separated(", ");
        for id in event_ids {
            ids.push_bind(id.as_str());
        }
        q.push(") ORDER BY d.id");
        let rows = q.build().fetch_all(&self.read).await?;
        rows.iter().map(delivery_detail).collect()
    }

    pub async fn count_dead_unresolved(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM deliveries d WHERE d.status = 'dead' AND {NOT_REDELIVERED}"
        ))
        .fetch_one(&self.read)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryDetail>, StoreError> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(DELIVERY_COLUMNS);
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
        let rows = q.build().fetch_all(&self.read).await?;
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
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let mut created = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let linked: Option<i64> = sqlx::query_scalar(INSERT_REDELIVERY)
                .bind(event_id)
                .bind(endpoint.as_str())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            let id = match linked {
                Some(id) => id,
                // The dead delivery was redelivered meanwhile: a plain new one.
                None => {
                    sqlx::query_scalar(INSERT_PLAIN)
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
            sqlx::query("INSERT INTO outbox (event_id, created_at, publish_event) VALUES (?1, ?2, 0)")
                .bind(event_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    pub async fn redeliver_dead(
        &self,
        endpoints: &[EndpointId],
        outbox: bool,
        limit: Option<u32>,
    ) -> Result<BulkRedelivery, StoreError> {
        if endpoints.is_empty() {
            return Ok(BulkRedelivery::default());
        }
        let now = now_ms();
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
                sqlx::query("INSERT INTO outbox (event_id, created_at, publish_event) VALUES (?1, ?2, 0)")
                    .bind(event_id)
                    .bind(now)
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
