//! Data safety when the filesystem misbehaves (issue 11): unreadable files and folders, symbolic links, inputs that
//! vanish. Each test is named after the defect it pins.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::mock::MockServer;
use crate::util::{cli, cli_without_override, corpus, json_lines, live_rows, manifest, run};

fn embed(mut cmd: Command, input: &Path, dataset: &Path, extra: &[&str]) -> crate::util::Run {
    cmd.arg("embed").arg(input).arg("--out").arg(dataset).arg("--json").args(extra);
    run(&mut cmd)
}

fn report(run: &crate::util::Run) -> serde_json::Value {
    json_lines(&run.stdout).pop().unwrap_or_else(|| panic!("no JSON report on stdout:\n{}", run.all_output()))
}

fn live_docs(dataset: &Path) -> std::collections::BTreeSet<String> {
    live_rows(dataset).into_iter().map(|r| r.doc).collect()
}

/// `count` notes `{prefix}NN.txt`, each about `topicN`, embedded into a new dataset: (corpus, out dir, dataset).
fn embedded_notes(mock: &MockServer, prefix: &str, count: usize) -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
    let files: Vec<(String, String)> =
        (0..count).map(|i| (format!("{prefix}{i:02}.txt"), text(&format!("topic{i}")))).collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let input = corpus(&refs);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let first = embed(cli(Some(&mock.base())), input.path(), &dataset, &[]);
    assert_eq!(first.code, 0, "{}", first.all_output());
    (input, out, dataset)
}

fn text(topic: &str) -> String {
    format!("This note is about {topic}. It says a few things about {topic} and nothing about anything else.")
}

#[cfg(unix)]
#[test]
fn an_unreadable_folder_is_not_taken_for_deleted() {
    use std::os::unix::fs::PermissionsExt;
    let mock = MockServer::start();
    let input = corpus(&[
        ("a.txt", &text("apples")),
        ("b.txt", &text("bananas")),
        ("c.txt", &text("cherries")),
        ("d.txt", &text("dates")),
        ("sub/e.txt", &text("elderberries")),
        ("sub/f.txt", &text("figs")),
    ]);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    // The first run names the input relative to its working directory, the next ones by its absolute path.
    let (parent, name) = (input.path().parent().expect("parent"), input.path().file_name().expect("name"));
    let mut relative = cli(Some(&mock.base()));
    relative.current_dir(parent);
    let first = embed(relative, Path::new(name), &dataset, &[]);
    assert_eq!(first.code, 0, "{}", first.all_output());
    let before = live_docs(&dataset);
    assert_eq!(before.len(), 6);
    let generation = manifest(&dataset)["generation"].clone();

    let sub = input.path().join("sub");
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let second = embed(cli_without_override(Some(&mock.base())), input.path(), &dataset, &[]);
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
    assert_eq!(second.code, 1, "a read error fails the run: {}", second.all_output());
    let r = report(&second);
    assert_eq!(r["documents"]["deleted"], 0, "{r}");
    assert_eq!(
        (r["documents"]["read_errors"].as_u64(), r["documents"]["kept_unreadable"].as_u64()),
        (Some(1), Some(2))
    );
    let error = &r["read_errors"][0];
    assert!(error["path"].as_str().is_some_and(|p| p.ends_with("sub")), "{r}");
    assert!(error["reason"].as_str().is_some_and(|e| e.contains("Permission denied")), "{r}");
    assert!(second.stderr.contains("sub") && second.stderr.contains("could not be read"), "{}", second.stderr);
    assert_eq!(live_docs(&dataset), before, "the unreadable folder's documents keep their vectors");
    assert_eq!(manifest(&dataset)["generation"], generation, "nothing changed, so nothing was published");

    // Readable again: nothing to do. Really gone: now they are deleted.
    let third = embed(cli(Some(&mock.base())), input.path(), &dataset, &[]);
    assert_eq!((third.code, report(&third)["documents"]["deleted"].as_u64()), (0, Some(0)), "{}", third.all_output());
    std::fs::remove_dir_all(&sub).expect("rm sub");
    let fourth = embed(cli(Some(&mock.base())), input.path(), &dataset, &[]);
    assert_eq!(
        (fourth.code, report(&fourth)["documents"]["deleted"].as_u64()),
        (0, Some(2)),
        "{}",
        fourth.all_output()
    );
    assert_eq!(live_docs(&dataset).len(), 4);
}

