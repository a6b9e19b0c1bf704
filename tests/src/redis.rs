//! A real `redis-server` for tests (Debian's package; scripts/test.sh installs it),
//! on a free loopback port with no persistence.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A real `redis-server` (Debian's package; scripts/test.sh installs it) on a free
/// loopback port, with no persistence; killed on drop. `stop` and `start` simulate an
/// outage on the same port.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: PathBuf,
}

impl RedisServer {
    pub async fn start() -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port,
            child: None,
            dir,
        };
        server.resume().await;
        server
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub async fn resume(&mut self) {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "redis-server is not installed; scripts/test.sh installs Debian's redis-server",
            );
        let child = std::process::Command::new(binary)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &self.dir.display().to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        for _ in 0..200 {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// Kills the server (its data is gone with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        // The client's default response timeout is short; a test's own command (a
        // 128 MiB SETRANGE on a busy machine) may take longer.
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    async fn ping(&self) -> bool {
        match self.connection().await {
            Ok(mut c) => redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Runs `command` as another client of the server would (to change what the
    /// proxies stored behind their backs).
    pub async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let mut c = self.connection().await.unwrap();
        command.query_async(&mut c).await.unwrap()
    }

    /// Every counter key and its value.
    pub async fn counters(&self) -> Vec<(String, i64)> {
        let mut c = self.connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("{sb}:quota:*")
            .query_async(&mut c)
            .await
            .unwrap();
        let mut out = Vec::new();
        for key in keys {
            let value: i64 = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            out.push((key, value));
        }
        out.sort();
        out
    }

    /// Every cache entry: its key, milliseconds left to live, and stored value.
    pub async fn cache_entries(&self) -> Vec<(String, i64, Vec<u8>)> {
        let mut c = self.connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("sb:cache:*")
            .query_async(&mut c)
            .await
            .unwrap();
        let mut out = Vec::new();
        for key in keys {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            let value: Vec<u8> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            out.push((key, ttl, value));
        }
        out.sort();
        out
    }

    /// The value of the one counter whose key contains `needle`. Panics when no key
    /// matches (a renamed key fails the test instead of reading as 0), or several do.
    pub async fn counter(&self, needle: &str) -> i64 {
        let counters = self.counters().await;
        let matching: Vec<&(String, i64)> = counters
            .iter()
            .filter(|(k, _)| k.contains(needle))
            .collect();
        match matching.as_slice() {
            [(_, value)] => *value,
            [] => panic!("no counter key contains {needle:?}; counters: {counters:?}"),
            more => panic!("several counters match {needle}: {more:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
