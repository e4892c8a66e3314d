//! One conformance suite for both store backends: every `check_*` runs once
//! against SQLite (a temporary file) and once against PostgreSQL (a fresh
//! database), and both must behave identically.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use payhook::domain::{
    AccountId, AmountFen, AttemptOutcome, DeliveryStatus, EndpointId, Event, EventId, EventType,
    Notification, ProviderKind,
};
use payhook::store::{
    AttemptRecord, ClaimedJob, IngestOutcome, JobClaim, JobRef, NewEvent, NextStep, RecordOutcome, Store,
};

use crate::helpers::now_ms;
use crate::pg_db::{fresh_database, TestDatabase};

const LEASE: Duration = Duration::from_secs(60);

async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap();
    (store, dir)
}

async fn postgres_store() -> (Store, TestDatabase) {
    let db = fresh_database().await;
    let store = Store::connect(&db.url).await.unwrap();
    assert!(matches!(store, Store::Postgres(_)), "{store:?}");
    (store, db)
}

/// Runs each check against both backends: `store_conformance::sqlite::check_x`
/// and `store_conformance::postgres::check_x`.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let (store, _dir) = super::sqlite_store().await;
                    super::$check(store.clone()).await;
                    store.close().await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let (store, _db) = super::postgres_store().await;
                    super::$check(store.clone()).await;
                    store.close().await;
                }
            )*
        }
    };
}

conformance!(
    check_ingest_accepted_creates_one_delivery_per_endpoint,
    check_no_endpoints_no_deliveries,
    check_duplicate_returns_the_first_id,
    check_replayed_nonce,
    check_claim_due_leases_each_job_once,
    check_concurrent_claims_take_each_job_once,
    check_expired_lease_is_claimed_again,
    check_busy_endpoints_are_skipped,
    check_record_attempt_applied_then_superseded,
    check_retry_time_is_respected,
    check_dead,
    check_release,
    check_next_due_at,
    check_outbox,
    check_claim_job,
    check_concurrent_claim_job,
    check_concurrent_ingest_of_one_event,
    check_requeue_overdue,
    check_prune_nonces,
    check_batched_ingests_follow_the_sequential_rules,
    check_batched_claims_and_records_follow_the_sequential_rules,
);

// ---------------------------------------------------------------- helpers

trait ClaimExt {
    fn claimed(self) -> Option<ClaimedJob>;
    fn kind(&self) -> &'static str;
}

impl ClaimExt for JobClaim {
    fn claimed(self) -> Option<ClaimedJob> {
        match self {
            JobClaim::Claimed(job) => Some(job),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            JobClaim::Claimed(_) => "claimed",
            JobClaim::NotDue { .. } => "not_due",
            JobClaim::Taken { .. } => "taken",
            JobClaim::Stale => "stale",
        }
    }
}

/// An event of `account` for `endpoints`, as the ingress would store it
/// (no outbox row, no nonce).
pub(crate) fn new_event(account: &str, trade_no: &str, endpoints: &[&str]) -> NewEvent {
    let notification = Notification::new(
        EventType::PaymentSucceeded,
        trade_no.to_owned(),
        AmountFen::from_fen(10001).unwrap(),
    );
    let event = Event::new(
        EventId::generate(),
        ProviderKind::Dryad,
        AccountId::parse(account).unwrap(),
        notification,
        chrono::Utc::now(),
    );
    let payload = serde_json::to_string(&event).unwrap();
    NewEvent {
        event,
        payload,
        dedup_extra: String::new(),
        raw_body: b"{\"raw\":true}\x00\xff".to_vec(),
        raw_headers: "{\"content-type\":\"application/json\"}".to_owned(),
        endpoints: endpoints.iter().map(|e| EndpointId::parse(e).unwrap()).collect(),
        nonce: None,
        outbox: false,
    }
}

/// The same dedup identity as `of`, under a new event id.
fn repeat_of(of: &NewEvent) -> NewEvent {
    let mut again = of.clone();
    again.event.id = EventId::generate();
    again.payload = serde_json::to_string(&again.event).unwrap();
    again
}

fn with_nonce(mut new: NewEvent, nonce: &str) -> NewEvent {
    new.nonce = Some(nonce.to_owned());
    new
}

async fn accept(store: &Store, new: &NewEvent) {
    let outcome = store.ingest(new.clone()).await.unwrap();
    assert_eq!(
        outcome,
        IngestOutcome::Accepted {
            jobs: new.endpoints.len()
        }
    );
}

fn record(delivery_id: i64, attempt: u32, next: NextStep) -> AttemptRecord {
    let delivered = next == NextStep::Delivered;
    AttemptRecord {
        delivery_id,
        attempt,
        started_at_ms: now_ms(),
        duration_ms: 12,
        outcome: if delivered {
            AttemptOutcome::Delivered
        } else {
            AttemptOutcome::HttpError
        },
        http_status: Some(if delivered { 200 } else { 500 }),
        error: (!delivered).then(|| "HTTP 500".to_owned()),
        response_excerpt: Some("body".to_owned()),
        next,
    }
}

async fn claim_all(store: &Store) -> Vec<ClaimedJob> {
    store.claim_due(100, LEASE, &[]).await.unwrap()
}

fn ids(jobs: &[ClaimedJob]) -> Vec<i64> {
    let mut ids: Vec<i64> = jobs.iter().map(|j| j.delivery_id).collect();
    ids.sort_unstable();
    ids
}

