//! For the server tests: a `tessera serve` child on a free loopback port, and a minimal
//! blocking HTTP/1.1 client (raw bytes in, status + headers + body out, and SSE streams
//! read frame by frame), so tests can send malformed bodies and hang up at will.
//!
//! Include with `#[path = "openai_client/harness.rs"] mod harness;` next to `mod common;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The served model name of the default model.
pub const MODEL: &str = "smollm2-135m-instruct";

/// A running `tessera serve`; killed on drop.
pub struct Server {
    child: Child,
    /// The bound address.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `tessera serve` on the default model with `extra` flags and waits for /health.
    pub fn start(extra: &[&str]) -> Server {
        let model = crate::common::default_model();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .env("RUST_LOG", "warn")
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tessera serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "tessera serve printed no address ({e}); exit: {:?}",
                    child.try_wait()
                );
            }
        };
        let addr: SocketAddr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let server = Server { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = try_request(addr, "GET", "/health", &[], b"") {
                if r.status == 200 {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "/health never answered 200");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// One sample of the Prometheus metric `name` (with its labels, if any, as in
    /// `name{rank="0"}`).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        sample(&text, name).unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    /// The whole `/metrics` text (one consistent snapshot of the engine's counters).
    pub fn metrics(&self) -> String {
        let r = request(self.addr, "GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200);
        r.text()
    }

    /// Waits until metric `name` equals `want`; returns how long it took.
    pub fn wait_metric(&self, name: &str, want: f64, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.metric(name);
            if got == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "{name} stayed {got}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the server process in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of sample `name` (labels included) in a Prometheus text exposition.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A whole HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// Sends one request (Connection: close) and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} failed: {e}"))
}

/// [`request`], with I/O errors returned.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut raw = head(method, path, headers, body.len()).into_bytes();
    raw.extend_from_slice(body);
    send_raw(addr, &raw)
}

/// Sends `raw` bytes as they are and reads the whole response.
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> std::io::Result<HttpResponse> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    (&stream).write_all(raw)?;
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader)?;
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(&mut reader)? {
            body.extend(chunk);
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// POSTs `body` as JSON.
pub fn post_json(addr: SocketAddr, path: &str, body: &Value) -> HttpResponse {
    request(
        addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn head(method: &str, path: &str, headers: &[(&str, &str)], len: usize) -> String {
    let mut h = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {len}\r\n"
    );
    for (k, v) in headers {
        h += &format!("{k}: {v}\r\n");
    }
    h + "\r\n"
}

fn read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, headers));
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
}

/// One chunk of a chunked body; `None` at the last (empty) chunk.
fn read_chunk(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let size = usize::from_str_radix(line.trim(), 16)
        .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
    let mut data = vec![0; size + 2];
    reader.read_exact(&mut data)?;
    data.truncate(size);
    Ok((size > 0).then_some(data))
}

/// A server-sent event stream being read.
pub struct EventStream {
    reader: BufReader<TcpStream>,
    pending: String,
    /// Status of the response.
    pub status: u16,
    /// Whole body when the response was not a stream (an error).
    pub error_body: Option<Value>,
}

impl EventStream {
    /// POSTs `body` and reads the response head.
    pub fn open(addr: SocketAddr, path: &str, body: &Value) -> EventStream {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .expect("timeout");
        let body = body.to_string();
        let mut raw = head(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.len(),
        );
        raw += &body;
        (&stream).write_all(raw.as_bytes()).expect("send");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader).expect("response head");
        let mut s = EventStream {
            reader,
            pending: String::new(),
            status,
            error_body: None,
        };
        let is_sse = headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream"));
        if !is_sse {
            let mut body = Vec::new();
            while let Ok(Some(c)) = read_chunk(&mut s.reader) {
                body.extend(c);
            }
            if body.is_empty() {
                let _ = s.reader.read_to_end(&mut body);
            }
            s.error_body = serde_json::from_slice(&body).ok();
        }
        s
    }

    /// The next event's data (`[DONE]` included); `None` when the body ends.
    pub fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let event: String = self.pending.drain(..end + 2).collect();
                let data = event.trim_end().strip_prefix("data: ")?;
                return Some(data.to_string());
            }
            let chunk = read_chunk(&mut self.reader).ok()??;
            self.pending.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event as JSON, `None` at `[DONE]` or the end.
    pub fn next_json(&mut self) -> Option<Value> {
        let data = self.next_data()?;
        if data == "[DONE]" {
            return None;
        }
        Some(serde_json::from_str(&data).unwrap_or_else(|e| panic!("bad event {data:?}: {e}")))
    }

    /// Hangs up.
    pub fn disconnect(self) {
        let _ = self.reader.get_ref().shutdown(Shutdown::Both);
    }
}

/// The OpenAI error of a response: (status, error.type, error.param).
pub fn error_of(r: &HttpResponse) -> (u16, String, Value) {
    let v = r.json();
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without message: {v}"
    );
    for key in ["type", "param", "code"] {
        assert!(e.get(key).is_some(), "error without {key}: {v}");
    }
    (
        r.status,
        e["type"].as_str().unwrap_or_default().to_string(),
        e["param"].clone(),
    )
}
