//! `tars-index mcp` over stdio, spoken to as an MCP client would: initialize, tools/list, tools/call for every tool,
//! and invalid calls that must come back as errors while the server goes on. `/mcp` on `serve` too.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::serve::dataset;
use crate::util::mock::{self, MockServer};
use crate::util::{cli, json_lines, run};

/// A running `tars-index mcp`, with its stdout read on a thread (so a missing answer fails the test, not hangs it).
pub struct McpProcess {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    next_id: u64,
}

impl McpProcess {
    pub fn start(mock: &MockServer, dataset: &std::path::Path) -> Self {
        let mut cmd = cli(Some(&mock.base()));
        cmd.arg("mcp").arg(dataset).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start mcp");
        let stdin = child.stdin.take().expect("stdin");
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, stdin, lines, next_id: 1 }
    }

    pub fn send(&mut self, message: &Value) {
        writeln!(self.stdin, "{message}").expect("write");
        self.stdin.flush().expect("flush");
    }

    /// Sends a request and returns the response with its id (skipping anything else the server sends).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(30)).expect("an answer within 30 s");
            assert!(!line.contains(mock::KEY), "the key on stdout: {line}");
            let message: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout is not JSON-RPC ({e}): {line}"));
            if message["id"] == id {
                return message;
            }
        }
    }

    /// Calls a tool: its text answer and whether it was an error.
    pub fn call(&mut self, tool: &str, arguments: Value) -> (String, bool) {
        let response = self.request("tools/call", json!({ "name": tool, "arguments": arguments }));
        let result = &response["result"];
        assert!(result.is_object(), "{tool}: {response}");
        let text = result["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{response}")).to_owned();
        (text, result["isError"] == true)
    }

    pub fn call_ok(&mut self, tool: &str, arguments: Value) -> Value {
        let (text, error) = self.call(tool, arguments);
        assert!(!error, "{tool}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{tool} answered with no JSON ({e}): {text}"))
    }
}

impl Drop for McpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn initialize() -> Value {
    json!({ "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "test", "version": "1" } })
}

#[test]
fn an_agent_can_list_and_call_every_tool_and_bad_calls_are_errors_not_crashes() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let mut mcp = McpProcess::start(&mock, &ds);

    let init = mcp.request("initialize", initialize());
    assert_eq!(init["result"]["serverInfo"]["name"], "tars-index", "{init}");
    assert!(init["result"]["capabilities"]["tools"].is_object(), "{init}");
    mcp.send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));

    let listed = mcp.request("tools/list", json!({}));
    let tools = listed["result"]["tools"].as_array().expect("tools");
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().expect("name")).collect();
    for name in ["search", "list_datasets", "get_document", "count"] {
        assert!(names.contains(&name), "{name} missing: {names:?}");
    }
    let search = tools.iter().find(|t| t["name"] == "search").expect("search");
    assert_eq!(search["inputSchema"]["required"], json!(["query"]), "{search}");
    for field in ["query", "k", "mode", "filter", "dataset"] {
        let description = search["inputSchema"]["properties"][field]["description"].as_str().unwrap_or("");
        assert!(description.len() > 20, "{field} needs a description an agent can use: {search}");
    }

    // search answers as the CLI does.
    let found = mcp.call_ok("search", json!({ "query": "bicycle chain", "k": 3 }));
    let by_cli = run(cli(Some(&mock.base())).arg("search").arg(&ds).args(["bicycle chain", "-k", "3", "--json"]));
    assert_eq!(found["hits"].as_array().expect("hits"), &json_lines(&by_cli.stdout));
    let exact = mcp.call_ok("search", json!({ "query": "E_CHAIN_0x42", "mode": "keyword", "filter": "lang = 'en'" }));
    assert_eq!(exact["hits"][0]["doc"], "r3", "{exact}");

    let listed = mcp.call_ok("list_datasets", json!({}));
    assert_eq!(listed["datasets"][0]["name"], "ds");
    assert_eq!(listed["datasets"][0]["metadata"], json!({ "year": "int64", "lang": "string" }));

    let guide = mcp.call_ok("get_document", json!({ "doc": "guides/bicycle.md" }));
    assert_eq!(guide["title"], "Bicycle care");
    assert!(guide["chunks"][0]["text"].as_str().expect("text").contains("Clean the bicycle chain"), "{guide}");

    assert_eq!(mcp.call_ok("count", json!({}))["count"], 5);
    assert_eq!(mcp.call_ok("count", json!({ "filter": "lang = 'en'" }))["count"], 2);

    // Bad calls: tool errors that say what is wrong, or JSON-RPC errors; the server answers the next call.
    let (message, error) = mcp.call("search", json!({ "query": "x", "filter": "colour = 'red'" }));
    assert!(error && message.contains("no column \"colour\"") && message.contains("column 1"), "{message}");
    let (message, error) = mcp.call("search", json!({ "qeury": "x" }));
    assert!(error && message.contains("unknown field `qeury`"), "{message}");
    let (message, error) = mcp.call("search", json!({ "query": "x", "k": 0 }));
    assert!(error && message.contains("\"k\" must be from 1 to 1000"), "{message}");
    let (message, error) = mcp.call("get_document", json!({ "doc": "missing.md" }));
    assert!(error && message.contains("no document \"missing.md\""), "{message}");
    let (message, error) = mcp.call("count", json!({ "dataset": "other" }));
    assert!(error && message.contains("no dataset \"other\""), "{message}");
    let unknown = mcp.request("tools/call", json!({ "name": "delete_everything", "arguments": {} }));
    assert!(unknown["error"]["code"].is_i64(), "{unknown}");
    writeln!(mcp.stdin, "this line is not JSON").expect("write");
    assert_eq!(mcp.call_ok("count", json!({}))["count"], 5, "still answering");
}

#[test]
fn serve_speaks_mcp_over_streamable_http_behind_its_token() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let served = crate::serve::Served::start(&mock, &[&ds], &["--token-env", "MCP_TOKEN"], &[("MCP_TOKEN", "t0k")]);
    let client = crate::serve::Client::new();
    let post = |body: &Value, token: Option<&str>| {
        let mut request = client.http.post(served.url("/mcp")).json(body);
        request = request
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, _, text) = client.send(request);
        (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
    };
    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize() });
    assert_eq!(post(&init, None).0, 401);
    let (status, answer) = post(&init, Some("t0k"));
    assert_eq!((status, answer["result"]["serverInfo"]["name"].clone()), (200, json!("tars-index")), "{answer}");
    let call = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": { "name": "search", "arguments": { "query": "E_CHAIN_0x42", "mode": "keyword" } } });
    let (status, answer) = post(&call, Some("t0k"));
    assert_eq!(status, 200, "{answer}");
    let text = answer["result"]["content"][0]["text"].as_str().expect("text");
    let hits: Value = serde_json::from_str(text).expect("JSON");
    assert_eq!(hits["hits"][0]["doc"], "r3", "{hits}");
}
