//! Group commit for PostgreSQL: concurrent writes of one kind, from one
//! process, go to the server as one statement.
//!
//! Each write used to be a statement and a transaction of its own: a round
//! trip, a parse/bind/execute, a commit and a WAL flush per callback, per
//! claim and per attempt. Most of PostgreSQL's CPU per event was that
//! per-statement overhead, not the rows. A batcher queues requests; each of
//! its few *lanes* takes whatever has queued up while it was busy and sends
//! it as one multi-row statement (arrays, `unnest`). Every caller is answered
//! only after that statement, its own transaction, has committed, so
//! durability is unchanged. With no load a request runs at once, alone.
//!
//! A batch must give each request the outcome it would have had alone and
//! in order. Requests that touch the same key (a nonce, a dedup identity, a
//! delivery job) therefore never share a statement: [`rounds`] puts a later
//! one in a later statement, which sees the earlier one's effect. Each
//! round commits on its own, so each request is answered from the commit
//! that stored it: if a round's statement fails (a bad row, a deadlock with
//! another process's batch), the requests of that round and of the rounds
//! not yet run go again alone, one after another in their order, so that
//! only the failing one gets the error; the rounds already committed keep
//! their answers (run again, an ingest would find its own nonce and be
//! refused as a replay, a claim its own lease).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::clock::Clock;
use crate::store::StoreError;

/// One kind of write that can be batched.
pub(super) trait Batched: Send + Sync + Sized + 'static {
    type Output: Send + 'static;

    /// One answer per request, in order: `Some` for a request whose
    /// statement committed (its result, or an error that must not lead to
    /// running it again), `None` for one whose statement failed or never
    /// ran, which then runs alone. Runs as few statements as [`rounds`]
    /// allows.
    fn run_batch(
        pool: &PgPool,
        batch: &[Self],
        now: i64,
    ) -> impl Future<Output = Vec<Option<Result<Self::Output, StoreError>>>> + Send;

    /// The request alone: the path before batching, and the fallback.
    fn run_one(
        pool: &PgPool,
        one: &Self,
        now: i64,
    ) -> impl Future<Output = Result<Self::Output, StoreError>> + Send;
}

type Reply<T> = oneshot::Sender<Result<<T as Batched>::Output, StoreError>>;
/// The queue of requests the lanes share.
type Queue<T> = Arc<Mutex<mpsc::Receiver<(T, Reply<T>)>>>;

/// The sending side: cheap to clone; the lanes stop when every clone is gone.
pub(super) struct Batcher<T: Batched> {
    tx: mpsc::Sender<(T, Reply<T>)>,
}

impl<T: Batched> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<T: Batched> Batcher<T> {
    /// Starts `lanes` tasks, each sending at most `max_batch` requests per
    /// batch. More lanes overlap batches (one commits while the next is
    /// built); fewer make larger batches.
    pub(super) fn start(pool: PgPool, clock: Arc<dyn Clock>, lanes: usize, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::channel(4 * max_batch);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..lanes.max(1) {
            tokio::spawn(lane::<T>(
                pool.clone(),
                clock.clone(),
                Arc::clone(&rx),
                max_batch.max(1),
            ));
        }
        Self { tx }
    }

    pub(super) async fn run(&self, request: T) -> Result<T::Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((request, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn lane<T: Batched>(pool: PgPool, clock: Arc<dyn Clock>, rx: Queue<T>, max_batch: usize) {
    loop {
        // The lock is held only while a batch is gathered: the next lane
        // gathers while this one's statement runs.
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            batch
        };
        let (requests, replies): (Vec<T>, Vec<Reply<T>>) = batch.into_iter().unzip();
        let results = run_batched(&pool, &requests, clock.now_ms()).await;
        for (reply, result) in replies.into_iter().zip(results) {
            // A caller that has gone away needs no answer.
            let _ = reply.send(result);
        }
    }
}

/// Runs `requests` as one batch; those the batch did not answer (their
/// round failed, or came after one that did) run each alone. `now` is the
/// caller's clock (see `db_skew!`).
pub(super) async fn run_batched<T: Batched>(
    pool: &PgPool,
    requests: &[T],
    now: i64,
) -> Vec<Result<T::Output, StoreError>> {
    if let [one] = requests {
        return vec![T::run_one(pool, one, now).await];
    }
    let mut answers = T::run_batch(pool, requests, now).await;
    // An implementation bug, not a database's: nothing is known of which
    // committed, so no request is run again (that could answer it twice).
    answers.resize_with(requests.len(), || {
        Some(Err(StoreError::Corrupt("batch answered too few requests".into())))
    });
    // The requests left run one after another, in their order: requests of
    // one key (the same job's attempts, one nonce) were in successive rounds
    // because each must see the one before it, and run concurrently they
    // could be answered out of order. A failed round is rare; its cost is
    // latency, never a wrong answer.
    let mut results = Vec::with_capacity(requests.len());
    for (request, answer) in requests.iter().zip(answers) {
        results.push(match answer {
            Some(answer) => answer,
            None => T::run_one(pool, request, now).await,
        });
    }
    results
}

/// Splits `items` into rounds, keeping their order within each: an item goes
/// into the round after the last one holding any of its keys, so no round
/// holds two items with a key in common, and for any key the items holding
/// it run in their original order. Without shared keys there is one round.
///
/// `keys` is called twice per item, so it should be cheap (borrowed keys).
pub(super) fn rounds<'a, T, K, I>(items: &'a [T], keys: impl Fn(&'a T) -> I) -> Vec<Vec<usize>>
where
    K: Hash + Eq,
    I: IntoIterator<Item = K>,
{
    let mut last_round: HashMap<K, usize> = HashMap::with_capacity(items.len());
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let round = keys(item)
            .into_iter()
            .filter_map(|k| last_round.get(&k).copied())
            .max()
            .map_or(0, |r| r + 1);
        for k in keys(item) {
            last_round.insert(k, round);
        }
        if rounds.len() <= round {
            rounds.resize_with(round + 1, Vec::new);
        }
        rounds[round].push(index);
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::rounds;

    #[test]
    fn items_without_shared_keys_share_one_round() {
        let items = ["a", "b", "c"];
        assert_eq!(rounds(&items, |s| [*s]), vec![vec![0, 1, 2]]);
        assert!(rounds(&[] as &[&str], |s| [*s]).is_empty());
    }

    #[test]
    fn a_repeated_key_goes_to_a_later_round_in_order() {
        // Item 3 shares "a" with items 0 and 2: it runs after both.
        let items = [vec!["a"], vec!["b"], vec!["a", "c"], vec!["c"], vec!["d"]];
        let got = rounds(&items, |v| v.clone());
        assert_eq!(got, vec![vec![0, 1, 4], vec![2], vec![3]]);
    }

    #[test]
    fn an_item_with_no_keys_never_waits() {
        let items: [Vec<&str>; 3] = [vec!["a"], vec![], vec!["a"]];
        assert_eq!(rounds(&items, |v| v.clone()), vec![vec![0, 1], vec![2]]);
    }
}
