//! Sharded runs: N processes with `--shard I/N` (or an engine's index variable) against the mock server, committed
//! as one version that equals a one-process run of the same corpus.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::util::mock::MockServer;
use crate::util::{cli, corpus, json_lines, live_content, manifest, run};

const CHUNKING: [&str; 4] = ["--chunk-tokens", "30", "--chunk-overlap", "0"];
const NAMES: [&str; 12] =
    ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"];

fn document(doc: &str, paragraphs: usize) -> String {
    (0..paragraphs)
        .map(|n| format!("Paragraph {n} of {doc} is about {doc}word{n} and {doc}topic, with more words to fill it."))
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn files() -> tempfile::TempDir {
    let texts: Vec<(String, String)> = NAMES.iter().map(|n| (format!("{n}.txt"), document(n, 3))).collect();
    let refs: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    corpus(&refs)
}

fn embed(mock: &MockServer, input: &Path, dataset: &Path, mirror: &Path) -> Command {
    let mut cmd = cli(Some(&mock.base()));
    cmd.env("TARS_INDEX_MIRROR_DIR", mirror);
    cmd.arg("embed").arg(input).arg("--out").arg(dataset).arg("--json").args(CHUNKING);
    cmd
}

/// Starts `shards` processes of run `run` at once and waits for them all.
fn run_shards(mock: &MockServer, input: &Path, dataset: &Path, mirror: &Path, run: &str, shards: u32) -> Vec<Output> {
    let children: Vec<_> = (0..shards)
        .map(|i| {
            embed(mock, input, dataset, &mirror.join(format!("m{i}")))
                .args(["--shard", &format!("{i}/{shards}"), "--run-id", run])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().expect("wait")).collect()
}

/// The top 10 as (score, doc, chunk), ties (the mock's vectors have many) in name order: row ids, which break
/// ties in the engine, differ between a sharded and a one-process run.
fn search(mock: &MockServer, dataset: &Path, mirror: &Path, query: &str) -> Vec<(String, String, u64)> {
    let mut cmd = cli(Some(&mock.base()));
    cmd.env("TARS_INDEX_MIRROR_DIR", mirror);
    let found = run(cmd.arg("search").arg(dataset).args([query, "-k", "10", "--json", "--mode", "vector"]));
    assert_eq!(found.code, 0, "{}", found.all_output());
    let mut hits: Vec<(String, String, u64)> = json_lines(&found.stdout)
        .iter()
        .map(|h| {
            let score = format!("{:.5}", h["score"].as_f64().expect("score"));
            (score, h["doc"].as_str().expect("doc").to_owned(), h["chunk_index"].as_u64().expect("chunk"))
        })
        .collect();
    // The last score's ties may be cut at different places: keep what ranks above it.
    let last = hits.last().map(|h| h.0.clone());
    hits.retain(|h| Some(&h.0) != last.as_ref());
    hits.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| (&a.1, a.2).cmp(&(&b.1, b.2))));
    hits
}

