//! Servers of a test's own, which it may kill and restart (never the shared ones).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A server process of a test's own, on a free port, that the test may kill and
/// restart (never the suite's shared servers). Its files live in a temporary folder.
pub struct OwnServer {
    pub port: u16,
    program: String,
    args: Vec<String>,
    dir: std::path::PathBuf,
    child: Option<Child>,
    /// A broker's storage: the PostgreSQL server and the database dropped with it.
    database: Option<(String, String)>,
}

/// The Tansu binary `scripts/deps.sh` installs (built with PostgreSQL storage).
fn tansu() -> String {
    std::env::var("WALLET_TEST_TANSU").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/wallet/tansu-pg/bin/tansu")
    })
}

/// The database of the broker of its own listening on `port` (`scripts/test.sh` drops
/// those a run left behind).
fn broker_database(port: u16) -> String {
    format!("tansu_test_{port}")
}

/// Runs one statement on the broker's PostgreSQL server with `psql`; true when it did.
fn psql(server: &str, statement: &str) -> bool {
    Command::new("psql")
        .arg(format!("{server}/postgres"))
        .args(["-v", "ON_ERROR_STOP=1", "-qc", statement])
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .stdout(Stdio::null())
        .status()
        .expect("psql is installed (run scripts/test.sh)")
        .success()
}

impl OwnServer {
    /// `redis-server` without persistence: a restart comes back empty.
    pub fn redis() -> Self {
        Self::redis_with(&[])
    }

    /// One node of a Redis Cluster, without persistence ([`RedisCluster`]).
    pub fn redis_cluster_node() -> Self {
        Self::start("redis-server", |port, _| {
            [
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .into()
        })
    }

    /// A Tansu broker as `scripts/deps.sh` runs it, with its PostgreSQL storage in a
    /// database of its own (copied from the `tansu_template` database deps.sh keeps on
    /// the broker's PostgreSQL): a restart keeps topics, records and offsets.
    pub fn broker() -> Self {
        let storage = std::env::var("WALLET_TEST_TANSU_STORAGE")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5433".to_string());
        let mut server = Self::start(tansu(), |port, _| {
            let database = broker_database(port);
            for statement in [
                format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
                format!("CREATE DATABASE {database} TEMPLATE tansu_template"),
            ] {
                assert!(psql(&storage, &statement), "psql failed: {statement}");
            }
            let url = format!("tcp://127.0.0.1:{port}");
            [
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &format!("{storage}/{database}"),
            ]
            .map(String::from)
            .into()
        });
        server.database = Some((storage, broker_database(server.port)));
        server
    }

    /// A MariaDB server of its own, in a fresh data folder, without grant tables (any
    /// user may connect): a kill is a crash, a restart runs crash recovery.
    pub fn mariadb() -> Self {
        Self::start("mariadbd", |port, dir| {
            let data = dir.join("data");
            let installed = Command::new("mariadb-install-db")
                .args([
                    "--no-defaults",
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                ])
                .arg(format!("--datadir={}", data.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("mariadb-install-db is installed (run scripts/test.sh)");
            assert!(installed.success(), "mariadb-install-db failed");
            [
                "--no-defaults".to_string(),
                format!("--datadir={}", data.display()),
                format!("--socket={}", dir.join("mysqld.sock").display()),
                format!("--port={port}"),
                "--bind-address=127.0.0.1".into(),
                "--user=root".into(),
                "--skip-grant-tables".into(),
                "--skip-log-bin".into(),
                "--innodb-buffer-pool-size=64M".into(),
            ]
            .into()
        })
    }

    fn start(
        program: impl Into<String>,
        args: impl Fn(u16, &std::path::Path) -> Vec<String>,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let program = program.into();
        let name = program.rsplit('/').next().unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "wallet-{name}-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let args = args(port, &dir);
        let mut server = Self {
            port,
            program,
            args,
            dir,
            child: None,
            database: None,
        };
        server.restart();
        server
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and folder, and waits until it accepts connections.
    pub fn restart(&mut self) {
        // The output goes beside the folder, so it outlives a wipe and the test.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let child = Command::new(&self.program)
            .current_dir(&self.dir)
            .args(&self.args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} is installed (run scripts/test.sh): {e}", self.program));
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not start on port {}", self.program, self.port);
    }

    /// SIGKILL: the process is gone at once, mid-whatever.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((server, database)) = &self.database {
            // Best effort: a drop that fails leaves a database the next run's drops.
            psql(
                server,
                &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
            );
        }
    }
}

/// A Redis Cluster of a test's own: `primaries` primaries, each with `replicas`
/// replicas, on free loopback ports, made with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<OwnServer>,
}

impl RedisCluster {
    pub fn start(primaries: usize, replicas: usize) -> Self {
        let nodes: Vec<OwnServer> = (0..primaries * (1 + replicas))
            .map(|_| OwnServer::redis_cluster_node())
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(OwnServer::address))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is installed (run scripts/test.sh)");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            let mut ready = false;
            for _ in 0..200 {
                if node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                    ready = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(ready, "the cluster did not come up on {}", node.address());
        }
        cluster
    }

