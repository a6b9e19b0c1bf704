//! The benchmark's own tools work: the fake upstream answers like an OpenAI-compatible
//! provider, and the connection holder holds. (The benchmark itself runs on demand.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

/// A running bench-upstream, killed on drop.
struct Upstream {
    child: Child,
    addr: String,
}

impl Upstream {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bench-upstream"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start bench-upstream");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read its address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self { child, addr }
    }

    /// POSTs `body` and returns the whole response, head included.
    fn post(&self, body: &str) -> String {
        let mut stream = TcpStream::connect(&self.addr).expect("connect");
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn upstream_answers_completions_and_streams_with_usage() {
    let upstream = Upstream::start(&[]);

    let response = upstream.post(r#"{"model":"bench","messages":[]}"#);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = &response[response.find("\r\n\r\n").expect("a head") + 4..];
    let json: serde_json::Value = serde_json::from_str(body).expect("a JSON completion");
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["usage"]["total_tokens"], 90);

    let response = upstream.post(r#"{"model":"bench","stream": true}"#);
    assert!(response.contains("text/event-stream"), "{response}");
    assert_eq!(response.matches("chat.completion.chunk").count(), 11);
    assert!(response.contains(r#""choices":[],"usage":{"prompt_tokens":52"#));
    assert!(response.contains("data: [DONE]\n\n"));
}

/// Runs bench-hold and returns its two report lines.
fn hold(upstream: &Upstream, mode: &str, connections: usize, body: &str) -> (String, String) {
    let dir = std::env::temp_dir().join(format!("bench-hold-{}-{mode}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let body_file = dir.join("body.json");
    std::fs::write(&body_file, body).expect("write body");
    let output = Command::new(env!("CARGO_BIN_EXE_bench-hold"))
        .args([mode, "--target", &upstream.addr, "--hold", "300ms"])
        .args(["--connections", &connections.to_string()])
        .arg("--body-file")
        .arg(&body_file)
        .output()
        .expect("run bench-hold");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "bench-hold failed: {stdout}");
    let mut lines = stdout.lines().map(str::to_string);
    (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    )
}

#[test]
fn holder_keeps_idle_connections_open() {
    let upstream = Upstream::start(&[]);
    let (ready, done) = hold(&upstream, "idle", 50, r#"{"model":"bench"}"#);
    assert_eq!(ready, "ready 50 0");
    // Idle: nothing more arrives, nothing is closed by the server.
    assert_eq!(done, "done 0 0");
}

#[test]
fn holder_keeps_slow_streams_flowing() {
    let upstream = Upstream::start(&["--slow-interval", "10ms", "--slow-events", "1000"]);
    let (ready, done) = hold(
        &upstream,
        "streams",
        20,
        r#"{"model":"bench-slow","stream":true}"#,
    );
    assert_eq!(ready, "ready 20 0");
    let fields: Vec<u64> = done
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().expect("a number"))
        .collect();
    assert!(fields[0] > 0, "events kept arriving while held: {done}");
    assert_eq!(fields[1], 0, "no stream was cut: {done}");
}
