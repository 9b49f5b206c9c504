//! Faults injected from outside the service: a TCP proxy in front of the database that
//! can hold back every `COMMIT` the service sends, as a stalled disk or a slow replica
//! acknowledgement would, or stall every transaction at its `BEGIN`, as a paused
//! process would (a garbage-collection pause, a descheduled VM).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wallet::configuration::Settings;

/// `COM_QUERY` followed by the statement text, as a client sends `COMMIT` and `BEGIN`.
const COMMIT: &[u8] = b"\x03COMMIT";
const BEGIN: &[u8] = b"\x03BEGIN";

#[derive(Clone, Copy, Default)]
struct Faults {
    /// Every `COMMIT` reaches the database this late.
    commit: Option<Duration>,
    /// Every `BEGIN` reaches it a random time up to this late (random, so a newer lock
    /// holder may reach a wallet's row first).
    begin: Option<Duration>,
}

/// A proxy on a free port of 127.0.0.1 that forwards to the database server.
pub struct DatabaseProxy {
    faults: Arc<Mutex<Faults>>,
}

impl DatabaseProxy {
    /// Starts a proxy to `settings`' database and points `settings` at it.
    pub async fn in_front_of(settings: &mut Settings) -> Self {
        let (server, database) = settings.database.url.rsplit_once('/').unwrap();
        let (credentials, upstream) = server.rsplit_once('@').unwrap();
        let upstream = upstream.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        settings.database.url = format!("{credentials}@127.0.0.1:{port}/{database}");
        let faults = Arc::new(Mutex::new(Faults::default()));
        let shared = faults.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, shared.clone()));
            }
        });
        Self { faults }
    }

    /// From now on every `COMMIT` reaches the database `delay` late (`None`: at once).
    pub fn hold_commits(&self, delay: Option<Duration>) {
        self.faults.lock().unwrap().commit = delay;
    }

    /// From now on every transaction stalls at its `BEGIN` for a random time up to
    /// `most` (`None`: not at all).
    pub fn stall_transactions(&self, most: Option<Duration>) {
        self.faults.lock().unwrap().begin = most;
    }
}

async fn relay(client: TcpStream, server: TcpStream, faults: Arc<Mutex<Faults>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match client_read.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        let faults = *faults.lock().unwrap();
        let has = |statement: &[u8]| chunk.windows(statement.len()).any(|w| w == statement);
        if let Some(delay) = faults.commit.filter(|_| has(COMMIT)) {
            tokio::time::sleep(delay).await;
        }
        if let Some(most) = faults.begin.filter(|_| has(BEGIN)) {
            let delay = rand::rng().random_range(Duration::ZERO..=most);
            tokio::time::sleep(delay).await;
        }
        if server_write.write_all(chunk).await.is_err() {
            return;
        }
    }
}