async fn delivery_ids(store: &Store, new: &NewEvent) -> Vec<i64> {
    store
        .deliveries_for_event(new.event.id.as_str())
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect()
}

async fn status_of(store: &Store, new: &NewEvent, delivery_id: i64) -> (DeliveryStatus, u32) {
    let rows = store.deliveries_for_event(new.event.id.as_str()).await.unwrap();
    let row = rows.into_iter().find(|d| d.id == delivery_id).unwrap();
    (row.status, row.attempts)
}

// ---------------------------------------------------------------- ingest

async fn check_ingest_accepted_creates_one_delivery_per_endpoint(store: Store) {
    store.ping().await.unwrap();
    let before = now_ms();
    let new = new_event("a", "T1", &["e1", "e2", "e3"]);
    accept(&store, &new).await;

    let rows = store.deliveries_for_event(new.event.id.as_str()).await.unwrap();
    assert_eq!(rows.len(), 3);
    let endpoints: Vec<&str> = rows.iter().map(|d| d.endpoint_id.as_str()).collect();
    assert_eq!(endpoints, ["e1", "e2", "e3"], "one row per endpoint, in order");
    for row in &rows {
        assert_eq!(row.event_id, new.event.id.as_str());
        assert_eq!(row.status, DeliveryStatus::Pending);
        assert_eq!(row.attempts, 0);
        assert!(row.next_attempt_at_ms >= before && row.next_attempt_at_ms <= now_ms());
        assert_eq!(row.last_error, None);
    }
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(store.count_pending().await.unwrap(), 3);
    assert_eq!(
        store.count_outbox().await.unwrap(),
        0,
        "no outbox row unless asked"
    );
    assert!(store
        .deliveries_for_event(EventId::generate().as_str())
        .await
        .unwrap()
        .is_empty());
}

async fn check_no_endpoints_no_deliveries(store: Store) {
    let new = new_event("a", "T1", &[]);
    assert_eq!(
        store.ingest(new.clone()).await.unwrap(),
        IngestOutcome::Accepted { jobs: 0 }
    );
    assert!(store
        .deliveries_for_event(new.event.id.as_str())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.count_pending().await.unwrap(), 0);
    assert!(claim_all(&store).await.is_empty());
    assert_eq!(store.next_due_at().await.unwrap(), None);
    // Stored all the same: a repeat is a duplicate of it.
    assert_eq!(
        store.ingest(repeat_of(&new)).await.unwrap(),
        IngestOutcome::Duplicate {
            existing: Some(new.event.id.clone())
        }
    );
}

async fn check_duplicate_returns_the_first_id(store: Store) {
    let first = new_event("a", "T1", &["e1", "e2"]);
    accept(&store, &first).await;

    let again = repeat_of(&first);
    assert_ne!(again.event.id, first.event.id);
    assert_eq!(
        store.ingest(again.clone()).await.unwrap(),
        IngestOutcome::Duplicate {
            existing: Some(first.event.id.clone())
        }
    );
    assert!(store
        .deliveries_for_event(again.event.id.as_str())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.count_pending().await.unwrap(),
        2,
        "a duplicate creates no jobs"
    );

    // A duplicate still remembers its nonce.
    let again_with_nonce = with_nonce(repeat_of(&first), "dup-nonce");
    assert!(matches!(
        store.ingest(again_with_nonce).await.unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
    let reuse = with_nonce(new_event("a", "T-other", &["e1"]), "dup-nonce");
    assert_eq!(store.ingest(reuse).await.unwrap(), IngestOutcome::Replayed);

    // Any part of the identity that differs makes a new event.
    let mut other_extra = repeat_of(&first);
    other_extra.dedup_extra = "refund-2".to_owned();
    accept(&store, &other_extra).await;
    let mut other_type = repeat_of(&first);
    other_type.event.event_type = EventType::RefundSucceeded;
    accept(&store, &other_type).await;
    accept(&store, &new_event("b", "T1", &["e1"])).await;
    accept(&store, &new_event("a", "T2", &["e1"])).await;
    assert_eq!(store.count_pending().await.unwrap(), 2 + 2 + 2 + 1 + 1);
}

async fn check_replayed_nonce(store: Store) {
    let first = with_nonce(new_event("a", "T1", &["e1"]), "n1");
    accept(&store, &first).await;

    let replay = with_nonce(new_event("a", "T2", &["e1"]), "n1");
    assert_eq!(
        store.ingest(replay.clone()).await.unwrap(),
        IngestOutcome::Replayed
    );
    assert!(store
        .deliveries_for_event(replay.event.id.as_str())
        .await
        .unwrap()
        .is_empty());
    // The replayed event was not stored: sent again with a fresh nonce, it is new.
    accept(&store, &with_nonce(replay, "n2")).await;

    // A replay of a stored event is a replay first.
    assert_eq!(
        store.ingest(with_nonce(repeat_of(&first), "n1")).await.unwrap(),
        IngestOutcome::Replayed
    );
    // Nonces are per account.
    accept(&store, &with_nonce(new_event("b", "T1", &["e1"]), "n1")).await;
    assert_eq!(store.count_pending().await.unwrap(), 3);
}

async fn check_concurrent_ingest_of_one_event(store: Store) {
    let first = new_event("a", "T1", &["e1", "e2"]);
    let copies: Vec<NewEvent> = (0..8).map(|_| repeat_of(&first)).collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(copies.len()));
    let tasks: Vec<_> = copies
        .iter()
        .cloned()
        .map(|copy| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let id = copy.event.id.clone();
                (id, store.ingest(copy).await.unwrap())
            })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut existing = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (id, IngestOutcome::Accepted { jobs: 2 }) => accepted.push(id),
            (_, IngestOutcome::Duplicate { existing: Some(id) }) => existing.push(id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted.len(), 1, "exactly one copy is stored");
    assert_eq!(existing.len(), copies.len() - 1);
    assert!(
        existing.iter().all(|id| *id == accepted[0]),
        "duplicates name the stored id"
    );
    assert_eq!(store.count_pending().await.unwrap(), 2);
}

