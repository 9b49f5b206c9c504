//! Audits the ledger after a load test, straight from MySQL (`WALLET_DATABASE_URL`).
//!
//! ```text
//! ledger-audit [--paid FILE] [--events]
//! ```
//! `--paid FILE`: order ids (one per line) that clients saw succeed; each must exist.
//! `--events`: the outbox must be drained and every wallet's points must equal what its
//! completed payments earned; the report adds how long events took from the outbox to
//! the points consumer.
//!
//! Prints the report as JSON; exits 1 when an invariant does not hold.

use anyhow::Context;
use sqlx::mysql::MySqlPoolOptions;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut paid_file = None;
    let mut events = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--paid" => paid_file = Some(args.next().context("--paid takes a file")?),
            "--events" => events = true,
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: ledger-audit [--paid FILE] [--events]"
            ),
        }
    }
    let url = std::env::var("WALLET_DATABASE_URL").context("WALLET_DATABASE_URL is not set")?;
    let db = MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;

    let mut report = wallet::audit::audit(&db).await?;
    if let Some(file) = paid_file {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
        let ids: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let missing = wallet::audit::missing_payments(&db, &ids).await?;
        if !missing.is_empty() {
            report.violations.push(format!(
                "{} payments answered 2xx are missing, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
    }
    if events {
        report.event_latency_ms = wallet::audit::event_latency(&db).await?;
        if report.outbox_pending > 0 {
            report.violations.push(format!(
                "{} outbox events were never published",
                report.outbox_pending
            ));
        }
        if report.points_mismatches > 0 {
            report.violations.push(format!(
                "{} wallets have wrong points",
                report.points_mismatches
            ));
        }
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
