//! roost's Kafka edge.
//!
//! - [`KafkaConfig`]: brokers, client id, topic names, extra librdkafka properties.
//! - [`Producer`]: an idempotent producer (`acks=all`) whose `flush` tells whether every record
//!   was acknowledged: callers checkpoint only after that.
//! - [`ensure_topic`]: creates a topic (compacted where asked) if it does not exist.
//! - [`read_to_end`] replays a topic from the beginning up to its end at the time of the call;
//!   [`TopicFollower`] keeps reading it afterwards. Both read every partition without a consumer
//!   group: topics such as `roost.feeds` are read whole by every instance.
//! - [`GroupConsumer`]: a consumer-group member that replays each partition it is given from the
//!   beginning (state rebuild) and commits only when told.

mod context;
mod group;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use context::Context;
pub use group::{GroupConsumer, GroupEvent};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// Topic names (the `[kafka.topics]` config section).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    /// Request events parsed from access logs, keyed by client (`roost tail` writes, the
    /// `roost score` consumer group reads).
    pub requests: String,
    /// Lines that did not parse, with their source (`roost tail` writes; operators read).
    pub deadletter: String,
    /// Verdict changes, compacted, keyed by client (`roost score` writes; the flowspec
    /// controller and the admin UI read).
    pub verdicts: String,
    /// Operators' overrides, compacted, keyed by prefix (every scorer reads it whole).
    pub overrides: String,
    /// Threat-feed entries, compacted (`roost feeds` writes, every scorer reads it whole).
    pub feeds: String,
    /// Flow records from NetFlow/IPFIX exporters, keyed by source address (`roost flows` writes).
    pub flows: String,
    /// What operators did in the admin UI (who, when, what, why), keyed by the prefix.
    pub audit: String,
}

impl Default for Topics {
    fn default() -> Topics {
        Topics {
            requests: "roost.requests".into(),
            deadletter: "roost.deadletter".into(),
            verdicts: "roost.verdicts".into(),
            overrides: "roost.overrides".into(),
            feeds: "roost.feeds".into(),
            flows: "roost.flows".into(),
            audit: "roost.audit".into(),
        }
    }
}

/// How to reach Kafka (the `[kafka]` config section). Empty `brokers` means Kafka is not used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port,host:port`.
    pub brokers: String,
    pub topics: Topics,
    /// Extra librdkafka properties (`client.id`, `socket.*`, `security.protocol`, `ssl.*`,
    /// `sasl.*`, …). librdkafka is built with TLS (OpenSSL) and SASL PLAIN, SCRAM-SHA-256/512
    /// and OAUTHBEARER; not GSSAPI.
    pub properties: BTreeMap<String, String>,
    /// A file whose content (one trailing newline dropped) is the SASL password
    /// (`sasl.password`), read each time a client is made; "" = none. Keeps the secret out of
    /// the config file and out of `roost config`.
    pub sasl_password_file: String,
}

impl KafkaConfig {
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    fn client(&self, client_id: &str) -> Result<ClientConfig, Error> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers).set("client.id", client_id);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        if let Some(password) = self.sasl_password()? {
            c.set("sasl.password", password);
        }
        Ok(c)
    }

    /// The password `sasl_password_file` holds, if one is named.
    fn sasl_password(&self) -> Result<Option<String>, Error> {
        let file = self.sasl_password_file.trim();
        if file.is_empty() {
            return Ok(None);
        }
        if self.properties.contains_key("sasl.password") {
            return Err(Error::Config(
                "both kafka.sasl_password_file and kafka.properties.\"sasl.password\" are set: keep one".into(),
            ));
        }
        let text = std::fs::read_to_string(file)
            .map_err(|e| Error::Config(format!("reading kafka.sasl_password_file {file}: {e}")))?;
        let password = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        if password.is_empty() {
            return Err(Error::Config(format!("kafka.sasl_password_file {file} is empty")));
        }
        Ok(Some(password.to_owned()))
    }
}

/// Kafka failures, with what roost was doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: KafkaError,
    },
    #[error("kafka: {0}")]
    Timeout(String),
    #[error("kafka: {0}")]
    Config(String),
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    let what = what.into();
    move |source| Error::Kafka { what, source }
}

