//! The outbox relay keeps one user's events in order on the topic (real broker), when a
//! record fails and when several relays share the outbox.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::ClientConfig;
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use wallet::configuration::Settings;
use wallet::kafka::WalletProducer;
use wallet::outbox::relay::Relay;
use wallet::support::tasks::StopSignal;

use crate::support::kafka::{read_topic, WAIT};
use crate::support::{eventually, kafka_settings, spawn_app_with, TestApp};

/// Writes, in this order: u1's payment o1, its cancel, u2's payment o2. Returns the
/// outbox ids of the three events.
async fn three_events(app: &TestApp) -> [u64; 3] {
    app.funded_wallet("u1", 10_000).await;
    app.funded_wallet("u2", 10_000).await;
    assert_eq!(app.pay("o1", "u1", 1_000).await.status, StatusCode::CREATED);
    let cancelled = app.post("/api/v1/payments/o1/cancel", &json!({})).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    assert_eq!(app.pay("o2", "u2", 1_000).await.status, StatusCode::CREATED);
    let ids: Vec<u64> = sqlx::query_scalar("SELECT id FROM outbox_events ORDER BY id")
        .fetch_all(&app.db)
        .await
        .unwrap();
    ids.try_into().expect("three events")
}

async fn sent(app: &TestApp, id: u64) -> bool {
    sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
        "SELECT sent_at FROM outbox_events WHERE id = ?",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap()
    .is_some()
}

/// The event types of `user_id`, in topic order (one key, one partition).
async fn types_on_topic(settings: &Settings, user_id: &str, total: usize) -> Vec<String> {
    read_topic(settings, &settings.kafka.events_topic, total)
        .await
        .into_iter()
        .filter(|(_, payload)| payload["userId"] == user_id)
        .map(|(_, payload)| payload["type"].as_str().unwrap().to_owned())
        .collect()
}