#[cfg(unix)]
#[test]
fn an_unreadable_file_keeps_its_previous_version() {
    let mock = MockServer::start();
    let input = corpus(&[("a.txt", &text("apples")), ("b.txt", &text("bananas")), ("c.txt", &text("cherries"))]);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    assert_eq!(embed(cli(Some(&mock.base())), input.path(), &dataset, &[]).code, 0);
    let rows_before = live_rows(&dataset);

    // /proc/self/mem opens and then fails to read (EIO), whoever runs the test: a real I/O error in place of c.txt.
    std::fs::remove_file(input.path().join("c.txt")).expect("rm");
    std::os::unix::fs::symlink("/proc/self/mem", input.path().join("c.txt")).expect("link");
    let result = embed(cli(Some(&mock.base())), input.path(), &dataset, &[]);
    assert_eq!(result.code, 1, "{}", result.all_output());
    let r = report(&result);
    assert_eq!((r["documents"]["deleted"].as_u64(), r["documents"]["kept_unreadable"].as_u64()), (Some(0), Some(1)));
    assert!(r["read_errors"][0]["path"].as_str().is_some_and(|p| p.ends_with("c.txt")), "{r}");
    let rows_after = live_rows(&dataset);
    assert_eq!(rows_after.len(), rows_before.len());
    assert!(rows_after.iter().zip(&rows_before).all(|(a, b)| a.row_id == b.row_id && a.embedding == b.embedding));
}

#[cfg(unix)]
#[test]
fn symbolic_links_are_read_not_silently_ignored() {
    use std::os::unix::fs::symlink;
    let mock = MockServer::start();
    let real = corpus(&[
        ("a.txt", &text("apples")),
        ("b.txt", &text("bananas")),
        ("c.txt", &text("cherries")),
        ("more/d.txt", &text("dates")),
        ("more/e.txt", &text("elderberries")),
    ]);
    let links = tempfile::tempdir().expect("tempdir");
    for name in ["a.txt", "b.txt", "c.txt"] {
        symlink(real.path().join(name), links.path().join(name)).expect("link");
    }
    symlink(real.path().join("more"), links.path().join("more")).expect("link");
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");

    let first = embed(cli(Some(&mock.base())), links.path(), &dataset, &[]);
    assert_eq!(first.code, 0, "{}", first.all_output());
    let r = report(&first);
    assert_eq!((r["documents"]["new"].as_u64(), r["documents"]["files_skipped"].as_u64()), (Some(3), Some(1)), "{r}");
    let skipped = &r["not_read"][0];
    assert!(skipped["path"].as_str().is_some_and(|p| p.ends_with("more")), "{r}");
    assert!(skipped["reason"].as_str().is_some_and(|p| p.contains("--follow")), "{r}");
    assert!(first.stderr.contains("more") && first.stderr.contains("--follow"), "{}", first.stderr);

    let followed = embed(cli(Some(&mock.base())), links.path(), &dataset, &["--follow"]);
    assert_eq!(followed.code, 0, "{}", followed.all_output());
    let r = report(&followed);
    assert_eq!((r["documents"]["new"].as_u64(), r["documents"]["deleted"].as_u64()), (Some(2), Some(0)), "{r}");
    let docs: Vec<String> = live_docs(&dataset).into_iter().collect();
    assert_eq!(docs, ["a.txt", "b.txt", "c.txt", "more/d.txt", "more/e.txt"]);

    // A link whose target went missing (a share gone) keeps what was read through it, and fails the run.
    std::fs::remove_file(real.path().join("a.txt")).expect("rm");
    let broken = embed(cli(Some(&mock.base())), links.path(), &dataset, &["--follow"]);
    assert_eq!(broken.code, 1, "{}", broken.all_output());
    let r = report(&broken);
    assert_eq!((r["documents"]["deleted"].as_u64(), r["documents"]["kept_unreadable"].as_u64()), (Some(0), Some(1)));
    assert!(r["read_errors"][0]["reason"].as_str().is_some_and(|e| e.contains("missing target")), "{r}");
    assert_eq!(live_docs(&dataset).len(), 5);
}

