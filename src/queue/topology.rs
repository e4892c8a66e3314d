//! Names and declarations of payhook's exchange and queues. Declared by every
//! process at every (re)connect, so a broker that lost them (a restart
//! without persistence, a new cluster) gets them back without an operator.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};

/// Waits this short go straight to the deliveries queue (after a pause of
/// that length, see `consumer::park`), and a retry queue up to this much
/// shorter than the wait is still used.
pub const PARK_SLACK: Duration = Duration::from_millis(25);

/// The most messages `{prefix}.dead` keeps; beyond it the oldest are dropped
/// (`x-overflow = drop-head`). Nothing reads that queue to make progress: the
/// store is the record of dead deliveries (listed and redelivered through
/// the admin API), and the queue only lets a consumer watch them, so without
/// a bound it would grow for as long as merchants fail.
pub const DEAD_MAX_LENGTH: i64 = 10_000;

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

    /// The dead queue's arguments: a quorum queue that keeps the newest
    /// `DEAD_MAX_LENGTH` messages.
    pub fn dead_queue_arguments() -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(DEAD_MAX_LENGTH));
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString(LongString::from("drop-head")),
        );
        args
    }

    /// Declares everything on `channel`, except the dead queue, which gets a
    /// channel of its own from `connection`: a broker that has it from an
    /// older payhook, without its length bound, refuses the new arguments
    /// with PRECONDITION_FAILED, which closes the channel it came on.
    pub async fn declare(&self, connection: &Connection, channel: &Channel) -> Result<(), lapin::Error> {
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
        channel
            .queue_declare(ShortString::from(self.deliveries_queue()), durable, quorum)
            .await?;
        self.declare_dead(connection, durable).await?;
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

    async fn declare_dead(
        &self,
        connection: &Connection,
        durable: QueueDeclareOptions,
    ) -> Result<(), lapin::Error> {
        let probe = connection.create_channel().await?;
        let declared = probe
            .queue_declare(
                ShortString::from(self.dead_queue()),
                durable,
                Self::dead_queue_arguments(),
            )
            .await;
        match declared {
            Ok(_) => {
                // A failed close leaves a channel the connection's end closes.
                let _ = probe.close(200, ShortString::from("declared")).await;
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::ProtocolError(p) if p.get_id() == 406) => {
                // The queue exists with other arguments (an older payhook's,
                // unbounded). Dead jobs still reach it, and the store keeps
                // the record of them, so carry on; an operator bounds it.
                // (AMQP cannot set a policy, and a new name would strand
                // what the old queue holds.)
                let queue = self.dead_queue();
                tracing::warn!(
                    queue = %queue,
                    error = %e,
                    "the dead queue was declared by an older payhook without its length bound \
                     ({DEAD_MAX_LENGTH}, drop-head); it is used as it is, and unless a policy bounds it, it \
                     grows for as long as deliveries die. Bound it with `rabbitmqctl set_policy \
                     --apply-to queues payhook-dead '^{queue}$' \
                     '{{\"max-length\":{DEAD_MAX_LENGTH},\"overflow\":\"drop-head\"}}'`, or delete it \
                     (`rabbitmqctl delete_queue {queue}`: the store keeps every dead delivery) and it is \
                     declared bounded at the next connect"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
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