/// Group commit (one writer batch in SQLite, one statement in PostgreSQL)
/// must give each request what it would have got alone, in order.
async fn check_batched_ingests_follow_the_sequential_rules(store: Store) {
    let a = with_nonce(new_event("a", "T1", &["e1", "e2"]), "n1");
    let b = with_nonce(new_event("a", "T2", &["e1"]), "n1");
    let a_again = with_nonce(repeat_of(&a), "n2");
    // B was a replay, so its identity is still free.
    let d = with_nonce(new_event("a", "T2", &["e1"]), "n3");
    let mut d_again = repeat_of(&d);
    d_again.nonce = None;
    let other_account = with_nonce(new_event("b", "T1", &["e1"]), "n1");
    // n2 was remembered by A's duplicate.
    let n2_again = with_nonce(new_event("a", "T3", &["e1"]), "n2");
    let no_endpoints = new_event("a", "T4", &[]);
    let batch = vec![
        a.clone(),
        b.clone(),
        a_again,
        d.clone(),
        d_again,
        other_account,
        n2_again.clone(),
        no_endpoints,
    ];
    let outcomes: Vec<IngestOutcome> = store
        .ingest_all(batch)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        outcomes,
        vec![
            IngestOutcome::Accepted { jobs: 2 },
            IngestOutcome::Replayed,
            IngestOutcome::Duplicate {
                existing: Some(a.event.id.clone())
            },
            IngestOutcome::Accepted { jobs: 1 },
            IngestOutcome::Duplicate {
                existing: Some(d.event.id.clone())
            },
            IngestOutcome::Accepted { jobs: 1 },
            IngestOutcome::Replayed,
            IngestOutcome::Accepted { jobs: 0 },
        ]
    );
    assert_eq!(store.count_pending().await.unwrap(), 4);
    let a_jobs = store.deliveries_for_event(a.event.id.as_str()).await.unwrap();
    let endpoints: Vec<&str> = a_jobs.iter().map(|j| j.endpoint_id.as_str()).collect();
    assert_eq!(endpoints, ["e1", "e2"], "jobs in endpoint order");
    for refused in [&b, &n2_again] {
        let stored = store
            .deliveries_for_event(refused.event.id.as_str())
            .await
            .unwrap();
        assert!(stored.is_empty(), "a replay stores nothing");
    }
    // A later batch sees the earlier one's rows.
    let again = store
        .ingest_all(vec![
            with_nonce(repeat_of(&a), "n4"),
            with_nonce(new_event("a", "T5", &[]), "n3"),
        ])
        .await;
    let again: Vec<IngestOutcome> = again.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        again,
        vec![
            IngestOutcome::Duplicate {
                existing: Some(a.event.id.clone())
            },
            IngestOutcome::Replayed,
        ]
    );
}

async fn check_batched_claims_and_records_follow_the_sequential_rules(store: Store) {
    let first = new_event("a", "T1", &["e1"]);
    let second = new_event("a", "T2", &["e1"]);
    accept(&store, &first).await;
    accept(&store, &second).await;
    let d1 = delivery_ids(&store, &first).await[0];
    let d2 = delivery_ids(&store, &second).await[0];
    let job = |delivery_id, attempt| JobRef { delivery_id, attempt };
    let kinds: Vec<&str> = store
        .claim_all(&[job(d1, 1), job(d1, 1), job(d2, 1), job(d2, 2)], LEASE)
        .await
        .into_iter()
        .map(|c| c.unwrap().kind())
        .collect();
    assert_eq!(kinds, ["claimed", "taken", "claimed", "stale"]);

    let retry_at = now_ms() + 60_000;
    let records: Vec<RecordOutcome> = store
        .record_all(vec![
            record(d1, 1, NextStep::RetryAt(retry_at)),
            // The same attempt again: the first one moved the job on.
            record(d1, 1, NextStep::Delivered),
            record(d2, 1, NextStep::Delivered),
            // The attempt after the first one applies.
            record(d1, 2, NextStep::Dead),
        ])
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        records,
        [
            RecordOutcome::Applied,
            RecordOutcome::Superseded,
            RecordOutcome::Applied,
            RecordOutcome::Applied
        ]
    );
    assert_eq!(status_of(&store, &first, d1).await, (DeliveryStatus::Dead, 2));
    assert_eq!(
        status_of(&store, &second, d2).await,
        (DeliveryStatus::Delivered, 1)
    );
    let attempts = store.attempts_for_delivery(d1).await.unwrap();
    let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(
        numbers,
        [1, 2],
        "one row per attempt; the superseded repeat adds none"
    );
    assert_eq!(attempts[0].outcome, AttemptOutcome::HttpError);
}

