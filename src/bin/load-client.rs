//! A lean closed-loop load client for the benchmark matrix: `--vus` virtual users, each
//! on its own keep-alive HTTP/1.1 connection, paying one debit after another for
//! `--warmup` then `--seconds` seconds, spread over the instances in `--urls`. The
//! `holds` scenario walks the spread wallets too, but each turn places a hold and then
//! settles it: four in five captured (90 % of the amount, the rest released), one in
//! five voided; it counts a settled hold where the others count a debit. The
//! `hot-spread` scenario pays a quarter of its debits from one hot wallet and the rest
//! from the spread wallets.
//!
//! k6 costs more CPU per request than the service itself spends on a batched debit;
//! on a two-core machine that shares its cores with the service, MariaDB and Redis, the
//! load generator then decides the figures. This client spends a few µs per request
//! (it reports its own CPU per request), so the matrix measures the service.
//!
//! ```text
//! load-client --urls URL[,URL] --api-key KEY --funding-key KEY --run RUN_ID
//!             [--scenario hot-wallet|spread|hot-spread|holds] [--wallets 10000] [--vus 150]
//!             [--seconds 30] [--warmup 5] [--paid FILE]
//! ```
//! Funds the wallets first (not measured), prints one JSON line at the end, and writes
//! every order id it saw succeed to `--paid` for `ledger-audit --paid`.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use wallet::support::percentile::nearest_rank;

struct Options {
    urls: Vec<String>,
    api_key: String,
    funding_key: String,
    run: String,
    hot: bool,
    /// Hold, then capture or void, instead of a debit.
    holds: bool,
    /// A quarter of the debits on one hot wallet, the rest on the spread wallets.
    mixed: bool,
    wallets: usize,
    vus: usize,
    seconds: u64,
    warmup: u64,
    paid: Option<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        urls: Vec::new(),
        api_key: String::new(),
        funding_key: String::new(),
        run: String::new(),
        hot: true,
        holds: false,
        mixed: false,
        wallets: 10_000,
        vus: 150,
        seconds: 30,
        warmup: 5,
        paid: None,
    };
    for (flag, value) in common::flag_values()? {
        match flag.as_str() {
            "--urls" => o.urls = value.split(',').map(str::to_owned).collect(),
            "--api-key" => o.api_key = value,
            "--funding-key" => o.funding_key = value,
            "--run" => o.run = value,
            "--scenario" => {
                (o.hot, o.holds, o.mixed) = match value.as_str() {
                    "hot-wallet" => (true, false, false),
                    "spread" => (false, false, false),
                    "hot-spread" => (false, false, true),
                    "holds" => (false, true, false),
                    other => bail!("unknown scenario {other}"),
                }
            }
            "--wallets" => o.wallets = value.parse()?,
            "--vus" => o.vus = value.parse()?,
            "--seconds" => o.seconds = value.parse()?,
            "--warmup" => o.warmup = value.parse()?,
            "--paid" => o.paid = Some(value),
            other => bail!("unknown option {other}"),
        }
    }
    if o.urls.is_empty() || o.run.is_empty() {
        bail!("--urls and --run are required");
    }
    if o.hot {
        o.wallets = 1;
    }
    Ok(o)
}

/// One keep-alive connection to an instance.
struct Connection {
    address: String,
    stream: Option<BufReader<TcpStream>>,
    request: String,
    line: String,
    body: Vec<u8>,
}