/// Creates `topic` if it does not exist; `compact` sets `cleanup.policy=compact`.
pub fn ensure_topic(cfg: &KafkaConfig, topic: &str, partitions: i32, compact: bool) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> =
        cfg.client("roost-admin")?.create().map_err(kafka("creating the admin client"))?;
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    if compact {
        t = t.set("cleanup.policy", "compact");
    }
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let fut = admin.create_topics([&t], &opts);
    let results = block_on(fut).map_err(|source| Error::Kafka {
        what: context::explained(format!("creating {topic}"), context::diagnose(cfg)),
        source,
    })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                let what = context::explained(format!("creating {name}"), context::diagnose(cfg));
                return Err(Error::Kafka { what, source: KafkaError::AdminOp(code) });
            }
        }
    }
    Ok(())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    // The admin client's futures complete on librdkafka's own thread; a tiny executor suffices.
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a current-thread runtime");
    rt.block_on(f)
}

/// An idempotent producer.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<Context>,
    last: std::sync::Arc<context::LastError>,
}

impl Producer {
    pub fn new(cfg: &KafkaConfig, client_id: &str) -> Result<Producer, Error> {
        Producer::with(cfg, client_id, &[])
    }

    /// A producer with librdkafka properties of its own (`linger.ms`, `message.timeout.ms`…);
    /// the configured `kafka.properties` still win.
    pub fn with(cfg: &KafkaConfig, client_id: &str, props: &[(&str, &str)]) -> Result<Producer, Error> {
        let mut c = ClientConfig::new();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "20")
            .set("message.timeout.ms", "30000");
        for (k, v) in props {
            c.set(*k, *v);
        }
        for (k, v) in cfg.client(client_id)?.config_map() {
            c.set(k, v);
        }
        let ctx = Context::default();
        let last = ctx.last.clone();
        let inner = c.create_with_context(ctx).map_err(kafka("creating the producer"))?;
        Ok(Producer { inner, last })
    }

    /// Sends one record (`None` value: a tombstone) and waits for its acknowledgement.
    pub async fn send(&self, topic: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), Error> {
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).key(key);
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        self.inner
            .send(rec, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| self.fail(format!("producing to {topic}"))(e))
    }

    /// Sends many records concurrently and waits for all acknowledgements; the first failure is
    /// returned (the others may or may not have been written: callers retry the whole batch,
    /// which the compacted topic's keys make harmless).
    /// Keys and values may be borrowed: librdkafka copies them when queueing.
    pub async fn send_all<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = (K, Option<V>)>,
    ) -> Result<usize, Error> {
        let mut pending = Vec::new();
        for (key, value) in records {
            pending.push(self.queue_one(topic, key.as_ref(), value.as_ref().map(AsRef::as_ref))?);
            // Keep the local queue bounded: wait for the oldest half when it grows.
            if pending.len() >= 50_000 {
                for p in pending.drain(..25_000) {
                    self.ack(topic, p.await)?;
                }
            }
        }
        let n = pending.len();
        for p in pending {
            self.ack(topic, p.await)?;
        }
        Ok(n)
    }

    /// Queues records without waiting (librdkafka copies keys and values): what comes back is
    /// awaited with [`Producer::acked`]. Unlike [`Producer::send_all`], the local queue is not
    /// bounded here: callers bound what they queue (librdkafka's `queue.buffering.max.*` refuse
    /// beyond its own limits, an error like any other).
    pub fn queue<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = (K, Option<V>)>,
    ) -> Result<Queued, Error> {
        let mut acks = Vec::new();
        for (key, value) in records {
            acks.push(self.queue_one(topic, key.as_ref(), value.as_ref().map(AsRef::as_ref))?);
        }
        Ok(Queued { topic: topic.to_owned(), acks })
    }

    /// One record to librdkafka's queue (`None` value: a tombstone).
    fn queue_one(
        &self,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<rdkafka::producer::DeliveryFuture, Error> {
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).key(key);
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        self.inner.send_result(rec).map_err(|(e, _)| self.fail(format!("queueing for {topic}"))(e))
    }

    /// Waits for every acknowledgement of `q`; the first failure is returned. Returns how many.
    pub async fn acked(&self, q: Queued) -> Result<usize, Error> {
        let n = q.acks.len();
        for p in q.acks {
            self.ack(&q.topic, p.await)?;
        }
        Ok(n)
    }

    /// Sends records concurrently and waits for every acknowledgement;
    /// returns, per partition written, the offset after the last record written there. On a
    /// failure nothing is said about which records were written (callers resend the batch).
    pub async fn send_batch(&self, topic: &str, records: &[OutRecord]) -> Result<BTreeMap<i32, i64>, Error> {
        let mut pending = Vec::with_capacity(records.len());
        let mut next = BTreeMap::new();
        for r in records {
            pending.push(self.queue_one(topic, &r.key, r.value.as_deref())?);
        }
        for p in pending {
            match p.await {
                Ok(Ok(d)) => {
                    let e = next.entry(d.partition).or_insert(0);
                    *e = (*e).max(d.offset + 1);
                }
                Ok(Err((e, _))) => return Err(self.fail(format!("producing to {topic}"))(e)),
                Err(_) => return Err(Error::Timeout(format!("producing to {topic}: the delivery report was lost"))),
            }
        }
        Ok(next)
    }

    /// Waits (up to `timeout`) until the broker that leads `topic` answers: records queued
    /// before that wait in librdkafka's queue for the connection and the metadata.
    pub fn ready(&self, topic: &str, timeout: Duration) -> Result<(), Error> {
        self.inner
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map(|_| ())
            .map_err(self.fail(format!("reaching {topic}")))
    }

    /// Waits until every queued record is acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), Error> {
        self.inner.flush(timeout).map_err(self.fail("flushing the producer"))
    }

    fn fail(&self, what: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
        self.last.fail(what)
    }

    fn ack<E>(
        &self,
        topic: &str,
        r: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, E>,
    ) -> Result<(), Error> {
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(self.fail(format!("producing to {topic}"))(e)),
            Err(_) => Err(Error::Timeout(format!("producing to {topic}: the delivery report was lost"))),
        }
    }
}