#[test]
fn a_run_that_finds_no_documents_deletes_nothing() {
    let mock = MockServer::start();
    let (input, _out, dataset) = embedded_notes(&mock, "docs/n", 6);
    let published = manifest(&dataset);

    // A mistyped include, then an empty mount: refused before publishing, exit 2, with the overrides named.
    let typo = embed(cli(Some(&mock.base())), input.path(), &dataset, &["--include", "doc/**"]);
    let empty = tempfile::tempdir().expect("tempdir");
    let unmounted = embed(cli(Some(&mock.base())), empty.path(), &dataset, &[]);
    for refused in [&typo, &unmounted] {
        assert_eq!(refused.code, 2, "{}", refused.all_output());
        for needle in ["refusing to delete 6 of the dataset's 6 documents", "--allow-mass-delete", "--max-delete"] {
            assert!(refused.stderr.contains(needle), "{needle:?} not in {}", refused.stderr);
        }
        assert!(report(refused)["mass_delete"].is_string());
        assert_eq!(manifest(&dataset), published, "the published version is untouched");
    }
    assert_eq!(report(&typo)["documents"]["excluded"], 6, "the report shows where the documents went");

    // More than half gone is refused too; a limit that allows it, or the override, lets the run through.
    for i in 0..4 {
        std::fs::remove_file(input.path().join(format!("docs/n{i:02}.txt"))).expect("rm");
    }
    let most = embed(cli(Some(&mock.base())), input.path(), &dataset, &[]);
    assert_eq!(most.code, 2, "{}", most.all_output());
    assert!(most.stderr.contains("refusing to delete 4 of the dataset's 6 documents (67%"), "{}", most.stderr);
    let dry = embed(cli(None), input.path(), &dataset, &["--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.all_output());
    assert!(report(&dry)["report"]["mass_delete"].is_string(), "a dry run says the real run would stop");
    let allowed = embed(cli(Some(&mock.base())), input.path(), &dataset, &["--max-delete", "4"]);
    assert_eq!((allowed.code, report(&allowed)["documents"]["deleted"].as_u64()), (0, Some(4)), "{}", allowed.stderr);
    let bad = embed(cli(Some(&mock.base())), input.path(), &dataset, &["--max-delete", "many"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("--max-delete"), "{}", bad.stderr);
    let all = embed(cli(Some(&mock.base())), empty.path(), &dataset, &["--allow-mass-delete"]);
    assert_eq!((all.code, report(&all)["documents"]["deleted"].as_u64()), (0, Some(2)), "{}", all.all_output());
}

#[test]
fn pipeline_files_set_the_deletion_limit() {
    let mock = MockServer::start();
    let input = corpus(&[("a.txt", &text("apples")), ("b.txt", &text("bananas")), ("c.txt", &text("cherries"))]);
    let jobs = tempfile::tempdir().expect("tempdir");
    let file = jobs.path().join("job.toml");
    let job = |limit: &str| {
        format!(
            "[input]\npaths = [{:?}]\ninclude = [\"a.txt\"]\n\n[output]\ndataset = \"ds\"\n{limit}\n",
            input.path().display().to_string()
        )
    };
    let run_job = |limit: &str| {
        std::fs::write(&file, job(limit)).expect("write toml");
        run(cli(Some(&mock.base())).arg("run").arg(&file).args(["--include", "**", "--json"]))
    };
    assert_eq!(run_job("").code, 0);
    std::fs::write(&file, job("")).expect("write toml");
    let refused = run(cli(Some(&mock.base())).arg("run").arg(&file).arg("--json"));
    assert_eq!(refused.code, 2, "2 of 3 deleted is over the default half: {}", refused.all_output());
    let bad = run_job("max_delete = \"lots\"");
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("job.toml:7: output.max_delete"), "{}", bad.stderr);
    std::fs::write(&file, job("max_delete = \"70%\"")).expect("write toml");
    let allowed = run(cli(Some(&mock.base())).arg("run").arg(&file).arg("--json"));
    assert_eq!((allowed.code, report(&allowed)["documents"]["deleted"].as_u64()), (0, Some(2)), "{}", allowed.stderr);
}

fn search_docs(mock: &MockServer, dataset: &Path, query: &str) -> (crate::util::Run, Vec<String>) {
    let result = run(cli(Some(&mock.base())).arg("search").arg(dataset).arg(query).args(["-k", "3", "--json"]));
    let docs = json_lines(&result.stdout).iter().map(|h| h["doc"].as_str().unwrap_or_default().to_owned()).collect();
    (result, docs)
}

#[test]
fn search_answers_after_every_publish_even_before_the_index_is_updated() {
    let mock = MockServer::start();
    let (input, _out, dataset) = embedded_notes(&mock, "d", 30);
    assert_eq!(run(cli(None).arg("index").arg(&dataset)).code, 0);

    // A publish the index has not seen: the new document is found, the deleted one is not.
    std::fs::write(input.path().join("zebra.txt"), text("zebras")).expect("write");
    std::fs::remove_file(input.path().join("d05.txt")).expect("rm");
    assert_eq!(embed(cli(Some(&mock.base())), input.path(), &dataset, &["--no-index"]).code, 0);
    let (result, docs) = search_docs(&mock, &dataset, &text("zebras"));
    assert_eq!(result.code, 0, "{}", result.all_output());
    assert_eq!(docs[0], "zebra.txt");
    let (_, docs) = search_docs(&mock, &dataset, &text("topic5"));
    assert!(!docs.contains(&"d05.txt".to_owned()), "{docs:?}");

    // `embed` brings an existing index up to date as part of the run.
    std::fs::write(input.path().join("yak.txt"), text("yaks")).expect("write");
    let updated = embed(cli(Some(&mock.base())), input.path(), &dataset, &[]);
    assert_eq!(report(&updated)["index"]["mode"], "extended", "{}", updated.stdout);
    let indexed = run(cli(None).arg("index").arg(&dataset).arg("--json"));
    assert!(indexed.stdout.contains("\"mode\":\"current\""), "{}", indexed.stdout);
}

#[test]
fn searches_never_fail_while_runs_publish() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mock = MockServer::start();
    let (input, _out, dataset) = embedded_notes(&mock, "d", 30);
    assert_eq!(run(cli(None).arg("index").arg(&dataset)).code, 0);

    let stop = Arc::new(AtomicBool::new(false));
    let searchers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, base, dataset) = (Arc::clone(&stop), mock.base(), dataset.clone());
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let query = text("topic29");
                    let result = run(cli(Some(&base)).arg("search").arg(&dataset).arg(query).args(["-k", "3"]));
                    outcomes.push((result.code, result.stdout.lines().count(), result.stderr));
                }
                outcomes
            })
        })
        .collect();
    // A touch, additions, deletions (enough for a compaction, which renumbers every row), with and without the
    // index update, and index rebuilds, each publishing while the searches run.
    let path = |name: &str| input.path().join(name);
    for round in 0..24 {
        match round % 4 {
            0 => std::fs::write(path("d29.txt"), text("topic29")).expect("touch"),
            1 => std::fs::write(path(&format!("new{round}.txt")), text(&format!("fresh{round}"))).expect("add"),
            2 => {
                for i in (round / 2..30).step_by(9) {
                    let _ = std::fs::remove_file(path(&format!("d{i:02}.txt")));
                }
            }
            _ => {
                assert_eq!(run(cli(None).arg("index").arg(&dataset).arg("--rebuild")).code, 0);
                continue;
            }
        }
        let extra: &[&str] =
            if round % 2 == 0 { &["--allow-mass-delete"] } else { &["--allow-mass-delete", "--no-index"] };
        let published = embed(cli(Some(&mock.base())), input.path(), &dataset, extra);
        assert_eq!(published.code, 0, "{}", published.all_output());
    }
    for i in 0..29 {
        let _ = std::fs::remove_file(path(&format!("d{i:02}.txt")));
    }
    let compacted = embed(cli(Some(&mock.base())), input.path(), &dataset, &["--allow-mass-delete"]);
    assert_eq!(compacted.code, 0, "{}", compacted.all_output());
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let outcomes: Vec<_> = searchers.into_iter().flat_map(|s| s.join().expect("searcher")).collect();
    eprintln!("{} searches during the runs", outcomes.len());
    let failed: Vec<_> = outcomes.iter().filter(|(code, lines, _)| *code != 0 || *lines == 0).collect();
    assert!(outcomes.len() >= 10, "the searches should overlap the runs: {}", outcomes.len());
    assert!(failed.is_empty(), "{} of {} searches failed: {failed:?}", failed.len(), outcomes.len());
}

