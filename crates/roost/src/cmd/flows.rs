//! `roost flows`: the NetFlow v5/v9 and IPFIX collector. Datagrams from any number of exporters
//! arrive on `flows.listen`: per address, `flows.receivers` UDP sockets bound with
//! SO_REUSEPORT (the kernel spreads exporters over them by address and port, so one exporter's
//! datagrams, and templates, always reach the same socket), each read by its own thread, which
//! only reads ([`receive`]) and hands the datagrams by the slab, through a backlog of
//! `flows.backlog_bytes`, to the socket's decoding thread ([`decode`]). That one decodes
//! (`roost_flows::Decoder`) and encodes the records into flows-topic values
//! (`roost_flows::topic`: goflow2's protobuf messages, length-delimited), filled per bucket of
//! source addresses. A publishing thread sends them.
//!
//! With `flows.features.enabled` (the default) the receivers hand their records, a thousand at a
//! time or every 20 ms, to one features thread, which keeps per-source windows
//! (`roost_flows::features`; one set for every socket, so a source's flows count together
//! whichever exporter sent them): port scans, host
//! sweeps, SYN floods and handshakes that never complete become evidence events on the requests
//! topic, keyed like the source's requests, so the scorer that owns the source's partition
//! weighs them in offset order with its requests.
//! The windows see what this collector receives: send the exports of every router that sees a
//! source to one collector (or accept that each counts its own share).
//!
//! The receiver never waits on its decoding thread, nor that one on Kafka or the features
//! thread: the kernel would drop datagrams meanwhile. A decoding thread a whole backlog behind
//! gets no more slabs: they are dropped and their datagrams counted in
//! `roost_flows_backlog_dropped_datagrams_total`. Records the features thread is too far behind
//! to take (about `flows.queue` of them waiting) are left out of the windows, published all the
//! same, and counted in `roost_flows_features_skipped_total`. Records wait for Kafka in a bounded queue
//! (`flows.queue`); when it is full (Kafka away or slow) further records are dropped and counted in
//! `roost_flows_dropped_total`, as a router drops flows when its export buffer is full. Undecodable
//! datagrams are counted by exporter and reason, logged (at most once a second per exporter), and
//! kept on the dead-letter topic (hex, up to 100 a second; beyond that only counted), so a new
//! exporter's dialect can be looked at after the fact.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use roost_flows::features::{FlowFeatures, Seen};
use roost_flows::{Decoder, DecoderConfig};

use crate::config::{Config, FlowsConfig};
use crate::runtime::{self, Shutdown};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExporterLabel {
    exporter: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecordLabel {
    exporter: String,
    version: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    exporter: String,
    reason: String,
}

/// What the receiver hands to the publisher.
enum Out {
    /// Records of one source bucket, encoded (`roost_flows::topic`), and how many.
    Flows {
        bucket: usize,
        records: usize,
        value: Vec<u8>,
    },
    Evidence(roost_wire::requests::EvidenceEvent),
    DeadLetter {
        exporter: SocketAddr,
        letter: roost_wire::requests::DeadLetter,
    },
}

/// How long the receivers wait at start for the publisher to reach Kafka, at most.
const PUBLISHER_READY: Duration = Duration::from_secs(10);

/// Room for what a receiver hands the publisher at a time (it grows if need be).
const BATCH_OUTS: usize = 256;

/// Records handed to the features thread at a time (or fewer, every 20 ms).
const FEATURES_BATCH: usize = 1024;

/// Undecodable datagrams kept on the dead-letter topic per second, at most.
const DEAD_LETTERS_PER_SECOND: u32 = 100;

/// Exporters are routers: few. Past this many distinct ones, the rest share one label.
const MAX_EXPORTER_LABELS: usize = 256;

/// Flows-topic records are filled per bucket of source addresses ([`bucket`]) and sent when
/// they reach [`RECORD_BYTES`] or every 20 ms: a source's flows stay in one partition, in order,
/// and the records spread over the partitions whatever the number of exporters.
const BUCKETS: usize = 16;
const RECORD_BYTES: usize = 32 * 1024;

/// A source address's bucket: a fixed hash of its bytes (the same on every collector).
fn bucket(a: IpAddr) -> usize {
    let x = match a {
        IpAddr::V4(v) => u64::from(u32::from(v)),
        IpAddr::V6(v) => {
            let x = u128::from(v);
            (x as u64) ^ (x >> 64) as u64
        }
    };
    // a 64-bit mix (splitmix64's finaliser), then the top bits
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 60) as usize % BUCKETS
}

/// Exporters whose last error log time is remembered at most (beyond, the map starts over).
const MAX_ERROR_LOG_EXPORTERS: usize = 1024;

#[derive(Default)]
struct Metrics {
    datagrams: Family<ExporterLabel, Counter>,
    records: Family<RecordLabel, Counter>,
    packets: Family<ExporterLabel, Counter>,
    bytes: Family<ExporterLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    template_misses: Family<ExporterLabel, Counter>,
    foreign: Counter,
    clamped: Counter,
    sources: Gauge,
    templates: Family<ExporterLabel, Counter>,
    published: Counter,
    evidence: Family<KindLabel, Counter>,
    publish_errors: Counter,
    dropped: Counter,
    backlog_dropped: Counter,
    skipped: Counter,
    queued: Gauge,
    exporters: Gauge,
}

