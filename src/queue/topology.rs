//! Names and declarations of payhook's exchange and queues. Declared by every
//! process at every (re)connect, so a broker that lost them (a restart
//! without persistence, a new cluster) gets them back without an operator.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Waits this short go straight to the deliveries queue (after a pause of
/// that length, see `consumer::park`), and a retry queue up to this much
/// shorter than the wait is still used.
pub const PARK_SLACK: Duration = Duration::from_millis(25);

#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    /// Distinct non-zero delays of the retry schedule, ascending.
    pub delays: Vec<Duration>,
}

/// `50ms`, `30s`, `1m`, `15m`, `2h`: the largest unit that divides the delay.
pub fn delay_label(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl Topology {
    pub fn new(prefix: &str, schedule: &[Duration]) -> Self {
        let mut delays: Vec<Duration> = schedule.iter().copied().filter(|d| !d.is_zero()).collect();
        delays.sort();
        delays.dedup();
        Self {
            prefix: prefix.to_owned(),
            delays,
        }
    }

    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    pub fn deliveries_queue(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.prefix, delay_label(delay))
    }

    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = vec![self.deliveries_queue(), self.dead_queue()];
        queues.extend(self.delays.iter().map(|d| self.retry_queue(*d)));
        queues
    }

    /// Where to park a job that should run after `wait`:
    /// - almost due: straight to the deliveries queue;
    /// - else the longest retry queue not (much) longer than `wait`; a job
    ///   that comes back early is parked again for the rest;
    /// - else (shorter than every delay) the shortest retry queue: a little
    ///   late beats spinning through the deliveries queue until due.
    pub fn queue_for_wait(&self, wait: Duration) -> String {
        let slack = PARK_SLACK.max(wait / 20);
        if wait <= slack {
            return self.deliveries_queue();
        }
        match self.delays.iter().rev().find(|d| **d <= wait + slack) {
            Some(d) => self.retry_queue(*d),
            None => match self.delays.first() {
                Some(d) => self.retry_queue(*d),
                None => self.deliveries_queue(),
            },
        }
    }

    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        channel
            .exchange_declare(
                ShortString::from(self.events_exchange()),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut quorum = FieldTable::default();
        quorum.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        for queue in [self.deliveries_queue(), self.dead_queue()] {
            channel
                .queue_declare(ShortString::from(queue), durable, quorum.clone())
                .await?;
        }
        for delay in &self.delays {
            let mut args = FieldTable::default();
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from("")),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(self.deliveries_queue())),
            );
            channel
                .queue_declare(ShortString::from(self.retry_queue(*delay)), durable, args)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_parking() {
        let t = Topology::new(
            "ph",
            &[
                Duration::ZERO,
                Duration::from_secs(60),
                Duration::from_secs(300),
                Duration::from_secs(60),
                Duration::from_millis(1500),
            ],
        );
        assert_eq!(t.delays.len(), 3);
        assert_eq!(t.retry_queue(Duration::from_secs(60)), "ph.retry.1m");
        assert_eq!(t.retry_queue(Duration::from_millis(1500)), "ph.retry.1500ms");
        assert_eq!(t.retry_queue(Duration::from_secs(3600)), "ph.retry.1h");
        assert_eq!(t.queue_for_wait(Duration::ZERO), "ph.deliveries");
        assert_eq!(t.queue_for_wait(Duration::from_millis(20)), "ph.deliveries");
        // A retry computed a few ms after its schedule point still uses its queue.
        assert_eq!(t.queue_for_wait(Duration::from_millis(1497)), "ph.retry.1500ms");
        assert_eq!(t.queue_for_wait(Duration::from_millis(500)), "ph.retry.1500ms");
        assert_eq!(t.queue_for_wait(Duration::from_secs(90)), "ph.retry.1m");
        assert_eq!(t.queue_for_wait(Duration::from_secs(9000)), "ph.retry.5m");
        assert_eq!(t.events_exchange(), "ph.events");
        assert_eq!(t.dead_queue(), "ph.dead");
    }
}
