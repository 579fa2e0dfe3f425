//! `ask` through the CLI against the mock server's chat endpoint: the answer streamed as it arrives, citations
//! checked against the sources given, the unanswerable case, every way a stream can fail, the request rules of
//! reasoning and Claude models, and `--dry-run`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::chat::{End, Reply};
use crate::util::mock::MockServer;
use crate::util::{cli, corpus, json_lines, run};

const QUESTION: &str = "How often should the bicycle chain be oiled?";

fn dataset(mock: &MockServer) -> (tempfile::TempDir, PathBuf) {
    let input = corpus(&[
        ("chain.md", "# Chain care\n\nOil the bicycle chain every month, and wipe off the extra oil."),
        ("brakes.md", "# Brakes\n\nReplace worn brake pads on the bicycle before they squeal."),
        ("tyres.txt", "Pump the bicycle tyres to the pressure printed on their side."),
        ("bread.txt", "Knead the dough for ten minutes, then let it rise for an hour."),
    ]);
    let dataset = input.path().join("ds");
    let embedded = run(cli(Some(&mock.base())).arg("embed").arg(input.path()).arg("--out").arg(&dataset));
    assert_eq!(embedded.code, 0, "{}", embedded.all_output());
    let indexed = run(cli(Some(&mock.base())).arg("index").arg(&dataset));
    assert_eq!(indexed.code, 0, "{}", indexed.all_output());
    (input, dataset)
}

fn ask(mock: &MockServer, dataset: &Path, args: &[&str]) -> crate::util::Run {
    run(cli(Some(&mock.base())).arg("ask").arg(dataset).arg(QUESTION).args(args))
}

/// The user message the model was sent.
fn prompt_of(request: &Value) -> String {
    request["messages"][1]["content"].as_str().expect("user message").to_owned()
}

#[test]
fn the_answer_streams_before_the_stream_ends_and_citations_are_checked() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let pieces = ["Oil the chain ", "every month [1]", ", and keep the brakes ", "in order [2][7]."];
    mock.chat.script([Reply::text(&pieces).slowly(Duration::from_millis(400))]);

    let mut child = cli(Some(&mock.base()))
        .arg("ask")
        .arg(&ds)
        .arg(QUESTION)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tars-index ask");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first).expect("the first bytes of the answer");
    // The first words are on stdout while the mock is still sending the rest.
    assert_eq!(&first, b"Oil th");
    assert_eq!(mock.chat.finished.load(Ordering::SeqCst), 0, "the stream had already ended");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("the rest of stdout");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    let status = child.wait().expect("wait");
    let stdout = format!("{}{rest}", String::from_utf8_lossy(&first));
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with(&pieces.concat()), "{stdout}");
    assert!(!stdout.contains(crate::util::mock::KEY) && !stderr.contains(crate::util::mock::KEY));

    // The sources listed are the ones the prompt numbered, the cited ones marked; [7] was never given.
    let requests = mock.chat.requests();
    assert_eq!(requests.len(), 1);
    let prompt = prompt_of(&requests[0]);
    let sources: Vec<&str> = stdout.lines().skip_while(|l| *l != "Sources:").skip(1).collect();
    assert_eq!(sources.len(), 4, "{stdout}");
    for (n, line) in sources.iter().enumerate() {
        let doc = line.split_whitespace().nth(1).expect("doc");
        assert!(prompt.contains(&format!("[{}] {doc} (chunk 0)", n + 1)), "{line} not numbered so in:\n{prompt}");
        assert_eq!(line.ends_with("cited"), n < 2, "{line}");
    }
    assert!(stderr.contains("cites [7], which is not one of the 4 sources"), "{stderr}");
    assert!(mock.chat.violations().is_empty(), "{:?}", mock.chat.violations());
}

