//! The request timeout: a debit that has not committed by its deadline rolls back and
//! says so; a request the backstop answers says its outcome is unknown, because a
//! commit already on its way may still land.

use std::time::Duration;

use reqwest::StatusCode;
use rust_decimal::Decimal;

use crate::support::proxy::DatabaseProxy;
use crate::support::{eventually, spawn_app_with, test_settings};

#[tokio::test]
async fn a_request_past_its_timeout_rolls_back_and_answers_503() {
    let settings = test_settings().await;
    let fast = spawn_app_with(settings.clone()).await;
    fast.funded_wallet("u1", 1_000).await;
    // The same database and Redis, but every transaction stalls up to 1 s (at its BEGIN,
    // through a proxy) and a request may take 300 ms: the service's own deadline check
    // answers, before the backstop (at 1.3 s) would.
    let mut slow_settings = settings;
    slow_settings.api.request_timeout = Duration::from_millis(300);
    let proxy = DatabaseProxy::in_front_of(&mut slow_settings).await;
    let slow = spawn_app_with(slow_settings).await;
    proxy.stall_transactions(Some(Duration::from_millis(1_000)));
    let mut timed_out = 0;
    for i in 0..5 {
        let reply = slow.pay(&format!("o{i}"), "u1", 100).await;
        match reply.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply.code(), "request_timeout", "{}", reply.text);
                assert!(reply.is_problem());
                assert_eq!(reply.retry_after, "1");
                timed_out += 1;
                let stored = slow
                    .count(&format!(
                        "SELECT COUNT(*) FROM payments WHERE order_id = 'o{i}'"
                    ))
                    .await;
                assert_eq!(stored, 0, "a timed-out debit is rolled back");
            }
            StatusCode::CREATED => {}
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    assert!(timed_out > 0, "some debits outlived their budget");
    assert_eq!(
        slow.balance("u1").await,
        Decimal::from(1_000 - 100 * (5 - timed_out))
    );
    slow.assert_ledger_invariants().await;
}

#[tokio::test]
async fn a_commit_slowed_past_the_backstop_answers_outcome_unknown_and_converges() {
    let mut settings = test_settings().await;
    // The app reaches its database through a proxy that can hold commits back.
    let proxy = DatabaseProxy::in_front_of(&mut settings).await;
    settings.api.request_timeout = Duration::from_millis(300);
    let app = spawn_app_with(settings).await;
    app.funded_wallet("u1", 5_000).await;

    // Every check passes within the 300 ms, then the commit takes 2.5 s: the backstop
    // (at 1.3 s) answers while the commit is still on its way.
    proxy.hold_commits(Some(Duration::from_millis(2_500)));
    let reply = app.pay("order-1", "u1", 1_000).await;
    proxy.hold_commits(None);
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert_eq!(reply.code(), "outcome_unknown", "{}", reply.text);
    assert!(reply.is_problem());
    assert_eq!(reply.retry_after, "1");
    assert!(
        !reply.json()["detail"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{}",
        reply.text
    );

    // The commit landed after the answer; a retry with the same key finds it.
    let converged = eventually(Duration::from_secs(10), || async {
        app.pay("order-1", "u1", 1_000).await.status == StatusCode::OK
    })
    .await;
    assert!(converged, "a retry with the same key replays the payment");
    assert_eq!(app.balance("u1").await, Decimal::from(4_000));
    assert_eq!(app.count("SELECT COUNT(*) FROM payments").await, 1);
    app.assert_ledger_invariants().await;
}
