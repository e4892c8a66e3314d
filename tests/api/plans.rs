//! The hot statements' plans, on a real PostgreSQL: the claim, the attempt
//! record and the lease release must find their rows by id, whatever the
//! statistics say.

use sqlx::{Connection, Executor, PgConnection};

use payhook::store::hot_statements::{CLAIM_MANY, RECORD, RECORD_MANY, RELEASE};

use crate::pg_db::fresh_database;

/// Jobs in the table, all pending: what the planner should not read.
const PENDING: i64 = 20_000;

/// The plans of `EXPLAIN (FORMAT JSON)` for `sql`, as the prepared
/// statement would get them: a custom plan, then the generic one.
async fn plans(conn: &mut PgConnection, sql: &str, args: &str) -> Vec<String> {
    let mut out = Vec::new();
    for mode in ["force_custom_plan", "force_generic_plan"] {
        conn.execute(format!("SET plan_cache_mode = {mode}").as_str())
            .await
            .expect("set plan_cache_mode");
        let name = format!("probe_{}", out.len());
        conn.execute(format!("PREPARE {name} AS {sql}").as_str())
            .await
            .expect("prepare");
        let plan: serde_json::Value =
            sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) EXECUTE {name}{args}"))
                .fetch_one(&mut *conn)
                .await
                .expect("explain");
        conn.execute(format!("DEALLOCATE {name}").as_str())
            .await
            .expect("deallocate");
        out.push(plan.to_string());
    }
    out
}

/// Without statistics (never analyzed, as under `autovacuum = off`, or
/// stale ones) the planner guesses that few jobs are pending. With the
/// status compared to a literal, it could then read the whole partial
/// index of pending jobs for a batch of three. The database is dropped by
/// `TestDatabase`'s `Drop`, so also when an assertion fails.
#[tokio::test]
async fn claims_records_and_releases_never_scan_every_pending_job() {
    let db = fresh_database().await;
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::migrate!("./migrations/postgres")
        .run(&mut conn)
        .await
        .expect("migrate");
    conn.execute(
        format!(
            "INSERT INTO events (id, account, provider, event_type, provider_trade_no, dedup_extra, \
                 payload, raw_body, raw_headers, received_at) \
             SELECT 'evt_' || g, 'a', 'dryad', 'payment.succeeded', g::text, '', '{{}}', '', '{{}}', 0 \
             FROM generate_series(1, {PENDING}) g; \
             INSERT INTO deliveries (event_id, endpoint_id, status, next_attempt_at, created_at, updated_at) \
             SELECT 'evt_' || g, 'e', 'pending', 0, 0, 0 FROM generate_series(1, {PENDING}) g"
        )
        .as_str(),
    )
    .await
    .expect("seed");

    let checks = [
        ("claim", CLAIM_MANY, "('{1,2,3}', '{0,0,0}', '{9,9,9}', 0)"),
        (
            "record",
            RECORD_MANY,
            "('{1,2,3}', '{1,1,1}', '{0,0,0}', '{5,5,5}', '{delivered,delivered,delivered}', \
              '{200,200,200}', '{NULL,NULL,NULL}', '{NULL,NULL,NULL}', \
              '{delivered,delivered,delivered}', '{0,0,0}', 1)",
        ),
        ("release", RELEASE, "('{1,2,3}')"),
        (
            "single record",
            RECORD,
            "(2, 1, 0, 5, 'delivered', 200, NULL, NULL, 'delivered', 0, 1, 0)",
        ),
    ];
    for (statement, sql, args) in checks {
        for plan in plans(&mut conn, sql, args).await {
            assert!(
                !plan.contains("deliveries_due") && !plan.contains("\"Seq Scan\""),
                "the {statement} reads more than its rows: {plan}"
            );
        }
    }
    let _ = conn.close().await;
}
