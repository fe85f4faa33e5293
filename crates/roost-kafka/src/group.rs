//! A consumer-group member that rebuilds state: every partition it is given is read from its
//! beginning, and the group's committed offset is reported with the assignment, so the caller
//! can replay what was already handled (without repeating its effects) before going live.
//!
//! Rebalances (eager protocol) are handled inside [`GroupConsumer::poll`]; they surface as
//! [`GroupEvent::Assigned`] and [`GroupEvent::Revoked`] in order with the records.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::context::LastError;
use crate::{Error, KafkaConfig, Record, kafka};

/// What a poll brought.
#[derive(Debug)]
pub enum GroupEvent {
    /// Partitions now ours, each with the group's committed offset (`None`: nothing committed).
    /// Their records arrive from the partition's beginning.
    Assigned(Vec<(i32, Option<i64>)>),
    /// Partitions no longer ours: forget their state; records of theirs not yet committed will
    /// be handled by the next owner.
    Revoked(Vec<i32>),
    Record(Record),
}

struct Ctx {
    topic: String,
    events: Mutex<VecDeque<GroupEvent>>,
    /// Records not yet committed per assigned partition, from librdkafka's statistics (emitted
    /// every few seconds from within `poll`: reading them never waits on the broker).
    lag: Mutex<BTreeMap<i32, i64>>,
    last: LastError,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        self.last.note(&error, reason);
    }

    fn stats(&self, stats: Statistics) {
        let Some(t) = stats.topics.get(&self.topic) else { return };
        let lag: BTreeMap<i32, i64> = t
            .partitions
            .values()
            .filter(|p| p.partition >= 0 && p.desired && p.hi_offset >= 0)
            .map(|p| {
                let done = if p.committed_offset >= 0 { p.committed_offset } else { p.app_offset.max(0) };
                (p.partition, (p.hi_offset - done).max(0))
            })
            .collect();
        *self.lag.lock().expect("lag lock") = lag;
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let mut events = self.events.lock().expect("events lock");
        let parts: Vec<i32> = tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let committed: BTreeMap<i32, Option<i64>> = match c
                    .committed_offsets(tpl.clone(), Duration::from_secs(30))
                {
                    Ok(list) => list
                        .elements_for_topic(&self.topic)
                        .iter()
                        .map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { Some(o) } else { None }))
                        .collect(),
                    Err(e) => {
                        // Without the committed offsets everything is replayed live: effects are
                        // repeated (idempotent writes), nothing is lost.
                        tracing::warn!(error = %e, "cannot read committed offsets; replaying assigned partitions with their effects");
                        BTreeMap::new()
                    }
                };
                let mut from_start = TopicPartitionList::new();
                for p in &parts {
                    let _ = from_start.add_partition_offset(&self.topic, *p, Offset::Beginning);
                }
                if let Err(e) = c.assign(&from_start) {
                    tracing::error!(error = %e, "cannot take the assigned partitions");
                }
                tracing::info!(partitions = ?parts, "partitions assigned");
                events.push_back(GroupEvent::Assigned(
                    parts.iter().map(|p| (*p, committed.get(p).copied().flatten())).collect(),
                ));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = ?parts, "partitions revoked");
                let _ = c.unassign();
                events.push_back(GroupEvent::Revoked(parts));
            }
            other => {
                tracing::warn!(error = ?other, "rebalance failed; dropping every partition");
                let all: Vec<i32> = c
                    .assignment()
                    .map(|a| a.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect())
                    .unwrap_or_default();
                let _ = c.unassign();
                events.push_back(GroupEvent::Revoked(all));
            }
        }
    }
}

/// A member of a consumer group over one topic.
pub struct GroupConsumer {
    consumer: BaseConsumer<Ctx>,
    topic: String,
}

impl GroupConsumer {
    /// Joins `group` reading `topic`. Offsets are committed only by [`GroupConsumer::commit`].
    ///
    /// `instance` makes this a static member (`group.instance.id`, KIP-345): restarted with the
    /// same id, it takes its old place (and partitions) back at once instead of waiting for the
    /// dead session to time out and the group to rebalance. Every live member needs its own id.
    pub fn new(
        cfg: &KafkaConfig,
        topic: &str,
        group: &str,
        instance: Option<&str>,
        client_id: &str,
    ) -> Result<GroupConsumer, Error> {
        let mut c = cfg.client(client_id)?;
        if let Some(id) = instance {
            c.set("group.instance.id", id);
        }
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range")
            .set("fetch.wait.max.ms", "50")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("statistics.interval.ms", "5000");
        // the operator's properties win
        for (k, v) in &cfg.properties {
            c.set(k, v);
        }
        let ctx = Ctx {
            topic: topic.to_owned(),
            events: Mutex::new(VecDeque::new()),
            lag: Mutex::new(BTreeMap::new()),
            last: LastError::default(),
        };
        let consumer: BaseConsumer<Ctx> = c.create_with_context(ctx).map_err(kafka("creating the group consumer"))?;
        consumer.subscribe(&[topic]).map_err(kafka(format!("subscribing to {topic}")))?;
        Ok(GroupConsumer { consumer, topic: topic.to_owned() })
    }

    /// The next event, waiting up to `timeout`.
    pub fn poll(&self, timeout: Duration) -> Result<Option<GroupEvent>, Error> {
        if let Some(e) = self.pending() {
            return Ok(Some(e));
        }
        let polled = self.consumer.poll(timeout);
        // a rebalance during this poll comes before the record it returned
        let rec = match polled {
            None | Some(Err(KafkaError::PartitionEOF(_))) => None,
            Some(Err(e)) => return Err(self.consumer.context().last.fail(format!("reading {}", self.topic))(e)),
            Some(Ok(m)) => Some(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().map(<[u8]>::to_vec),
            }),
        };
        if let Some(r) = rec {
            self.consumer.context().events.lock().expect("events lock").push_back(GroupEvent::Record(r));
        }
        Ok(self.pending())
    }

    fn pending(&self) -> Option<GroupEvent> {
        self.consumer.context().events.lock().expect("events lock").pop_front()
    }

    /// Commits, per partition, the offset of the next record to handle.
    pub fn commit(&self, next: &BTreeMap<i32, i64>) -> Result<(), Error> {
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o)).map_err(kafka("building a commit"))?;
        }
        self.consumer.commit(&tpl, CommitMode::Sync).map_err(kafka(format!("committing offsets of {}", self.topic)))
    }

    /// Records not yet committed, per assigned partition, as of the latest statistics (every
    /// 5 s; never waits on the broker).
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        let assigned: Vec<i32> = self
            .consumer
            .assignment()
            .map(|a| a.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        let lag = self.consumer.context().lag.lock().expect("lag lock");
        assigned.iter().filter_map(|p| lag.get(p).map(|l| (*p, *l))).collect()
    }

    /// The number of partitions of the topic.
    pub fn partitions(&self) -> Result<usize, Error> {
        let md = self
            .consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(10))
            .map_err(|e| self.consumer.context().last.fail(format!("reading metadata of {}", self.topic))(e))?;
        Ok(md.topics().iter().map(|t| t.partitions().len()).sum())
    }
}