// ---------------------------------------------------------------- claiming

async fn check_claim_due_leases_each_job_once(store: Store) {
    let a = new_event("a", "T1", &["e1", "e2"]);
    let b = new_event("a", "T2", &["e1"]);
    accept(&store, &a).await;
    accept(&store, &b).await;

    let jobs = claim_all(&store).await;
    assert_eq!(jobs.len(), 3);
    let mut expected = delivery_ids(&store, &a).await;
    expected.extend(delivery_ids(&store, &b).await);
    expected.sort_unstable();
    assert_eq!(ids(&jobs), expected);
    for job in &jobs {
        let new = if job.event_id == a.event.id.as_str() {
            &a
        } else {
            &b
        };
        assert_eq!(job.attempt, 1);
        assert_eq!(job.payload, new.payload);
        assert_eq!(job.received_at_ms, new.event.received_at.timestamp_millis());
    }
    let a_endpoints: Vec<&str> = jobs
        .iter()
        .filter(|j| j.event_id == a.event.id.as_str())
        .map(|j| j.endpoint_id.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(a_endpoints, ["e1", "e2"]);

    assert!(
        claim_all(&store).await.is_empty(),
        "leased jobs are not handed out again"
    );
    assert_eq!(
        store.count_pending().await.unwrap(),
        3,
        "leased jobs are still pending"
    );

    // The limit is respected.
    let c = new_event("a", "T3", &["e1", "e2", "e3"]);
    accept(&store, &c).await;
    assert_eq!(store.claim_due(2, LEASE, &[]).await.unwrap().len(), 2);
    assert_eq!(store.claim_due(0, LEASE, &[]).await.unwrap().len(), 0);
    assert_eq!(claim_all(&store).await.len(), 1);
}

async fn check_concurrent_claims_take_each_job_once(store: Store) {
    const EVENTS: usize = 12;
    const ENDPOINTS: [&str; 4] = ["e1", "e2", "e3", "e4"];
    for i in 0..EVENTS {
        accept(&store, &new_event("a", &format!("T{i}"), &ENDPOINTS)).await;
    }
    let total = EVENTS * ENDPOINTS.len();
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let mut mine = Vec::new();
                for _ in 0..total {
                    let jobs = store.claim_due(3, LEASE, &[]).await.unwrap();
                    if jobs.is_empty() {
                        break;
                    }
                    mine.extend(jobs.into_iter().map(|j| j.delivery_id));
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a job was claimed twice: {all:?}");
    assert_eq!(all.len(), total, "every job is claimed");
    assert!(claim_all(&store).await.is_empty());
}

async fn check_expired_lease_is_claimed_again(store: Store) {
    let new = new_event("a", "T1", &["e1"]);
    accept(&store, &new).await;
    let first = store.claim_due(10, Duration::ZERO, &[]).await.unwrap();
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The holder is presumed dead: another dispatcher takes the same attempt.
    let again = claim_all(&store).await;
    assert_eq!(ids(&again), ids(&first));
    assert_eq!(again[0].attempt, 1);
    assert!(claim_all(&store).await.is_empty());
}

async fn check_busy_endpoints_are_skipped(store: Store) {
    let new = new_event("a", "T1", &["e1", "e2", "e3"]);
    accept(&store, &new).await;
    let busy = vec!["e1".to_owned(), "e3".to_owned()];
    let jobs = store.claim_due(10, LEASE, &busy).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].endpoint_id, "e2");

    let busy = vec!["e1".to_owned(), "e2".to_owned(), "e3".to_owned()];
    assert!(store.claim_due(10, LEASE, &busy).await.unwrap().is_empty());

    let busy = vec!["nobody".to_owned()];
    let mut rest: Vec<String> = store
        .claim_due(10, LEASE, &busy)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.endpoint_id)
        .collect();
    rest.sort();
    assert_eq!(rest, ["e1", "e3"]);
}

// ---------------------------------------------------------------- attempts