#[test]
fn out_naming_an_existing_file_is_a_usage_error() {
    let mock = MockServer::start();
    let input = corpus(&[("a.txt", &text("apples"))]);
    let out = tempfile::tempdir().expect("tempdir");
    let file = out.path().join("notes.txt");
    std::fs::write(&file, "not a dataset").expect("write");
    let result = embed(cli(Some(&mock.base())), input.path(), &file, &[]);
    assert_eq!(result.code, 2, "{}", result.all_output());
    let expected = format!("--out: {} is a file, not a dataset directory", file.display());
    assert!(result.stderr.contains(&expected), "{}", result.stderr);
    assert!(!result.stderr.contains("os error"), "{}", result.stderr);
    for command in ["index", "retry-failed"] {
        let result = run(cli(Some(&mock.base())).arg(command).arg(&file));
        assert_eq!(result.code, 2, "{command}: {}", result.all_output());
        assert!(result.stderr.contains("is a file, not a dataset directory"), "{command}: {}", result.stderr);
    }
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "not a dataset");
}

#[test]
fn a_run_that_fails_to_start_creates_nothing() {
    let mock = MockServer::start();
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("new-dataset");
    let missing = embed(cli(Some(&mock.base())), &out.path().join("no-such-input"), &dataset, &[]);
    assert_eq!(missing.code, 2, "{}", missing.all_output());
    assert!(missing.stderr.contains("does not exist"), "{}", missing.stderr);
    let input = corpus(&[("a.txt", &text("apples"))]);
    let bad_glob = embed(cli(Some(&mock.base())), input.path(), &dataset, &["--include", "a/["]);
    assert_eq!(bad_glob.code, 2, "{}", bad_glob.all_output());
    assert!(!dataset.exists(), "nothing is created for a run that cannot start");
    assert_eq!(mock.requests(), 0);
}

