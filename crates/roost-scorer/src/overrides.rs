//! Following the overrides topic (`roost.overrides`, compacted; its records are
//! `roost_wire::overrides`): read whole, then followed, by every scorer and `roost bgp`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use ipnetwork::IpNetwork;
use roost_engine::Override;
use roost_kafka::{KafkaConfig, TopicFollower};

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
                None => match TopicFollower::new(&kafka, &topic, "roost-score-overrides") {
                    Ok(f) => follower.insert(f),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the overrides topic yet");
                        std::thread::sleep(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            match f.poll(Duration::from_millis(500)) {
                Ok(Some(r)) => match roost_wire::overrides::decode(&r.key, r.value.as_deref()) {
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
