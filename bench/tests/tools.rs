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
        self.try_post(body, None).expect("read")
    }

    /// As `post`, giving up on reading after `within`; what was read, or the error.
    fn try_post(
        &self,
        body: &str,
        within: Option<std::time::Duration>,
    ) -> Result<String, (std::io::Error, String)> {
        let mut stream = TcpStream::connect(&self.addr).expect("connect");
        stream.set_read_timeout(within).expect("set a read timeout");
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut response = Vec::new();
        let read = stream.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response).into_owned();
        match read {
            Ok(_) => Ok(response),
            Err(error) => Err((error, response)),
        }
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

/// `--fault-percent 30`: requests 3, 6 and 9 of each ten misbehave, in turn a 500, no
/// answer at all, and a body that breaks off; the rest are whole answers.
#[test]
fn upstream_injects_faults_evenly_and_in_turn() {
    let upstream = Upstream::start(&["--fault-percent", "30"]);
    let body = r#"{"model":"bench","messages":[]}"#;
    let within = Some(std::time::Duration::from_millis(500));
    let whole = |r: &str| {
        r.starts_with("HTTP/1.1 200") && r.ends_with(r#""system_fingerprint":"fp_bench"}"#)
    };
    for n in 0..10 {
        let response = upstream.try_post(body, within);
        match n {
            3 => {
                let response = response.expect("a 500 is an answer");
                assert!(response.starts_with("HTTP/1.1 500"), "{response}");
            }
            6 => {
                let (error, read) = response.expect_err("no answer");
                assert!(read.is_empty(), "{read}");
                assert!(
                    matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "{error}"
                );
            }
            9 => {
                let read = match response {
                    Ok(read) | Err((_, read)) => read,
                };
                assert!(read.starts_with("HTTP/1.1 200"), "{read}");
                assert!(!whole(&read), "the body breaks off: {read}");
            }
            _ => {
                let response = response.expect("a whole answer");
                assert!(whole(&response), "request {n}: {response}");
            }
        }
    }
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