#[test]
fn each_cause_of_an_error_is_printed_once() {
    let mock = MockServer::start();
    let (input, _out, dataset) = embedded_notes(&mock, "n", 4);
    // A damaged data file: its footer is cut off.
    let data = crate::util::data_files(&dataset).remove(0);
    let bytes = std::fs::read(&data).expect("read");
    std::fs::write(&data, &bytes[..bytes.len() - 20]).expect("truncate");
    std::fs::write(input.path().join("n00.txt"), text("changed")).expect("write");
    let result = embed(cli(Some(&mock.base())), input.path(), &dataset, &[]);
    assert_eq!(result.code, 1, "{}", result.all_output());
    let error = result.stderr.lines().find(|l| l.starts_with("error:")).expect("an error line").to_owned();
    assert!(error.contains(&data.display().to_string()), "{error}");
    let cause = error.rsplit(": ").next().expect("cause");
    assert_eq!(error.matches(cause).count(), 1, "the cause repeats: {error}");
}

#[test]
fn paths_are_shown_normalised() {
    let mock = MockServer::start();
    let root = tempfile::tempdir().expect("tempdir");
    for (name, contents) in [("corpus/a.txt", text("apples")), ("corpus/b.bin", "\0\0binary".to_owned())] {
        let path = root.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, contents).expect("write");
    }
    std::fs::create_dir_all(root.path().join("jobs")).expect("mkdir");
    let file = root.path().join("jobs/job.toml");
    std::fs::write(&file, "[input]\npaths = [\"../corpus\"]\n\n[output]\ndataset = \"../out/./ds\"\n").expect("write");
    let result = run(cli(Some(&mock.base())).arg("run").arg(&file).arg("--json"));
    assert_eq!(result.code, 0, "{}", result.all_output());
    let r = report(&result);
    assert_eq!(r["dataset"].as_str(), Some(root.path().join("out/ds").display().to_string().as_str()), "{r}");
    assert_eq!(
        r["not_read"][0]["path"].as_str(),
        Some(root.path().join("corpus/b.bin").display().to_string().as_str())
    );
    assert!(!result.all_output().contains("/../") && !result.all_output().contains("/./"), "{}", result.all_output());
}