async fn check_record_attempt_applied_then_superseded(store: Store) {
    let new = new_event("a", "T1", &["e1"]);
    accept(&store, &new).await;
    let job = claim_all(&store).await.pop().unwrap();
    assert_eq!(job.attempt, 1);

    let failed = record(job.delivery_id, 1, NextStep::RetryAt(now_ms() - 1));
    assert_eq!(
        store.record_attempt(failed.clone()).await.unwrap(),
        RecordOutcome::Applied
    );
    let row = store
        .deliveries_for_event(new.event.id.as_str())
        .await
        .unwrap()
        .remove(0);
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 1));
    assert_eq!(row.last_error.as_deref(), Some("HTTP 500"));

    // Another dispatcher that held the same attempt reports late.
    let stale = record(job.delivery_id, 1, NextStep::Delivered);
    assert_eq!(
        store.record_attempt(stale).await.unwrap(),
        RecordOutcome::Superseded
    );
    assert_eq!(
        status_of(&store, &new, job.delivery_id).await,
        (DeliveryStatus::Pending, 1)
    );

    let attempts = store.attempts_for_delivery(job.delivery_id).await.unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].attempt, 1);
    assert_eq!(attempts[0].outcome, AttemptOutcome::HttpError);
    assert_eq!(attempts[0].http_status, Some(500));
    assert_eq!(attempts[0].error.as_deref(), Some("HTTP 500"));
    assert_eq!(attempts[0].started_at_ms, failed.started_at_ms);
    assert_eq!(attempts[0].duration_ms, 12);

    let job = claim_all(&store).await.pop().unwrap();
    assert_eq!(job.attempt, 2);
    assert_eq!(
        store
            .record_attempt(record(job.delivery_id, 2, NextStep::Delivered))
            .await
            .unwrap(),
        RecordOutcome::Applied
    );
    let row = store
        .deliveries_for_event(new.event.id.as_str())
        .await
        .unwrap()
        .remove(0);
    assert_eq!((row.status.as_str(), row.attempts), ("delivered", 2));
    assert_eq!(row.last_error, None);
    assert_eq!(store.count_pending().await.unwrap(), 0);
    assert!(claim_all(&store).await.is_empty());
    let attempts = store.attempts_for_delivery(job.delivery_id).await.unwrap();
    let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(attempts[1].outcome, AttemptOutcome::Delivered);
    assert_eq!(attempts[1].http_status, Some(200));

    // Nothing follows a delivered job.
    assert_eq!(
        store
            .record_attempt(record(job.delivery_id, 3, NextStep::Dead))
            .await
            .unwrap(),
        RecordOutcome::Superseded
    );
    assert_eq!(
        status_of(&store, &new, job.delivery_id).await,
        (DeliveryStatus::Delivered, 2)
    );
}

async fn check_retry_time_is_respected(store: Store) {
    let new = new_event("a", "T1", &["e1"]);
    accept(&store, &new).await;
    let job = claim_all(&store).await.pop().unwrap();
    let later = now_ms() + 60_000;
    assert_eq!(
        store
            .record_attempt(record(job.delivery_id, 1, NextStep::RetryAt(later)))
            .await
            .unwrap(),
        RecordOutcome::Applied
    );
    let row = store
        .deliveries_for_event(new.event.id.as_str())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(row.next_attempt_at_ms, later);
    assert!(
        claim_all(&store).await.is_empty(),
        "not claimable before its time"
    );
    assert_eq!(store.next_due_at().await.unwrap(), Some(later));

    // A short delay: not yet, then claimable with the next attempt number.
    let other = new_event("a", "T2", &["e1"]);
    accept(&store, &other).await;
    let job = claim_all(&store).await.pop().unwrap();
    let soon = now_ms() + 400;
    store
        .record_attempt(record(job.delivery_id, 1, NextStep::RetryAt(soon)))
        .await
        .unwrap();
    let early = claim_all(&store).await;
    if now_ms() < soon {
        assert!(early.is_empty(), "claimed before its time: {early:?}");
    }
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(soon - now_ms()).unwrap_or(0) + 20,
    ))
    .await;
    let job = claim_all(&store).await.pop().unwrap();
    assert_eq!(job.event_id, other.event.id.as_str());
    assert_eq!(job.attempt, 2);
}

async fn check_dead(store: Store) {
    let new = new_event("a", "T1", &["e1"]);
    accept(&store, &new).await;
    let job = claim_all(&store).await.pop().unwrap();
    assert_eq!(
        store
            .record_attempt(record(job.delivery_id, 1, NextStep::Dead))
            .await
            .unwrap(),
        RecordOutcome::Applied
    );
    let row = store
        .deliveries_for_event(new.event.id.as_str())
        .await
        .unwrap()
        .remove(0);
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 1));
    assert_eq!(row.last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(store.count_pending().await.unwrap(), 0);
    assert!(claim_all(&store).await.is_empty());
    assert_eq!(store.next_due_at().await.unwrap(), None);
    assert_eq!(
        store
            .claim_job(
                JobRef {
                    delivery_id: job.delivery_id,
                    attempt: 2
                },
                LEASE
            )
            .await
            .unwrap()
            .kind(),
        "stale"
    );
    assert_eq!(
        store
            .record_attempt(record(job.delivery_id, 2, NextStep::Delivered))
            .await
            .unwrap(),
        RecordOutcome::Superseded
    );
    assert_eq!(
        status_of(&store, &new, job.delivery_id).await,
        (DeliveryStatus::Dead, 1)
    );
}

async fn check_release(store: Store) {
    let new = new_event("a", "T1", &["e1", "e2"]);
    accept(&store, &new).await;
    let jobs = claim_all(&store).await;
    assert_eq!(jobs.len(), 2);
    let (d1, d2) = (jobs[0].delivery_id, jobs[1].delivery_id);

    store.release(&[]).await.unwrap();
    assert!(claim_all(&store).await.is_empty());

    store.release(&[d1]).await.unwrap();
    let again = claim_all(&store).await;
    assert_eq!(ids(&again), [d1]);
    assert_eq!(again[0].attempt, 1, "a released job keeps its attempt");

    // Releasing a finished job changes nothing.
    store
        .record_attempt(record(d2, 1, NextStep::Delivered))
        .await
        .unwrap();
    store.release(&[d1, d2, 999_999]).await.unwrap();
    assert_eq!(status_of(&store, &new, d2).await, (DeliveryStatus::Delivered, 1));
    assert_eq!(ids(&claim_all(&store).await), [d1]);
}