/// Makes outbox row `id` too large for [`strict_producer`]: that record, and only that
/// one, fails at the broker's client, every time.
async fn too_large(app: &TestApp, id: u64) {
    sqlx::query(
        "UPDATE outbox_events SET payload = CONCAT(payload, REPEAT(' ', 8000)) WHERE id = ?",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();
}

/// An idempotent producer that refuses to queue records over 4 KiB.
fn strict_producer(settings: &Settings) -> WalletProducer {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.max.bytes", "4096")
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    producer.into()
}

/// A relay of the test's own over the app's outbox, publishing with `producer`, running
/// until [`RunningRelay::stop`].
async fn start_relay(settings: &Settings, producer: WalletProducer) -> RunningRelay {
    let relay = Relay {
        db: wallet::store::connect(&settings.database, 5).await.unwrap(),
        producer,
        kafka: settings.kafka.clone(),
        topic: settings.kafka.events_topic.clone(),
        batch: 200,
        poll: Duration::from_millis(100),
        delivery_timeout: settings.kafka.delivery_timeout,
        stall_after: settings.kafka.outbox_stall_after,
        wake: Arc::new(Notify::new()),
        published: None,
    };
    let stop = StopSignal::new();
    let task = tokio::spawn(relay.run(stop.clone()));
    RunningRelay { stop, task }
}

struct RunningRelay {
    stop: StopSignal,
    task: JoinHandle<()>,
}

impl RunningRelay {
    /// Stops the relay and waits for it to finish its batch in hand.
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_event_holds_back_its_users_later_events_and_no_one_elses() {
    let mut settings = kafka_settings().await;
    settings.kafka.relay_enabled = false;
    let app = spawn_app_with(settings.clone()).await;
    let [completed, cancelled, other] = three_events(&app).await;

    // u1's payment event becomes too large for the relay's producer: that record, and
    // only that one, fails at the broker's client, every time.
    too_large(&app, completed).await;
    let failing = start_relay(&settings, strict_producer(&settings)).await;
    assert!(
        eventually(WAIT, || sent(&app, other)).await,
        "u2's event is not held back by u1's"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!sent(&app, completed).await);
    assert!(
        !sent(&app, cancelled).await,
        "u1's cancel must not overtake u1's payment"
    );
    failing.stop().await;

    // The cause is gone (a relay that can send it): both go, in their order.
    let producer = wallet::kafka::relay_producer(&settings.kafka).unwrap();
    let healthy = start_relay(&settings, producer).await;
    assert!(eventually(WAIT, || async { app.unsent_events().await == 0 }).await);
    healthy.stop().await;
    assert_eq!(
        types_on_topic(&settings, "u1", 3).await,
        ["payment.completed", "payment.cancelled"]
    );
}

/// The producer refuses to queue u1's second event: the first, queued before it in the
/// same batch and acknowledged, is marked sent and published once, not again each pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_refused_after_its_users_earlier_one_leaves_that_one_sent_once() {
    let mut settings = kafka_settings().await;
    settings.kafka.relay_enabled = false;
    let app = spawn_app_with(settings.clone()).await;
    let [completed, cancelled, other] = three_events(&app).await;
    too_large(&app, cancelled).await;
    let failing = start_relay(&settings, strict_producer(&settings)).await;
    assert!(
        eventually(WAIT, || async {
            sent(&app, completed).await && sent(&app, other).await
        })
        .await,
        "u1's payment event and u2's are sent"
    );
    // Passes go on meanwhile, each refusing the cancel again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!sent(&app, cancelled).await);
    failing.stop().await;
    assert_eq!(
        types_on_topic(&settings, "u1", 2).await,
        ["payment.completed"],
        "u1's payment event is on the topic once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_never_overtakes_an_event_another_relay_holds() {
    let settings = kafka_settings().await;
    let mut quiet = settings.clone();
    quiet.kafka.relay_enabled = false;
    let writer = spawn_app_with(quiet).await;
    let [completed, cancelled, other] = three_events(&writer).await;

    // Relay A (the test) has claimed u1's payment event, as a relay does, and is slow
    // to publish it. Relay B, another instance's, runs meanwhile.
    let mut relay_a = writer.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM outbox_events WHERE id = ? FOR UPDATE")
        .bind(completed)
        .execute(&mut *relay_a)
        .await
        .unwrap();
    let mut relay_only = settings.clone();
    let kafka = &mut relay_only.kafka;
    kafka.points_consumer_enabled = false;
    kafka.requests_consumer_enabled = false;
    kafka.dlt_consumer_enabled = false;
    let _relay_b = spawn_app_with(relay_only).await;
    assert!(
        eventually(WAIT, || sent(&writer, other)).await,
        "relay B publishes the other user's event"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !sent(&writer, cancelled).await,
        "relay B must not publish u1's cancel before u1's payment"
    );

    // Relay A gives up (its broker connection failed, say): relay B takes over, in order.
    relay_a.rollback().await.unwrap();
    assert!(eventually(WAIT, || async { writer.unsent_events().await == 0 }).await);
    assert_eq!(
        types_on_topic(&settings, "u1", 3).await,
        ["payment.completed", "payment.cancelled"]
    );
}

/// Makes `producer` fatally failed, as an idempotent producer becomes when the broker
/// refuses its sequence; librdkafka offers this for tests, having no other way to do it.
pub fn fail_fatally(producer: &FutureProducer) {
    let reason = std::ffi::CString::new("injected by the test").unwrap();
    let err = unsafe {
        rdkafka_sys::rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        )
    };
    assert_eq!(
        err,
        rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    );
    assert!(producer.client().fatal_error().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_whose_producer_failed_fatally_replaces_it_and_publishes() {
    let mut settings = kafka_settings().await;
    settings.kafka.relay_enabled = false;
    let app = spawn_app_with(settings.clone()).await;
    let [completed, cancelled, other] = three_events(&app).await;

    let producer = wallet::kafka::relay_producer(&settings.kafka).unwrap();
    fail_fatally(&producer);
    let healing = start_relay(&settings, producer).await;
    assert!(
        eventually(WAIT, || async { app.unsent_events().await == 0 }).await,
        "the relay built a new producer and published the backlog"
    );
    healing.stop().await;
    for id in [completed, cancelled, other] {
        assert!(sent(&app, id).await);
    }
    assert_eq!(
        types_on_topic(&settings, "u1", 3).await,
        ["payment.completed", "payment.cancelled"]
    );
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("wallet_outbox_producer_replacements_total")),
        "the replacement is counted"
    );
}