/// Runs `script` with `sh` in a mount namespace of its own (as root, or in a user namespace where they are allowed),
/// so it can mount a small tmpfs; `None` when this machine allows neither.
#[cfg(target_os = "linux")]
fn in_mount_namespace(script: &str, env: &[(&str, &Path)], base: &str) -> Option<std::process::Output> {
    let mut cmd = Command::new("unshare");
    if crate::util::is_root() {
        cmd.args(["--mount", "--propagation", "private"]);
    } else {
        cmd.args(["--user", "--map-root-user", "--mount"]);
    }
    cmd.args(["sh", "-c", script]).env("BIN", env!("CARGO_BIN_EXE_tars-index"));
    cmd.env("TARS_API_BASE", base).env("TARS_API_KEY", crate::util::mock::KEY).env_remove("RUST_LOG");
    for (name, path) in env {
        cmd.env(name, path);
    }
    let output = cmd.output().ok()?;
    (output.status.code() != Some(97)).then_some(output)
}

#[cfg(target_os = "linux")]
#[test]
fn a_run_that_fails_on_a_full_disk_still_prints_its_report() {
    let mock = MockServer::start();
    let small = corpus(&[("a.txt", &text("apples")), ("b.txt", &text("bananas"))]);
    // Words from a hash, so that the text does not compress away: about 600 KB for a disk of 256 KB.
    let big_files: Vec<(String, String)> = (0..300)
        .map(|i| {
            let words: Vec<String> =
                (0..300).map(|w| blake3::hash(format!("{i}-{w}").as_bytes()).to_hex()[..6].to_owned()).collect();
            (format!("big{i:03}.txt"), words.join(" "))
        })
        .collect();
    let refs: Vec<(&str, &str)> = big_files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let big = corpus(&refs);
    let out = tempfile::tempdir().expect("tempdir");
    let disk = out.path().join("disk");
    std::fs::create_dir_all(&disk).expect("mkdir");
    let script = r#"mount -t tmpfs -o size=256k tmpfs "$DISK" || exit 97
"$BIN" embed "$SMALL" --out "$DISK/ds" --json >"$OUT/1.out" 2>"$OUT/1.err"; echo $? >"$OUT/1.code"
"$BIN" embed "$SMALL" "$BIG" --out "$DISK/ds" --json >"$OUT/2.out" 2>"$OUT/2.err"; echo $? >"$OUT/2.code"
"$BIN" search "$DISK/ds" "apples" --json >"$OUT/3.out" 2>"$OUT/3.err"; echo $? >"$OUT/3.code"
cp -r "$DISK/ds" "$OUT/copy""#;
    let env = [("DISK", disk.as_path()), ("SMALL", small.path()), ("BIG", big.path()), ("OUT", out.path())];
    let Some(output) = in_mount_namespace(script, &env, &mock.base()) else {
        assert!(!crate::util::is_root(), "root can always make a mount namespace");
        eprintln!("skipped: this machine allows no mount namespace for a small disk");
        return;
    };
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let read = |name: &str| std::fs::read_to_string(out.path().join(name)).expect(name);
    for name in ["1.out", "1.err", "2.out", "2.err", "3.out", "3.err"] {
        assert!(!read(name).contains(crate::util::mock::KEY), "the key leaked into {name}");
    }
    assert_eq!(read("1.code").trim(), "0", "{}", read("1.err"));
    assert_eq!(read("2.code").trim(), "1", "{}", read("2.err"));
    let reported: serde_json::Value = serde_json::from_str(read("2.out").trim()).expect("a JSON report");
    let error = reported["status"]["failed"]["error"].as_str().unwrap_or_else(|| panic!("{reported}"));
    assert!(error.contains("No space left on device"), "{reported}");
    assert!(reported["chunks"]["embedded"].as_u64() > Some(0), "the report says what was done: {reported}");
    let stderr = read("2.err");
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(line.matches("No space left on device").count(), 1, "{line}");
    assert!(line.contains("previous version"), "{line}");
    assert_eq!(read("3.code").trim(), "0", "the previous version still answers: {}", read("3.err"));
    assert!(read("3.out").contains("a.txt"), "{}", read("3.out"));
    assert_eq!(manifest(&out.path().join("copy"))["generation"], 1);
    let runs = std::fs::read_dir(out.path().join("copy/runs")).expect("runs");
    let names: Vec<String> = runs.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "a report the full disk refused leaves no temp file: {names:?}");
}

