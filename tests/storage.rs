//! Datasets on object storage: the CLI against a real S3-compatible server (moto) on 127.0.0.1 and the mock
//! embedding server. Commits are put-if-absent objects, so racing writers have one winner; the cache goes up in
//! segments, so a lost machine re-pays almost nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::mock::MockServer;
use crate::util::s3::{S3Server, careless_store};
use crate::util::{age, cli, corpus, json_lines, run};

const CHUNKING: [&str; 4] = ["--chunk-tokens", "30", "--chunk-overlap", "0"];

fn document(doc: &str, paragraphs: usize) -> String {
    (0..paragraphs)
        .map(|n| format!("Paragraph {n} of {doc} is about {doc}word{n} and {doc}topic, with more words to fill it."))
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn files(names: &[&str], paragraphs: usize) -> tempfile::TempDir {
    let texts: Vec<(String, String)> = names.iter().map(|n| (format!("{n}.txt"), document(n, paragraphs))).collect();
    let refs: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let dir = corpus(&refs);
    age(dir.path());
    dir
}

fn embed(mock: &MockServer, s3: &S3Server, mirror: &Path, input: &Path, dataset: &str) -> Command {
    let mut cmd = cli(Some(&mock.base()));
    s3.env(&mut cmd, mirror);
    cmd.arg("embed").arg(input).args(["--out", dataset, "--json", "--concurrency", "1"]).args(CHUNKING);
    cmd
}

fn search(mock: &MockServer, s3: Option<(&S3Server, &Path)>, dataset: &str, query: &str) -> Vec<(String, u32)> {
    let mut cmd = cli(Some(&mock.base()));
    if let Some((s3, mirror)) = s3 {
        s3.env(&mut cmd, mirror);
    }
    let found = run(cmd.args(["search", dataset, query, "-k", "5", "--json"]));
    assert_eq!(found.code, 0, "{}", found.all_output());
    json_lines(&found.stdout)
        .iter()
        .map(|h| (h["doc"].as_str().expect("doc").to_owned(), h["chunk_index"].as_u64().expect("chunk") as u32))
        .collect()
}

fn keys(s3: &S3Server, bucket: &str, prefix: &str) -> Vec<String> {
    s3.objects(bucket, prefix).into_iter().map(|(k, _)| k).collect()
}

#[test]
fn a_dataset_on_s3_is_written_indexed_searched_and_updated_like_a_local_one() {
    let Some(s3) = S3Server::start() else { return };
    s3.bucket("corpora");
    let mock = MockServer::start();
    let input = files(&["alpha", "bravo", "charlie", "delta"], 3);
    let scratch = tempfile::tempdir().expect("tempdir");
    let local = scratch.path().join("local");
    let url = "s3://corpora/team/docs";

    let first = run(&mut embed(&mock, &s3, &scratch.path().join("m1"), input.path(), url));
    assert_eq!(first.code, 0, "{}", first.all_output());
    assert!(first.stderr.contains(url) || first.stdout.contains(url), "messages name the URL:\n{}", first.all_output());
    let mut local_run = cli(Some(&mock.base()));
    local_run.arg("embed").arg(input.path()).arg("--out").arg(&local).args(["--concurrency", "1"]).args(CHUNKING);
    assert_eq!(run(&mut local_run).code, 0);
    let stored = keys(&s3, "corpora", "team/docs/");
    assert!(stored.contains(&"team/docs/_versions/00000000000000000001.json".to_owned()), "{stored:?}");
    assert!(stored.iter().any(|k| k.starts_with("team/docs/data/part-")), "{stored:?}");
    assert!(!stored.iter().any(|k| k.contains("/cache/")), "a complete run leaves no cache segments: {stored:?}");

    let mut index = cli(None);
    s3.env(&mut index, &scratch.path().join("m1"));
    let indexed = run(index.args(["index", url]));
    assert_eq!(indexed.code, 0, "{}", indexed.all_output());
    assert!(keys(&s3, "corpora", "team/docs/index/").contains(&"team/docs/index/index.json".to_owned()));

    // Another machine (an empty mirror) finds what a local run of the same corpus finds.
    let query = "charlieword1 and charlietopic";
    let remote_hits = search(&mock, Some((&s3, &scratch.path().join("m2"))), url, query);
    let local_hits = search(&mock, None, &local.to_string_lossy(), query);
    assert_eq!(remote_hits, local_hits);
    assert_eq!(remote_hits[0].0, "charlie.txt");

    // A scheduled rerun on a fresh machine sends nothing; a changed document is all the next one sends.
    let before = mock.requests();
    let before_texts = mock.texts().len();
    let again = run(&mut embed(&mock, &s3, &scratch.path().join("m3"), input.path(), url));
    assert_eq!(again.code, 0, "{}", again.all_output());
    assert_eq!(mock.requests(), before, "an unchanged corpus sends nothing");
    assert!(keys(&s3, "corpora", "team/docs/_versions/").len() == 1, "and publishes no new version");
    std::fs::write(input.path().join("bravo.txt"), document("bravo", 4)).expect("change");
    let changed = run(&mut embed(&mock, &s3, &scratch.path().join("m3"), input.path(), url));
    assert_eq!(changed.code, 0, "{}", changed.all_output());
    let texts = mock.texts();
    assert!(texts.len() > before_texts, "the change is sent");
    assert!(texts[before_texts..].iter().all(|t| t.contains("bravo")), "only bravo is sent again");
    assert_eq!(keys(&s3, "corpora", "team/docs/_versions/").len(), 2);
    // The index followed the new version (embed updates an index the dataset has).
    let hits = search(&mock, Some((&s3, &scratch.path().join("m4"))), url, "Paragraph 3 of bravo bravoword3");
    assert_eq!(hits[0], ("bravo.txt".to_owned(), 3), "{hits:?}");
}

#[test]
fn two_runs_racing_for_one_version_have_one_winner_and_the_loser_keeps_what_it_paid_for() {
    let Some(s3) = S3Server::start() else { return };
    s3.bucket("race");
    let mock = MockServer::start();
    // Slow answers keep both runs between reading version 0 and committing version 1 at the same time.
    mock.set_delay(Duration::from_millis(700));
    let scratch = tempfile::tempdir().expect("tempdir");
    let (one, two) = (files(&["oscar", "papa", "quebec"], 2), files(&["oscar", "papa", "romeo"], 2));
    let url = "s3://race/shared";
    let start = |input: &Path, mirror: &str| {
        embed(&mock, &s3, &scratch.path().join(mirror), input, url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (start(one.path(), "ma"), start(two.path(), "mb"));
    let outputs = [a.wait_with_output().expect("a"), b.wait_with_output().expect("b")];
    let codes: Vec<i32> = outputs.iter().map(|o| o.status.code().unwrap_or(-1)).collect();
    let winners = codes.iter().filter(|&&c| c == 0).count();
    assert_eq!(winners, 1, "exactly one run publishes version 1: {codes:?}\n{outputs:#?}");
    let loser = codes.iter().position(|&c| c != 0).expect("a loser");
    assert_eq!(codes[loser], 75, "a conflict is temporary (EX_TEMPFAIL)");
    let stderr = String::from_utf8_lossy(&outputs[loser].stderr);
    assert!(stderr.contains("another run published version 1 first"), "{stderr}");
    assert_eq!(keys(&s3, "race", "shared/_versions/"), ["shared/_versions/00000000000000000001.json"]);

    // Run again (on a new machine, even), the loser builds on the winner's version and sends nothing: its
    // embeddings were uploaded as cache segments.
    mock.set_delay(Duration::ZERO);
    let before = mock.requests();
    let input = if loser == 0 { one.path() } else { two.path() };
    let rerun = run(&mut embed(&mock, &s3, &scratch.path().join("mc"), input, url));
    assert_eq!(rerun.code, 0, "{}", rerun.all_output());
    assert_eq!(mock.requests(), before, "nothing is paid twice");
    assert_eq!(keys(&s3, "race", "shared/_versions/").len(), 2);
    assert!(keys(&s3, "race", "shared/cache/").is_empty(), "the segments went once a version held them");
}

#[test]
fn a_run_killed_on_one_machine_and_rerun_on_another_pays_again_only_for_its_last_second() {
    let Some(s3) = S3Server::start() else { return };
    s3.bucket("killed");
    let mock = MockServer::start();
    mock.set_delay(Duration::from_millis(250));
    let input = files(&["sierra", "tango", "uniform", "victor", "whiskey", "xray"], 6);
    let scratch = tempfile::tempdir().expect("tempdir");
    let url = "s3://killed/ds";
    let mut child = embed(&mock, &s3, &scratch.path().join("m1"), input.path(), url)
        .args(["--batch-inputs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while mock.answered() < 24 {
        assert!(Instant::now() < deadline, "the run did not get going");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    let paid = mock.answered();
    assert!(!keys(&s3, "killed", "ds/cache/").is_empty(), "segments were uploaded while the run went on");
    assert!(keys(&s3, "killed", "ds/_versions/").is_empty(), "nothing was published");

    mock.set_delay(Duration::ZERO);
    let before = mock.requests();
    let rerun = run(embed(&mock, &s3, &scratch.path().join("m2"), input.path(), url).args(["--batch-inputs", "1"]));
    assert_eq!(rerun.code, 0, "{}", rerun.all_output());
    let total = mock.texts().into_iter().collect::<std::collections::HashSet<_>>().len();
    let resent = mock.requests() - before;
    // One input per request, one request at a time, four a second: what is paid again is at most the last
    // second's (a segment closes once a second), the one in flight and a segment still on its way up.
    assert!(resent + paid <= total + 10, "resent {resent} of {total} after {paid} were paid");
    assert!(resent + 10 < total, "the cache saved the rest: resent {resent} of {total}");
    assert!(keys(&s3, "killed", "ds/cache/").is_empty(), "the segments went once a version held them");
}

#[test]
fn a_store_that_ignores_conditional_writes_is_refused_before_anything_is_written() {
    let endpoint = careless_store();
    let mock = MockServer::start();
    let input = files(&["yankee"], 1);
    let mut cmd = cli(Some(&mock.base()));
    cmd.env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .env("AWS_REGION", "us-east-1")
        .env("TARS_INDEX_MIRROR_DIR", tempfile::tempdir().expect("tempdir").path());
    let refused = run(cmd.arg("embed").arg(input.path()).args(["--out", "s3://careless/ds"]));
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("s3://careless/ds"), "{}", refused.stderr);
    assert!(refused.stderr.contains("only if absent"), "{}", refused.stderr);
    assert_eq!(mock.requests(), 0, "refused before any embedding was paid for");
}

#[test]
fn a_file_url_dataset_uses_the_object_storage_layout_and_stays_readable_as_a_path() {
    let mock = MockServer::start();
    let input = files(&["zulu", "alpha"], 2);
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("ds");
    let url = format!("file://{}", dir.display());
    let mut cmd = cli(Some(&mock.base()));
    cmd.env("TARS_INDEX_MIRROR_DIR", scratch.path().join("mirror"));
    let made = run(cmd.arg("embed").arg(input.path()).args(["--out", &url]).args(CHUNKING));
    assert_eq!(made.code, 0, "{}", made.all_output());
    assert!(dir.join("_versions/00000000000000000001.json").is_file());
    assert!(!dir.join("manifest.json").exists(), "objects only");
    let hits = search(&mock, None, &dir.to_string_lossy(), "zuluword1 zulutopic");
    assert_eq!(hits[0].0, "zulu.txt");
}

#[test]
fn shards_on_s3_commit_one_version_that_another_machine_searches() {
    let Some(s3) = S3Server::start() else { return };
    s3.bucket("sharded");
    let mock = MockServer::start();
    let input = files(&["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"], 2);
    let scratch = tempfile::tempdir().expect("tempdir");
    let url = "s3://sharded/ds";
    let shards: Vec<_> = (0..2)
        .map(|i| {
            embed(&mock, &s3, &scratch.path().join(format!("m{i}")), input.path(), url)
                .args(["--shard", &format!("{i}/2"), "--run-id", "job-1"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for shard in shards {
        let out = shard.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(keys(&s3, "sharded", "ds/_versions/"), ["ds/_versions/00000000000000000001.json"]);
    assert_eq!(keys(&s3, "sharded", "ds/_runs/job-1/done/").len(), 2);
    assert!(keys(&s3, "sharded", "ds/cache/").is_empty(), "the shards' cache segments went with the commit");
    let local = scratch.path().join("local");
    let mut single = cli(Some(&mock.base()));
    single.arg("embed").arg(input.path()).arg("--out").arg(&local).args(["--concurrency", "1"]).args(CHUNKING);
    assert_eq!(run(&mut single).code, 0);
    let query = "deltaword1 deltatopic";
    let remote = search(&mock, Some((&s3, &scratch.path().join("reader"))), url, query);
    assert_eq!(remote[0].0, "delta.txt");
    let local_hits = search(&mock, None, &local.to_string_lossy(), query);
    assert_eq!(remote[..2], local_hits[..2], "the two delta chunks rank first on both");
}
