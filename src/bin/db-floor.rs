//! The database floor of a debit: a bare autocommit
//! `UPDATE … SET balance = balance - ? WHERE user_id = ? AND balance >= ?` at a given
//! concurrency, on a scratch table, with no lock, no ledger and no HTTP. What the
//! service achieves is compared with this in docs/benchmarks.md.
//!
//! ```text
//! db-floor [--concurrency 150] [--connections 64] [--seconds 30] [--warmup 5] [--wallets 1]
//! ```
//! Uses `WALLET_DATABASE_URL`; prints one JSON line.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::mysql::MySqlPoolOptions;

struct Options {
    concurrency: usize,
    connections: u32,
    seconds: u64,
    warmup: u64,
    wallets: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        concurrency: 150,
        connections: 64,
        seconds: 30,
        warmup: 5,
        wallets: 1,
    };
    for (flag, value) in common::flag_values()? {
        match flag.as_str() {
            "--concurrency" => o.concurrency = value.parse()?,
            "--connections" => o.connections = value.parse()?,
            "--seconds" => o.seconds = value.parse()?,
            "--warmup" => o.warmup = value.parse()?,
            "--wallets" => o.wallets = value.parse()?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    let url = std::env::var("WALLET_DATABASE_URL").context("WALLET_DATABASE_URL is not set")?;
    let db = MySqlPoolOptions::new()
        .max_connections(o.connections)
        .connect(&url)
        .await?;
    sqlx::query("DROP TABLE IF EXISTS floor_wallets")
        .execute(&db)
        .await?;
    sqlx::query(
        "CREATE TABLE floor_wallets (user_id VARCHAR(64) NOT NULL PRIMARY KEY, \
         balance DECIMAL(19, 4) NOT NULL) ENGINE = InnoDB",
    )
    .execute(&db)
    .await?;
    for chunk in (0..o.wallets).collect::<Vec<_>>().chunks(1000) {
        let mut insert = sqlx::QueryBuilder::new("INSERT INTO floor_wallets (user_id, balance) ");
        insert.push_values(chunk, |mut row, i| {
            row.push_bind(format!("w{i}"))
                .push_bind(1_000_000_000_000_i64);
        });
        insert.build().execute(&db).await?;
    }

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..o.concurrency {
        let (db, measuring, stop, wallets) =
            (db.clone(), measuring.clone(), stop.clone(), o.wallets);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                let user = format!("w{}", i % wallets);
                i = i.wrapping_mul(31).wrapping_add(7);
                let started = Instant::now();
                sqlx::query("UPDATE floor_wallets SET balance = balance - ? WHERE user_id = ? AND balance >= ?")
                    .bind(1)
                    .bind(&user)
                    .bind(1)
                    .execute(&db)
                    .await?;
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(started.elapsed());
                }
            }
            Ok::<_, sqlx::Error>(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(o.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "updates": latencies.len(),
            "updatesPerSecond": latencies.len() as f64 / o.seconds as f64,
            "p50": pct(0.50),
            "p95": pct(0.95),
            "p99": pct(0.99),
            "concurrency": o.concurrency,
            "connections": o.connections,
            "wallets": o.wallets,
        })
    );
    sqlx::query("DROP TABLE floor_wallets").execute(&db).await?;
    Ok(())
}
