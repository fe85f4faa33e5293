//! librdkafka's client callbacks for every roost client: errors a broker connection reports are
//! logged and the last one is kept, so that a call that then fails can say why. A refused
//! password, an untrusted certificate or a plaintext client at a TLS port otherwise surface only
//! as "broker transport failure" or a timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

use crate::{Error, KafkaConfig};

/// The last error librdkafka reported for a client's broker connections.
#[derive(Default)]
pub(crate) struct LastError(Mutex<Option<String>>);

impl LastError {
    pub(crate) fn note(&self, error: &KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
        *self.0.lock().expect("last-error lock") = Some(reason.to_owned());
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.0.lock().expect("last-error lock").clone()
    }

    /// `what`, followed by the last broker error when there is one.
    pub(crate) fn what(&self, what: impl Into<String>) -> String {
        explained(what, self.get())
    }

    pub(crate) fn fail(&self, what: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
        let what = self.what(what);
        move |source| Error::Kafka { what, source }
    }
}

/// `what`, followed by `reason` when there is one.
pub(crate) fn explained(what: impl Into<String>, reason: Option<String>) -> String {
    let what = what.into();
    match reason {
        Some(reason) => format!("{what} (last broker error: {reason})"),
        None => what,
    }
}

/// Serves the events librdkafka queued for `consumer` (its log lines and errors go through the
/// consumer's queue; a call such as a metadata fetch does not serve them).
pub(crate) fn serve(consumer: &BaseConsumer<Context>) {
    for _ in 0..10 {
        if consumer.poll(Duration::from_millis(50)).is_none() {
            return;
        }
    }
}

/// Why the brokers cannot be used, as librdkafka says (a refused password, an untrusted
/// certificate, a plaintext client at a TLS port…), when it says. The admin client never serves
/// its error events, so a failed admin call asks a short-lived consumer instead.
pub(crate) fn diagnose(cfg: &KafkaConfig) -> Option<String> {
    let consumer: BaseConsumer<Context> = cfg
        .client("roost-diagnose")
        .ok()?
        .set("group.id", "roost-diagnose")
        .create_with_context(Context::default())
        .ok()?;
    let _ = consumer.fetch_metadata(None, Duration::from_secs(5));
    serve(&consumer);
    consumer.context().last.get()
}

/// The context of roost's producers, readers and admin clients (the last error is shared: a
/// producer's context is out of reach once librdkafka wraps it).
#[derive(Default)]
pub(crate) struct Context {
    pub(crate) last: Arc<LastError>,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        self.last.note(&error, reason);
    }
}

impl ConsumerContext for Context {}
