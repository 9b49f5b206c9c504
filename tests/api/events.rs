//! Side effects through Kafka (a real Kafka-protocol broker): outbox, points consumer,
//! dead letters and their admin API, payments requested by event.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::OwnedMessage;
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use wallet::consumers::points::PointsHandler;
use wallet::consumers::{consume, HandlerError, RecordHandler, RetryPolicy};
use wallet::dead_letters::publish::DeadLetterPublisher;
use wallet::support::tasks::StopSignal;

use crate::support::kafka::{
    drained_with_points, failed_event, points_caught_up, points_consumer, produce, read_topic, WAIT,
};
use crate::support::{eventually, kafka_settings, spawn_app_with, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_publish_one_event_each_and_earn_points_once() {
    let settings = kafka_settings().await;
    let app = Arc::new(spawn_app_with(settings.clone()).await);
    app.funded_wallet("hot", 150_000).await;

    let mut payers = JoinSet::new();
    for i in 0..150 {
        let app = app.clone();
        payers.spawn(async move { app.pay(&format!("order-{i}"), "hot", 1_000).await.status });
    }
    assert!(payers
        .join_all()
        .await
        .iter()
        .all(|s| *s == StatusCode::CREATED));
    assert!(
        drained_with_points(&app, "hot", 1_500).await,
        "150 × floor(1 % of 1,000) points"
    );

    let records = read_topic(&settings, &settings.kafka.events_topic, 150).await;
    let completed: Vec<_> = records
        .iter()
        .filter(|(_, p)| p["type"] == "payment.completed")
        .collect();
    assert_eq!(completed.len(), 150, "exactly 150 completed events");
    let ids: HashSet<_> = completed
        .iter()
        .map(|(_, p)| p["eventId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 150);
    let (headers, payload) = completed[0];
    assert!(headers
        .iter()
        .any(|(k, v)| k == "event-id" && v == payload["eventId"].as_str().unwrap().as_bytes()));
    assert!(headers
        .iter()
        .any(|(k, v)| k == "event-type" && v == b"payment.completed"));

    // Informational: outbox-to-consumer latency at this load, not asserted.
    let mut latencies: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, o.created_at, p.processed_at) / 1000 AS SIGNED) \
         FROM outbox_events o JOIN processed_events p ON p.event_id = o.event_id ORDER BY 1",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    latencies.sort();
    println!(
        "outbox-to-consumer latency over {} events: p50 {} ms, p99 {} ms",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );

    for i in 0..10 {
        let cancelled = app
            .post(&format!("/api/v1/payments/order-{i}/cancel"), &json!({}))
            .await;
        assert_eq!(cancelled.status, StatusCode::OK);
    }
    assert!(
        drained_with_points(&app, "hot", 1_400).await,
        "cancels take exactly their points back"
    );
    app.assert_ledger_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_changes_points_once() {
    let settings = kafka_settings().await;
    let app = spawn_app_with(settings.clone()).await;
    app.funded_wallet("u1", 10_000).await;
    assert_eq!(app.pay("o1", "u1", 5_000).await.status, StatusCode::CREATED);
    assert!(drained_with_points(&app, "u1", 50).await);

    // The same event, published twice more (as a relay crash after the ack would).
    let (event_id, payload): (String, String) =
        sqlx::query_as("SELECT event_id, payload FROM outbox_events")
            .fetch_one(&app.db)
            .await
            .unwrap();
    for _ in 0..2 {
        let headers = [
            ("event-id", event_id.as_str()),
            ("event-type", "payment.completed"),
        ];
        produce(
            &settings,
            &settings.kafka.events_topic,
            "u1",
            &payload,
            &headers,
        )
        .await;
    }
    // A later event of the same key is applied after the duplicates.
    assert_eq!(app.pay("o2", "u1", 1_000).await.status, StatusCode::CREATED);
    assert!(drained_with_points(&app, "u1", 60).await);
    assert!(points_caught_up(&app).await, "every record handled");
    assert_eq!(app.points("u1").await, 60, "the duplicates changed nothing");
}

/// A `payment.completed` event worth 7 points, as the relay publishes it.
fn completed_event(id: &str, user: &str) -> String {
    json!({ "eventId": id, "type": "payment.completed", "orderId": format!("o-{id}"), "userId": user,
            "amount": "700", "currency": "KRW", "points": 7, "occurredAt": "2026-11-21T00:00:00Z" })
    .to_string()
}

/// Waits (bounded) until exactly `count` dead letters are `PENDING`.
async fn pending_dead_letters(app: &TestApp, count: usize) -> bool {
    eventually(WAIT, || async {
        app.get("/api/v1/admin/failed-events?status=PENDING")
            .await
            .json()["items"]
            .as_array()
            .map_or(0, Vec::len)
            == count
    })
    .await
}

/// A backlog waiting for the points consumer is applied in batches: one transaction
/// (one `processed_at`) for many events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_reaches_the_points_consumer_in_batches() {
    let mut settings = kafka_settings().await;
    settings.kafka.points_consumer_enabled = false;
    let writer = spawn_app_with(settings.clone()).await;
    writer.funded_wallet("u1", 100_000).await;
    for i in 0..40 {
        let order = format!("o-{i}");
        assert_eq!(
            writer.pay(&order, "u1", 1_000).await.status,
            StatusCode::CREATED
        );
    }
    let published = eventually(WAIT, || async { writer.unsent_events().await == 0 }).await;
    assert!(published);

    settings.kafka.points_consumer_enabled = true;
    let app = spawn_app_with(settings).await;
    assert!(drained_with_points(&app, "u1", 400).await);
    let transactions = app
        .count("SELECT COUNT(DISTINCT processed_at) FROM processed_events")
        .await;
    assert!(
        transactions < 40,
        "40 events in {transactions} transactions: some were applied together"
    );
}

/// Wallets whose ids differ only in case are distinct wallets inside one points batch
/// too: each gets its own points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_points_batch_keeps_wallets_that_differ_only_in_case_apart() {
    let mut settings = kafka_settings().await;
    settings.kafka.points_consumer_enabled = false;
    let writer = spawn_app_with(settings.clone()).await;
    writer.funded_wallet("u1", 1_000).await;
    writer.funded_wallet("U1", 1_000).await;
    let events = &settings.kafka.events_topic;
    for i in 0..10 {
        let user = if i % 2 == 0 { "u1" } else { "U1" };
        produce(
            &settings,
            events,
            "k",
            &completed_event(&format!("e-{i}"), user),
            &[],
        )
        .await;
    }
    produce(&settings, events, "k", &completed_event("e-10", "u1"), &[]).await;

    settings.kafka.points_consumer_enabled = true;
    let app = spawn_app_with(settings).await;
    let applied = eventually(WAIT, || async {
        app.points("u1").await == 6 * 7 && app.points("U1").await == 5 * 7
    })
    .await;
    assert!(
        applied,
        "u1 {} and U1 {} points",
        app.points("u1").await,
        app.points("U1").await
    );
}