    /// `redis://127.0.0.1:port` of every node, for `WALLET_REDIS_CLUSTER_NODES`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://{}", node.address()))
            .collect()
    }

    /// The nodes that serve slots now.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].child.is_some()
                    && self.nodes[i]
                        .cli(&["INFO", "replication"])
                        .contains("role:master")
            })
            .collect()
    }
}

/// A primary, a replica and three Sentinels of a test's own, on free loopback ports; the
/// Sentinels watch the primary as `master` and promote the replica a second after it
/// stops answering. The primary and the replica require `password`, as production
/// Redis does.
pub struct RedisSentinels {
    pub master: String,
    pub password: String,
    pub primary: OwnServer,
    pub replica: OwnServer,
    pub sentinels: Vec<OwnServer>,
}

impl RedisSentinels {
    pub fn start() -> Self {
        let password = "sentinel-test-secret".to_string();
        let auth = ["--requirepass", &password, "--masterauth", &password];
        let primary = OwnServer::redis_with(&auth);
        let replica = OwnServer::redis_with(
            &[
                &auth[..],
                &["--replicaof", "127.0.0.1", &primary.port.to_string()],
            ]
            .concat(),
        );
        let master = "wallet-test".to_string();
        let sentinels = (0..3)
            .map(|_| OwnServer::sentinel(&master, primary.port, &password))
            .collect();
        let deployment = Self {
            master,
            password,
            primary,
            replica,
            sentinels,
        };
        let mut ready = false;
        for _ in 0..200 {
            let info = deployment.sentinels[0].cli(&["SENTINEL", "REPLICAS", &deployment.master]);
            let others =
                deployment.sentinels[0].cli(&["SENTINEL", "SENTINELS", &deployment.master]);
            if info.contains(&deployment.replica.port.to_string())
                && others.matches("127.0.0.1").count() >= 2
            {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            ready,
            "the Sentinels did not find the replica and each other"
        );
        deployment
    }

    /// `redis://127.0.0.1:port` of every Sentinel, for `WALLET_REDIS_SENTINELS`.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|node| format!("redis://{}", node.address()))
            .collect()
    }

    /// The port of the primary the Sentinels name now.
    pub fn primary_port(&self) -> Option<u16> {
        let answer = self.sentinels[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master]);
        answer.lines().nth(1)?.trim().parse().ok()
    }
}

impl OwnServer {
    /// `redis-server` without persistence (a restart comes back empty), with `extra`
    /// arguments.
    fn redis_with(extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        Self::start("redis-server", move |port, _| {
            [
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .into_iter()
            .chain(extra.iter().cloned())
            .collect()
        })
    }

    /// A Sentinel watching the primary on `primary_port` as `master` (quorum 2).
    fn sentinel(master: &str, primary_port: u16, password: &str) -> Self {
        let (master, password) = (master.to_string(), password.to_string());
        Self::start("redis-server", move |port, dir| {
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "bind 127.0.0.1\nport {port}\n\
                     sentinel monitor {master} 127.0.0.1 {primary_port} 2\n\
                     sentinel auth-pass {master} {password}\n\
                     sentinel down-after-milliseconds {master} 1000\n\
                     sentinel failover-timeout {master} 5000\n\
                     sentinel parallel-syncs {master} 1\n"
                ),
            )
            .unwrap();
            vec![conf.display().to_string(), "--sentinel".into()]
        })
    }

    /// What `redis-cli` answers to `command` on this node ("" when it does not answer).
    pub fn cli(&self, command: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(command)
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    }

    /// How many keys this node holds.
    pub fn key_count(&self) -> u64 {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "DBSIZE"])
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(0)
    }
}