#[test]
fn three_shards_as_three_processes_publish_what_one_process_would() {
    let mock = MockServer::start();
    let input = files();
    let scratch = tempfile::tempdir().expect("tempdir");
    let (single, sharded, mirrors) =
        (scratch.path().join("single"), scratch.path().join("sharded"), scratch.path().join("mirrors"));
    assert_eq!(run(&mut embed(&mock, input.path(), &single, &mirrors)).code, 0);
    let one_process = mock.texts().len();

    let outputs = run_shards(&mock, input.path(), &sharded, &mirrors, "nightly-1", 3);
    for out in &outputs {
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let said: String = outputs.iter().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect();
    assert!(said.contains("run nightly-1 committed"), "the last shard commits:\n{said}");
    assert_eq!(mock.texts().len(), 2 * one_process, "each chunk is sent by exactly one shard");
    assert_eq!(live_content(&sharded), live_content(&single), "same documents, chunks, texts and vectors");
    let m = manifest(&sharded);
    assert_eq!((m["generation"].as_u64(), m["run_id"].as_str()), (Some(1), Some("nightly-1")));
    for query in ["charlieword1 charlietopic", "Paragraph 2 of kilo", "limaword0"] {
        let hits = search(&mock, &sharded, &mirrors.join("s"), query);
        assert!(!hits.is_empty(), "{query}: {hits:?}");
        assert_eq!(hits, search(&mock, &single, &mirrors.join("s"), query), "{query}");
    }

    // A filter selects rows by id across the shards' far-apart ranges (a flat bitmap of them would be gigabytes).
    let mut filtered = cli(Some(&mock.base()));
    filtered.env("TARS_INDEX_MIRROR_DIR", mirrors.join("f"));
    let found = run(filtered.arg("search").arg(&sharded).args(["kilotopic", "--json", "--filter", "doc LIKE 'k%'"]));
    assert_eq!(found.code, 0, "{}", found.all_output());
    let docs: Vec<String> =
        json_lines(&found.stdout).iter().map(|h| h["doc"].as_str().expect("doc").to_owned()).collect();
    assert!(!docs.is_empty() && docs.iter().all(|d| d == "kilo.txt"), "{docs:?}");

    // The next sharded run (with another N: it only has to be fixed within one run) over a changed corpus sends
    // only the change and notices the deletion in whichever shard owns it.
    std::fs::write(input.path().join("bravo.txt"), document("bravo", 4)).expect("change");
    std::fs::remove_file(input.path().join("golf.txt")).expect("delete");
    let before = mock.texts().len();
    for out in run_shards(&mock, input.path(), &sharded, &mirrors, "nightly-2", 2) {
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let sent = &mock.texts()[before..];
    assert!(!sent.is_empty() && sent.iter().all(|t| t.contains("bravo")), "only bravo is sent: {sent:?}");
    assert_eq!(run(&mut embed(&mock, input.path(), &single, &mirrors)).code, 0);
    assert_eq!(live_content(&sharded), live_content(&single));
    assert!(!live_content(&sharded).iter().any(|r| r.0 == "golf.txt"));
    assert_eq!(manifest(&sharded)["generation"].as_u64(), Some(2));

    // A run of one process on the sharded dataset builds on it like on any other: the shards' files stay where
    // they are and are not sent again.
    std::fs::write(input.path().join("delta.txt"), document("delta", 4)).expect("change");
    let before = mock.texts().len();
    let one = run(&mut embed(&mock, input.path(), &sharded, &mirrors.join("after")));
    assert_eq!(one.code, 0, "{}", one.all_output());
    assert!(mock.texts()[before..].iter().all(|t| t.contains("delta")));
    assert_eq!(run(&mut embed(&mock, input.path(), &single, &mirrors)).code, 0);
    assert_eq!(live_content(&sharded), live_content(&single));
}

/// examples/ray/sharded_run.py on a local Ray (`ray.init()` on this machine): the shards as Ray tasks sharing one
/// node's mirror, then the driver's commit. Needs a Python with Ray (`TARS_INDEX_RAY_PYTHON`; scripts/test.sh
/// installs one); fails rather than skips without it.
#[test]
fn the_ray_example_runs_the_shards_as_tasks_and_commits_what_one_process_would() {
    let python = std::env::var("TARS_INDEX_RAY_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = Command::new(&python).args(["-c", "import ray"]).output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{python} cannot import ray: run the tests with scripts/test.sh, or set TARS_INDEX_RAY_PYTHON to a Python \
         with ray ({probe:?})"
    );
    let mock = MockServer::start();
    let input = files();
    let scratch = tempfile::tempdir().expect("tempdir");
    let (single, sharded) = (scratch.path().join("single"), scratch.path().join("sharded"));
    assert_eq!(run(&mut embed(&mock, input.path(), &single, &scratch.path().join("m"))).code, 0);
    let one_process = mock.texts().len();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ray/sharded_run.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(input.path())
        .arg(&sharded)
        .args(["--shards", "3", "--run-id", "ray-1", "--binary", env!("CARGO_BIN_EXE_tars-index")])
        .args(CHUNKING)
        .env("TARS_API_BASE", mock.base())
        .env("TARS_API_KEY", crate::util::mock::KEY)
        .env("TARS_INDEX_MIRROR_DIR", scratch.path().join("node-mirror"))
        .env("RAY_ADDRESS", "local")
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .output()
        .expect("run the Ray example");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(!said.contains(crate::util::mock::KEY), "the key leaked:\n{said}");
    let reports: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(reports.len(), 3, "one report per shard task: {said}");
    assert_eq!(mock.texts().len(), 2 * one_process, "each chunk is sent by exactly one task");
    assert_eq!(live_content(&sharded), live_content(&single), "same documents, chunks, texts and vectors");
    let m = manifest(&sharded);
    assert_eq!((m["generation"].as_u64(), m["run_id"].as_str()), (Some(1), Some("ray-1")));
}

#[test]
fn duplicate_attempts_of_a_shard_and_repeated_commits_publish_one_version() {
    let mock = MockServer::start();
    let input = files();
    let scratch = tempfile::tempdir().expect("tempdir");
    let (dataset, mirrors) = (scratch.path().join("ds"), scratch.path().join("mirrors"));
    // Two pods of shard 0 (Kubernetes can run them), by the index variable an Indexed Job sets.
    let twins: Vec<_> = (0..2)
        .map(|i| {
            embed(&mock, input.path(), &dataset, &mirrors.join(format!("twin{i}")))
                .args(["--shard", "auto", "--shards", "2", "--run-id", "job-7"])
                .env("JOB_COMPLETION_INDEX", "0")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for twin in twins {
        let out = twin.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut status = cli(None);
    status.env("TARS_INDEX_MIRROR_DIR", mirrors.join("st"));
    let state = run(status.args(["runs", "status"]).arg(&dataset).args(["--run-id", "job-7", "--json"]));
    assert_eq!(state.code, 0, "{}", state.all_output());
    let state = &json_lines(&state.stdout)[0];
    assert_eq!(state["done"].as_array().map(Vec::len), Some(1), "one attempt of shard 0 counts: {state}");
    assert_eq!(state["missing"], serde_json::json!([1]));
    assert!(state["committed"].is_null());

    // Committing before every shard is done names the missing one.
    let mut early = cli(None);
    early.env("TARS_INDEX_MIRROR_DIR", mirrors.join("c0"));
    let early = run(early.arg("commit").arg(&dataset).args(["--run-id", "job-7"]));
    assert_ne!(early.code, 0);
    assert!(early.stderr.contains("missing: 1"), "{}", early.stderr);

    let last =
        run(embed(&mock, input.path(), &dataset, &mirrors.join("one")).args(["--shard", "1/2", "--run-id", "job-7"]));
    assert_eq!(last.code, 0, "{}", last.all_output());
    // The orchestrator's commit step, several at once, after the last shard already committed: all succeed, and
    // there is one version.
    let commits: Vec<_> = (0..3)
        .map(|i| {
            let mut cmd = cli(None);
            cmd.env("TARS_INDEX_MIRROR_DIR", mirrors.join(format!("c{}", i + 1)));
            cmd.arg("commit").arg(&dataset).args(["--run-id", "job-7"]).stderr(Stdio::piped()).spawn().expect("spawn")
        })
        .collect();
    for commit in commits {
        let out = commit.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let versions = std::fs::read_dir(dataset.join("_versions")).expect("versions").count();
    assert_eq!(versions, 1);
    let texts = mock.texts();
    let distinct: std::collections::HashSet<&String> = texts.iter().collect();
    assert!(live_content(&dataset).len() == distinct.len(), "every chunk is in the version once");
    // A shard started again after the commit has nothing to do.
    let before = mock.requests();
    let late =
        run(embed(&mock, input.path(), &dataset, &mirrors.join("late")).args(["--shard", "0/2", "--run-id", "job-7"]));
    assert_eq!(late.code, 0, "{}", late.all_output());
    assert!(late.stdout.contains("was committed as version 1"), "{}", late.stdout);
    assert_eq!(mock.requests(), before);
}

#[test]
fn a_shard_that_disagrees_with_its_run_is_refused_for_good() {
    let mock = MockServer::start();
    let input = files();
    let scratch = tempfile::tempdir().expect("tempdir");
    let (dataset, mirrors) = (scratch.path().join("ds"), scratch.path().join("mirrors"));
    let first = run(embed(&mock, input.path(), &dataset, &mirrors.join("a")).args(["--shard", "0/2", "--run-id", "r"]));
    assert_eq!(first.code, 0, "{}", first.all_output());
    let other = run(embed(&mock, input.path(), &dataset, &mirrors.join("b")).args(["--shard", "1/3", "--run-id", "r"]));
    assert_ne!(other.code, 0);
    assert!(other.stderr.contains("run r was started with other settings (shards"), "{}", other.stderr);
    let no_id = run(embed(&mock, input.path(), &dataset, &mirrors.join("c")).args(["--shard", "1/2"]));
    assert_eq!(no_id.code, 2);
    assert!(no_id.stderr.contains("--shard needs --run-id"), "{}", no_id.stderr);
    let no_env =
        run(embed(&mock, input.path(), &dataset, &mirrors.join("d")).args(["--shard", "auto", "--run-id", "r"]));
    assert_eq!(no_env.code, 2);
    assert!(no_env.stderr.contains("JOB_COMPLETION_INDEX"), "{}", no_env.stderr);
}

#[test]
fn vacuum_removes_what_no_version_uses_and_only_once_it_is_old_enough() {
    let mock = MockServer::start();
    let input = files();
    let scratch = tempfile::tempdir().expect("tempdir");
    let (dataset, mirrors) = (scratch.path().join("ds"), scratch.path().join("mirrors"));
    for out in run_shards(&mock, input.path(), &dataset, &mirrors, "night-1", 2) {
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for (n, doc) in ["bravo", "delta"].iter().enumerate() {
        std::fs::write(input.path().join(format!("{doc}.txt")), document(doc, 4 + n)).expect("change");
        assert_eq!(run(&mut embed(&mock, input.path(), &dataset, &mirrors.join("one"))).code, 0);
    }
    assert_eq!(manifest(&dataset)["generation"].as_u64(), Some(3));
    // What crashed and abandoned runs leave: a data file no version lists, and an attempt of a run never committed.
    let planted =
        ["data/part-0000000009-deadbeef-00000.parquet", "_runs/lost/plan.json", "_runs/lost/shard-0000/a1/x.parquet"];
    for name in planted {
        let path = dataset.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"left behind").expect("plant");
    }
    let before = search(&mock, &dataset, &mirrors.join("s"), "charlieword1 charlietopic");
    let vacuum = |extra: &[&str]| -> serde_json::Value {
        let out = run(cli(None).arg("vacuum").arg(&dataset).arg("--json").args(extra));
        assert_eq!(out.code, 0, "{}", out.all_output());
        json_lines(&out.stdout).pop().expect("report")
    };
    let names = |report: &serde_json::Value| -> Vec<String> {
        report["removed"].as_array().expect("removed").iter().map(|n| n.as_str().expect("name").to_owned()).collect()
    };

    let young = vacuum(&[]);
    assert!(names(&young).is_empty() && young["too_young"].as_u64() >= Some(3), "7 days by default: {young}");
    let dry = vacuum(&["--older-than", "0s", "--dry-run"]);
    let listed = names(&dry);
    for name in planted.iter().copied().chain(["_versions/00000000000000000001.json"]) {
        assert!(listed.iter().any(|n| n == name), "{name} in {listed:?}");
        assert!(dataset.join(name).exists(), "a dry run removes nothing");
    }
    let used: Vec<String> = manifest(&dataset)["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_owned())
        .collect();
    assert!(used.iter().any(|p| p.starts_with("_runs/night-1/")), "version 3 still uses the shards' files");
    assert!(!listed.iter().any(|n| used.contains(n)), "nothing in use: {listed:?}");
    assert!(!listed.iter().any(|n| n == "_runs/night-1/plan.json"), "the plan of a run in use stays");

    let done = vacuum(&["--older-than", "0s"]);
    assert_eq!(names(&done), listed);
    for name in &listed {
        assert!(!dataset.join(name).exists(), "{name} is removed");
    }
    assert_eq!(search(&mock, &dataset, &mirrors.join("s2"), "charlieword1 charlietopic"), before);
    let status = run(cli(None).args(["runs", "status"]).arg(&dataset).args(["--run-id", "night-1", "--json"]));
    assert_eq!(status.code, 0, "the run in use still answers: {}", status.all_output());
    assert!(names(&vacuum(&["--older-than", "0s"])).is_empty(), "nothing left to remove");
}