impl Connection {
    fn new(url: &str) -> anyhow::Result<Self> {
        let address = url
            .strip_prefix("http://")
            .context("only http:// URLs")?
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            address,
            stream: None,
            request: String::new(),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// Sends one POST and returns the status; the body is kept in `self.body`.
    async fn post(&mut self, path: &str, key: &str, body: &str) -> anyhow::Result<u16> {
        match self.exchange(path, key, body).await {
            Ok(status) => Ok(status),
            // The instance may have closed an idle connection: one try on a fresh one
            // (a payment is idempotent by its order id, so a resend is safe).
            Err(e) => {
                eprintln!("reconnecting after: {e:#}");
                self.exchange(path, key, body).await
            }
        }
    }

    async fn exchange(&mut self, path: &str, key: &str, body: &str) -> anyhow::Result<u16> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.address).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(BufReader::new(stream));
        }
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{body}",
            self.address,
            body.len()
        )?;
        let result = self.round_trip().await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn round_trip(&mut self) -> anyhow::Result<u16> {
        let stream = self.stream.as_mut().expect("connected above");
        stream.get_mut().write_all(self.request.as_bytes()).await?;
        self.line.clear();
        if stream.read_line(&mut self.line).await? == 0 {
            bail!("connection closed");
        }
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .context("no status line")?
            .parse()?;
        let mut length = 0;
        let mut close = false;
        loop {
            self.line.clear();
            stream.read_line(&mut self.line).await?;
            let line = self.line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').context("malformed header")?;
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse()?;
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.trim().eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("chunked answers are not expected here");
            }
        }
        self.body.resize(length, 0);
        stream.read_exact(&mut self.body).await?;
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

/// CPU time of this process so far (user + system), from the kernel's accounting.
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<u64> = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            Some(fields.iter().sum::<u64>())
        })
        .unwrap_or(0);
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    Duration::from_millis(ticks * 10)
}

/// Wallet `i`; in `hot-spread`, the hot wallet comes after the spread ones.
fn user(o: &Options, i: usize) -> String {
    if o.hot || (o.mixed && i == o.wallets) {
        format!("{}-hot", o.run)
    } else {
        format!("{}-w{i}", o.run)
    }
}