impl Metrics {
    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("roost_flows");
        r.register("datagrams", "Export datagrams received, by exporter", self.datagrams.clone());
        r.register("records", "Flow records decoded, by exporter and version (5, 9, 10 = IPFIX)", self.records.clone());
        r.register(
            "packets",
            "Packets the decoded flows carried (scaled by sampling), by exporter",
            self.packets.clone(),
        );
        r.register("bytes", "Bytes the decoded flows carried (scaled by sampling), by exporter", self.bytes.clone());
        r.register(
            "decode_errors",
            "Datagrams or records that did not decode, by exporter and reason",
            self.errors.clone(),
        );
        r.register(
            "template_misses",
            "Data sets whose template the exporter has not sent (yet), by exporter",
            self.template_misses.clone(),
        );
        r.register("templates", "Templates and options templates received, by exporter", self.templates.clone());
        r.register(
            "foreign_datagrams",
            "Datagrams dropped because their sender is not in flows.exporters",
            self.foreign.clone(),
        );
        r.register(
            "clamped_times",
            "Flow records dated after their datagram's arrival plus flows.max_clock_skew, given the arrival time",
            self.clamped.clone(),
        );
        r.register("tracked_sources", "Source addresses with a features window held", self.sources.clone());
        r.register("published", "Flow records acknowledged by Kafka", self.published.clone());
        r.register(
            "evidence",
            "Evidence events sent to the requests topic, by kind (portscan, hostscan, synflood, incomplete)",
            self.evidence.clone(),
        );
        r.register("publish_errors", "Failed sends to Kafka (retried)", self.publish_errors.clone());
        r.register("dropped", "Flow records dropped because the queue to Kafka was full", self.dropped.clone());
        r.register(
            "backlog_dropped_datagrams",
            "Datagrams dropped because a decoding thread was flows.backlog_bytes behind its receiver",
            self.backlog_dropped.clone(),
        );
        r.register(
            "features_skipped",
            "Flow records left out of the features windows because the features thread was behind",
            self.skipped.clone(),
        );
        r.register("queued_records", "Flow records waiting for Kafka", self.queued.clone());
        r.register("exporters", "Exporters (and observation domains) with templates held", self.exporters.clone());
    }
}

pub fn run(cfg: Config) -> anyhow::Result<()> {
    anyhow::ensure!(cfg.kafka.enabled(), "roost flows publishes to Kafka: set kafka.brokers");
    let f = cfg.flows.clone();
    anyhow::ensure!(!f.listen.is_empty(), "flows.listen is empty");
    if f.exporters.is_empty() {
        tracing::warn!(
            "flows.exporters is empty: exports from any address are accepted, and anyone who can reach the port can make flow evidence; list your routers"
        );
    }
    roost_kafka::ensure_topic(&cfg.kafka, &cfg.kafka.topics.flows, f.partitions, false)?;
    roost_kafka::ensure_topic(&cfg.kafka, &cfg.kafka.topics.deadletter, 1, false)?;
    if f.features.enabled {
        // as `roost tail` makes it: the scorers' partitions
        roost_kafka::ensure_topic(&cfg.kafka, &cfg.kafka.topics.requests, cfg.score.partitions, false)?;
    }
    let rt = runtime::tokio(1)?;
    let shutdown = Shutdown::on_signals(&rt)?;
    let listener = rt.block_on(runtime::bind(f.metrics_listen))?;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let (tx, rx) = sync_channel::<Vec<Out>>(f.queue.div_ceil(256).max(4));
    let shared = Arc::new(Shared { metrics: metrics.clone(), queued: AtomicI64::new(0), pools: Pools::new() });

    let mut threads = Vec::new();
    // one set of windows for every socket, on a thread of its own: a source's flows count
    // together whichever exporter, and so whichever socket, they came through, and the
    // receivers never wait for a lock
    let features = if f.features.enabled {
        let (ftx, frx) = sync_channel::<Vec<Seen>>(f.queue.div_ceil(FEATURES_BATCH).max(4));
        let (feat, tx, metrics, pool) =
            (FlowFeatures::new(f.features.clone()), tx.clone(), metrics.clone(), shared.pools.records.clone());
        threads.push(
            std::thread::Builder::new()
                .name("roost-flows-features".into())
                .spawn(move || keep_windows(feat, frx, tx, &metrics, &pool))?,
        );
        Some(ftx)
    } else {
        None
    };
    // the publisher first, and the receivers once it has reached the broker (or after a while):
    // what they take meanwhile would only pile up
    let (ready_tx, ready_rx) = sync_channel::<()>(1);
    {
        let (kafka, stop, shared) = (cfg.kafka.clone(), shutdown.flag(), shared.clone());
        let (ipv6_prefix, compression) = (cfg.engine.ipv6_prefix, f.compression);
        threads.push(
            std::thread::Builder::new()
                .name("roost-flows-publish".into())
                .spawn(move || publish(&kafka, compression, ipv6_prefix, rx, &stop, &shared, ready_tx))?,
        );
    }
    if ready_rx.recv_timeout(PUBLISHER_READY).is_err() {
        tracing::warn!(waited = ?PUBLISHER_READY, "the Kafka producer is not ready yet; receiving all the same");
    }
    let receivers = match f.receivers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    for addr in &f.listen {
        for _ in 0..receivers {
            let sock = bind(*addr, f.receive_buffer_bytes, receivers > 1)?;
            // the backlog between the receiver and its decoding thread, in slabs
            let backlog = (f.backlog_bytes / SLAB_BYTES).max(2);
            let slabs = Slabs::new(backlog + 2, backlog.min(READY_SLABS));
            let (gtx, grx) = sync_channel::<Received>(backlog);
            let (stop, metrics, exporters, s) = (shutdown.flag(), metrics.clone(), f.exporters.clone(), slabs.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("roost-flows-recv".into())
                    .spawn(move || receive(sock, &exporters, gtx, &stop, &metrics, &s))?,
            );
            let (tx, shared, f, features) = (tx.clone(), shared.clone(), f.clone(), features.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("roost-flows-decode".into())
                    .spawn(move || decode(grx, &f, features, tx, &shared, &slabs))?,
            );
        }
        tracing::info!(listen = %addr, receivers, "roost flows: receiving NetFlow v5/v9 and IPFIX");
    }
    drop(tx);
    drop(features);
    rt.block_on(async {
        let server =
            runtime::serve("roost flows: /metrics", listener, runtime::metrics_router(Arc::new(registry)), &shutdown);
        shutdown.stopped().await;
        let _ = server.await;
    });
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn bind(addr: SocketAddr, rcvbuf: usize, reuse_port: bool) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        s.set_reuse_port(true).context("SO_REUSEPORT")?;
    }
    if let Err(e) = s.set_recv_buffer_size(rcvbuf) {
        tracing::warn!(error = %e, rcvbuf, "cannot set the receive buffer");
    }
    s.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    let got = s.recv_buffer_size().unwrap_or(0);
    if got < rcvbuf {
        tracing::warn!(wanted = rcvbuf, got, "receive buffer smaller than asked (raise net.core.rmem_max)");
    }
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(IDLE_WAIT))?;
    Ok(s)
}

