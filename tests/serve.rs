//! `serve` end to end: the real binary on 127.0.0.1, spoken to over real HTTP. Every endpoint, every error case,
//! a new version published while clients query, graceful shutdown, and the key kept out of every answer and log.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::mock::{self, Fault, MockServer};
use crate::util::{cli, corpus, json_lines, run};

/// Records with metadata and a Markdown guide; embedded and indexed.
pub fn dataset(mock: &MockServer) -> (tempfile::TempDir, PathBuf) {
    let records = [
        r#"{"id": "r1", "text": "Tune the bicycle gears before a long ride.", "year": 2019, "lang": "en"}"#,
        r#"{"id": "r2", "text": "Das Fahrrad braucht neue Bremsen und eine Kette.", "year": 2021, "lang": "de"}"#,
        r#"{"id": "r3", "text": "Oil the chain of the bicycle every month; error E_CHAIN_0x42 means it is dry.", "year": 2023, "lang": "en"}"#,
        r#"{"id": "r4", "text": "Le vélo a besoin d'un nouveau dérailleur.", "year": 2020, "lang": "fr"}"#,
    ];
    let input = corpus(&[
        ("records.jsonl", &(records.join("\n") + "\n")),
        ("guides/bicycle.md", "# Bicycle care\n\nClean the bicycle chain and check the brakes.\n\nThen ride."),
    ]);
    let dataset = input.path().join("ds");
    embed(mock, input.path(), &dataset);
    (input, dataset)
}

/// Embeds `input` into `dataset` (incrementally) and brings its indexes up to date.
fn embed(mock: &MockServer, input: &Path, dataset: &Path) {
    let mut cmd = cli(Some(&mock.base()));
    cmd.arg("embed").arg(input).arg("--out").arg(dataset).args(["--id-field", "id"]);
    cmd.args(["--metadata", "year:int64", "--metadata", "lang"]);
    let embedded = run(&mut cmd);
    assert_eq!(embedded.code, 0, "{}", embedded.all_output());
    let indexed = run(cli(Some(&mock.base())).arg("index").arg(dataset));
    assert_eq!(indexed.code, 0, "{}", indexed.all_output());
}

/// A running `serve`, killed when dropped; its log goes to a file the test can read.
pub struct Served {
    child: Child,
    base: String,
    log: tempfile::NamedTempFile,
}

