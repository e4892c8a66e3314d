//! Endpoint state in the store (`endpoint_state`): pauses and how each
//! endpoint's deliveries went lately, shared by every process. The same SQL
//! serves both backends (written with `$n`, SQLite's `?n` is derived), so
//! each statement is written once.

use std::collections::HashMap;

use super::admin_query::NOT_REDELIVERED;
use super::{Store, StoreError};

/// An endpoint's row: pause and health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointState {
    pub endpoint_id: String,
    /// Since when it is paused (epoch ms); `None`: not paused.
    pub paused_at_ms: Option<i64>,
    /// Who paused it: `operator` or `auto`.
    pub paused_by: Option<String>,
    pub last_success_at_ms: Option<i64>,
    /// The first failure after the last success; `None` when the last
    /// answer was a success (or there was none).
    pub failing_since_ms: Option<i64>,
    pub consecutive_failures: u64,
}

/// What one process saw of an endpoint since it last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthReport {
    pub endpoint_id: String,
    /// Its latest success, if any.
    pub success_at_ms: Option<i64>,
    /// The first failure after that success (or the first failure at all).
    pub first_failure_ms: Option<i64>,
    /// Failures after that success (or all failures).
    pub failures: u64,
}

/// Who paused an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PausedBy {
    Operator,
    Auto,
}

impl PausedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            PausedBy::Operator => "operator",
            PausedBy::Auto => "auto",
        }
    }
}

/// `$1` → `?1`: SQLite's numbered parameters, for SQL written for
/// PostgreSQL (no statement here has a `$` elsewhere).
fn sqlite_sql(pg: &str) -> String {
    pg.replace('$', "?")
}

/// Runs a statement on either backend and gives its rows-affected count.
macro_rules! execute {
    ($store:expr, $sql:expr $(, $bind:expr)*) => {
        match $store {
            Store::Sqlite(s) => {
                let sql = sqlite_sql($sql);
                sqlx::query(&sql)$(.bind($bind))*.execute(&s.write).await?.rows_affected()
            }
            Store::Postgres(p) => sqlx::query($sql)$(.bind($bind))*.execute(&p.pool).await?.rows_affected(),
        }
    };
}

/// Fetches rows of type `$row` (a tuple) on either backend.
macro_rules! fetch {
    ($store:expr, $row:ty, $sql:expr $(, $bind:expr)*) => {
        match $store {
            Store::Sqlite(s) => {
                let sql = sqlite_sql($sql);
                sqlx::query_as::<_, $row>(&sql)$(.bind($bind))*.fetch_all(&s.read).await?
            }
            Store::Postgres(p) => sqlx::query_as::<_, $row>($sql)$(.bind($bind))*.fetch_all(&p.pool).await?,
        }
    };
}

type StateRow = (String, Option<i64>, Option<String>, Option<i64>, Option<i64>, i64);

const STATES: &str = "SELECT endpoint_id, paused_at, paused_by, last_success_at, failing_since, \
     consecutive_failures FROM endpoint_state ORDER BY endpoint_id";

/// Pauses, unless already paused (the first pause's time and author stay).
const PAUSE: &str = "INSERT INTO endpoint_state (endpoint_id, paused_at, paused_by) VALUES ($1, $2, $3) \
     ON CONFLICT (endpoint_id) DO UPDATE SET paused_at = EXCLUDED.paused_at, paused_by = EXCLUDED.paused_by \
     WHERE endpoint_state.paused_at IS NULL";

/// Resumes with a clean slate: the failures before the pause must not
/// trigger auto-pause again at the first new failure.
const RESUME: &str = "UPDATE endpoint_state SET paused_at = NULL, paused_by = NULL, failing_since = NULL, \
     consecutive_failures = 0 WHERE endpoint_id = $1 AND paused_at IS NOT NULL";

/// RabbitMQ mode: the paused endpoint's waiting jobs were dropped from the
/// queue (they wait in the store); one jobs-only outbox row per event
/// publishes them again, oldest due first, so they go out in order.
const REPUBLISH_WAITING: &str = "INSERT INTO outbox (event_id, created_at, publish_event) \
     SELECT d.event_id, $2, $3 FROM deliveries d WHERE d.endpoint_id = $1 AND d.status = 'pending' \
     GROUP BY d.event_id ORDER BY MIN(d.next_attempt_at), d.event_id";