/// An exporter's label and its per-datagram counters, looked up once: a family lookup hashes
/// the label set under a lock, four times a datagram otherwise.
struct ExporterCounters {
    label: String,
    datagrams: Counter,
    packets: Counter,
    bytes: Counter,
    /// By version: 5, 9, 10.
    records: [Counter; 3],
}

impl ExporterCounters {
    fn new(label: String, m: &Metrics) -> ExporterCounters {
        let ex = || ExporterLabel { exporter: label.clone() };
        let records = ["5", "9", "10"]
            .map(|v| m.records.get_or_create(&RecordLabel { exporter: label.clone(), version: v.into() }).clone());
        ExporterCounters {
            datagrams: m.datagrams.get_or_create(&ex()).clone(),
            packets: m.packets.get_or_create(&ex()).clone(),
            bytes: m.bytes.get_or_create(&ex()).clone(),
            records,
            label,
        }
    }

    fn records(&self, version: u16) -> &Counter {
        &self.records[match version {
            5 => 0,
            9 => 1,
            _ => 2,
        }]
    }
}

/// Exporter labels and counters, bounded.
struct Labels {
    known: HashMap<IpAddr, ExporterCounters>,
    other: Option<ExporterCounters>,
}

impl Labels {
    fn new() -> Labels {
        Labels { known: HashMap::new(), other: None }
    }

    fn of(&mut self, a: IpAddr, m: &Metrics) -> &ExporterCounters {
        // (the length first: one lookup per datagram below the bound)
        if self.known.len() >= MAX_EXPORTER_LABELS && !self.known.contains_key(&a) {
            // not remembered: the map stays bounded however many addresses send
            return self.other.get_or_insert_with(|| ExporterCounters::new("other".into(), m));
        }
        self.known.entry(a).or_insert_with(|| ExporterCounters::new(a.to_string(), m))
    }
}

/// Buffers handed back by the thread that used them up (the publisher its topic values, the
/// features thread its record vectors), so the receivers reuse warm memory: allocated afresh
/// on one thread and freed on another, they were pages faulted in and zeroed for every
/// datagram, a tenth of a receiver's time at line rate. Bounded: what does not fit is freed.
struct Pool<T> {
    tx: crossbeam_channel::Sender<Vec<T>>,
    rx: crossbeam_channel::Receiver<Vec<T>>,
    /// Vectors that grew beyond this capacity are freed rather than kept.
    max_capacity: usize,
}

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool { tx: self.tx.clone(), rx: self.rx.clone(), max_capacity: self.max_capacity }
    }
}

impl<T> Pool<T> {
    fn new(buffers: usize, max_capacity: usize) -> Pool<T> {
        let (tx, rx) = crossbeam_channel::bounded(buffers);
        Pool { tx, rx, max_capacity }
    }

    /// The same, holding `n` vectors of `capacity` made now, their memory written: fresh
    /// memory costs a page fault per page on first use (zeroing it, and on a VM often the
    /// host's work too), which taken at line rate was a tenth of a receiver's first seconds.
    fn filled(buffers: usize, max_capacity: usize, n: usize, capacity: usize) -> Pool<T>
    where
        T: Copy + Default,
    {
        let pool = Pool::new(buffers, max_capacity);
        for _ in 0..n.min(buffers) {
            let mut v = vec![T::default(); capacity];
            v.clear();
            pool.give(v);
        }
        pool
    }

    /// An empty vector: a returned one, or a new one of `capacity`.
    fn take(&self, capacity: usize) -> Vec<T> {
        self.rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(capacity))
    }

    fn give(&self, mut v: Vec<T>) {
        if v.capacity() <= self.max_capacity {
            v.clear();
            let _ = self.tx.try_send(v);
        }
    }
}

/// What the receivers and the publisher share besides the channel between them.
struct Shared {
    metrics: Arc<Metrics>,
    /// Records waiting for Kafka.
    queued: AtomicI64,
    pools: Pools,
}

