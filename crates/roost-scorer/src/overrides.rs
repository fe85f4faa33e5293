//! The overrides topic (`roost.overrides`, compacted): operators' decisions on prefixes, read
//! whole by every scorer. Key = the prefix (`203.0.113.0/24`); value = [`OverrideRecord`] as
//! JSON, or a tombstone when the override is removed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use ipnetwork::IpNetwork;
use roost_engine::{Class, Override, Timestamp};
use roost_kafka::{Follower, KafkaConfig, Record};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverrideRecord {
    pub v: u32,
    pub class: Class,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    pub by: String,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("override key {0:?} is not a prefix")]
    Key(String),
    #[error("override for {0}: {1}")]
    Value(String, serde_json::Error),
}

pub fn encode(net: IpNetwork, ov: Option<&Override>) -> (Vec<u8>, Option<Vec<u8>>) {
    let value = ov.map(|o| {
        serde_json::to_vec(&OverrideRecord {
            v: 1,
            class: o.class,
            until: o.until,
            by: o.by.clone(),
            comment: o.comment.clone(),
        })
        .expect("an override serializes")
    });
    (net.to_string().into_bytes(), value)
}

pub fn decode(r: &Record) -> Result<(IpNetwork, Option<Override>), Error> {
    let key = String::from_utf8_lossy(&r.key).into_owned();
    let net: IpNetwork = key.parse().map_err(|_| Error::Key(key.clone()))?;
    let Some(v) = &r.value else { return Ok((net, None)) };
    let rec: OverrideRecord = serde_json::from_slice(v).map_err(|e| Error::Value(key, e))?;
    Ok((net, Some(Override { class: rec.class, until: rec.until, by: rec.by, comment: rec.comment })))
}

/// Reads the overrides topic whole, then follows it, sending each override to `tx` until
/// `stop` (or until the receiver is gone).
pub fn follow(
    kafka: KafkaConfig,
    tx: Sender<(IpNetwork, Option<Override>)>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let topic = kafka.topics.overrides.clone();
        let mut follower = None;
        while !stop.load(Ordering::Relaxed) {
            let f = match &follower {
                Some(f) => f,
                None => match Follower::new(&kafka, &topic, "roost-score-overrides") {
                    Ok(f) => follower.insert(f),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the overrides topic yet");
                        std::thread::sleep(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            match f.poll(Duration::from_millis(500)) {
                Ok(Some(r)) => match decode(&r) {
                    Ok(ov) => {
                        if tx.send(ov).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(offset = r.offset, error = %e, "skipping a bad override record"),
                },
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the overrides topic"),
            }
        }
    })
}