/// Merges one process's report into the row. A success newer than the
/// stored one starts a new streak (its failures after it); otherwise the
/// failures add to the streak, which keeps its first failure.
const REPORT_HEALTH: &str = "INSERT INTO endpoint_state (endpoint_id, last_success_at, failing_since, \
     consecutive_failures) VALUES ($1, CAST($2 AS BIGINT), CAST($3 AS BIGINT), $4) \
     ON CONFLICT (endpoint_id) DO UPDATE SET \
     last_success_at = CASE WHEN CAST($2 AS BIGINT) >= COALESCE(endpoint_state.last_success_at, 0) \
         THEN CAST($2 AS BIGINT) ELSE endpoint_state.last_success_at END, \
     failing_since = CASE WHEN CAST($2 AS BIGINT) >= COALESCE(endpoint_state.last_success_at, 0) \
         THEN CAST($3 AS BIGINT) ELSE COALESCE(endpoint_state.failing_since, CAST($3 AS BIGINT)) END, \
     consecutive_failures = CASE WHEN CAST($2 AS BIGINT) >= COALESCE(endpoint_state.last_success_at, 0) \
         THEN $4 ELSE endpoint_state.consecutive_failures + $4 END";

const PENDING_BY_ENDPOINT: &str =
    "SELECT endpoint_id, COUNT(*) FROM deliveries WHERE status = 'pending' GROUP BY endpoint_id";

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store {
    /// Every endpoint row (paused or attempted), by endpoint id.
    pub async fn endpoint_states(&self) -> Result<Vec<EndpointState>, StoreError> {
        let rows: Vec<StateRow> = fetch!(self, StateRow, STATES);
        Ok(rows
            .into_iter()
            .map(
                |(endpoint_id, paused_at_ms, paused_by, last_success_at_ms, failing_since_ms, failures)| {
                    EndpointState {
                        endpoint_id,
                        paused_at_ms,
                        paused_by,
                        last_success_at_ms,
                        failing_since_ms,
                        consecutive_failures: to_u64(failures),
                    }
                },
            )
            .collect())
    }

    /// Pauses `endpoint_id`; false if it already was.
    pub async fn pause_endpoint(
        &self,
        endpoint_id: &str,
        by: PausedBy,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(execute!(self, PAUSE, endpoint_id, at_ms, by.as_str()) > 0)
    }

    /// Resumes `endpoint_id`; false if it was not paused. With `outbox`
    /// (RabbitMQ mode), its waiting deliveries are published again, in the
    /// order they became due, in the same transaction.
    pub async fn resume_endpoint(
        &self,
        endpoint_id: &str,
        outbox: bool,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let mut tx = s.write.begin().await?;
                let resumed = sqlx::query(&sqlite_sql(RESUME))
                    .bind(endpoint_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0;
                if resumed && outbox {
                    sqlx::query(&sqlite_sql(REPUBLISH_WAITING))
                        .bind(endpoint_id)
                        .bind(at_ms)
                        .bind(false)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(resumed)
            }
            Store::Postgres(p) => {
                let mut tx = p.pool.begin().await?;
                let resumed = sqlx::query(RESUME)
                    .bind(endpoint_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0;
                if resumed && outbox {
                    sqlx::query(REPUBLISH_WAITING)
                        .bind(endpoint_id)
                        .bind(at_ms)
                        .bind(false)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(resumed)
            }
        }
    }

    /// Merges what a process saw of its endpoints' answers.
    pub async fn report_endpoint_health(&self, reports: &[HealthReport]) -> Result<(), StoreError> {
        for r in reports {
            let failures = i64::try_from(r.failures).unwrap_or(i64::MAX);
            execute!(
                self,
                REPORT_HEALTH,
                r.endpoint_id.as_str(),
                r.success_at_ms,
                r.first_failure_ms,
                failures
            );
        }
        Ok(())
    }

    /// Pending and unresolved dead deliveries per endpoint.
    pub async fn delivery_counts_by_endpoint(&self) -> Result<HashMap<String, (u64, u64)>, StoreError> {
        let mut counts: HashMap<String, (u64, u64)> = HashMap::new();
        let pending: Vec<(String, i64)> = fetch!(self, (String, i64), PENDING_BY_ENDPOINT);
        for (endpoint, n) in pending {
            counts.entry(endpoint).or_default().0 = to_u64(n);
        }
        let dead_sql = format!(
            "SELECT d.endpoint_id, COUNT(*) FROM deliveries d WHERE d.status = 'dead' AND {NOT_REDELIVERED} \
             GROUP BY d.endpoint_id"
        );
        let dead: Vec<(String, i64)> = fetch!(self, (String, i64), &dead_sql);
        for (endpoint, n) in dead {
            counts.entry(endpoint).or_default().1 = to_u64(n);
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_placeholders() {
        assert_eq!(sqlite_sql("a = $1 AND b = $12"), "a = ?1 AND b = ?12");
        for sql in [
            STATES,
            PAUSE,
            RESUME,
            REPUBLISH_WAITING,
            REPORT_HEALTH,
            PENDING_BY_ENDPOINT,
        ] {
            assert!(!sqlite_sql(sql).contains('$'));
        }
    }
}