async fn check_next_due_at(store: Store) {
    assert_eq!(store.next_due_at().await.unwrap(), None);
    let a = new_event("a", "T1", &["e1"]);
    accept(&store, &a).await;
    let row = store
        .deliveries_for_event(a.event.id.as_str())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(store.next_due_at().await.unwrap(), Some(row.next_attempt_at_ms));
    assert!(row.next_attempt_at_ms <= now_ms());

    let job = claim_all(&store).await.pop().unwrap();
    assert_eq!(
        store.next_due_at().await.unwrap(),
        None,
        "leased jobs are not due"
    );

    let later = now_ms() + 60_000;
    store
        .record_attempt(record(job.delivery_id, 1, NextStep::RetryAt(later)))
        .await
        .unwrap();
    assert_eq!(store.next_due_at().await.unwrap(), Some(later));

    let b = new_event("a", "T2", &["e1"]);
    accept(&store, &b).await;
    let row = store
        .deliveries_for_event(b.event.id.as_str())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        store.next_due_at().await.unwrap(),
        Some(row.next_attempt_at_ms),
        "the earliest"
    );
}

// ---------------------------------------------------------------- RabbitMQ mode

async fn check_outbox(store: Store) {
    let mut a = new_event("a", "T1", &["e1", "e2"]);
    a.outbox = true;
    let b = new_event("a", "T2", &["e1"]);
    let mut c = new_event("a", "T3", &[]);
    c.outbox = true;
    c.event.event_type = EventType::RefundSucceeded;
    c.payload = serde_json::to_string(&c.event).unwrap();
    accept(&store, &a).await;
    accept(&store, &b).await;
    accept(&store, &c).await;
    assert_eq!(store.count_outbox().await.unwrap(), 2);
    // A duplicate writes no outbox row.
    let mut dup = repeat_of(&a);
    dup.outbox = true;
    assert!(matches!(
        store.ingest(dup).await.unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
    assert_eq!(store.count_outbox().await.unwrap(), 2);

    let a_jobs = delivery_ids(&store, &a).await;
    let first = store.outbox_claim(1, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    let item = &first[0];
    assert_eq!(item.event_id, a.event.id.as_str());
    assert_eq!(item.routing_key, "dryad.payment.succeeded");
    assert_eq!(item.payload, a.payload);
    let expected: Vec<JobRef> = a_jobs
        .iter()
        .map(|&delivery_id| JobRef {
            delivery_id,
            attempt: 1,
        })
        .collect();
    assert_eq!(item.jobs, expected);

    // Only pending jobs are published, at their next attempt.
    store
        .claim_job(expected[0], LEASE)
        .await
        .unwrap()
        .claimed()
        .unwrap();
    store
        .record_attempt(record(a_jobs[0], 1, NextStep::Delivered))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(5)).await;
    // The first lease expired: a publisher that died leaves the row to others.
    let items = store.outbox_claim(10, LEASE).await.unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].outbox_id, item.outbox_id);
    assert_eq!(
        items[0].jobs,
        [JobRef {
            delivery_id: a_jobs[1],
            attempt: 1
        }]
    );
    assert_eq!(items[1].event_id, c.event.id.as_str());
    assert_eq!(items[1].routing_key, "dryad.refund.succeeded");
    assert_eq!(items[1].payload, c.payload);
    assert!(items[1].jobs.is_empty());
    assert!(items[0].outbox_id < items[1].outbox_id);

    assert!(
        store.outbox_claim(10, LEASE).await.unwrap().is_empty(),
        "leased rows are not handed out"
    );
    assert_eq!(store.count_outbox().await.unwrap(), 2, "leased rows still count");

    store.outbox_done(&[]).await.unwrap();
    store.outbox_done(&[items[0].outbox_id]).await.unwrap();
    assert_eq!(store.count_outbox().await.unwrap(), 1);
    store.outbox_done(&[items[1].outbox_id, 999_999]).await.unwrap();
    assert_eq!(store.count_outbox().await.unwrap(), 0);
    assert!(store.outbox_claim(10, Duration::ZERO).await.unwrap().is_empty());
}

