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

/// What travels on the deliveries, retry and dead queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum QueueTask {
    /// Make attempt `attempt` of delivery `delivery_id`.
    Deliver(JobRef),
}

impl QueueTask {
    pub fn to_bytes(self) -> Vec<u8> {
        // Serializing two integers and a tag cannot fail.
        serde_json::to_vec(&self).unwrap_or_default()
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
        assert_eq!(QueueTask::from_bytes(&bytes), Some(task));
        assert_eq!(QueueTask::from_bytes(b"garbage"), None);
    }
}