/// Records queued by [`Producer::queue`], their acknowledgements to come.
pub struct Queued {
    topic: String,
    acks: Vec<rdkafka::producer::DeliveryFuture>,
}

impl Queued {
    pub fn len(&self) -> usize {
        self.acks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    /// `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// A record to send: key and value (`None`: a tombstone).
#[derive(Clone, Debug, Default)]
pub struct OutRecord {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Reads a whole topic from the beginning, every partition, without a consumer group.
pub struct TopicFollower {
    consumer: BaseConsumer<Context>,
    topic: String,
    /// Where each partition's reading began (absent: at its beginning).
    start: BTreeMap<i32, i64>,
}

impl TopicFollower {
    pub fn new(cfg: &KafkaConfig, topic: &str, client_id: &str) -> Result<TopicFollower, Error> {
        TopicFollower::from(cfg, topic, client_id, &BTreeMap::new())
    }

    /// Like [`TopicFollower::new`], starting each partition named in `start` at its offset there
    /// (the others at their beginning).
    pub fn from(
        cfg: &KafkaConfig,
        topic: &str,
        client_id: &str,
        start: &BTreeMap<i32, i64>,
    ) -> Result<TopicFollower, Error> {
        let consumer: BaseConsumer<Context> = cfg
            .client(client_id)?
            .set("group.id", format!("{client_id}-unused"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create_with_context(Context::default())
            .map_err(kafka("creating a consumer"))?;
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(|e| {
            context::serve(&consumer);
            consumer.context().last.fail(format!("reading metadata of {topic}"))(e)
        })?;
        let mut tpl = TopicPartitionList::new();
        for t in md.topics() {
            if let Some(e) = t.error() {
                return Err(Error::Kafka {
                    what: format!("metadata of {topic}"),
                    source: KafkaError::MetadataFetch(e.into()),
                });
            }
            for p in t.partitions() {
                let at = start.get(&p.id()).map_or(Offset::Beginning, |o| Offset::Offset(*o));
                tpl.add_partition_offset(topic, p.id(), at).map_err(kafka("assigning"))?;
            }
        }
        if tpl.count() == 0 {
            return Err(Error::Timeout(format!("topic {topic} has no partitions (does it exist?)")));
        }
        consumer.assign(&tpl).map_err(kafka(format!("assigning {topic}")))?;
        Ok(TopicFollower { consumer, topic: topic.to_owned(), start: start.clone() })
    }

    /// The end offsets of every partition now.
    pub fn ends(&self) -> Result<BTreeMap<i32, i64>, Error> {
        let assignment = self.consumer.assignment().map_err(kafka("reading the assignment"))?;
        let mut ends = BTreeMap::new();
        for e in assignment.elements() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&self.topic, e.partition(), Duration::from_secs(10))
                .map_err(kafka(format!("watermarks of {}", self.topic)))?;
            ends.insert(e.partition(), high);
        }
        Ok(ends)
    }

    /// The next record, waiting up to `timeout`.
    pub fn poll(&self, timeout: Duration) -> Result<Option<Record>, Error> {
        match self.consumer.poll(timeout) {
            None => Ok(None),
            Some(Err(KafkaError::PartitionEOF(_))) => Ok(None),
            Some(Err(e)) => Err(self.consumer.context().last.fail(format!("reading {}", self.topic))(e)),
            Some(Ok(m)) => Ok(Some(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().map(<[u8]>::to_vec),
            })),
        }
    }

    /// Reads until every partition reached the end it had when this was called and then no
    /// record arrived for half a second (`timeout` bounds the whole read), handing each record
    /// to `f`. Returns the records read.
    ///
    /// The quiet period is deliberate: tansu 0.6 reports a partition's high watermark as the
    /// last batch's base offset + 1, so the watermark alone would stop short of the last batch.
    pub fn read_to_end(&self, timeout: Duration, mut f: impl FnMut(Record)) -> Result<usize, Error> {
        let ends = self.ends()?;
        let mut reached: BTreeMap<i32, i64> =
            ends.keys().map(|p| (*p, self.start.get(p).copied().unwrap_or(0))).collect();
        let deadline = Instant::now() + timeout;
        let quiet = Duration::from_millis(500);
        let mut last_record = Instant::now();
        let mut n = 0;
        loop {
            let behind = reached.iter().any(|(p, at)| *at < ends[p]);
            if !behind && last_record.elapsed() >= quiet {
                return Ok(n);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!("reading {} to its end took longer than {timeout:?}", self.topic)));
            }
            if let Some(r) = self.poll(Duration::from_millis(100))? {
                reached.insert(r.partition, r.offset + 1);
                last_record = Instant::now();
                n += 1;
                f(r);
            }
        }
    }
}

