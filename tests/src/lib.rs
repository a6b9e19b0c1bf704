//! Helpers for the end-to-end tests: run the real `switchboard-proxy` binary as a child
//! process on 127.0.0.1, talk to it over HTTP, and read what it logged.
//!
//! The binary is `$SWITCHBOARD_PROXY_BIN` if set, otherwise
//! `$CARGO_TARGET_DIR/release/switchboard-proxy` (default `<workspace>/target`); build it first with
//! `cargo build --release -p switchboard-proxy`.
//!
//! Every wait here is bounded, and every process is killed when its handle drops, so a
//! broken proxy fails a test instead of hanging it.

pub mod cluster;
pub mod fake_upstream;
pub mod kube_emulator;
pub mod redis;

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The gateway key in `examples/quickstart`.
pub const QUICKSTART_KEY: &str = "sk-switchboard-quickstart";

/// How long a proxy may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Poll interval for every bounded wait.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// The workspace root (this crate lives in `<workspace>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The proxy binary to run.
pub fn proxy_bin() -> PathBuf {
    release_bin("switchboard-proxy", "SWITCHBOARD_PROXY_BIN")
}

/// `$env_var` if set, otherwise `$CARGO_TARGET_DIR/release/<name>` (default
/// `<workspace>/target`); panics with the build command when it is missing.
pub fn release_bin(name: &str, env_var: &str) -> PathBuf {
    let path = match std::env::var_os(env_var) {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"))
            .join("release")
            .join(name),
    };
    assert!(
        path.is_file(),
        "{name} not found at {}: build it first: cargo build --release -p {name}",
        path.display()
    );
    path
}

/// Resident memory of process `pid`, in bytes (`VmRSS` in `/proc/PID/status`).
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

// === TempDir ===

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "switchboard-e2e-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` atomically (a hidden temp file, which the proxy ignores, then a
    /// rename), so a watcher never reads half a file.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let target = self.path.join(name);
        let staging = self.path.join(format!(".{name}.tmp"));
        fs::write(&staging, contents).expect("write manifest");
        fs::rename(&staging, &target).expect("rename manifest");
        target
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// === Proxy ===

/// A child process whose output goes to a log file; killed on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    log_path: PathBuf,
    _log_dir: TempDir,
}

