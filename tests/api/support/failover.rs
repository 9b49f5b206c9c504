//! A Redis primary killed (or a cluster's slots moved) while two instances pay on it:
//! what must hold whichever way the service reaches Redis (a Redis Cluster, Sentinel).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rust_decimal::Decimal;
use tokio::task::JoinSet;
use wallet::configuration::Settings;

use super::{counter, eventually, spawn_app_with};

/// Two instances on `settings` pay for six seconds, each order sent to both; `kill`
/// (`what` says what it does) runs after two. Then: each order charged once, every
/// acknowledged payment written, balances and payments agree, both instances back on
/// the Redis path by themselves, and the share of movements that ran on the fallback
/// reported.
pub async fn primary_killed_under_load(settings: Settings, what: &str, kill: impl FnOnce()) {
    let one = Arc::new(spawn_app_with(settings.clone()).await);
    let two = Arc::new(spawn_app_with(settings).await);
    let wallets = 30;
    for w in 0..wallets {
        one.funded_wallet(&format!("w{w}"), 1_000_000).await;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut paying = JoinSet::new();
    for payer in 0..40 {
        let apps = [one.clone(), two.clone()];
        paying.spawn(async move {
            let mut answered = Vec::new();
            let mut n = 0;
            while tokio::time::Instant::now() < deadline {
                let order = format!("p{payer}-{n}");
                let user = format!("w{}", (payer + n) % wallets);
                let replies = tokio::join!(
                    apps[0].pay(&order, &user, 100),
                    apps[1].pay(&order, &user, 100)
                );
                for reply in [replies.0, replies.1] {
                    if reply.status == StatusCode::CREATED {
                        answered.push((order.clone(), user.clone()));
                    }
                }
                n += 1;
            }
            answered
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    kill();

    let mut acknowledged: HashSet<(String, String)> = HashSet::new();
    while let Some(answered) = paying.join_next().await {
        acknowledged.extend(answered.unwrap());
    }
    assert!(!acknowledged.is_empty());
    // Each order charged once, every acknowledged one present, money conserved.
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT CAST(order_id AS CHAR), CAST(user_id AS CHAR) FROM payments")
            .fetch_all(&one.db)
            .await
            .unwrap();
    let written: HashSet<(String, String)> = rows.iter().cloned().collect();
    assert_eq!(written.len(), rows.len(), "no order charged twice");
    assert!(
        acknowledged.is_subset(&written),
        "every acknowledged payment was written"
    );
    for w in 0..wallets {
        let user = format!("w{w}");
        let paid = rows.iter().filter(|(_, u)| *u == user).count() as u64;
        assert_eq!(
            one.balance(&user).await,
            Decimal::from(1_000_000 - 100 * paid),
            "{user}: balance and payments agree"
        );
    }

    // Both instances come back to the Redis path by themselves.
    for app in [&one, &two] {
        let back = eventually(Duration::from_secs(20), || async {
            let ready = app.get("/readyz").await;
            ready.text.contains(r#""lockMode":"redis""#)
        })
        .await;
        assert!(back, "the instance returned to the Redis path");
    }
    let fallback = counter(&one, "wallet_mysql_fallback_total").await
        + counter(&two, "wallet_mysql_fallback_total").await;
    eprintln!(
        "{what} under load: {} payments, {fallback} movements on the fallback ({:.1} %; \
         the process's counter, alone only when this test runs alone)",
        rows.len(),
        100.0 * fallback / rows.len() as f64
    );
    let after = one.pay("after-failover", "w0", 100).await;
    assert_eq!(after.status, StatusCode::CREATED, "{}", after.text);
}