/// The pools of one collector.
#[derive(Clone)]
struct Pools {
    values: Pool<u8>,
    records: Pool<Seen>,
    /// The receivers' hand-overs to the publisher.
    batches: Pool<Out>,
}

impl Pools {
    fn new() -> Pools {
        let value = RECORD_BYTES + roost_flows::topic::max_encoded_len();
        Pools {
            // up to 1,024 kept, 512 of them ready (17 MiB): four batches in flight at line rate
            // hold about 600
            values: Pool::filled(1024, 2 * value, 512, value),
            records: Pool::filled(64, 4 * FEATURES_BATCH, 32, FEATURES_BATCH + 256),
            batches: Pool::new(64, 4 * BATCH_OUTS),
        }
    }
}

/// Whether an exporter may send: listed in `flows.exporters`, or any when the list is empty.
fn accepted(exporters: &[ipnetwork::IpNetwork], a: IpAddr) -> bool {
    exporters.is_empty() || exporters.iter().any(|n| n.contains(a.to_canonical()))
}

/// The features thread: every source's windows, fed each datagram's records by the receivers;
/// the evidence they complete goes to the publisher. Ends when every receiver has.
fn keep_windows(
    mut feat: FlowFeatures,
    rx: Receiver<Vec<Seen>>,
    tx: SyncSender<Vec<Out>>,
    m: &Metrics,
    pool: &Pool<Seen>,
) {
    let mut found = Vec::new();
    let mut last_prune = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(records) => {
                feat.observe_all(&records, &mut found);
                pool.give(records);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !found.is_empty() {
            let batch = found
                .drain(..)
                .map(|e| {
                    let kind = e.source.strip_prefix("flow:").unwrap_or(&e.source).to_owned();
                    m.evidence.get_or_create(&KindLabel { kind }).inc();
                    tracing::info!(client = %e.client, source = %e.source, detail = %e.detail, "flow evidence");
                    Out::Evidence(e)
                })
                .collect();
            // evidence is rare and must not be lost: this thread may wait for the publisher
            if tx.send(batch).is_err() {
                return;
            }
        }
        if last_prune.elapsed() >= Duration::from_secs(60) {
            last_prune = Instant::now();
            feat.expire(runtime::wall_now());
            m.sources.set(feat.tracked() as i64);
        }
    }
}

/// The most a UDP datagram carries (IPv4's 65,507, and room to spare).
const MAX_DATAGRAM: usize = 65_536;

/// A receiver's slab: the datagrams it read, back to back, handed to the decoding thread in one
/// go. Big enough that a hand-over is rare next to the datagrams it carries.
const SLAB_BYTES: usize = 512 * 1024;

/// Datagrams per slab at most (its bytes bound it first for datagrams of a usual size).
const SLAB_DATAGRAMS: usize = 512;

/// How long the receiver waits for the next datagram before it hands over the slab it fills:
/// an export that arrives alone goes on at once.
const SLAB_WAIT: Duration = Duration::from_millis(1);

/// How old a slab's first datagram may be before the slab is handed over, however busy the
/// socket: what arrives a little at a time is not held for long.
const SLAB_AGE_MS: i64 = 10;

/// How long a receiver with nothing in hand waits on its socket before it looks at the stop flag.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Slabs made at start per receiver (4 MiB), so the first burst does not wait on fresh pages.
const READY_SLABS: usize = 8;

/// One datagram in a [`Received`] slab.
#[derive(Clone, Copy)]
struct Gram {
    from: SocketAddr,
    /// When it was read off the socket.
    at: roost_event::Timestamp,
    start: usize,
    len: usize,
}

/// What a receiver hands its decoding thread: datagrams, copied once (by the kernel) into
/// `bytes`.
struct Received {
    /// `SLAB_BYTES`, written once when made and reused since.
    bytes: Vec<u8>,
    grams: Vec<Gram>,
}

impl Received {
    /// The bytes the datagrams take, from the start of `bytes`.
    fn used(&self) -> usize {
        self.grams.last().map_or(0, |g| g.start + g.len)
    }
}

/// Slabs handed back by the decoding threads, so the receivers reuse warm memory. Bounded: what
/// does not fit is freed.
#[derive(Clone)]
struct Slabs {
    tx: crossbeam_channel::Sender<Received>,
    rx: crossbeam_channel::Receiver<Received>,
}

impl Slabs {
    /// Keeps up to `kept` slabs, `ready` of them made now (their memory written: see [`Pool`]).
    fn new(kept: usize, ready: usize) -> Slabs {
        let (tx, rx) = crossbeam_channel::bounded(kept);
        let slabs = Slabs { tx, rx };
        for _ in 0..ready.min(kept) {
            slabs.give(Slabs::make());
        }
        slabs
    }

    fn make() -> Received {
        Received { bytes: vec![0; SLAB_BYTES], grams: Vec::with_capacity(SLAB_DATAGRAMS) }
    }

    fn take(&self) -> Received {
        self.rx.try_recv().unwrap_or_else(|_| Slabs::make())
    }

    fn give(&self, mut r: Received) {
        r.grams.clear();
        let _ = self.tx.try_send(r);
    }
}