/// Reads `topic` whole, once.
pub fn read_to_end(cfg: &KafkaConfig, topic: &str, timeout: Duration, f: impl FnMut(Record)) -> Result<usize, Error> {
    TopicFollower::new(cfg, topic, "roost-reader")?.read_to_end(timeout, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(props: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            // nothing listens there: clients are made without connecting
            brokers: "127.0.0.1:9".into(),
            properties: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    /// TLS and the SASL mechanisms managed clusters use are built in; GSSAPI is not, and says so.
    #[test]
    fn tls_and_sasl_plain_scram_oauthbearer_are_built_in_and_gssapi_is_refused() {
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] {
            let cfg = with(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", mechanism),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ]);
            Producer::new(&cfg, "test").unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        }
        Producer::new(&with(&[("security.protocol", "SSL"), ("ssl.ca.location", "probe")]), "test").expect("TLS");
        let e = Producer::new(&with(&[("security.protocol", "SASL_SSL"), ("sasl.mechanism", "GSSAPI")]), "test")
            .err()
            .expect("GSSAPI is not built in");
        assert!(e.to_string().contains("GSSAPI"), "{e}");
    }

    #[test]
    fn the_sasl_password_comes_from_its_file_without_the_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("roost-kafka-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        let mut cfg = with(&[("sasl.username", "u")]);
        cfg.sasl_password_file = file.display().to_string();
        for (content, want) in [("s3cret\n", "s3cret"), ("s3cret\r\n", "s3cret"), ("s3 cret", "s3 cret")] {
            std::fs::write(&file, content).unwrap();
            let c = cfg.client("test").unwrap();
            assert_eq!(c.get("sasl.password"), Some(want), "{content:?}");
        }
        std::fs::write(&file, "\n").unwrap();
        assert!(cfg.client("test").unwrap_err().to_string().contains("is empty"));
        std::fs::remove_file(&file).unwrap();
        assert!(cfg.client("test").unwrap_err().to_string().contains("reading kafka.sasl_password_file"));
        cfg.properties.insert("sasl.password".into(), "also".into());
        assert!(cfg.client("test").unwrap_err().to_string().contains("keep one"));
        cfg.sasl_password_file.clear();
        assert_eq!(cfg.client("test").unwrap().get("sasl.password"), Some("also"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