#[test]
fn json_gives_the_sources_what_was_cited_and_the_usage() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    mock.chat.script([Reply::text(&["Every month [1]", " (see [source 1]) [9]."])]);
    let asked = ask(&mock, &ds, &["-k", "3", "--json"]);
    assert_eq!(asked.code, 0, "{}", asked.all_output());
    let out: Value = serde_json::from_str(asked.stdout.trim()).expect("one JSON object");
    assert_eq!(out["answer"], "Every month [1] (see [source 1]) [9].");
    assert_eq!(out["answered"], true);
    assert_eq!(out["citations"], json!({"cited": [1], "unknown": [9]}));
    assert_eq!(out["finish_reason"], "stop");
    assert_eq!(out["usage"]["prompt_tokens"], 120);
    let sources = out["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 3);
    // The same sources, in the same order, as the search the question makes.
    let searched = run(cli(Some(&mock.base())).arg("search").arg(&ds).arg(QUESTION).args(["-k", "3", "--json"]));
    let hits = json_lines(&searched.stdout);
    for (n, (source, hit)) in sources.iter().zip(&hits).enumerate() {
        assert_eq!(source["number"], n + 1);
        assert_eq!(source["cited"], n == 0);
        for field in ["doc", "chunk_index", "start", "end", "text"] {
            assert_eq!(source[field], hit[field], "{field} of source {}", n + 1);
        }
    }
    assert_eq!(sources[0]["doc"], "chain.md", "{sources:?}");
}

#[test]
fn a_question_the_sources_cannot_answer_says_so() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    mock.chat.script([Reply::text(&["The sources do not answer this question.", " They cover bicycle care."])]);
    let asked = ask(&mock, &ds, &["--json"]);
    assert_eq!(asked.code, 0, "{}", asked.all_output());
    let out: Value = serde_json::from_str(asked.stdout.trim()).expect("JSON");
    assert_eq!(out["answered"], false);
    // The model was told to say exactly that, and to use nothing but the sources.
    let system = mock.chat.requests()[0]["messages"][0]["content"].as_str().expect("system").to_owned();
    assert!(system.contains("\"The sources do not answer this question.\""), "{system}");
    assert!(system.contains("only the numbered sources"), "{system}");

    // Nothing matches the filter: nothing is sent to the model.
    let asked = ask(&mock, &ds, &["--filter", "doc = 'missing.md'", "--json"]);
    assert_eq!(asked.code, 0, "{}", asked.all_output());
    let out: Value = serde_json::from_str(asked.stdout.trim()).expect("JSON");
    assert_eq!((out["answered"].clone(), out["answer"].clone()), (json!(false), Value::Null));
    assert!(asked.stderr.contains("nothing was sent to the model"), "{}", asked.stderr);
    assert_eq!(mock.chat.requests().len(), 1);
}

#[test]
fn a_stream_that_fails_after_output_is_an_error_after_what_was_printed() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let answer = Reply::text(&["Oil it ", "monthly ", "[1]."]);
    // Frames: role, three pieces, stop, usage, [DONE].
    for (reply, said) in [
        (answer.clone().error_after(3), "Connection error"),
        (answer.clone().cut(3, End::Clean), "ended before the answer was complete"),
        (answer.clone().cut(3, End::Reset), "interrupted"),
    ] {
        let before = mock.chat.requests().len();
        mock.chat.script([reply, Reply::text(&["never sent"])]);
        let asked = ask(&mock, &ds, &[]);
        assert_eq!(asked.code, 1, "{said}: {}", asked.all_output());
        assert!(asked.stdout.starts_with("Oil it monthly "), "{said}: {}", asked.stdout);
        assert!(!asked.stdout.contains("Sources:"), "{said}: {}", asked.stdout);
        assert!(asked.stderr.contains(said), "{said}: {}", asked.stderr);
        assert!(asked.stderr.contains("not the whole answer"), "{}", asked.stderr);
        // Text had reached the user: not sent again.
        assert_eq!(mock.chat.requests().len(), before + 1, "{said}");
        mock.chat.replies.lock().expect("lock").clear();
    }
}

