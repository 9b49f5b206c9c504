//! Spawning the app and checking the ledger, for every test.

use std::time::Duration;

use redis::AsyncCommands;
use reqwest::{Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::MySqlPool;
use wallet::configuration::{ApiKey, Scope, Settings};
use wallet::domain::Identifier;
use wallet::idempotency::is_pending_entry;
use wallet::redis_support::KeySpace;
use wallet::startup::Application;

/// The API keys every test app accepts.
pub const CHECKOUT_KEY: &str = "test-checkout-key";
pub const FUNDING_KEY: &str = "test-funding-key";
pub const ADMIN_KEY: &str = "test-admin-key";

/// The key a route needs: admin routes take the admin key, top-ups the funding key, the
/// rest the checkout key.
pub fn key_for(path: &str) -> &'static str {
    if path.starts_with("/api/v1/admin") {
        ADMIN_KEY
    } else if path.ends_with("/top-ups") {
        FUNDING_KEY
    } else {
        CHECKOUT_KEY
    }
}

/// Server-level URL of the test database server (no database in the path).
fn database_server_url() -> String {
    std::env::var("WALLET_TEST_DATABASE_SERVER")
        .unwrap_or_else(|_| "mysql://wallet:wallet@127.0.0.1:3306".to_string())
}

/// The shared Redis of the suite.
pub fn redis_url() -> String {
    std::env::var("WALLET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// A running app and what a test needs to talk to it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// A pool on the app's database, to check invariants directly.
    pub db: MySqlPool,
    pub settings: Settings,
    /// Stops the app as SIGTERM would ([`TestApp::stop`]); until then it runs for the
    /// rest of the test.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Settings for a fresh app: own database, own key prefix, short timeouts.
pub async fn test_settings() -> Settings {
    let name = format!(
        "wallet_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let server = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&database_server_url())
        .await
        .expect("the test database server is reachable (run scripts/test.sh)");
    sqlx::query(&format!("CREATE DATABASE `{name}`"))
        .execute(&server)
        .await
        .expect("create the test database");
    server.close().await;

    let mut settings = Settings::local_defaults();
    settings.http_addr = "127.0.0.1:0".into();
    settings.database.url = format!("{}/{name}", database_server_url());
    settings.database.max_connections = 20;
    settings.redis.url = redis_url();
    settings.redis.key_prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    settings.lock.breaker_probe_interval = Duration::from_millis(200);
    settings.api.keys = vec![
        ApiKey::plain(Scope::Checkout, CHECKOUT_KEY),
        ApiKey::plain(Scope::Funding, FUNDING_KEY),
        ApiKey::plain(Scope::Admin, ADMIN_KEY),
    ];
    // Kafka stays out of the way unless a test asks for it (kafka_settings).
    let kafka = &mut settings.kafka;
    kafka.create_topics = false;
    kafka.relay_enabled = false;
    kafka.points_consumer_enabled = false;
    kafka.requests_consumer_enabled = false;
    kafka.dlt_consumer_enabled = false;
    settings
}

/// The suite's Kafka-protocol broker.
pub fn kafka_brokers() -> String {
    std::env::var("WALLET_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// Test settings with every Kafka worker on, and topics and groups of this test's own.
pub async fn kafka_settings() -> Settings {
    let mut settings = test_settings().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let kafka = &mut settings.kafka;
    kafka.brokers = kafka_brokers();
    kafka.events_topic = format!("t{id}.payment-events");
    kafka.requests_topic = format!("t{id}.payment-requests");
    kafka.points_group = format!("t{id}-points");
    kafka.requests_group = format!("t{id}-requests");
    kafka.dlt_group = format!("t{id}-dlt");
    kafka.create_topics = true;
    kafka.partitions = 2;
    kafka.relay_enabled = true;
    kafka.points_consumer_enabled = true;
    kafka.requests_consumer_enabled = true;
    kafka.dlt_consumer_enabled = true;
    kafka.relay_poll = Duration::from_millis(200);
    kafka.retry_base = Duration::from_millis(50);
    kafka.retry_cap = Duration::from_millis(500);
    settings
}

/// Spawns an app with default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_settings().await).await
}

/// Spawns an app with the given settings (another instance may share them). With
/// `WALLET_TEST_LOG` set (an env-filter, e.g. `wallet=info`), the apps log to stderr.
pub async fn spawn_app_with(settings: Settings) -> TestApp {
    if let Ok(filter) = std::env::var("WALLET_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let app = Application::build(settings.clone())
        .await
        .expect("build the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let db = MySqlPoolOptions::new()
        .max_connections(4)
        .connect(&settings.database.url)
        .await
        .expect("connect to the test database");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(200)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    TestApp {
        address,
        client,
        db,
        settings,
        stop: Some(stop),
        running: Some(running),
    }
}

/// A reply, read once: status, headers that matter, body as JSON (or raw text).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub replayed: bool,
    /// `Retry-After`, `WWW-Authenticate`, `X-Request-Id`, when present.
    pub retry_after: String,
    pub www_authenticate: String,
    pub request_id: String,
    pub text: String,
}

impl Reply {
    pub async fn read(response: Response) -> Self {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let content_type = header("content-type");
        let replayed = header("idempotent-replayed") == "true";
        let retry_after = header("retry-after");
        let www_authenticate = header("www-authenticate");
        let request_id = header("x-request-id");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Self {
            status,
            content_type,
            replayed,
            retry_after,
            www_authenticate,
            request_id,
            text,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// The problem's `code`, or "" when the body is not a problem document.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }

    pub fn is_problem(&self) -> bool {
        self.content_type == "application/problem+json"
            && self.json()["status"] == self.status.as_u16()
    }
}

impl TestApp {
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_as(Some(key_for(path)), path, body).await
    }

    /// A POST with the given key (`None`: no Authorization header).
    pub async fn post_as(&self, key: Option<&str>, path: &str, body: &Value) -> Reply {
        let mut request = self
            .client
            .post(format!("{}{path}", self.address))
            .json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        Reply::read(request.send().await.expect("request sent")).await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
        let response = self
            .client
            .post(format!("{}{path}", self.address))
            .bearer_auth(key_for(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent");
        Reply::read(response).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .bearer_auth(key_for(path))
            .send()
            .await
            .expect("request sent");
        Reply::read(response).await
    }

    /// Creates a wallet holding `balance`.
    pub async fn funded_wallet(&self, user_id: &str, balance: u64) {
        let created = self
            .post("/api/v1/wallets", &json!({ "userId": user_id }))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        if balance > 0 {
            let top_up = self
                .top_up(user_id, &format!("seed-{user_id}"), &balance.to_string())
                .await;
            assert_eq!(top_up.status, StatusCode::CREATED, "{}", top_up.text);
        }
    }

    /// Credits `user_id` once per `top_up_id` (with a funding key, as `post` chooses by
    /// path).
    pub async fn top_up(&self, user_id: &str, top_up_id: &str, amount: &str) -> Reply {
        self.post(
            &format!("/api/v1/wallets/{user_id}/top-ups"),
            &json!({ "topUpId": top_up_id, "amount": amount }),
        )
        .await
    }

    pub async fn pay(&self, order_id: &str, user_id: &str, amount: u64) -> Reply {
        self.post(
            "/api/v1/payments",
            &json!({ "orderId": order_id, "userId": user_id, "amount": amount }),
        )
        .await
    }

    pub async fn balance(&self, user_id: &str) -> Decimal {
        sqlx::query_scalar("SELECT balance FROM wallets WHERE user_id = ?")
            .bind(user_id)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.db).await.unwrap()
    }

    /// The ledger invariants ([`wallet::audit`]), read straight from the database.
    pub async fn assert_ledger_invariants(&self) {
        let report = wallet::audit::audit(&self.db).await.unwrap();
        assert!(report.violations.is_empty(), "{:#?}", report);
    }

    /// Forgets every cached reply (and lock key) of this app, as a Redis restart or the
    /// end of the 24 h TTL would: repeats must then be answered from the database.
    pub async fn forget_cached_replies(&self) {
        let client = redis::Client::open(self.settings.redis.url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // SCAN, not KEYS: the shared Redis may hold many other keys.
        let pattern = format!("{}:*", self.settings.redis.key_prefix);
        let keys: Vec<String> = {
            let mut iter: redis::AsyncIter<String> = conn.scan_match(&pattern).await.unwrap();
            let mut keys = Vec::new();
            while let Some(key) = iter.next_item().await {
                keys.push(key.unwrap());
            }
            keys
        };
        assert!(!keys.is_empty());
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    /// Waits (at most 5 s) until `user_id`'s payment `order_id` holds its idempotency
    /// claim in Redis: its request reached a batch, which waits on the wallet.
    pub async fn claim_pending(&self, order_id: &str, user_id: &str) -> bool {
        let key = KeySpace::new(&self.settings.redis.key_prefix).idempotency(
            &Identifier::parse("userId", user_id.into()).unwrap(),
            "payment",
            &Identifier::parse("orderId", order_id.into()).unwrap(),
        );
        self.entry_pending(key).await
    }

    /// Waits (at most 5 s) until the idempotency entry `key` holds a request's claim.
    pub async fn entry_pending(&self, key: String) -> bool {
        let client = redis::Client::open(self.settings.redis.url.as_str()).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        crate::support::eventually(Duration::from_secs(5), || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move {
                let entry: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                entry.is_some_and(|entry| is_pending_entry(&entry))
            }
        })
        .await
    }

    /// How many transactions on this app's database wait for a row lock now.
    pub async fn lock_waits(&self) -> i64 {
        self.count(
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX t \
             JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
             WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()",
        )
        .await
    }

    /// Waits (bounded) until `/readyz` reports `mode`.
    pub async fn wait_for_lock_mode(&self, mode: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.get("/readyz").await.json()["lockMode"] == mode {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl TestApp {
    /// Stops the app as SIGTERM would and waits for it to finish, at most `within`;
    /// the app's own answer (a clean stop or why not).
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let running = self.running.take().expect("the app was stopped once");
        tokio::time::timeout(within, running)
            .await
            .map_err(|_| anyhow::anyhow!("the app did not stop within {within:?}"))?
            .map_err(anyhow::Error::from)?
    }

    /// Points of a wallet, as the API reports them.
    pub async fn points(&self, user_id: &str) -> i64 {
        self.get(&format!("/api/v1/wallets/{user_id}")).await.json()["points"]
            .as_i64()
            .unwrap_or(-1)
    }

    /// Outbox rows the relay has not published yet.
    pub async fn unsent_events(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM outbox_events WHERE sent_at IS NULL")
            .await
    }
}

/// Locks `user_id`'s wallet row in a transaction of the test's own: a debit of that
/// wallet then waits inside its own transaction, its idempotency claim pending, until
/// the returned transaction ends.
pub async fn hold_wallet(app: &TestApp, user_id: &str) -> sqlx::Transaction<'static, sqlx::MySql> {
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query("SELECT user_id FROM wallets WHERE user_id = ? FOR UPDATE")
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// A REST payment sent from a task of its own, so the test can act while it waits.
pub fn pay_in_background(
    app: &TestApp,
    order_id: &str,
    user_id: &str,
    amount: u64,
) -> tokio::task::JoinHandle<Reply> {
    let (address, client) = (app.address.clone(), app.client.clone());
    let body = json!({ "orderId": order_id, "userId": user_id, "amount": amount });
    tokio::spawn(async move {
        let response = client
            .post(format!("{address}/api/v1/payments"))
            .bearer_auth(CHECKOUT_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        Reply::read(response).await
    })
}

/// The value of a counter on `/metrics` (0 when never recorded).
pub async fn counter(app: &TestApp, name: &str) -> f64 {
    let text = app.get("/metrics").await.text;
    text.lines()
        .find(|line| line.starts_with(name) && !line.starts_with('#'))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}