async fn check_claim_job(store: Store) {
    let new = new_event("a", "T1", &["e1"]);
    accept(&store, &new).await;
    let d = delivery_ids(&store, &new).await[0];
    let job = |attempt| JobRef {
        delivery_id: d,
        attempt,
    };

    assert_eq!(
        store.claim_job(job(2), LEASE).await.unwrap().kind(),
        "stale",
        "not yet at attempt 2"
    );
    let missing = JobRef {
        delivery_id: 999_999,
        attempt: 1,
    };
    assert_eq!(store.claim_job(missing, LEASE).await.unwrap().kind(), "stale");

    let claimed = store.claim_job(job(1), LEASE).await.unwrap().claimed().unwrap();
    assert_eq!(claimed.delivery_id, d);
    assert_eq!(claimed.attempt, 1);
    assert_eq!(claimed.event_id, new.event.id.as_str());
    assert_eq!(claimed.endpoint_id, "e1");
    assert_eq!(claimed.payload, new.payload);
    assert_eq!(claimed.received_at_ms, new.event.received_at.timestamp_millis());

    assert_eq!(store.claim_job(job(1), LEASE).await.unwrap().kind(), "taken");
    assert!(claim_all(&store).await.is_empty(), "leased for claim_due too");

    // A retry not yet due is refused with its due time.
    let due = now_ms() + 60_000;
    store
        .record_attempt(record(d, 1, NextStep::RetryAt(due)))
        .await
        .unwrap();
    assert_eq!(store.claim_job(job(1), LEASE).await.unwrap().kind(), "stale");
    match store.claim_job(job(2), LEASE).await.unwrap() {
        JobClaim::NotDue { due_at_ms } => assert_eq!(due_at_ms, due),
        other => panic!("expected NotDue, got {other:?}"),
    }
    // Due (the sweeper moved it, or time passed): claimable.
    let overdue = store.requeue_overdue(due + 1, 10).await.unwrap();
    assert_eq!(overdue, [job(2)]);
    assert_eq!(
        store
            .claim_job(job(2), Duration::ZERO)
            .await
            .unwrap()
            .claimed()
            .unwrap()
            .attempt,
        2
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    // That lease has expired.
    assert_eq!(
        store
            .claim_job(job(2), LEASE)
            .await
            .unwrap()
            .claimed()
            .unwrap()
            .attempt,
        2
    );

    store
        .record_attempt(record(d, 2, NextStep::Delivered))
        .await
        .unwrap();
    assert_eq!(
        store.claim_job(job(3), LEASE).await.unwrap().kind(),
        "stale",
        "delivered"
    );
    assert_eq!(
        store.claim_job(job(2), LEASE).await.unwrap().kind(),
        "stale",
        "delivered"
    );
}

async fn check_concurrent_claim_job(store: Store) {
    let new = new_event("a", "T1", &["e1"]);
    accept(&store, &new).await;
    let d = delivery_ids(&store, &new).await[0];
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .claim_job(
                        JobRef {
                            delivery_id: d,
                            attempt: 1,
                        },
                        LEASE,
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        if task.await.unwrap().claimed().is_some() {
            won += 1;
        }
    }
    assert_eq!(won, 1, "exactly one consumer takes a job");
}

async fn check_requeue_overdue(store: Store) {
    let new = new_event("a", "T1", &["e1", "e2", "e3"]);
    accept(&store, &new).await;
    let ds = delivery_ids(&store, &new).await;
    let (leased, waiting, lost) = (ds[0], ds[1], ds[2]);
    let e1 = vec!["e2".to_owned(), "e3".to_owned()];
    assert_eq!(ids(&store.claim_due(10, LEASE, &e1).await.unwrap()), [leased]);
    let e2 = vec!["e1".to_owned(), "e3".to_owned()];
    assert_eq!(ids(&store.claim_due(10, LEASE, &e2).await.unwrap()), [waiting]);
    let in_an_hour = now_ms() + 3_600_000;
    store
        .record_attempt(record(waiting, 1, NextStep::RetryAt(in_an_hour)))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(5)).await;
    let due_before = now_ms();
    assert_eq!(
        store.requeue_overdue(due_before, 10).await.unwrap(),
        [JobRef {
            delivery_id: lost,
            attempt: 1
        }]
    );
    let row = store
        .deliveries_for_event(new.event.id.as_str())
        .await
        .unwrap()
        .remove(2);
    assert!(row.next_attempt_at_ms >= due_before, "moved to now");
    assert!(
        store.requeue_overdue(due_before, 10).await.unwrap().is_empty(),
        "not found again at once"
    );

    let mut found = store.requeue_overdue(in_an_hour + 1, 10).await.unwrap();
    found.sort_by_key(|j| j.delivery_id);
    assert_eq!(
        found,
        [
            JobRef {
                delivery_id: waiting,
                attempt: 2
            },
            JobRef {
                delivery_id: lost,
                attempt: 1
            },
        ],
        "never the leased job"
    );
    assert_eq!(
        store
            .requeue_overdue(now_ms() + 7_200_000, 1)
            .await
            .unwrap()
            .len(),
        1,
        "limit"
    );
}

async fn check_prune_nonces(store: Store) {
    accept(&store, &with_nonce(new_event("a", "T1", &[]), "n1")).await;
    accept(&store, &with_nonce(new_event("a", "T2", &[]), "n2")).await;
    assert_eq!(store.prune_nonces(0).await.unwrap(), 0);
    assert_eq!(
        store
            .ingest(with_nonce(new_event("a", "T3", &[]), "n1"))
            .await
            .unwrap(),
        IngestOutcome::Replayed
    );
    assert_eq!(store.prune_nonces(now_ms() + 1_000).await.unwrap(), 2);
    assert_eq!(store.prune_nonces(now_ms() + 1_000).await.unwrap(), 0);
    // Forgotten: the nonce is usable again.
    accept(&store, &with_nonce(new_event("a", "T3", &[]), "n1")).await;
}

// ---------------------------------------------------------------- connecting

#[tokio::test]
async fn postgresql_scheme_selects_postgres() {
    let db = fresh_database().await;
    let url = db.url.replacen("postgres://", "postgresql://", 1);
    assert!(url.starts_with("postgresql://"), "{url}");
    let store = Store::connect(&url).await.unwrap();
    assert!(matches!(store, Store::Postgres(_)));
    store.ping().await.unwrap();
    // Migrating an already migrated database is a no-op.
    let again = Store::connect(&db.url).await.unwrap();
    again.ping().await.unwrap();
    again.close().await;
    store.close().await;
}

#[tokio::test]
async fn unknown_scheme_is_refused() {
    assert!(Store::connect("mysql://localhost/payhook").await.is_err());
}

