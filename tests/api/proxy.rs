//! A fault injected from outside the service: a TCP proxy in front of the database that
//! can hold back every `COMMIT` the service sends, as a stalled disk or a slow replica
//! acknowledgement would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `COM_QUERY` followed by the statement text, as a client sends `COMMIT`.
const COMMIT: &[u8] = b"\x03COMMIT";

/// A proxy on a free port of 127.0.0.1 that forwards to `upstream`.
pub struct CommitDelayProxy {
    pub port: u16,
    hold: Arc<Mutex<Option<Duration>>>,
}

impl CommitDelayProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(Mutex::new(None));
        let held = hold.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, held.clone()));
            }
        });
        Self { port, hold }
    }

    /// From now on every `COMMIT` reaches the database `delay` late (`None`: at once).
    pub fn hold_commits(&self, delay: Option<Duration>) {
        *self.hold.lock().unwrap() = delay;
    }
}

async fn relay(client: TcpStream, server: TcpStream, hold: Arc<Mutex<Option<Duration>>>) {
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
        let delay = *hold.lock().unwrap();
        if let Some(delay) = delay {
            if chunk.windows(COMMIT.len()).any(|w| w == COMMIT) {
                tokio::time::sleep(delay).await;
            }
        }
        if server_write.write_all(chunk).await.is_err() {
            return;
        }
    }
}
