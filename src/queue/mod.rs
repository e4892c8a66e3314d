//! RabbitMQ mode (`[queue] amqp_url`): the queue between ingress and
//! dispatchers, and the events exchange merchants can consume directly.
//!
//! Nothing is lost between the database and the broker:
//!
//! - `publisher` drains the *outbox* (rows written in the ingress
//!   transaction) to `{prefix}.events` and `{prefix}.deliveries`, and removes
//!   a row only after the broker confirmed every publish for it.
//! - `consumer` takes delivery jobs with manual acks and a bounded prefetch,
//!   and acks a job only after its attempt is stored. Retries wait in
//!   `{prefix}.retry.{delay}` queues (message TTL, dead-lettered back);
//!   exhausted jobs go to `{prefix}.dead`.
//! - the store stays the truth of what is next: a pending job whose message
//!   went missing (a crash between storing and publishing) is found by
//!   `consumer`'s sweep and published again. Stale duplicates are dropped
//!   because a job is only taken if the store agrees it is due at that attempt.
//! - `connection` reconnects with jittered backoff, re-declares the topology
//!   (`topology`), and reports readiness for `/readyz`.

pub mod connection;
pub mod consumer;
pub mod publisher;
pub mod topology;

use serde::{Deserialize, Serialize};

use crate::store::JobRef;

/// The most delivery jobs one message carries. The outbox publisher groups
/// the first jobs of a batch of events into messages of up to this many: a
/// message costs the broker a quorum-log write, a delivery and an ack (and
/// the relay a publish, a confirm and an ack crossing to the client's I/O
/// thread) whatever it holds, which per job was the larger part of RabbitMQ's
/// and a good part of the relay's work in scaled mode (docs/benchmarks/history.md,
/// 2026-12-02). Small enough that one message does not take much more than
/// its share of a dispatcher's slots.
pub const MAX_JOBS_PER_MESSAGE: usize = 32;

/// What travels on the deliveries, retry and dead queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum QueueTask {
    /// Make attempt `attempt` of delivery `delivery_id`.
    Deliver(JobRef),
    /// Each of these jobs, independently (first attempts grouped by the
    /// outbox publisher). The message is acked once every job's outcome is
    /// stored; a copy delivered again finds the finished ones stale.
    DeliverMany { jobs: Vec<JobRef> },
}

impl QueueTask {
    /// One message for `jobs`: `Deliver` for a single job, so that a lone
    /// job reads as it always has.
    pub fn for_jobs(jobs: Vec<JobRef>) -> Self {
        match jobs.as_slice() {
            [job] => QueueTask::Deliver(*job),
            _ => QueueTask::DeliverMany { jobs },
        }
    }

    /// The jobs this message asks for.
    pub fn jobs(&self) -> &[JobRef] {
        match self {
            QueueTask::Deliver(job) => std::slice::from_ref(job),
            QueueTask::DeliverMany { jobs } => jobs,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing integers and a tag cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_round_trip() {
        let task = QueueTask::Deliver(JobRef {
            delivery_id: 7,
            attempt: 2,
        });
        let bytes = task.to_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"task":"deliver","delivery_id":7,"attempt":2}"#
        );
        assert_eq!(QueueTask::from_bytes(&bytes), Some(task.clone()));
        assert_eq!(QueueTask::from_bytes(b"garbage"), None);
        assert_eq!(
            QueueTask::for_jobs(vec![JobRef {
                delivery_id: 7,
                attempt: 2
            }]),
            task
        );
    }

    #[test]
    fn grouped_jobs_round_trip() {
        let jobs = [
            JobRef {
                delivery_id: 7,
                attempt: 1,
            },
            JobRef {
                delivery_id: 9,
                attempt: 1,
            },
        ];
        let task = QueueTask::for_jobs(jobs.to_vec());
        let bytes = task.to_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"task":"deliver_many","jobs":[{"delivery_id":7,"attempt":1},{"delivery_id":9,"attempt":1}]}"#
        );
        let read = QueueTask::from_bytes(&bytes).unwrap();
        assert_eq!(read.jobs(), &jobs);
        // A message with no jobs reads, and asks for nothing.
        let empty = QueueTask::from_bytes(br#"{"task":"deliver_many","jobs":[]}"#).unwrap();
        assert!(empty.jobs().is_empty());
    }
}