/// Creates every wallet and tops it up, 32 requests at a time.
async fn fund(o: &Arc<Options>) -> anyhow::Result<()> {
    let wallets = o.wallets + usize::from(o.mixed);
    let mut tasks = JoinSet::new();
    let workers = 32.min(wallets);
    for worker in 0..workers {
        let o = o.clone();
        tasks.spawn(async move {
            let mut conn = Connection::new(&o.urls[worker % o.urls.len()])?;
            for i in (worker..wallets).step_by(workers) {
                let user = user(&o, i);
                let hot = o.hot || i == o.wallets;
                let amount = if hot { "1000000000000" } else { "1000000000" };
                let status = conn
                    .post(
                        "/api/v1/wallets",
                        &o.api_key,
                        &format!(r#"{{"userId":"{user}"}}"#),
                    )
                    .await?;
                if !matches!(status, 200 | 201) {
                    bail!("creating wallet {user} answered {status}");
                }
                let body = format!(r#"{{"topUpId":"{user}-seed","amount":"{amount}"}}"#);
                let path = format!("/api/v1/wallets/{user}/top-ups");
                let status = conn.post(&path, &o.funding_key, &body).await?;
                if !matches!(status, 200 | 201) {
                    bail!("funding wallet {user} answered {status}");
                }
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// What one virtual user saw in the measured part.
#[derive(Default)]
struct Tally {
    latencies: Vec<u32>,
    statuses: BTreeMap<String, u64>,
    paid: Vec<String>,
    /// Debits (or settled holds) in the measured part.
    done: u64,
}

async fn pay(o: Arc<Options>, vu: usize, start: Instant, stop: Instant) -> anyhow::Result<Tally> {
    let mut conn = Connection::new(&o.urls[vu % o.urls.len()])?;
    let mut tally = Tally::default();
    let measured_from = start + Duration::from_secs(o.warmup);
    // Each user walks the wallets on its own stride, so users spread evenly.
    let mut next = vu.wrapping_mul(7919);
    let mut body = String::new();
    for iteration in 0.. {
        let sent = Instant::now();
        if sent >= stop {
            break;
        }
        let wallet = if o.mixed && (iteration + vu).is_multiple_of(4) {
            user(&o, o.wallets)
        } else {
            user(&o, next % o.wallets)
        };
        next = next.wrapping_mul(31).wrapping_add(17);
        let order = format!("{}-{vu}-{iteration}", o.run);
        let amount = 10 * (1 + iteration % 10);
        body.clear();
        if o.holds {
            write!(
                body,
                r#"{{"holdId":"{order}","userId":"{wallet}","amount":"{amount}"}}"#
            )?;
            let status = conn
                .post("/api/v1/holds", &o.api_key, &body)
                .await
                .unwrap_or(0);
            tally.record(sent, measured_from, status, false);
            if status != 201 {
                continue;
            }
            let settled = Instant::now();
            body.clear();
            let path = if iteration % 5 == 4 {
                body.push_str("{}");
                format!("/api/v1/holds/{order}/void")
            } else {
                write!(body, r#"{{"amount":"{}"}}"#, amount * 9 / 10)?;
                format!("/api/v1/holds/{order}/capture")
            };
            let status = conn.post(&path, &o.api_key, &body).await.unwrap_or(0);
            tally.record(settled, measured_from, status, status == 200);
            continue;
        }
        write!(
            body,
            r#"{{"orderId":"{order}","userId":"{wallet}","amount":"{}"}}"#,
            1 + iteration % 10
        )?;
        let status = conn
            .post("/api/v1/payments", &o.api_key, &body)
            .await
            .unwrap_or(0);
        if matches!(status, 200 | 201) {
            tally.paid.push(order);
        }
        tally.record(sent, measured_from, status, status == 201);
    }
    Ok(tally)
}

impl Tally {
    /// One request sent at `sent`, counted if in the measured part; `done` when it
    /// completed a debit (or a hold's settlement).
    fn record(&mut self, sent: Instant, measured_from: Instant, status: u16, done: bool) {
        if sent >= measured_from {
            let micros = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            self.latencies.push(micros);
            *self.statuses.entry(status.to_string()).or_default() += 1;
            self.done += u64::from(done);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = Arc::new(options()?);
    fund(&o).await.context("funding the wallets")?;

    let start = Instant::now();
    let stop = start + Duration::from_secs(o.warmup + o.seconds);
    let mut users = JoinSet::new();
    for vu in 0..o.vus {
        users.spawn(pay(o.clone(), vu, start, stop));
    }
    tokio::time::sleep_until((start + Duration::from_secs(o.warmup)).into()).await;
    let cpu_before = cpu_time();
    tokio::time::sleep_until(stop.into()).await;
    let cpu = cpu_time().saturating_sub(cpu_before);

    let mut all = Tally::default();
    while let Some(done) = users.join_next().await {
        let tally = done??;
        all.latencies.extend(tally.latencies);
        all.paid.extend(tally.paid);
        all.done += tally.done;
        for (status, n) in tally.statuses {
            *all.statuses.entry(status).or_default() += n;
        }
    }
    if let Some(file) = &o.paid {
        std::fs::write(file, all.paid.join("\n") + "\n")?;
    }
    all.latencies.sort_unstable();
    let pct = |p: f64| nearest_rank(&all.latencies, p).map_or(0.0, |us| f64::from(us) / 1000.0);
    let debits = all.done;
    let errors: u64 = all
        .statuses
        .iter()
        .filter(|(status, _)| !matches!(status.as_str(), "200" | "201" | "402" | "409" | "422"))
        .map(|(_, n)| n)
        .sum();
    println!(
        "{}",
        serde_json::json!({
            "debits": debits,
            "debitsPerSecond": debits as f64 / o.seconds as f64,
            "p50": pct(0.50),
            "p95": pct(0.95),
            "p99": pct(0.99),
            "statuses": all.statuses,
            "errors": errors,
            "requests": all.latencies.len(),
            "clientCpuUsPerRequest": cpu.as_secs_f64() * 1e6 / all.latencies.len().max(1) as f64,
        })
    );
    Ok(())
}
