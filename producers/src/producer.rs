//! The event producer every role shares: validates, encodes and queues
//! events without blocking its caller, and reports each delivery.

use weir_core::InternalEvent;

use crate::events::RecordProduced;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::oneshot;
use weir_core::KafkaConfig;
use weir_schemas::{encode, Event};

/// Why an event could not be handed to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The event failed validation; it was not sent.
    #[error("invalid {kind} event: {reason}")]
    Invalid {
        /// Event kind.
        kind: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// librdkafka's queue is full: Kafka is slower than the producer.
    #[error("producer queue is full")]
    QueueFull,
    /// Kafka refused or timed out the record.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition written.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
}

/// A callback run with a record's delivery report, on the producer's
/// polling thread: keep it short (count, send on a channel).
pub type DeliveryHook = Box<dyn FnOnce(Result<Delivery, KafkaError>) + Send + Sync>;

/// What to do with a record's delivery report besides counting it.
enum Then {
    /// Nothing: the caller does not wait (the edge's access events).
    Nothing,
    /// Complete a [`PendingDelivery`].
    Reply(oneshot::Sender<Result<Delivery, KafkaError>>),
    /// Run a callback.
    Call(DeliveryHook),
}

/// Carried by each record through librdkafka to its delivery report.
struct Report {
    kind: &'static str,
    then: Then,
}