/// A row PostgreSQL refuses (text cannot hold NUL) fails its batch's
/// statement; the batch then runs each request alone, so only that request
/// gets the error and its neighbours are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_batch_with_a_bad_row_fails_only_that_row() {
    let (store, _db) = postgres_store().await;
    let good = with_nonce(new_event("a", "T1", &["e1"]), "n1");
    let mut bad = with_nonce(new_event("a", "T2", &["e1"]), "n2");
    bad.raw_headers = "{\"x\":\"\u{0}\"}".to_owned();
    let also_good = with_nonce(new_event("a", "T3", &["e1"]), "n3");
    let outcomes = store.ingest_all(vec![good, bad.clone(), also_good]).await;
    assert!(
        matches!(outcomes[0], Ok(IngestOutcome::Accepted { jobs: 1 })),
        "{outcomes:?}"
    );
    assert!(outcomes[1].is_err(), "{outcomes:?}");
    assert!(
        matches!(outcomes[2], Ok(IngestOutcome::Accepted { jobs: 1 })),
        "{outcomes:?}"
    );
    assert_eq!(store.count_pending().await.unwrap(), 2);
    // Nothing of the refused request was kept: not even its nonce.
    bad.raw_headers = "{}".to_owned();
    assert_eq!(
        store.ingest(bad).await.unwrap(),
        IngestOutcome::Accepted { jobs: 1 }
    );
    store.close().await;
}

/// An ingest for this process's publisher returns the outbox row it wrote,
/// leased to that publisher, as the scan would have read it. The row stays
/// the record: when its lease runs out (here expired by hand, as if this
/// process had died before publishing) any publisher's scan finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_committed_outbox_rows_are_handed_over_and_stay_recoverable() {
    let (store, db) = postgres_store().await;

    let mut a = new_event("a", "T1", &["e1", "e2"]);
    a.outbox = true;
    let before = now_ms();
    let (outcome, item) = store.ingest_for_publisher(a.clone()).await.unwrap();
    assert_eq!(outcome, IngestOutcome::Accepted { jobs: 2 });
    let item = item.expect("the committed row is handed over");
    // No outbox row, nothing handed over; a duplicate writes no row either.
    let (outcome, none) = store
        .ingest_for_publisher(new_event("a", "T2", &["e1"]))
        .await
        .unwrap();
    assert_eq!(outcome, IngestOutcome::Accepted { jobs: 1 });
    assert!(none.is_none(), "no outbox row asked for, none handed over");
    let (outcome, none) = store.ingest_for_publisher(repeat_of(&a)).await.unwrap();
    assert!(matches!(outcome, IngestOutcome::Duplicate { .. }));
    assert!(none.is_none(), "a duplicate writes no row");
    assert_eq!(item.event_id, a.event.id.as_str());
    assert_eq!(item.routing_key, "dryad.payment.succeeded");
    assert_eq!(item.payload, a.payload);
    assert!(item.publish_event);
    let expected: Vec<JobRef> = delivery_ids(&store, &a)
        .await
        .into_iter()
        .map(|delivery_id| JobRef {
            delivery_id,
            attempt: 1,
        })
        .collect();
    assert_eq!(expected.len(), 2);
    assert_eq!(item.jobs, expected);

    // Leased to this publisher for the outbox lease: no scan takes it now.
    assert!(store.outbox_claim(10, LEASE).await.unwrap().is_empty());
    assert_eq!(store.count_outbox().await.unwrap(), 1);
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let lease_until: i64 = sqlx::query_scalar("SELECT lease_until FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    let lease_ms = i64::try_from(payhook::store::OUTBOX_LEASE.as_millis()).unwrap();
    assert!(
        (before + lease_ms..=now_ms() + lease_ms).contains(&lease_until),
        "{lease_until}"
    );

    sqlx::query("UPDATE outbox SET lease_until = 0")
        .execute(&pool)
        .await
        .unwrap();
    let scanned = store.outbox_claim(10, LEASE).await.unwrap();
    assert_eq!(scanned.len(), 1);
    let again = &scanned[0];
    assert_eq!(again.outbox_id, item.outbox_id);
    assert_eq!(again.event_id, item.event_id);
    assert_eq!(again.routing_key, item.routing_key);
    assert_eq!(again.payload, item.payload);
    assert_eq!(again.jobs, item.jobs);
    assert_eq!(again.publish_event, item.publish_event);

    // Concurrent ingests (one batched statement) are handed over each.
    let events: Vec<NewEvent> = (0..8)
        .map(|i| {
            let mut new = new_event("b", &format!("T{i}"), &["e1"]);
            new.outbox = true;
            new
        })
        .collect();
    let outcomes =
        futures_util::future::join_all(events.iter().map(|e| store.ingest_for_publisher(e.clone()))).await;
    let mut handed = HashSet::new();
    for outcome in outcomes {
        let (outcome, item) = outcome.unwrap();
        assert_eq!(outcome, IngestOutcome::Accepted { jobs: 1 });
        let item = item.expect("handed over");
        assert_eq!(item.jobs.len(), 1);
        assert!(handed.insert(item.event_id));
    }
    let ids: HashSet<String> = events.iter().map(|e| e.event.id.as_str().to_owned()).collect();
    assert_eq!(handed, ids);
    pool.close().await;
    store.close().await;
}