impl Process {
    /// Starts `bin` with `args`; `RUST_LOG` is cleared unless `env` sets it.
    pub fn spawn(bin: &Path, args: &[String], env: &[(&str, &str)]) -> Self {
        let log_dir = TempDir::new("logs");
        let log_path = log_dir.path().join("output.log");
        let log = File::create(&log_path).expect("create log file");
        let child = Command::new(bin)
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Self {
            child,
            log_path,
            _log_dir: log_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// SIGKILL, and reap: a crash, as far as everyone else can tell.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Bytes logged so far, to look only at what comes after.
    pub fn log_len(&self) -> usize {
        self.logs().len()
    }

    /// Waits until the output after byte `since` contains every string in `needles`
    /// (on one line); returns that line. Panics with the whole output on timeout.
    pub async fn wait_for_log_line(
        &self,
        since: usize,
        needles: &[&str],
        within: Duration,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let logs = self.logs();
            let recent = logs.get(since..).unwrap_or_default();
            if let Some(line) = recent
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.to_string();
            }
            if Instant::now() >= deadline {
                panic!(
                    "no log line containing all of {needles:?} within {within:?}; output:\n{logs}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends SIGTERM with the `kill` command.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -TERM {} failed: {status}",
            self.pid()
        );
    }

    /// The exit status, if the process exits within `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

// === Proxy ===

/// A running `switchboard-proxy` process; killed on drop. Derefs to its `Process`.
#[derive(Debug)]
pub struct Proxy {
    process: Process,
    pub addr: SocketAddr,
    /// Where it serves `/metrics` (a free loopback port unless the flags say otherwise).
    pub metrics_addr: Option<SocketAddr>,
}

impl std::ops::Deref for Proxy {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Proxy {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Proxy {
    /// Starts the proxy on `manifests` with extra flags and waits until `/readyz` is 200.
    pub async fn start(manifests: &Path, args: &[&str]) -> Self {
        Self::start_with_env(manifests, args, &[]).await
    }

    /// As `start`, with extra environment variables (`RUST_LOG` is cleared unless given).
    pub async fn start_with_env(manifests: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let manifests = manifests.display().to_string();
        let mut all = vec!["--manifests", manifests.as_str()];
        all.extend_from_slice(args);
        Self::start_args(&all, env).await
    }

    /// Starts the proxy with exactly these flags (plus `--listen`) and waits until
    /// `/readyz` is 200.
    pub async fn start_args(args: &[&str], env: &[(&str, &str)]) -> Self {
        // The free port can be taken between our probe and the proxy's bind; retry then.
        for attempt in 1..=3 {
            let mut proxy = Self::spawn_args(args, env).await;
            match wait_ready(&mut proxy.process, proxy.addr).await {
                Ok(()) => return proxy,
                Err(exited) => {
                    proxy.kill();
                    let logs = proxy.logs();
                    let taken =
                        logs.contains("cannot listen") || logs.contains("cannot serve metrics");
                    if exited && taken && attempt < 3 {
                        continue;
                    }
                    panic!(
                        "switchboard-proxy did not become ready on {}; its output:\n{logs}",
                        proxy.addr
                    );
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Starts the proxy with these flags on a free port without waiting for readiness.
    /// Metrics go to a free loopback port too (not the shared default, 9091), unless
    /// `args` has `--metrics-listen`.
    pub async fn spawn_args(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_under(&[], args, env)
    }

    /// Starts the proxy on `manifests` with its open-file limit (soft and hard) set to
    /// `open_files` (by util-linux's `prlimit`), and waits until `/readyz` is 200.
    pub async fn start_with_open_files(manifests: &Path, open_files: u64, args: &[&str]) -> Self {
        let manifests = manifests.display().to_string();
        let mut all = vec!["--manifests", manifests.as_str()];
        all.extend_from_slice(args);
        let limit = format!("--nofile={open_files}:{open_files}");
        let mut proxy = Self::spawn_under(&["prlimit", &limit, "--"], &all, &[]);
        if wait_ready(&mut proxy.process, proxy.addr).await.is_err() {
            proxy.kill();
            panic!(
                "switchboard-proxy did not become ready; its output:\n{}",
                proxy.logs()
            );
        }
        proxy
    }

    /// `spawn_args`, the proxy run by the command `wrapper` (empty: run directly).
    fn spawn_under(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut all: Vec<String> = vec!["--listen".into(), addr.to_string()];
        let metrics_addr = match args.iter().position(|a| *a == "--metrics-listen") {
            Some(i) => args.get(i + 1).and_then(|a| a.parse().ok()),
            None => {
                let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
                all.extend(["--metrics-listen".into(), metrics.to_string()]);
                Some(metrics)
            }
        };
        all.extend(args.iter().map(ToString::to_string));
        let process = match wrapper.split_first() {
            None => Process::spawn(&proxy_bin(), &all, env),
            Some((bin, wrapper_args)) => {
                let mut wrapped: Vec<String> =
                    wrapper_args.iter().map(ToString::to_string).collect();
                wrapped.push(proxy_bin().display().to_string());
                wrapped.extend(all);
                Process::spawn(Path::new(bin), &wrapped, env)
            }
        };
        Self {
            process,
            addr,
            metrics_addr,
        }
    }

    /// `http://127.0.0.1:PORT/metrics`.
    pub fn metrics_url(&self) -> String {
        let addr = self.metrics_addr.expect("metrics are on");
        format!("http://{addr}/metrics")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// Waits for `/readyz`; `Err(true)` if the process exited, `Err(false)` on timeout.
async fn wait_ready(process: &mut Process, addr: SocketAddr) -> Result<(), bool> {
    let client = http_client();
    let url = format!("http://{addr}/readyz");
    let deadline = Instant::now() + READY_WITHIN;
    while Instant::now() < deadline {
        if process.has_exited() {
            return Err(true);
        }
        let ready = client
            .get(&url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
        if ready {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    Err(false)
}

// === HTTP ===

/// A plain-HTTP client that ignores proxy environment variables.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(15))
        .build()
        .expect("build http client")
}

/// An OpenAI chat request with one user message.
pub fn chat_body(model: &str, prompt: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    })
}

/// Posts a chat request to `proxy` with `key`.
pub async fn chat(
    client: &reqwest::Client,
    proxy: &Proxy,
    key: &str,
    model: &str,
    prompt: &str,
    stream: bool,
) -> reqwest::Response {
    client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(model, prompt, stream))
        .send()
        .await
        .expect("send chat request")
}

/// The request id header of `response`, asserting it is there and not empty.
pub fn request_id(response: &reqwest::Response) -> String {
    let id = response
        .headers()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id header on a {} response", response.status()))
        .to_str()
        .expect("x-request-id is ASCII")
        .to_string();
    assert!(!id.is_empty(), "empty x-request-id");
    id
}

/// Asserts `body` is OpenAI's error shape `{"error":{"message","type","code"}}` and
/// returns the error object.
pub fn assert_openai_error(body: &Value) -> &Value {
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("no 'error' in {body}"));
    for field in ["message", "type", "code"] {
        assert!(
            error.get(field).is_some_and(Value::is_string),
            "error.{field} is not a string in {body}"
        );
    }
    error
}

// === Server-sent events ===

/// Reads a streaming response event by event.
#[derive(Debug)]
pub struct SseReader {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next event's `data`, `Ok(None)` when the body ends, `Err` if it breaks.
    pub async fn next_data(&mut self) -> Result<Option<String>, reqwest::Error> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue; // a comment or keep-alive
                }
                return Ok(Some(data.join("\n")));
            }
            match self.response.chunk().await? {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

/// What a chat stream carried.
#[derive(Debug, Default)]
pub struct StreamSummary {
    /// Every event's data, `[DONE]` included.
    pub events: Vec<String>,
    /// The concatenated `choices[0].delta.content`.
    pub text: String,
    /// Whether the last event was `[DONE]`.
    pub done: bool,
    /// Whether the body ended with an error (cut off).
    pub broken: bool,
}

/// The delta text of a chat chunk's data, if any.
pub fn delta_content(data: &str) -> Option<String> {
    let chunk: Value = serde_json::from_str(data).ok()?;
    chunk
        .pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Reads the rest of a chat stream.
pub async fn read_stream(reader: &mut SseReader, summary: &mut StreamSummary) {
    loop {
        match reader.next_data().await {
            Ok(Some(data)) => {
                if let Some(text) = delta_content(&data) {
                    summary.text.push_str(&text);
                }
                summary.done = data == "[DONE]";
                summary.events.push(data);
            }
            Ok(None) => return,
            Err(_) => {
                summary.broken = true;
                return;
            }
        }
    }
}

// === Child commands ===

/// Runs `command` to completion with its output captured, killing it after `within`.
pub async fn run_command(mut command: tokio::process::Command, within: Duration) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let described = format!("{command:?}");
    match tokio::time::timeout(within, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => panic!("cannot run {described}: {error}"),
        Err(_) => panic!("{described} did not finish within {within:?}"),
    }
}

// === Manifests ===

/// An echo AIProvider named `name` serving model `echo-1`.
pub fn echo_provider(name: &str, latency: &str, chunk_interval: &str) -> String {
    format!(
        "apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata:
  name: {name}
spec:
  type: echo
  models:
    - name: echo-1
  echo:
    latency: {latency}
    chunkInterval: {chunk_interval}
"
    )
}

/// An AIRoute named `name` sending `models` to `provider`'s `model`.
pub fn route(name: &str, models: &[&str], provider: &str, model: &str) -> String {
    let models = models
        .iter()
        .map(|m| format!("{m:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata:
  name: {name}
spec:
  models: [{models}]
  backends:
    - provider: {provider}
      model: {model}
"
    )
}

/// An AIConsumer named `name` with one gateway key, and the Secret holding it.
pub fn consumer(name: &str, key: &str) -> String {
    format!(
        "apiVersion: switchboard.dev/v1alpha1
kind: AIConsumer
metadata:
  name: {name}
spec:
  keys:
    - secretRef:
        name: {name}-key
        key: key
---
apiVersion: v1
kind: Secret
metadata:
  name: {name}-key
type: Opaque
stringData:
  key: {key}
"
    )
}