impl Served {
    pub fn start(mock: &MockServer, datasets: &[&Path], extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut cmd = cli(Some(&mock.base()));
        cmd.arg("-v").arg("serve").args(datasets).args(["--addr", "127.0.0.1:0", "--poll-interval", "0.2"]).args(extra);
        cmd.envs(env.iter().copied());
        cmd.stdout(Stdio::piped()).stderr(log.reopen().expect("log"));
        let mut child = cmd.spawn().expect("start serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the address");
        let base = line.trim().rsplit(' ').next().expect("address").to_owned();
        assert!(base.starts_with("http://127.0.0.1:"), "serve printed {line:?}; log:\n{}", read(log.path()));
        let served = Self { child, base, log };
        let client = Client::new();
        let started = Instant::now();
        let ready =
            |url: &str| client.runtime.block_on(async { client.http.get(url).send().await.map(|r| r.status()) });
        while !ready(&served.url("/readyz")).is_ok_and(|s| s == 200) {
            assert!(started.elapsed() < Duration::from_secs(60), "not ready after 60 s:\n{}", served.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        served
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        read(self.log.path())
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let pid = self.child.id().to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(status.success());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A blocking HTTP client (the mock runs its own runtime, so the tests are not async).
pub struct Client {
    pub runtime: tokio::runtime::Runtime,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new() -> Self {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        Self { runtime, http: reqwest::Client::new() }
    }

    pub fn send(&self, request: reqwest::RequestBuilder) -> (u16, String, String) {
        self.runtime.block_on(async {
            let response = request.send().await.expect("send");
            let status = response.status().as_u16();
            let content_type =
                response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            (status, content_type, response.text().await.expect("body"))
        })
    }

    fn get(&self, url: &str) -> (u16, String) {
        let (status, _, body) = self.send(self.http.get(url));
        (status, body)
    }

    fn post(&self, url: &str, body: &Value) -> (u16, Value) {
        let (status, _, text) = self.send(self.http.post(url).json(body));
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
    }
}

/// The status line's code for a request whose headers declare a 2 MiB body, sent without it.
fn declared_too_large(served: &Served) -> u16 {
    use std::io::{Read, Write};
    let addr = served.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let head =
        "POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\n\r\n";
    stream.write_all(head.as_bytes()).expect("write");
    let mut answer = [0u8; 256];
    let n = stream.read(&mut answer).expect("an answer before the body");
    let answer = String::from_utf8_lossy(&answer[..n]);
    answer.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{answer}"))
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn docs(answer: &Value) -> Vec<String> {
    answer["hits"].as_array().expect("hits").iter().map(|h| h["doc"].as_str().expect("doc").to_owned()).collect()
}

/// The value of the metric line that starts with `prefix` (name and labels).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn every_endpoint_answers_as_documented() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let served = Served::start(&mock, &[&ds], &[], &[]);
    let client = Client::new();

    assert_eq!(client.get(&served.url("/healthz")), (200, r#"{"status":"ok"}"#.to_owned()));
    let timed = client.runtime.block_on(client.http.get(served.url("/v1/datasets")).send()).expect("send");
    let timing = timed.headers().get("server-timing").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(timing.strip_prefix("app;dur=").is_some_and(|ms| ms.parse::<f64>().is_ok()), "{timing:?}");
    let (status, ready) = client.get(&served.url("/readyz"));
    assert_eq!((status, parse(&ready)["status"].clone()), (200, json!("ready")));

    let (status, listed) = client.get(&served.url("/v1/datasets"));
    assert_eq!(status, 200, "{listed}");
    let listed = parse(&listed);
    let info = &listed["datasets"][0];
    assert_eq!(info["name"], "ds");
    assert_eq!(info["rows"], 5, "{info}");
    assert_eq!(info["documents"], 5);
    assert_eq!(info["metadata"], json!({ "year": "int64", "lang": "string" }));
    assert_eq!(info["keyword_index"], true);
    let version = info["version"].as_u64().expect("version");
    let (status, one) = client.get(&served.url("/v1/datasets/ds"));
    assert_eq!((status, parse(&one)), (200, info.clone()));

    // The same answers as the CLI's, from the same engine.
    let (status, answer) = client.post(&served.url("/v1/search"), &json!({ "query": "bicycle chain", "k": 3 }));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["dataset"].clone(), answer["mode"].clone(), answer["version"].clone()),
        (json!("ds"), json!("hybrid"), json!(version))
    );
    let by_cli = run(cli(Some(&mock.base())).arg("search").arg(&ds).args(["bicycle chain", "-k", "3", "--json"]));
    assert_eq!(by_cli.code, 0, "{}", by_cli.all_output());
    let cli_hits = json_lines(&by_cli.stdout);
    assert_eq!(answer["hits"].as_array().expect("hits"), &cli_hits);
    assert!(cli_hits[0]["metadata"].is_object(), "hits carry their document's metadata");

    // Filters, modes, explain.
    let (status, german) =
        client.post(&served.url("/v1/search"), &json!({ "query": "bicycle", "filter": "lang = 'de'" }));
    assert_eq!((status, docs(&german)), (200, vec!["r2".to_owned()]));
    let (status, exact) =
        client.post(&served.url("/v1/search"), &json!({ "query": "E_CHAIN_0x42", "mode": "keyword", "explain": true }));
    assert_eq!(status, 200, "{exact}");
    assert_eq!(docs(&exact)[0], "r3");
    assert_eq!(exact["explain"]["mode"], "keyword");

    // A batch answers each query as it would be answered alone, against one version.
    let queries = ["bicycle chain", "Fahrrad Bremsen", "dérailleur"];
    let (status, batch) = client.post(&served.url("/v1/search"), &json!({ "queries": queries, "k": 2 }));
    assert_eq!(status, 200, "{batch}");
    for (query, result) in queries.iter().zip(batch["results"].as_array().expect("results")) {
        let (_, alone) = client.post(&served.url("/v1/search"), &json!({ "query": query, "k": 2 }));
        assert_eq!(result["hits"], alone["hits"], "{query}");
    }

    // A document and its chunks, in order.
    let (status, guide) = client.get(&served.url("/v1/datasets/ds/documents/guides/bicycle.md"));
    assert_eq!(status, 200, "{guide}");
    let guide = parse(&guide);
    assert_eq!((guide["doc"].clone(), guide["title"].clone()), (json!("guides/bicycle.md"), json!("Bicycle care")));
    let chunks = guide["chunks"].as_array().expect("chunks");
    assert!(!chunks.is_empty());
    let indexes: Vec<u64> = chunks.iter().map(|c| c["chunk_index"].as_u64().expect("index")).collect();
    assert_eq!(indexes, (0..chunks.len() as u64).collect::<Vec<_>>());
    assert!(chunks.iter().any(|c| c["text"].as_str().expect("text").contains("check the brakes")));

    // Metrics: requests by route and status, the version served, cache hits for a repeated query.
    let (_, metrics) = client.get(&served.url("/metrics"));
    let searches = metric(&metrics, r#"tars_index_http_requests_total{endpoint="/v1/search",status="200"}"#);
    assert!(searches == Some(7.0), "{metrics}");
    assert_eq!(metric(&metrics, r#"tars_index_dataset_version{dataset="ds"}"#), Some(version as f64), "{metrics}");
    assert!(
        metric(&metrics, r#"tars_index_query_cache_hits_total{dataset="ds"}"#).is_some_and(|n| n >= 3.0),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tars_index_search_duration_seconds_count{dataset="ds",mode="keyword",filtered="false"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("tars_index_http_request_duration_seconds_count{endpoint=\"/v1/datasets\"}"), "{metrics}");

    // The OpenAPI description names every route, and the page is served.
    let (status, openapi) = client.get(&served.url("/openapi.json"));
    assert_eq!(status, 200);
    let paths = parse(&openapi)["paths"].as_object().expect("paths").keys().cloned().collect::<Vec<_>>();
    for route in [
        "/v1/search",
        "/v1/datasets",
        "/v1/datasets/{name}",
        "/v1/datasets/{name}/documents/{doc}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
    ] {
        assert!(paths.iter().any(|p| p == route), "{route} missing from {paths:?}");
    }
    let (status, _, page) = client.send(client.http.get(served.url("/")));
    assert_eq!(status, 200);
    assert!(page.contains("<form id=\"search\"") && page.contains("/v1/search"), "{page}");
}

#[test]
fn bad_requests_get_a_4xx_with_a_json_error_that_says_what_to_fix() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let served = Served::start(&mock, &[&ds], &[], &[]);
    let client = Client::new();
    let search = served.url("/v1/search");
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (json!({ "dataset": "nope", "query": "x" }), 404, "unknown_dataset", "served: ds"),
        (json!({ "query": "x", "filter": "year >= 'old'" }), 400, "bad_filter", "year"),
        (json!({ "query": "x", "filter": "colour = 'red'" }), 400, "bad_filter", "colour"),
        (json!({ "query": "x", "filter": "lang = " }), 400, "bad_filter", "filter at column 8"),
        (json!({ "query": "x", "k": 0 }), 400, "out_of_range", "\"k\" must be from 1 to 1000"),
        (json!({ "query": "x", "k": 5000 }), 400, "out_of_range", "(got 5000)"),
        (json!({ "query": "x", "mode": "fuzzy" }), 400, "bad_mode", "fuzzy"),
        (json!({ "qeury": "x" }), 400, "bad_json", "unknown field `qeury`"),
        (json!({ "query": "x", "queries": ["y"] }), 400, "bad_request", "not both"),
        (json!({}), 400, "bad_request", "is required"),
        (json!({ "queries": [] }), 400, "empty_batch", "empty"),
        (json!({ "queries": vec!["q"; 257] }), 400, "batch_too_large", "at most 256"),
        (json!({ "queries": vec!["q"; 200], "k": 100 }), 400, "too_many_hits", "20000, more than the limit of 10000"),
        (json!({ "query": "   " }), 400, "empty_query", "empty"),
        (json!({ "query": "x".repeat(17 << 10) }), 400, "query_too_long", "limit"),
        (json!({ "query": "x", "filter": "a".repeat(5000) }), 400, "filter_too_long", "limit"),
        (json!({ "query": 42 }), 400, "bad_json", "expected a string"),
    ];
    for (body, status, code, says) in cases {
        let (got, answer) = client.post(&search, &body);
        let shown = body.to_string().chars().take(80).collect::<String>();
        assert_eq!(got, status, "{shown}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{shown}: {answer}");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(message.contains(says), "{shown}: {message:?} should say {says:?}");
    }

    // A filter error points at where the expression goes wrong.
    let (_, answer) = client.post(&search, &json!({ "query": "x", "filter": "lang = 'en' AND year >= 'old'" }));
    assert_eq!(answer["error"]["column"], 25, "{answer}");

    let raw = |request: reqwest::RequestBuilder| {
        let (status, content_type, body) = client.send(request);
        assert!(content_type.starts_with("application/json"), "{status} {content_type}: {body}");
        (status, parse(&body)["error"]["code"].as_str().expect("code").to_owned())
    };
    // A body declared too large is refused before it is sent; one that turns out too large once read, too.
    assert_eq!(declared_too_large(&served), 413);
    let over = format!("{{\"query\": \"{}\"}}", "x".repeat(1 << 20));
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(over.into_bytes())]);
    let chunked = client.http.post(&search).header("content-type", "application/json");
    assert_eq!(raw(chunked.body(reqwest::Body::wrap_stream(stream))), (413, "body_too_large".into()));
    assert_eq!(
        raw(client.http.post(&search).header("content-type", "text/plain").body("{}")),
        (415, "content_type".into())
    );
    assert_eq!(raw(client.http.post(&search).body("{\"query\": \"x\"}")), (415, "content_type".into()));
    assert_eq!(
        raw(client.http.post(&search).header("content-type", "application/json").body("{\"query\": ")),
        (400, "bad_json".into())
    );
    assert_eq!(raw(client.http.get(&search)), (405, "method_not_allowed".into()));
    assert_eq!(raw(client.http.get(served.url("/v2/everything"))), (404, "not_found".into()));
    assert_eq!(raw(client.http.get(served.url("/v1/datasets/nope"))), (404, "unknown_dataset".into()));
    assert_eq!(
        raw(client.http.get(served.url("/v1/datasets/ds/documents/missing.md"))),
        (404, "unknown_document".into())
    );

    // None of it hurt the server.
    let (status, answer) = client.post(&search, &json!({ "query": "bicycle" }));
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_token_guards_the_api_and_the_key_never_shows() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let served = Served::start(
        &mock,
        &[&ds],
        &["--token-env", "SERVE_TOKEN", "--request-timeout", "3"],
        &[("SERVE_TOKEN", "client-secret")],
    );
    let client = Client::new();
    let search = served.url("/v1/search");
    let body = json!({ "query": "bicycle" });
    let (status, _, answer) = client.send(client.http.post(&search).json(&body));
    assert_eq!((status, parse(&answer)["error"]["code"].clone()), (401, json!("unauthorized")));
    let (status, ..) = client.send(client.http.post(&search).bearer_auth("client-secreT").json(&body));
    assert_eq!(status, 401);
    let (status, ..) = client.send(client.http.get(served.url("/metrics")));
    assert_eq!(status, 401);
    let (status, _, answer) = client.send(client.http.post(&search).bearer_auth("client-secret").json(&body));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(client.get(&served.url("/healthz")).0, 200, "probes need no token");

    // The embedding endpoint failing: a 502 or 503 saying why, without the key.
    let authed = |query: &str| {
        let request = client.http.post(&search).bearer_auth("client-secret").json(&json!({ "query": query }));
        client.send(request)
    };
    mock.set_always(Some(Fault::Unauthorized));
    let (status, _, answer) = authed("a query never cached");
    assert_eq!(status, 502, "{answer}");
    assert!(parse(&answer)["error"]["message"].as_str().expect("message").contains("401"), "{answer}");
    assert!(!answer.contains(mock::KEY));
    mock.set_always(Some(Fault::Quota));
    let (status, _, answer) = authed("another query never cached");
    assert_eq!(status, 503, "{answer}");
    assert!(!answer.contains(mock::KEY));

    // An endpoint that hangs: the deadline answers.
    mock.set_always(Some(Fault::Hang(Duration::from_secs(10))));
    let started = Instant::now();
    let (status, _, answer) = authed("a third query never cached");
    assert_eq!((status, parse(&answer)["error"]["code"].clone()), (504, json!("deadline")));
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    mock.set_always(None);

    let (_, _, metrics) = client.send(client.http.get(served.url("/metrics")).bearer_auth("client-secret"));
    assert!(metrics.contains("tars_index_search_errors_total{dataset=\"ds\"} 3"), "{metrics}");
    assert!(!served.log().contains(mock::KEY), "the key is in the log");
    assert!(!served.log().contains("client-secret"), "the client token is in the log");
}

#[test]
fn a_new_version_is_served_without_a_failed_request() {
    let mock = MockServer::start();
    let (input, ds) = dataset(&mock);
    let served = Served::start(&mock, &[&ds], &[], &[]);
    let version = |client: &Client| {
        let (_, info) = client.get(&served.url("/v1/datasets/ds"));
        parse(&info)["version"].as_u64().expect("version")
    };
    let before = version(&Client::new());

    // Eight clients query in a loop while a run publishes a new version and the index catches up.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = Client::new();
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let (stop, answered, failed) = (Arc::clone(&stop), Arc::clone(&answered), Arc::clone(&failed));
            let (http, url) = (client.http.clone(), served.url("/v1/search"));
            client.runtime.spawn(async move {
                let modes = ["hybrid", "vector", "keyword"];
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({ "query": "bicycle chain", "mode": modes[i % 3], "filter": "lang = 'en'" });
                    match http.post(&url).json(&body).send().await {
                        Ok(r) if r.status() == 200 => answered.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => {
                            eprintln!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("{e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    std::fs::create_dir_all(input.path().join("notes")).expect("mkdir");
    std::fs::write(input.path().join("notes/pump.md"), "# Pumps\n\nThe zephyrine valve of a bicycle pump wears out.")
        .expect("write");
    embed(&mock, input.path(), &ds);

    // The new document is found within a few seconds.
    let started = Instant::now();
    loop {
        let (status, answer) =
            client.post(&served.url("/v1/search"), &json!({ "query": "zephyrine", "mode": "keyword" }));
        assert_eq!(status, 200, "{answer}");
        if docs(&answer).first().map(String::as_str) == Some("notes/pump.md") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the new document was not found: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        client.runtime.block_on(worker).expect("worker");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests; answered {}", answered.load(Ordering::Relaxed));
    assert!(answered.load(Ordering::Relaxed) > 50, "answered {}", answered.load(Ordering::Relaxed));
    assert!(version(&client) > before);
}

#[test]
fn shutdown_finishes_the_requests_in_flight() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let mut served = Served::start(&mock, &[&ds], &[], &[]);
    mock.set_delay(Duration::from_millis(1500));
    let client = Client::new();
    let request = client.http.post(served.url("/v1/search")).json(&json!({ "query": "a slow query" })).send();
    let in_flight = client.runtime.spawn(request);
    std::thread::sleep(Duration::from_millis(500));
    served.terminate();
    let response = client.runtime.block_on(in_flight).expect("task").expect("the request in flight was answered");
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = served.child.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "serve did not exit:\n{}", served.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}:\n{}", served.log());
    let refused = client.runtime.block_on(client.http.get(served.url("/healthz")).send());
    assert!(refused.is_err(), "still accepting after shutdown");
}

#[test]
fn serving_refuses_bad_datasets_names_and_tokens_at_start() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let missing = ds.with_file_name("missing");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![missing.display().to_string()], "missing"),
        (vec![ds.display().to_string(), ds.display().to_string()], "two datasets are named \"ds\""),
        (
            vec![ds.display().to_string(), "--name".into(), "a".into(), "--name".into(), "b".into()],
            "2 --name given for 1",
        ),
        (vec![ds.display().to_string(), "--token-env".into(), "SERVE_TOKEN_UNSET".into()], "SERVE_TOKEN_UNSET"),
    ];
    for (args, says) in cases {
        let refused = run(cli(Some(&mock.base())).arg("serve").args(&args).args(["--addr", "127.0.0.1:0"]));
        assert_eq!(refused.code, 2, "{args:?}: {}", refused.all_output());
        assert!(refused.stderr.contains(says), "{args:?}: {}", refused.stderr);
    }
}

/// The Chromium to drive: `TARS_INDEX_CHROMIUM`, else `chromium` on the PATH. `None` (the test then says loudly that
/// it skipped) only where neither exists and `TARS_INDEX_REQUIRE_CHROMIUM` is unset; CI sets it.
fn chromium() -> Option<PathBuf> {
    let named = std::env::var_os("TARS_INDEX_CHROMIUM").filter(|p| !p.is_empty()).map(PathBuf::from);
    let found = named.or_else(|| {
        std::env::var_os("PATH")
            .and_then(|path| std::env::split_paths(&path).map(|d| d.join("chromium")).find(|p| p.is_file()))
    });
    if found.is_none() {
        assert!(
            std::env::var_os("TARS_INDEX_REQUIRE_CHROMIUM").is_none(),
            "Chromium is required here but not installed"
        );
        eprintln!("\n*** SKIPPED: the search page test needs Chromium (apt-get install chromium) ***\n");
    }
    found
}

#[test]
fn the_search_page_shows_the_expected_first_hit_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let served = Served::start(&mock, &[&ds], &[], &[]);
    let profile = tempfile::tempdir().expect("profile dir");
    // The page searches on load when the address carries the query, as a shared link does.
    let url = served.url("/?q=E_CHAIN_0x42&mode=keyword&filter=lang%20%3D%20%27en%27");
    let output = std::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=10000", "--dump-dom", &url])
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("data-ready=\"true\""),
        "the page's script did not finish:\n{dom}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results = dom.split("<ol id=\"results\">").nth(1).expect("the results list");
    let first = results.split("</li>").next().expect("a first hit");
    assert!(first.contains("<span class=\"doc\">r3 #0</span>"), "first hit: {first}");
    assert!(first.contains("<mark>E_CHAIN_0x42</mark>"), "the query is not highlighted: {first}");
    assert!(first.contains("lang: en"), "metadata missing: {first}");
    assert!(dom.contains(" results in ") && dom.contains("(keyword, version "), "{dom}");
    // The dataset selector was filled from the API.
    assert!(dom.contains("<option value=\"ds\">ds (5 chunks)</option>"), "{dom}");
}
