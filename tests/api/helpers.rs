//! Spawning the app and checking the ledger, for every test.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{MySqlPool, Row};
use wallet::configuration::Settings;
use wallet::startup::Application;

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
    settings
}

/// Spawns an app with default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_settings().await).await
}

/// Spawns an app with the given settings (another instance may share them).
pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let app = Application::build(settings.clone())
        .await
        .expect("build the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until(std::future::pending()));
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
    }
}

/// A reply, read once: status, headers that matter, body as JSON (or raw text).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub replayed: bool,
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
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Self {
            status,
            content_type,
            replayed,
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
        let response = self
            .client
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("request sent");
        Reply::read(response).await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
        let response = self
            .client
            .post(format!("{}{path}", self.address))
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
                .post(
                    &format!("/api/v1/wallets/{user_id}/top-ups"),
                    &json!({ "topUpId": format!("seed-{user_id}"), "amount": balance.to_string() }),
                )
                .await;
            assert_eq!(top_up.status, StatusCode::CREATED, "{}", top_up.text);
        }
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

    /// The ledger invariants, read straight from the database:
    /// every balance equals the sum of its ledger entries and is never negative;
    /// every payment has exactly one PAYMENT entry (and a REFUND once cancelled);
    /// top-ups − payments + refunds = Σ balances.
    pub async fn assert_ledger_invariants(&self) {
        let rows = sqlx::query(
            "SELECT w.user_id, w.balance, COALESCE(SUM(l.amount), 0) AS ledger \
             FROM wallets w LEFT JOIN ledger_entries l ON l.user_id = w.user_id GROUP BY w.user_id, w.balance",
        )
        .fetch_all(&self.db)
        .await
        .unwrap();
        for row in rows {
            let user: String = row.get("user_id");
            let balance: Decimal = row.get("balance");
            let ledger: Decimal = row.get("ledger");
            assert_eq!(
                balance, ledger,
                "wallet {user}: balance differs from its ledger"
            );
            assert!(
                balance >= Decimal::ZERO,
                "wallet {user} is overdrawn: {balance}"
            );
        }
        let unmatched = self
            .count(
                "SELECT COUNT(*) FROM payments p WHERE \
                 (SELECT COUNT(*) FROM ledger_entries l WHERE l.entry_type = 'PAYMENT' AND l.reference = p.order_id AND l.amount = -p.amount) <> 1 \
                 OR (SELECT COUNT(*) FROM ledger_entries l WHERE l.entry_type = 'REFUND' AND l.reference = p.order_id) <> (p.status = 'CANCELLED')",
            )
            .await;
        assert_eq!(
            unmatched, 0,
            "payments without exactly one ledger entry each"
        );
        let orphans = self
            .count(
                "SELECT COUNT(*) FROM ledger_entries l WHERE l.entry_type = 'PAYMENT' \
                 AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = l.reference)",
            )
            .await;
        assert_eq!(orphans, 0, "ledger debits without a payment");
        let sums = |sql: &'static str| async move {
            sqlx::query_scalar::<_, Option<Decimal>>(sql)
                .fetch_one(&self.db)
                .await
                .unwrap()
                .unwrap_or_default()
        };
        let top_ups = sums("SELECT SUM(amount) FROM top_ups").await;
        let paid = sums("SELECT SUM(amount) FROM payments").await;
        let refunded = sums("SELECT SUM(amount) FROM payments WHERE status = 'CANCELLED'").await;
        let balances = sums("SELECT SUM(balance) FROM wallets").await;
        assert_eq!(
            top_ups - paid + refunded,
            balances,
            "money was created or lost"
        );
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

/// A `redis-server` of a test's own, on a free port, that the test may kill.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, empty: a restart without persistence.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (run scripts/test.sh)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// SIGKILL: the process and its data are gone at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