/// A socket's receiving thread: it only reads datagrams (and drops those of senders not in
/// `flows.exporters`), and hands them by the slab to the socket's decoding thread ([`decode`]).
/// The kernel drops what arrives while the socket's buffer is full, and that buffer is small
/// next to a burst at line rate: a thread that does nothing else drains it at once, and a
/// decoding thread that falls behind for a while (its share of the cores taken, a burst)
/// catches up from `flows.backlog_bytes` of slabs, not from the kernel's buffer. Past that,
/// slabs are dropped and their datagrams counted (`roost_flows_backlog_dropped_datagrams_total`).
fn receive(
    sock: UdpSocket,
    exporters: &[ipnetwork::IpNetwork],
    tx: SyncSender<Received>,
    stop: &AtomicBool,
    m: &Metrics,
    slabs: &Slabs,
) {
    let mut r = slabs.take();
    // the socket's read timeout: `SLAB_WAIT` while datagrams are in hand, `IDLE_WAIT` when not
    let mut waiting_short = false;
    while !stop.load(Ordering::Relaxed) {
        let used = r.used();
        let hand_over = match sock.recv_from(&mut r.bytes[used..used + MAX_DATAGRAM]) {
            Ok((n, from)) => {
                if !accepted(exporters, from.ip()) {
                    m.foreign.inc();
                    continue;
                }
                let at = runtime::wall_now();
                r.grams.push(Gram { from, at, start: used, len: n });
                if !waiting_short {
                    waiting_short = sock.set_read_timeout(Some(SLAB_WAIT)).is_ok();
                }
                r.grams.len() >= SLAB_DATAGRAMS
                    || used + n + MAX_DATAGRAM > SLAB_BYTES
                    || at.0 - r.grams[0].at.0 >= SLAB_AGE_MS
            }
            // a timeout (WouldBlock or TimedOut), or an error the next read will show again
            Err(_) => !r.grams.is_empty(),
        };
        if hand_over {
            let k = r.grams.len() as u64;
            match tx.try_send(std::mem::replace(&mut r, slabs.take())) {
                Ok(()) => {}
                Err(TrySendError::Full(back)) => {
                    m.backlog_dropped.inc_by(k);
                    slabs.give(back);
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
            if waiting_short {
                waiting_short = sock.set_read_timeout(Some(IDLE_WAIT)).is_err();
            }
        }
    }
}

/// A socket's decoding thread: decodes what its receiver hands over, encodes the records into
/// the buckets' topic values, hands the publisher full values (and every 20 ms the rest), and the
/// features thread what its windows use. Ends when its receiver has.
fn decode(
    rx: Receiver<Received>,
    f: &FlowsConfig,
    features: Option<SyncSender<Vec<Seen>>>,
    tx: SyncSender<Vec<Out>>,
    shared: &Shared,
    slabs: &Slabs,
) {
    let (m, queued, pools) = (&*shared.metrics, &shared.queued, &shared.pools);
    let mut decoder = Decoder::new(&DecoderConfig {
        template_ttl: f.template_ttl,
        max_exporters: f.max_exporters,
        max_skew: f.max_clock_skew,
    });
    let mut labels = Labels::new();
    let mut out = roost_flows::Decoded::default();
    let mut encoder = roost_flows::topic::Encoder::default();
    let mut for_features: Vec<Seen> =
        if features.is_some() { pools.records.take(FEATURES_BATCH + 256) } else { Vec::new() };
    let mut last_error_log: HashMap<IpAddr, Instant> = HashMap::new();
    let mut batch: Vec<Out> = pools.batches.take(BATCH_OUTS);
    // records in `batch`
    let mut in_batch = 0usize;
    // flows-topic records being filled, per source bucket: (encoded records, how many)
    let mut buckets: Vec<(Vec<u8>, usize)> = (0..BUCKETS).map(|_| (Vec::new(), 0)).collect();
    let host = runtime::hostname();
    let (mut letters, mut letters_since) = (0u32, Instant::now());
    let mut last_send = Instant::now();
    let mut last_prune = Instant::now();
    loop {
        let waiting =
            in_batch > 0 || !batch.is_empty() || !for_features.is_empty() || buckets.iter().any(|(_, n)| *n > 0);
        let slab = match rx.recv_timeout(Duration::from_millis(if waiting { 20 } else { 200 })) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let grams = slab.as_ref().map_or(&[][..], |r| &r.grams[..]);
        // the timed work at the end runs after each datagram, and once when none came
        for i in 0..grams.len().max(1) {
            let now = grams.get(i).map_or_else(runtime::wall_now, |g| g.at);
            if let (Some(g), Some(r)) = (grams.get(i), &slab) {
                let (from, buf, n) = (g.from, &r.bytes[g.start..g.start + g.len], g.len);
                let counters = labels.of(from.ip(), m);
                let ex = &counters.label;
                counters.datagrams.inc();
                decoder.decode_into(from, buf, now, &mut out);
                if !out.records.is_empty() {
                    counters.records(out.version).inc_by(out.records.len() as u64);
                    let (p, b) = out
                        .records
                        .iter()
                        .fold((0u64, 0u64), |(p, b), r| (p.saturating_add(r.packets), b.saturating_add(r.bytes)));
                    counters.packets.inc_by(p);
                    counters.bytes.inc_by(b);
                }
                if out.template_misses > 0 {
                    m.template_misses
                        .get_or_create(&ExporterLabel { exporter: ex.clone() })
                        .inc_by(out.template_misses.into());
                }
                if out.clamped > 0 {
                    m.clamped.inc_by(out.clamped.into());
                }
                if out.templates > 0 {
                    m.templates.get_or_create(&ExporterLabel { exporter: ex.clone() }).inc_by(out.templates.into());
                }
                if !out.errors.is_empty() && out.records.is_empty() {
                    if letters_since.elapsed() >= Duration::from_secs(1) {
                        (letters, letters_since) = (0, Instant::now());
                    }
                    if letters < DEAD_LETTERS_PER_SECOND {
                        letters += 1;
                        let (e, _) = out.errors[0];
                        batch.push(Out::DeadLetter {
                            exporter: from,
                            letter: roost_wire::requests::DeadLetter {
                                v: 1,
                                host: host.clone(),
                                file: format!("udp://{from}"),
                                kind: format!("flow_{}", e.label()),
                                error: e.to_string(),
                                line: buf.iter().map(|b| format!("{b:02x}")).collect(),
                                origin: None,
                            },
                        });
                    }
                }
                for (e, k) in &out.errors {
                    m.errors
                        .get_or_create(&ErrorLabel { exporter: ex.clone(), reason: e.label().into() })
                        .inc_by((*k).into());
                    if last_error_log.len() >= MAX_ERROR_LOG_EXPORTERS && !last_error_log.contains_key(&from.ip()) {
                        last_error_log.clear();
                    }
                    let last =
                        last_error_log.entry(from.ip()).or_insert_with(|| Instant::now() - Duration::from_secs(2));
                    if last.elapsed() >= Duration::from_secs(1) {
                        *last = Instant::now();
                        let head: String = buf[..n.min(16)].iter().map(|b| format!("{b:02x}")).collect();
                        tracing::warn!(exporter = %from, reason = %e, bytes = n, head, "undecodable NetFlow/IPFIX datagram");
                    }
                }
                for r in &out.records {
                    let b = bucket(r.src);
                    let (value, n) = &mut buckets[b];
                    if value.capacity() == 0 {
                        *value = pools.values.take(RECORD_BYTES + roost_flows::topic::max_encoded_len());
                    }
                    encoder.encode(r, value);
                    *n += 1;
                    if value.len() >= RECORD_BYTES {
                        in_batch += *n;
                        batch.push(Out::Flows { bucket: b, records: std::mem::take(n), value: std::mem::take(value) });
                    }
                }
                if features.is_some() {
                    for_features.extend(out.records.iter().map(Seen::from));
                }
            }
            let due = last_send.elapsed() >= Duration::from_millis(20);
            // the features thread takes records by the thousand (or what a slice of time gave): a
            // hand-over per datagram was a wake-up of that thread, and a system call here, each
            if let Some(feat) = &features
                && (for_features.len() >= FEATURES_BATCH || (due && !for_features.is_empty()))
            {
                let records = std::mem::replace(&mut for_features, pools.records.take(FEATURES_BATCH + 256));
                let k = records.len() as u64;
                match feat.try_send(records) {
                    Ok(()) => {}
                    Err(TrySendError::Full(records)) => {
                        pools.records.give(records);
                        m.skipped.inc_by(k);
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
            if due {
                // a slice of time ends: what the buckets hold goes too
                for (b, (value, n)) in buckets.iter_mut().enumerate().filter(|(_, (_, n))| *n > 0) {
                    in_batch += *n;
                    batch.push(Out::Flows { bucket: b, records: std::mem::take(n), value: std::mem::take(value) });
                }
            }
            if !batch.is_empty() && (in_batch >= 4096 || due) {
                let n = std::mem::take(&mut in_batch) as i64;
                match tx.try_send(std::mem::replace(&mut batch, pools.batches.take(BATCH_OUTS))) {
                    Ok(()) => {
                        queued.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(TrySendError::Full(_)) => {
                        m.dropped.inc_by(n as u64);
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
                last_send = Instant::now();
            }
            if last_prune.elapsed() >= Duration::from_secs(60) {
                last_prune = Instant::now();
                decoder.prune(now, f.template_ttl);
                m.exporters.set(decoder.exporters() as i64);
            }
        }
        if let Some(r) = slab {
            slabs.give(r);
        }
    }
}

fn publish(
    kafka: &roost_kafka::KafkaConfig,
    compression: crate::config::Compression,
    ipv6_prefix: u8,
    rx: Receiver<Vec<Out>>,
    stop: &AtomicBool,
    shared: &Shared,
    ready: SyncSender<()>,
) {
    let (m, queued, pool) = (&*shared.metrics, &shared.queued, &shared.pools.values);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let Some(mut producer) = new_producer(kafka, compression, stop) else { return };
    if let Err(e) = producer.ready(&kafka.topics.flows, PUBLISHER_READY) {
        tracing::warn!(error = %e, "the Kafka producer cannot reach the flows topic's broker yet");
    }
    let _ = ready.try_send(());
    let topics = Topics {
        flows: kafka.topics.flows.clone(),
        requests: kafka.topics.requests.clone(),
        deadletter: kafka.topics.deadletter.clone(),
    };
    let mut backoff = Duration::from_millis(100);
    // batches queued to librdkafka, oldest first, each with its acknowledgements to come
    let mut in_flight: VecDeque<(Batch, Acks)> = VecDeque::new();
    // (each with the producer that queued it: a new one may take over meanwhile)
    let acks = |producer: &roost_kafka::Producer, q: Vec<roost_kafka::Queued>| -> Acks {
        let producer = producer.clone();
        Box::pin(async move {
            for q in q {
                producer.acked(q).await?;
            }
            Ok(())
        })
    };
    // batches failed in a row
    let mut failures = 0u32;
    loop {
        // more records while there is room: waited for only when nothing is in flight
        if in_flight.len() < IN_FLIGHT {
            let got = if in_flight.is_empty() {
                rx.recv_timeout(Duration::from_millis(200))
            } else {
                rx.try_recv().map_err(|e| match e {
                    TryRecvError::Empty => RecvTimeoutError::Timeout,
                    TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                })
            };
            match got {
                Ok(first) => {
                    let batch = Batch::of(first, &rx, ipv6_prefix, &shared.pools.batches);
                    let Some(q) = queue_until_taken(&batch, &producer, &topics, m, stop, &mut backoff) else { return };
                    in_flight.push_back((batch, acks(&producer, q)));
                    continue;
                }
                Err(RecvTimeoutError::Timeout) if in_flight.is_empty() => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) if in_flight.is_empty() => return,
                Err(_) => {}
            }
        }
        // the oldest batch's acknowledgements; while there is room for another batch, a few
        // milliseconds at a time, so records that come meanwhile are queued behind it
        let room = in_flight.len() < IN_FLIGHT;
        let Some((_, oldest)) = in_flight.front_mut() else { continue };
        let acked = if room {
            match rt.block_on(async { tokio::time::timeout(Duration::from_millis(5), oldest).await }) {
                Ok(r) => r,
                Err(_) => continue,
            }
        } else {
            rt.block_on(oldest)
        };
        let Some((batch, _)) = in_flight.pop_front() else { continue };
        match acked {
            Ok(()) => {
                m.published.inc_by(batch.n as u64);
                (backoff, failures) = (Duration::from_millis(100), 0);
                let n = batch.n as i64;
                for (_, value) in batch.flows {
                    pool.give(value);
                }
                let left = queued.fetch_sub(n, Ordering::Relaxed) - n;
                m.queued.set(left.max(0));
            }
            Err(e) => {
                // the whole batch again (what was written is written twice: consumers see a
                // flow again, as after any retry), behind the batches already in flight
                m.publish_errors.inc();
                tracing::warn!(error = %e, retry_in = ?backoff, records = batch.n, "cannot publish flows; retrying");
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                failures += 1;
                if failures >= NEW_PRODUCER_AFTER {
                    // a broker that lost the producer's state (a new cluster, a topic made
                    // again) refuses its records for good: a new producer is a new identity
                    tracing::warn!(failures, "re-creating the Kafka producer");
                    let Some(p) = new_producer(kafka, compression, stop) else { return };
                    (producer, failures) = (p, 0);
                }
                let Some(q) = queue_until_taken(&batch, &producer, &topics, m, stop, &mut backoff) else { return };
                in_flight.push_back((batch, acks(&producer, q)));
            }
        }
    }
}

/// A batch's acknowledgements, all of them (or the first failure).
type Acks = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), roost_kafka::Error>>>>;

/// Batches failed in a row after which the producer is made anew.
const NEW_PRODUCER_AFTER: u32 = 3;

/// The flows producer, retried every second until made; `None` once the collector stops.
fn new_producer(
    kafka: &roost_kafka::KafkaConfig,
    compression: crate::config::Compression,
    stop: &AtomicBool,
) -> Option<roost_kafka::Producer> {
    loop {
        match roost_kafka::Producer::with(
            kafka,
            "roost-flows",
            &[("linger.ms", "5"), ("compression.type", compression.as_str())],
        ) {
            Ok(p) => return Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the Kafka producer; retrying");
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Queues `batch`, again and again (backing off) while librdkafka refuses it; `None` once the
/// collector stops.
fn queue_until_taken(
    batch: &Batch,
    producer: &roost_kafka::Producer,
    topics: &Topics,
    m: &Metrics,
    stop: &AtomicBool,
    backoff: &mut Duration,
) -> Option<Vec<roost_kafka::Queued>> {
    loop {
        match batch.queue(producer, topics) {
            Ok(q) => return Some(q),
            Err(e) => {
                m.publish_errors.inc();
                tracing::warn!(error = %e, retry_in = ?*backoff, records = batch.n, "cannot queue flows; retrying");
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                std::thread::sleep(*backoff);
                *backoff = (*backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Batches the publisher has queued to librdkafka at once, their acknowledgements awaited
/// oldest first. With one at a time, the publisher moved one batch (50,000 records at most)
/// per broker round trip: about 1.7M records/s here, below what the receivers take in.
const IN_FLIGHT: usize = 4;

/// Records the publisher takes from the receivers at a time, at most (about).
const BATCH_RECORDS: usize = 50_000;

struct Topics {
    flows: String,
    requests: String,
    deadletter: String,
}

/// What the publisher sends at once: (key, value) per topic, and how many flow records.
struct Batch {
    flows: Vec<(Vec<u8>, Vec<u8>)>,
    evidence: Vec<(Vec<u8>, Vec<u8>)>,
    letters: Vec<(Vec<u8>, Vec<u8>)>,
    n: usize,
}

impl Batch {
    /// `first` and what else is waiting, up to about [`BATCH_RECORDS`] flow records.
    /// The receivers' vectors go back to `pool`, emptied.
    fn of(first: Vec<Out>, rx: &Receiver<Vec<Out>>, ipv6_prefix: u8, pool: &Pool<Out>) -> Batch {
        let mut records = first;
        let count = |b: &[Out]| b.iter().map(|o| if let Out::Flows { records, .. } = o { *records } else { 0 }).sum();
        let mut n: usize = count(&records);
        while n < BATCH_RECORDS {
            match rx.try_recv() {
                Ok(mut more) => {
                    n += count(&more);
                    records.append(&mut more);
                    pool.give(more);
                }
                Err(_) => break,
            }
        }
        let mut b = Batch { flows: Vec::with_capacity(records.len()), evidence: Vec::new(), letters: Vec::new(), n };
        for r in records.drain(..) {
            match r {
                Out::Flows { bucket, value, .. } => b.flows.push((bucket.to_string().into_bytes(), value)),
                Out::Evidence(e) => b.evidence.push((
                    roost_wire::subject_key(e.client, ipv6_prefix).into_bytes(),
                    roost_wire::requests::encode_evidence(&e),
                )),
                Out::DeadLetter { exporter, letter } => b.letters.push((
                    exporter.to_string().into_bytes(),
                    serde_json::to_vec(&letter).expect("a dead letter serializes"),
                )),
            }
        }
        pool.give(records);
        b
    }

    /// Hands every record to librdkafka (which copies them), borrowed.
    fn queue(
        &self,
        producer: &roost_kafka::Producer,
        t: &Topics,
    ) -> Result<Vec<roost_kafka::Queued>, roost_kafka::Error> {
        let mut q = Vec::with_capacity(3);
        for (topic, records) in [(&t.requests, &self.evidence), (&t.deadletter, &self.letters), (&t.flows, &self.flows)]
        {
            if !records.is_empty() {
                q.push(producer.queue(topic, records.iter().map(|(k, v)| (k, Some(v))))?);
            }
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_exporters_are_accepted_and_none_listed_means_any() {
        let list: Vec<ipnetwork::IpNetwork> = vec!["192.0.2.1/32".parse().unwrap(), "2001:db8::/64".parse().unwrap()];
        assert!(accepted(&list, "192.0.2.1".parse().unwrap()));
        assert!(accepted(&list, "::ffff:192.0.2.1".parse().unwrap()), "an IPv4 exporter on a dual-stack socket");
        assert!(accepted(&list, "2001:db8::9".parse().unwrap()));
        assert!(!accepted(&list, "192.0.2.2".parse().unwrap()));
        assert!(!accepted(&list, "198.51.100.1".parse().unwrap()));
        assert!(accepted(&[], "198.51.100.1".parse().unwrap()));
    }

    /// The receiver hands each datagram on with its sender and arrival time, drops foreign ones,
    /// and when its decoding thread is a whole backlog behind, drops and counts rather than
    /// waits (the kernel would drop meanwhile, uncounted by roost).
    #[test]
    fn the_receiver_hands_datagrams_over_by_the_slab_and_counts_what_a_full_backlog_drops() {
        let sock = bind("127.0.0.1:0".parse().unwrap(), 1 << 20, false).unwrap();
        let to = sock.local_addr().unwrap();
        let (m, slabs, stop) = (Arc::new(Metrics::default()), Slabs::new(4, 1), Arc::new(AtomicBool::new(false)));
        // a backlog of one slab, and no decoding thread taking it
        let (tx, rx) = sync_channel::<Received>(1);
        let t = {
            let (m, slabs, stop) = (m.clone(), slabs.clone(), stop.clone());
            std::thread::spawn(move || receive(sock, &["127.0.0.1/32".parse().unwrap()], tx, &stop, &m, &slabs))
        };
        let router = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
        let before = runtime::wall_now();
        // the first slab: two datagrams and a stranger's between them
        router.send_to(b"first", to).unwrap();
        stranger.send_to(b"forged", to).unwrap();
        router.send_to(&[7u8; 9000], to).unwrap();
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let until = Instant::now() + Duration::from_secs(10);
            while !done() {
                assert!(Instant::now() < until, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait("the stranger's datagram counted", &|| m.foreign.get() == 1);
        // handed over once the socket is quiet for SLAB_WAIT; then, the backlog full, the next
        // slabs are dropped and their datagrams counted
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..3 {
            router.send_to(b"more", to).unwrap();
        }
        wait("the dropped datagrams counted", &|| m.backlog_dropped.get() == 3);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        let r = rx.try_recv().expect("the first slab");
        assert_eq!(r.grams.len(), 2, "the router's two datagrams, not the stranger's");
        let from = router.local_addr().unwrap();
        let got: Vec<&[u8]> = r.grams.iter().map(|g| &r.bytes[g.start..g.start + g.len]).collect();
        assert_eq!(got, [&b"first"[..], &[7u8; 9000][..]]);
        assert!(r.grams.iter().all(|g| g.from == from && g.at >= before && g.at <= runtime::wall_now()));
        assert!(rx.try_recv().is_err(), "nothing beyond the backlog");
    }

    /// A flood of datagrams from ever new (forged) addresses does not grow the label map.
    #[test]
    fn exporter_labels_stay_bounded() {
        let (mut l, m) = (Labels::new(), Metrics::default());
        for i in 0..10_000u32 {
            let c = l.of(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), &m);
            c.datagrams.inc();
            assert_eq!(c.label == "other", i as usize >= MAX_EXPORTER_LABELS);
        }
        assert_eq!(l.known.len(), MAX_EXPORTER_LABELS);
        // the cached counters are the families' own
        let other = m.datagrams.get_or_create(&ExporterLabel { exporter: "other".into() }).get();
        assert_eq!(other, 10_000 - MAX_EXPORTER_LABELS as u64);
        l.of("10.0.0.1".parse().unwrap(), &m).records(9).inc_by(3);
        let v9 = RecordLabel { exporter: "10.0.0.1".into(), version: "9".into() };
        assert_eq!(m.records.get_or_create(&v9).get(), 3);
    }
}