/// Counts every record's delivery report (`weir_producer_events_total`
/// `delivered` / `failed`), whether or not anyone waits for it, then hands
/// it on.
struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Report>;

    fn delivery(&self, result: &DeliveryResult<'_>, report: Self::DeliveryOpaque) {
        let out = match result {
            Ok(m) => Ok(Delivery {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(e.clone()),
        };
        RecordProduced {
            kind: report.kind,
            outcome: if out.is_ok() { "delivered" } else { "failed" },
        }
        .emit();
        match report.then {
            Then::Nothing => {}
            Then::Reply(tx) => {
                let _ = tx.send(out);
            }
            Then::Call(hook) => hook(out),
        }
    }
}

/// Stops the polling thread when the last producer handle is dropped.
struct Shared {
    producer: Arc<BaseProducer<DeliveryContext>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The producer every Weir role shares. Cheap to clone.
///
/// Built on librdkafka's base producer with its own polling thread, which
/// waits up to a second for delivery reports. (rdkafka's `FutureProducer`
/// polls every 100 ms and spins through the last sub-millisecond of each
/// wait, which cost the agent about 1 % of a core doing nothing.)
#[derive(Clone)]
pub struct EventProducer {
    shared: Arc<Shared>,
    limiter: Option<Arc<crate::limiter::LagLimiter>>,
}

/// What [`EventProducer::offer`] did with an event.
pub enum Offer {
    /// Queued; the future resolves to its delivery report.
    Queued(PendingDelivery),
    /// Shed by the lag-aware limiter (counted in
    /// `weir_limiter_decisions_total`); not an error: consumers are behind
    /// and the event's priority allows dropping it.
    Shed,
}

impl EventProducer {
    /// Builds a producer; fails only on invalid settings (Kafka itself is
    /// reached lazily and retried).
    pub fn new(cfg: &KafkaConfig, role: &str) -> Result<Self, ProduceError> {
        let producer: Arc<BaseProducer<DeliveryContext>> = Arc::new(
            cfg.producer_config(role)
                .create_with_context(DeliveryContext)?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (producer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("weir-producer-poll".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    p.poll(Duration::from_secs(1));
                }
            })
            .map_err(|e| ProduceError::Kafka(KafkaError::ClientCreation(e.to_string())))?;
        Ok(EventProducer {
            shared: Arc::new(Shared { producer, stop }),
            limiter: None,
        })
    }

    /// Paces [`offer`](Self::offer) with a lag-aware limiter.
    pub fn with_limiter(mut self, limiter: Arc<crate::limiter::LagLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Like [`enqueue`](Self::enqueue), but asks the lag-aware limiter first
    /// (when there is one): a sheddable event may be shed while the
    /// consuming group is behind; critical events always go.
    pub fn offer<E: Event>(&self, topic: &str, event: &E) -> Result<Offer, ProduceError> {
        if self.shed::<E>() {
            return Ok(Offer::Shed);
        }
        self.enqueue(topic, event).map(Offer::Queued)
    }

    /// Like [`offer`](Self::offer) for a caller that never waits for the
    /// delivery report (the edge's access events): no future is made, the
    /// outcome is only counted (`weir_producer_events_total`). Returns
    /// whether the event was queued (false: shed by the limiter).
    pub fn offer_detached<E: Event>(&self, topic: &str, event: &E) -> Result<bool, ProduceError> {
        if self.shed::<E>() {
            return Ok(false);
        }
        let payload = self.encode(event)?;
        self.queue(
            topic,
            event.key().map(str::as_bytes),
            &payload,
            None,
            E::KIND,
            Then::Nothing,
        )?;
        Ok(true)
    }

    fn shed<E: Event>(&self) -> bool {
        self.limiter
            .as_ref()
            .is_some_and(|l| l.decide(E::KIND, E::PRIORITY) == crate::limiter::Decision::Shed)
    }

    fn encode<E: Event>(&self, event: &E) -> Result<Vec<u8>, ProduceError> {
        encode(event).map_err(|reason| {
            RecordProduced {
                kind: E::KIND,
                outcome: "invalid",
            }
            .emit();
            ProduceError::Invalid {
                kind: E::KIND,
                reason,
            }
        })
    }

    /// Validates, encodes and queues an event without waiting for Kafka.
    /// The returned future resolves to the delivery report.
    pub fn enqueue<E: Event>(
        &self,
        topic: &str,
        event: &E,
    ) -> Result<PendingDelivery, ProduceError> {
        let payload = self.encode(event)?;
        self.enqueue_raw(
            topic,
            event.key().map(str::as_bytes),
            &payload,
            None,
            E::KIND,
        )
    }

    /// Queues an already-encoded record (dead letters, replays). The key is
    /// bytes: a record read back from Kafka keeps its key exactly, whatever
    /// its encoding.
    pub fn enqueue_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        kind: &'static str,
    ) -> Result<PendingDelivery, ProduceError> {
        let (tx, rx) = oneshot::channel();
        self.queue(topic, key, payload, headers, kind, Then::Reply(tx))?;
        Ok(PendingDelivery { rx })
    }

    /// Queues an already-encoded record and runs `hook` with its delivery
    /// report, on the producer's polling thread, instead of making a future
    /// per record: for callers that produce many records and only tally the
    /// outcomes (`weir gen access`).
    pub fn enqueue_raw_with(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        kind: &'static str,
        hook: DeliveryHook,
    ) -> Result<(), ProduceError> {
        self.queue(topic, key, payload, None, kind, Then::Call(hook))
    }

    fn queue(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        kind: &'static str,
        then: Then,
    ) -> Result<(), ProduceError> {
        let mut record: BaseRecord<'_, [u8], [u8], _> =
            BaseRecord::with_opaque_to(topic, Box::new(Report { kind, then })).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        match self.shared.producer.send(record) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                RecordProduced {
                    kind,
                    outcome: "queue_full",
                }
                .emit();
                Err(ProduceError::QueueFull)
            }
            Err((e, _)) => Err(ProduceError::Kafka(e)),
        }
    }

    /// Queues an event and waits for its delivery report.
    pub async fn send<E: Event>(&self, topic: &str, event: &E) -> Result<Delivery, ProduceError> {
        self.enqueue(topic, event)?.await
    }

    /// Waits until every queued record is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), ProduceError> {
        self.shared
            .producer
            .flush(timeout)
            .map_err(ProduceError::Kafka)
    }

    /// Whether `topic` exists, from broker metadata (blocking, bounded by
    /// `timeout`). Roles check their topic at start so that a missing topic
    /// is one clear error instead of every record failing minutes later.
    pub fn topic_exists(&self, topic: &str, timeout: Duration) -> Result<bool, ProduceError> {
        let md = self
            .shared
            .producer
            .client()
            .fetch_metadata(Some(topic), timeout)?;
        // The first answer usually comes through the bootstrap connection,
        // which librdkafka retires once it knows the cluster's brokers; the
        // idempotent producer's id request it triggers then finds no broker
        // up and waits for librdkafka's 500 ms retry timer, holding back the
        // first records (0.61 s for one record, against 0.01 s for kcat).
        // A second request waits for a learned broker and is answered by
        // it, which asks for the producer id at once. Its answer is not
        // needed; a failure here changes nothing.
        let _ = self
            .shared
            .producer
            .client()
            .fetch_metadata(Some(topic), timeout);
        Ok(md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
    }

    /// Records still waiting for a delivery report.
    pub fn in_flight(&self) -> i32 {
        self.shared.producer.in_flight_count()
    }
}

/// A queued record's delivery report. (The outcome is counted when the
/// report arrives, whether or not this future is awaited.)
pub struct PendingDelivery {
    rx: oneshot::Receiver<Result<Delivery, KafkaError>>,
}

impl std::future::Future for PendingDelivery {
    type Output = Result<Delivery, ProduceError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|res| match res {
                Ok(Ok(d)) => Ok(d),
                Ok(Err(e)) => Err(ProduceError::Kafka(e)),
                // The producer was dropped with the record still queued.
                Err(_) => Err(ProduceError::Kafka(KafkaError::Canceled)),
            })
    }
}