fn paragraphs(doc: &str, count: usize, changed: Option<usize>) -> String {
    (0..count)
        .map(|n| {
            let extra = if changed == Some(n) { " It was rewritten since." } else { "" };
            format!("Paragraph {n} of {doc} talks about {doc}word{n} and {doc}topic with more words.{extra}")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

const SMALL_CHUNKS: [&str; 4] = ["--chunk-tokens", "30", "--chunk-overlap", "0"];

fn cut_short(file: &Path) {
    let bytes = std::fs::read(file).expect("read");
    std::fs::write(file, &bytes[..bytes.len() - 30]).expect("truncate");
}

#[test]
fn a_damaged_data_file_is_repaired_and_only_what_it_held_is_embedded_again() {
    let mock = MockServer::start();
    let input = corpus(&[("a.txt", &paragraphs("a", 3, None)), ("b.txt", &paragraphs("b", 2, None))]);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    assert_eq!(embed(cli(Some(&mock.base())), input.path(), &dataset, &SMALL_CHUNKS).code, 0);
    std::fs::write(input.path().join("c.txt"), paragraphs("c", 2, None)).expect("write");
    assert_eq!(embed(cli(Some(&mock.base())), input.path(), &dataset, &SMALL_CHUNKS).code, 0);
    // a.txt's new version: two paragraphs as before (their vectors reused), one rewritten; all in the third file.
    std::fs::write(input.path().join("a.txt"), paragraphs("a", 3, Some(2))).expect("write");
    assert_eq!(embed(cli(Some(&mock.base())), input.path(), &dataset, &SMALL_CHUNKS).code, 0);
    assert_eq!(run(cli(None).arg("index").arg(&dataset)).code, 0);
    let files = crate::util::data_files(&dataset);
    assert_eq!(files.len(), 3, "{files:?}");
    cut_short(&files[2]);

    let stuck = embed(cli(Some(&mock.base())), input.path(), &dataset, &SMALL_CHUNKS);
    assert_eq!(stuck.code, 1, "{}", stuck.all_output());
    assert!(stuck.stderr.contains(&format!("tars-index repair {}", dataset.display())), "{}", stuck.stderr);

    let repaired = run(cli(None).arg("repair").arg(&dataset).arg("--json"));
    assert_eq!(repaired.code, 0, "{}", repaired.all_output());
    let r: serde_json::Value = serde_json::from_str(repaired.stdout.trim()).expect("json");
    let damaged = r["repair"]["damaged"].as_array().expect("damaged");
    assert_eq!(damaged.len(), 1, "{r}");
    assert!(files[2].ends_with(damaged[0]["path"].as_str().expect("path")), "{r}");
    assert_eq!((r["repair"]["rows_dropped"].as_u64(), r["repair"]["documents_to_redo"].as_u64()), (Some(3), Some(1)));
    let name = damaged[0]["path"].as_str().expect("path").replace('/', "-");
    assert!(dataset.join("damaged").join(name).exists(), "the damaged file is kept for inspection");
    let (found, _) = search_docs(&mock, &dataset, &text("anything"));
    assert_eq!(found.code, 0, "the repaired version answers: {}", found.all_output());

    let sent = mock.texts().len();
    let next = embed(cli(Some(&mock.base())), input.path(), &dataset, &SMALL_CHUNKS);
    assert_eq!(next.code, 0, "{}", next.all_output());
    let resent: Vec<String> = mock.texts()[sent..].to_vec();
    assert_eq!(resent.len(), 1, "only the text whose only vector was in the damaged file: {resent:?}");
    assert!(resent[0].contains("rewritten"), "{resent:?}");
    let fresh = out.path().join("fresh");
    assert_eq!(embed(cli(Some(&mock.base())), input.path(), &fresh, &SMALL_CHUNKS).code, 0);
    assert_eq!(crate::util::live_content(&dataset), crate::util::live_content(&fresh));
}

#[test]
fn overwrite_cannot_skip_the_deletion_guard_by_an_unreadable_documents_table() {
    let mock = MockServer::start();
    let (input, _out, dataset) = embedded_notes(&mock, "n", 4);
    let docs_table = dataset.join(manifest(&dataset)["docs_file"].as_str().expect("docs file"));
    cut_short(&docs_table);
    let empty = tempfile::tempdir().expect("tempdir");
    let refused = embed(cli(Some(&mock.base())), empty.path(), &dataset, &["--overwrite"]);
    assert_eq!(refused.code, 1, "{}", refused.all_output());
    assert!(refused.stderr.contains("--allow-mass-delete"), "{}", refused.stderr);
    assert_eq!(manifest(&dataset)["generation"], 1);
    let replaced = embed(cli(Some(&mock.base())), input.path(), &dataset, &["--overwrite", "--allow-mass-delete"]);
    assert_eq!(replaced.code, 0, "{}", replaced.all_output());
    assert_eq!(live_docs(&dataset).len(), 4);
}

#[test]
fn a_damaged_documents_table_is_repaired_by_the_next_run_with_repair_without_paying_again() {
    let mock = MockServer::start();
    let input = corpus(&[("a.txt", &paragraphs("a", 3, None)), ("b.txt", &paragraphs("b", 2, None))]);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    assert_eq!(embed(cli(Some(&mock.base())), input.path(), &dataset, &SMALL_CHUNKS).code, 0);
    let docs_table = dataset.join(manifest(&dataset)["docs_file"].as_str().expect("docs file"));
    cut_short(&docs_table);
    let stuck = embed(cli(Some(&mock.base())), input.path(), &dataset, &SMALL_CHUNKS);
    assert_eq!(stuck.code, 1, "{}", stuck.all_output());
    assert!(stuck.stderr.contains("--repair"), "{}", stuck.stderr);

    let sent = mock.texts().len();
    let mut flags = SMALL_CHUNKS.to_vec();
    flags.push("--repair");
    let repaired = embed(cli(Some(&mock.base())), input.path(), &dataset, &flags);
    assert_eq!(repaired.code, 0, "{}", repaired.all_output());
    assert!(repaired.stderr.contains("every document is read again"), "{}", repaired.stderr);
    assert_eq!(mock.texts().len(), sent, "every vector is reused");
    let r = report(&repaired);
    assert_eq!((r["documents"]["new"].as_u64(), r["chunks"]["reused"].as_u64()), (Some(2), Some(5)), "{r}");
    let fresh = out.path().join("fresh");
    assert_eq!(embed(cli(Some(&mock.base())), input.path(), &fresh, &SMALL_CHUNKS).code, 0);
    assert_eq!(crate::util::live_content(&dataset), crate::util::live_content(&fresh));
    let m = manifest(&dataset);
    assert_eq!(m["rows"], m["live_rows"], "the old rows left once the run had reused their vectors: {m}");
}