#[test]
fn failures_before_any_output_are_retried() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let overloaded =
        Reply::status(529, json!({"error":{"message":"Overloaded","type":"None","param":"None","code":"529"}}));
    let rate_limited = Reply::Status {
        status: 429,
        body: json!({"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}})
            .to_string(),
        retry_after: Some(1),
    };
    mock.chat.script([
        overloaded,
        rate_limited,
        // Only the role chunk, then a reset: nothing shown yet.
        Reply::text(&["lost"]).cut(1, End::Reset),
        Reply::text(&["Monthly [1]."]),
    ]);
    let asked = ask(&mock, &ds, &[]);
    assert_eq!(asked.code, 0, "{}", asked.all_output());
    assert!(asked.stdout.starts_with("Monthly [1].\n"), "{}", asked.stdout);
    assert_eq!(mock.chat.requests().len(), 4);

    // A refused key is the user's to fix: exit 2, with advice, and not retried.
    mock.chat.script([Reply::status(
        401,
        json!({"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}),
    )]);
    let asked = ask(&mock, &ds, &[]);
    assert_eq!(asked.code, 2, "{}", asked.all_output());
    assert!(asked.stderr.contains("check TARS_API_KEY"), "{}", asked.stderr);
    assert_eq!(mock.chat.requests().len(), 5);
}

#[test]
fn reasoning_and_claude_models_get_their_request_rules() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    mock.chat.script([Reply::text(&["Monthly [1]."]), Reply::text(&["Monthly [1]."])]);
    let asked = ask(&mock, &ds, &["--model", "tars/gpt-5-mini"]);
    assert_eq!(asked.code, 0, "{}", asked.all_output());
    let claude = ask(&mock, &ds, &["--model", "tars/claude-sonnet-4-20250514", "--temperature", "0.5"]);
    assert_eq!(claude.code, 0, "{}", claude.all_output());
    let requests = mock.chat.requests();
    assert_eq!(requests[0]["model"], "gpt-5-mini");
    assert!(requests[0]["max_completion_tokens"].as_u64().is_some_and(|t| t >= 2000), "{}", requests[0]);
    assert!(requests[0].get("max_tokens").is_none() && requests[0].get("temperature").is_none());
    assert_eq!(requests[1]["model"], "claude-sonnet-4-20250514");
    assert_eq!(requests[1]["max_tokens"], 1024);
    assert_eq!(requests[1]["temperature"], 0.5);
    assert!(requests.iter().all(|r| r["stream"] == true && r["stream_options"]["include_usage"] == true));
    assert!(mock.chat.violations().is_empty(), "{:?}", mock.chat.violations());

    // What the family cannot take is refused before anything is sent.
    for (model, temperature, said) in [
        ("tars/gpt-5-mini", "0.2", "reasoning model"),
        ("tars/claude-sonnet-4-20250514", "1.5", "outside 0..1"),
        ("tars/gpt-4o-mini", "3", "outside 0..2"),
    ] {
        let refused = ask(&mock, &ds, &["--model", model, "--temperature", temperature]);
        assert_eq!(refused.code, 2, "{model}: {}", refused.all_output());
        assert!(refused.stderr.contains(said), "{model}: {}", refused.stderr);
    }
    assert_eq!(mock.chat.requests().len(), 2);
}

#[test]
fn a_dry_run_prints_the_prompt_and_its_cost_and_sends_nothing() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let dry = ask(&mock, &ds, &["--dry-run", "-k", "2"]);
    assert_eq!(dry.code, 0, "{}", dry.all_output());
    assert!(dry.stdout.contains("--- system ---") && dry.stdout.contains("--- user ---"), "{}", dry.stdout);
    assert!(dry.stdout.contains(&format!("Question: {QUESTION}")), "{}", dry.stdout);
    assert!(dry.stdout.contains("[1] chain.md (chunk 0)") && dry.stdout.contains("[2] "), "{}", dry.stdout);
    assert!(!dry.stdout.contains("[3] "), "{}", dry.stdout);
    assert!(dry.stdout.contains("prompt tokens") && dry.stdout.contains("list price"), "{}", dry.stdout);

    let dry = ask(&mock, &ds, &["--dry-run", "--json", "--model", "tars/gpt-5-mini"]);
    assert_eq!(dry.code, 0, "{}", dry.all_output());
    let out: Value = serde_json::from_str(dry.stdout.trim()).expect("JSON");
    assert_eq!(out["request"]["model"], "gpt-5-mini");
    assert_eq!(out["request"]["max_completion_tokens"], 4000);
    assert_eq!(out["estimate"]["max_output_tokens"], 4000);
    let tokens = out["estimate"]["prompt_tokens"].as_u64().expect("prompt tokens");
    assert!((100..2000).contains(&tokens), "{tokens}");
    assert!(out["estimate"]["max_usd"].as_f64().is_some_and(|usd| usd > 0.0));
    assert!(mock.chat.requests().is_empty());
}

#[test]
fn the_agent_searches_through_the_tool_and_cites_what_it_returned() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    mock.chat.script([
        // Two parallel calls, their arguments split across deltas.
        Reply::tool_calls(
            &[
                ("call_A", "search", r#"{"query":"oil the chain","k":2}"#),
                ("call_B", "search", r#"{"query":"brake pads","k":1}"#),
            ],
            5,
        ),
        // A filtered search, a bad filter, and arguments that are not JSON.
        Reply::tool_calls(
            &[
                ("toolu_1", "search", r#"{"query": "tyres", "filter": "doc = 'tyres.txt'"}"#),
                ("toolu_2", "search", r#"{"query": "tyres", "filter": "nosuchcolumn = 1"}"#),
                ("toolu_3", "search", r#"{"query": "#),
            ],
            7,
        ),
        Reply::text(&["Oil the chain monthly [1]", " and pump the tyres [4]."]),
    ]);
    let asked = ask(&mock, &ds, &["--agent", "--json"]);
    assert_eq!(asked.code, 0, "{}", asked.all_output());
    let out: Value = serde_json::from_str(asked.stdout.trim()).expect("JSON");
    let requests = mock.chat.requests();
    assert_eq!(requests.len(), 3);
    assert!(mock.chat.violations().is_empty(), "{:?}", mock.chat.violations());
    assert_eq!(requests[0]["tools"][0]["function"]["name"], "search");
    assert_eq!(requests[0]["tool_choice"], "auto");

    // The second request: the assistant's calls verbatim, then one result per call, in order.
    let messages = requests[1]["messages"].as_array().expect("messages");
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().expect("role")).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "tool"]);
    assert_eq!(messages[2]["content"], Value::Null);
    assert_eq!(messages[2]["tool_calls"][0]["function"]["arguments"], r#"{"query":"oil the chain","k":2}"#);
    assert_eq!(
        (messages[3]["tool_call_id"].clone(), messages[4]["tool_call_id"].clone()),
        (json!("call_A"), json!("call_B"))
    );
    let first = messages[3]["content"].as_str().expect("tool result");
    assert!(first.starts_with("[1] chain.md (chunk 0)"), "{first}");
    assert!(first.contains("[2] ") && !first.contains("[3] "), "{first}");
    let brakes = messages[4]["content"].as_str().expect("tool result");
    assert!(brakes.contains("brakes.md"), "{brakes}");

    // The third: a filtered search numbered on from the sources given so far; the failures explained.
    let messages = requests[2]["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 9);
    let tyres = messages[6]["content"].as_str().expect("tool result");
    assert!(tyres.contains("tyres.txt") && !tyres.contains("chain.md"), "{tyres}");
    assert!(messages[7]["content"].as_str().expect("text").contains("nosuchcolumn"), "{}", messages[7]);
    assert!(messages[8]["content"].as_str().expect("text").contains("invalid JSON arguments"), "{}", messages[8]);
    // Arguments that are not JSON go back as {} (Envoy would fail the whole request for Claude).
    assert_eq!(messages[5]["tool_calls"][2]["function"]["arguments"], "{}");

    let searches = out["searches"].as_array().expect("searches");
    assert_eq!(searches.len(), 5);
    assert_eq!(searches[0]["sources"], json!([1, 2]));
    assert!(searches[3]["error"].is_string() && searches[4]["error"].is_string());
    let n_tyres = searches[2]["sources"][0].as_u64().expect("a tyres hit") as usize;
    assert_eq!(out["sources"][n_tyres - 1]["doc"], "tyres.txt");
    assert_eq!(out["answer"], "Oil the chain monthly [1] and pump the tyres [4].");
    // Each chunk given once, under one number, however many searches found it.
    let docs: Vec<&str> =
        out["sources"].as_array().expect("sources").iter().map(|s| s["doc"].as_str().expect("doc")).collect();
    let unique: std::collections::BTreeSet<&&str> = docs.iter().collect();
    assert_eq!(unique.len(), docs.len(), "{docs:?}");
    let (cited, unknown) = (&out["citations"]["cited"], &out["citations"]["unknown"]);
    if docs.len() >= 4 {
        assert_eq!((cited, unknown), (&json!([1, 4]), &json!([])));
    } else {
        assert_eq!((cited, unknown), (&json!([1]), &json!([4])));
    }
}

#[test]
fn the_agent_answers_when_its_steps_run_out() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let search = || Reply::tool_calls(&[("call_1", "search", r#"{"query":"chain"}"#)], 64);
    mock.chat.script([search(), Reply::text(&["Monthly [1]."])]);
    let asked = ask(&mock, &ds, &["--agent", "--max-steps", "1"]);
    assert_eq!(asked.code, 0, "{}", asked.all_output());
    let requests = mock.chat.requests();
    assert_eq!(requests.len(), 2);
    // The last turn may not call tools: it must answer.
    assert_eq!(requests[1]["tool_choice"], "none");
    assert!(asked.stdout.starts_with("Monthly [1].\n"), "{}", asked.stdout);
}

#[test]
fn sse_is_read_to_the_spec_across_reads_comments_and_line_endings() {
    use crate::util::chat::Frame;
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let frames = vec![
        Frame::Raw(": keep-alive\n\n".to_owned()),
        // One event over two writes (a multi-byte character cut in two), CRLF framing, `data:` without its space,
        // then the end of the body after the finish reason, with no [DONE].
        Frame::Raw("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Monthly \u{2014}".to_owned()),
        Frame::Raw(" oil\"}}]}\r\n\r\n".to_owned()),
        Frame::Raw(
            "data:{\"choices\":[{\"index\":0,\"delta\":{\"content\":\" [1].\"},\"finish_reason\":\"stop\"}]}\r\n\r\n"
                .to_owned(),
        ),
    ];
    mock.chat.script([Reply::Stream { frames, gap: Duration::from_millis(150), end: End::Clean }]);
    let asked = ask(&mock, &ds, &["--json"]);
    assert_eq!(asked.code, 0, "{}", asked.all_output());
    let out: Value = serde_json::from_str(asked.stdout.trim()).expect("JSON");
    assert_eq!(out["answer"], "Monthly \u{2014} oil [1].");
    assert_eq!(out["citations"]["cited"], json!([1]));
}

/// Server-sent events as (name, data) pairs; keep-alive comments left out.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|event| {
            let mut name = None;
            let mut data = String::new();
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = Some(n.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            let name = name?;
            let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {event}"));
            Some((name, data))
        })
        .collect()
}

#[test]
fn the_server_streams_answers_as_server_sent_events() {
    use crate::serve::{Client, Served};
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let served = Served::start(&mock, &[&ds], &[], &[]);
    let client = Client::new();
    let ask = |body: Value| client.send(client.http.post(served.url("/v1/ask")).json(&body));

    mock.chat.script([Reply::text(&["Monthly ", "[1]."]).slowly(Duration::from_millis(50))]);
    let (status, content_type, body) = ask(json!({ "question": QUESTION, "k": 2 }));
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let events = sse_events(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["sources", "text", "text", "answer"], "{body}");
    assert_eq!(events[0].1["first"], 1);
    let sources = events[0].1["sources"].as_array().expect("sources");
    assert_eq!(
        (sources.len(), sources[0]["number"].clone(), sources[0]["doc"].clone()),
        (2, json!(1), json!("chain.md"))
    );
    let text: String = events[1..3].iter().map(|(_, d)| d["text"].as_str().expect("text")).collect();
    assert_eq!(text, "Monthly [1].");
    let answer = &events[3].1;
    assert_eq!((answer["answer"].clone(), answer["answered"].clone()), (json!("Monthly [1]."), json!(true)));
    assert_eq!((answer["dataset"].clone(), answer["citations"]["cited"].clone()), (json!("ds"), json!([1])));
    assert_eq!(answer["sources"][0]["cited"], true);
    assert_eq!(answer["model"], "tars/gpt-4o-mini");
    assert!(!body.contains(crate::util::mock::KEY));

    // A failure after the text began is an `error` event after it.
    mock.chat.script([Reply::text(&["Oil ", "it"]).error_after(2)]);
    let (status, _, body) = ask(json!({ "question": QUESTION }));
    assert_eq!(status, 200);
    let events = sse_events(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["sources", "text", "error"], "{body}");
    assert_eq!(events[2].1["error"]["code"], "chat_failed", "{body}");

    // A client that hangs up stops the answer: the server lets go of the model's stream before it ends.
    let pieces = ["word "; 12];
    mock.chat.script([Reply::text(&pieces).slowly(Duration::from_millis(100))]);
    let finished = mock.chat.finished.load(Ordering::SeqCst);
    client.runtime.block_on(async {
        let request = client.http.post(served.url("/v1/ask")).json(&json!({ "question": QUESTION }));
        let mut response = request.send().await.expect("send");
        let first = response.chunk().await.expect("a first event");
        assert!(first.is_some_and(|b| String::from_utf8_lossy(&b).contains("event: sources")));
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(mock.chat.finished.load(Ordering::SeqCst), finished, "the model's stream was read to its end");

    // What cannot be answered at all is a JSON error, as on every endpoint; nothing is sent to the model.
    let before = mock.chat.requests().len();
    for (request, code) in [
        (json!({ "question": " " }), "empty_query"),
        (json!({ "question": "x", "filter": "nosuch = 1" }), "bad_filter"),
        (json!({ "question": "x", "k": 0 }), "out_of_range"),
        (json!({ "question": "x", "temperature": 5 }), "bad_request"),
        (json!({ "question": "x", "dataset": "other" }), "unknown_dataset"),
        (json!({ "question": "x", "model": "tars/gpt-5" }), "bad_json"),
    ] {
        let (status, _, body) = ask(request.clone());
        assert!((400..500).contains(&status), "{request}: {status} {body}");
        let error: Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(error["error"]["code"], code, "{request}: {body}");
    }
    assert_eq!(mock.chat.requests().len(), before);
}

#[test]
fn agents_over_mcp_can_ask() {
    use crate::mcp::{McpProcess, initialize};
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    mock.chat.script([Reply::text(&["Every month [1]."])]);
    let mut mcp = McpProcess::start(&mock, &ds);
    mcp.request("initialize", initialize());
    mcp.send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
    let answer = mcp.call_ok("ask", json!({ "question": QUESTION, "k": 2 }));
    assert_eq!(answer["answer"], "Every month [1].");
    assert_eq!(answer["citations"]["cited"], json!([1]));
    assert_eq!(answer["sources"].as_array().map(Vec::len), Some(2));
    let (message, error) = mcp.call("ask", json!({ "question": "" }));
    assert!(error && message.contains("empty"), "{message}");
}
