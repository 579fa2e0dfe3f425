//! A real S3-compatible server for the tests: moto's server mode (`moto_server`, installed by scripts/test.sh),
//! on a free port of 127.0.0.1, one per test, stopped when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct S3Server {
    child: Child,
    pub endpoint: String,
    port: u16,
}

impl S3Server {
    /// Starts moto (`$TARS_INDEX_MOTO`, else `moto_server` on the PATH), or returns `None` when it is not installed
    /// (then the test is skipped, unless `TARS_INDEX_REQUIRE_S3` is set, as CI sets it).
    pub fn start() -> Option<Self> {
        let required = std::env::var_os("TARS_INDEX_REQUIRE_S3").is_some();
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let program = std::env::var_os("TARS_INDEX_MOTO").unwrap_or_else(|| "moto_server".into());
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if !required => {
                eprintln!("skipped: moto_server cannot be started ({e}); scripts/test.sh installs it");
                return None;
            }
            Err(e) => panic!("moto_server cannot be started: {e}"),
        };
        let server = Self { child, endpoint: format!("http://127.0.0.1:{port}"), port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.request("GET", "/", b"").is_err() {
            assert!(Instant::now() < deadline, "moto_server did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    /// A new bucket.
    pub fn bucket(&self, name: &str) {
        let (status, body) = self.request("PUT", &format!("/{name}"), b"").expect("create bucket");
        assert_eq!(status, 200, "create bucket {name}: {body}");
    }

    /// Keys (and sizes) under `prefix` of `bucket`, sorted.
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let (status, body) =
            self.request("GET", &format!("/{bucket}?list-type=2&prefix={prefix}&max-keys=1000"), b"").expect("list");
        assert_eq!(status, 200, "list {bucket}: {body}");
        let mut found: Vec<(String, u64)> = body
            .split("<Contents>")
            .skip(1)
            .map(|entry| {
                let field = |tag: &str| {
                    entry.split(&format!("<{tag}>")).nth(1).and_then(|r| r.split(&format!("</{tag}>")).next())
                };
                let key = field("Key").expect("key").to_owned();
                (key, field("Size").and_then(|s| s.parse().ok()).unwrap_or(0))
            })
            .collect();
        found.sort();
        found
    }

    /// Sets the environment a tars-index process needs to reach this server.
    pub fn env<'a>(&self, cmd: &'a mut Command, mirror: &std::path::Path) -> &'a mut Command {
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test-access-key")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret-key")
            .env("AWS_REGION", "us-east-1")
            .env("TARS_INDEX_MIRROR_DIR", mirror)
    }

    /// One plain HTTP/1.1 request (moto checks no signatures): status and body.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An "S3" that answers every request with 200 and an ETag, conditional or not: a store that ignores
/// `If-None-Match`. Returns its endpoint; it serves until the test process ends.
pub fn careless_store() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer_carelessly(stream));
        }
    });
    endpoint
}

fn answer_carelessly(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    loop {
        // Headers, then as many body bytes as they announce.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let answer = "HTTP/1.1 200 OK\r\nETag: \"1\"\r\nContent-Length: 0\r\n\r\n";
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