/// A backlog reaches the points consumer in batches; a record of a batch that cannot be
/// applied (its wallet does not exist) sends that batch through the one-by-one path, so
/// it alone is dead-lettered, the others are applied once each, a duplicate changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_applied_in_batches_and_a_poison_record_goes_alone_to_the_dlt() {
    let mut settings = kafka_settings().await;
    settings.kafka.points_consumer_enabled = false;
    let writer = spawn_app_with(settings.clone()).await;
    writer.funded_wallet("u1", 1_000).await;
    let events = &settings.kafka.events_topic;
    // One key, so one partition: the consumer meets them in this order.
    for i in 0..30 {
        let (id, user) = match i {
            12 => ("e-ghost".to_owned(), "ghost"),
            20 => ("e-5".to_owned(), "u1"),
            _ => (format!("e-{i}"), "u1"),
        };
        produce(&settings, events, "u1", &completed_event(&id, user), &[]).await;
    }

    settings.kafka.points_consumer_enabled = true;
    let app = spawn_app_with(settings).await;
    // 28 distinct events of u1 (e-12 is the ghost's, e-5 comes twice).
    let applied = eventually(WAIT, || async { app.points("u1").await == 28 * 7 }).await;
    assert!(applied, "u1 has {} points", app.points("u1").await);
    let dead = pending_dead_letters(&app, 1).await;
    assert!(dead, "the ghost's event alone is dead-lettered");
    assert!(points_caught_up(&app).await, "every record handled");
    assert_eq!(app.points("u1").await, 28 * 7, "nothing applied twice");
    assert_eq!(app.count("SELECT COUNT(*) FROM processed_events").await, 28);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_lands_on_the_dlt_and_is_retried_or_ignored() {
    let settings = kafka_settings().await;
    let app = spawn_app_with(settings.clone()).await;
    let events = &settings.kafka.events_topic;
    // Fails every time: the wallet does not exist (yet).
    produce(
        &settings,
        events,
        "ghost",
        &completed_event("e-ghost", "ghost"),
        &[("event-id", "e-ghost")],
    )
    .await;
    // Cannot even be read.
    produce(&settings, events, "junk", "{not json", &[]).await;

    let listed = pending_dead_letters(&app, 2).await;
    assert!(listed, "both dead letters are listed");
    let page = app.get("/api/v1/admin/failed-events").await.json();
    let ghost = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "ghost")
        .unwrap()
        .clone();
    assert_eq!(ghost["sourceTopic"], *events);
    assert_eq!(ghost["attempts"], 3, "bounded retries before the DLT");
    assert!(ghost["error"].as_str().unwrap().contains("ghost"));
    assert_eq!(ghost["headers"]["kafka_dlt-original-topic"], *events);
    assert_eq!(ghost["headers"]["event-id"], "e-ghost");
    let junk = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "junk")
        .unwrap()
        .clone();
    assert_eq!(
        junk["attempts"], 1,
        "an unreadable record is dead-lettered at once"
    );

    // The DLT records themselves carry Spring Kafka's provenance headers.
    let dead = read_topic(&settings, &format!("{events}.DLT"), 2).await;
    assert_eq!(dead.len(), 2);
    for (headers, _) in &dead {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header("kafka_dlt-original-topic").unwrap(),
            events.as_bytes()
        );
        assert_eq!(header("kafka_dlt-original-partition").unwrap().len(), 4);
        assert_eq!(header("kafka_dlt-original-offset").unwrap().len(), 8);
        assert!(header("kafka_dlt-exception-message").is_some());
    }

    // The cause is fixed; a retry applies it once.
    app.funded_wallet("ghost", 0).await;
    let retried = failed_event(&app, &ghost, "retry").await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    assert_eq!(retried.json()["status"], "RETRIED");
    assert!(eventually(WAIT, || async { app.points("ghost").await == 7 }).await);
    let again = failed_event(&app, &ghost, "retry").await;
    assert_eq!(again.status, StatusCode::OK);

    // Ignored: kept, never applied, not retryable.
    let ignored = failed_event(&app, &junk, "ignore").await;
    assert_eq!(ignored.json()["status"], "IGNORED");
    let refused = failed_event(&app, &junk, "retry").await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.code(), "failed_event_ignored");
    let listed_ignored = app
        .get("/api/v1/admin/failed-events?status=IGNORED")
        .await
        .json();
    assert_eq!(listed_ignored["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.post("/api/v1/admin/failed-events/999999/ignore", &json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // The second retry was deduplicated by event id.
    app.funded_wallet("sentinel", 1_000).await;
    assert_eq!(
        app.pay("sentinel-order", "sentinel", 1_000).await.status,
        StatusCode::CREATED
    );
    assert!(drained_with_points(&app, "sentinel", 10).await);
    assert_eq!(app.points("ghost").await, 7, "applied once");

    // retry-all re-publishes every PENDING one.
    produce(
        &settings,
        events,
        "ghost2",
        &completed_event("e-ghost2", "ghost2"),
        &[("event-id", "e-ghost2")],
    )
    .await;
    assert!(pending_dead_letters(&app, 1).await);
    app.funded_wallet("ghost2", 0).await;
    let all = app
        .post("/api/v1/admin/failed-events/retry-all", &json!({}))
        .await;
    assert_eq!(all.json()["retried"], 1);
    assert!(eventually(WAIT, || async { app.points("ghost2").await == 7 }).await);
}

/// The points handler of a consumer process that dies right after its first apply,
/// before the loop commits the offset: the worst moment for a crash.
struct DiesAfterApplying {
    points: PointsHandler,
    applied: Arc<tokio::sync::Notify>,
}

impl DiesAfterApplying {
    async fn die(&self) -> ! {
        self.applied.notify_one();
        std::future::pending().await
    }
}

impl RecordHandler for DiesAfterApplying {
    async fn handle(&self, record: &OwnedMessage) -> Result<(), HandlerError> {
        self.points.handle(record).await?;
        self.die().await
    }

    async fn handle_batch(&self, records: &[OwnedMessage]) -> Option<anyhow::Result<()>> {
        let applied = self.points.handle_batch(records).await;
        if matches!(applied, Some(Ok(()))) {
            self.die().await
        }
        applied
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_before_its_commit_does_not_apply_twice() {
    let mut settings = kafka_settings().await;
    // This instance relays; its points consumer runs below, where the test can kill it.
    settings.kafka.points_consumer_enabled = false;
    let crashing = spawn_app_with(settings.clone()).await;
    let kafka = &settings.kafka;
    let applied = Arc::new(tokio::sync::Notify::new());
    let handler = DiesAfterApplying {
        points: PointsHandler {
            db: crashing.db.clone(),
            consumer: kafka.points_group.clone(),
        },
        applied: applied.clone(),
    };
    let producer = wallet::kafka::producer(kafka).unwrap();
    let consumer = tokio::spawn(consume(
        "points",
        points_consumer(kafka),
        handler,
        DeadLetterPublisher::new(kafka, producer, &kafka.points_group),
        RetryPolicy {
            attempts: 3,
            base: kafka.retry_base,
            cap: kafka.retry_cap,
            in_flight_wait: Duration::from_secs(1),
        },
        None,
        StopSignal::new(),
    ));
    crashing.funded_wallet("u1", 10_000).await;
    assert_eq!(
        crashing.pay("o1", "u1", 3_000).await.status,
        StatusCode::CREATED
    );
    tokio::time::timeout(WAIT, applied.notified())
        .await
        .expect("the event was applied");
    assert_eq!(crashing.points("u1").await, 30);
    // The process dies: its consumer goes without committing.
    consumer.abort();
    let _ = consumer.await;

    // A new consumer in the same group gets the uncommitted event again.
    settings.kafka.points_consumer_enabled = true;
    settings.kafka.relay_enabled = false;
    let restarted = spawn_app_with(settings).await;
    assert_eq!(
        restarted.pay("o2", "u1", 1_000).await.status,
        StatusCode::CREATED
    );
    assert!(drained_with_points(&restarted, "u1", 40).await);
    assert!(points_caught_up(&restarted).await, "every record handled");
    assert_eq!(
        restarted.points("u1").await,
        40,
        "the redelivered event changed nothing"
    );
    assert_eq!(
        restarted
            .count("SELECT COUNT(*) FROM processed_events")
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_requested_by_rest_and_by_kafka_at_once_debits_once() {
    let settings = kafka_settings().await;
    let app = Arc::new(spawn_app_with(settings.clone()).await);
    app.funded_wallet("u1", 5_000).await;
    let requests = settings.kafka.requests_topic.clone();

    let request = json!({ "orderId": "dual-1", "userId": "u1", "amount": "2000" }).to_string();
    let (rest, _) = tokio::join!(
        app.pay("dual-1", "u1", 2_000),
        produce(&settings, &requests, "u1", &request, &[])
    );
    assert!(
        [StatusCode::CREATED, StatusCode::OK, StatusCode::CONFLICT].contains(&rest.status),
        "{}",
        rest.text
    );
    // Declined by event: not enough left.
    let too_much = json!({ "orderId": "dual-2", "userId": "u1", "amount": 9_000 }).to_string();
    produce(&settings, &requests, "u1", &too_much, &[]).await;
    // Unreadable request: straight to the requests topic's DLT.
    produce(&settings, &requests, "u1", "{\"orderId\":", &[]).await;

    let settled = eventually(WAIT, || async {
        app.count("SELECT COUNT(*) FROM outbox_events WHERE event_type = 'payment.declined'")
            .await
            == 1
            && app.count("SELECT COUNT(*) FROM failed_events").await == 1
            && app.points("u1").await == 20
    })
    .await;
    assert!(settled, "completed once, declined once, one dead letter");
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 1);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox_events WHERE event_type = 'payment.completed'")
            .await,
        1,
        "one debit, one event"
    );
    assert_eq!(app.balance("u1").await, Decimal::from(3_000));
    let declined: String = sqlx::query_scalar(
        "SELECT payload FROM outbox_events WHERE event_type = 'payment.declined'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let declined: Value = serde_json::from_str(&declined).unwrap();
    assert_eq!(declined["reason"], "insufficient_funds");
    assert_eq!(declined["orderId"], "dual-2");
    let dead = app.get("/api/v1/admin/failed-events").await.json();
    assert_eq!(dead["items"][0]["sourceTopic"], requests);
    app.assert_ledger_invariants().await;
}
