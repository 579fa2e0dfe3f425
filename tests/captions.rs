//! Images in a corpus, through the CLI against the mock server: described by a vision model (`--caption-model`),
//! sent scaled to the providers' limits as data URLs, cached by content so no run pays twice, searchable by their
//! captions, estimated by `--dry-run`, and skipped one by one when they fail while the run goes on.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::util::chat::{End, Reply};
use crate::util::mock::MockServer;
use crate::util::{cli, json_lines, run};

const MODEL: &str = "tars/gpt-4o-mini";

/// A PNG (or JPEG) of `width` × `height` with some structure, so it is not trivially compressible.
fn image_bytes(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image).write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// Writes `bytes` to `path` with an mtime `minutes` ago, as if written long before the run (a file modified
/// within the last seconds is read again whatever its stat says).
fn write_aged(path: &Path, bytes: &[u8], minutes: u64) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
    let file = std::fs::File::options().write(true).open(path).expect("open");
    file.set_modified(SystemTime::now() - Duration::from_secs(60 * minutes)).expect("set mtime");
}

/// A corpus of one text file, a large PNG (scaled before sending) and a small JPEG.
fn images_corpus() -> (tempfile::TempDir, PathBuf) {
    let input = tempfile::tempdir().expect("tempdir");
    let text = "Knead the dough for ten minutes, then let it rise for an hour.";
    write_aged(&input.path().join("notes.txt"), text.as_bytes(), 60);
    write_aged(&input.path().join("photos/bike.png"), &image_bytes(2000, 1000, image::ImageFormat::Png), 60);
    write_aged(&input.path().join("chart.jpg"), &image_bytes(300, 200, image::ImageFormat::Jpeg), 60);
    let dataset = input.path().join("ds");
    (input, dataset)
}

const BIKE: &str = "A red bicycle leaning on a brick wall beside a lamppost.";
const CHART: &str = "A bar chart titled \"Quarterly sourdough sales\" with four bars.";

fn script_captions(mock: &MockServer) {
    // 2000 × 1000 arrives as 1568 × 784; 300 × 200 as it is.
    mock.chat.for_image((1568, 784), Reply::text(&["A red bicycle leaning ", "on a brick wall beside a lamppost."]));
    mock.chat
        .for_image((300, 200), Reply::text(&["A bar chart titled \"Quarterly sourdough sales\" ", "with four bars."]));
}

fn embed(mock: &MockServer, input: &Path, dataset: &Path, args: &[&str]) -> crate::util::Run {
    run(cli(Some(&mock.base())).arg("embed").arg(input).arg("--out").arg(dataset).args(args))
}

fn report_of(out: &crate::util::Run) -> Value {
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.all_output()))
}

fn search(mock: &MockServer, dataset: &Path, query: &str, args: &[&str]) -> Vec<Value> {
    let found = run(cli(Some(&mock.base())).arg("search").arg(dataset).arg(query).arg("--json").args(args));
    assert_eq!(found.code, 0, "{}", found.all_output());
    json_lines(&found.stdout)
}

#[test]
fn images_are_captioned_from_scaled_data_urls_cached_by_content_and_found_by_their_captions() {
    let mock = MockServer::start();
    let (input, ds) = images_corpus();
    script_captions(&mock);

    let out = embed(&mock, input.path(), &ds, &["--caption-model", MODEL, "--json"]);
    assert_eq!(out.code, 0, "{}", out.all_output());
    assert_eq!(mock.chat.violations(), Vec::<String>::new());
    let mut sizes = mock.chat.images();
    sizes.sort_unstable();
    assert_eq!(sizes, [(300, 200), (1568, 784)], "one request per image, scaled to the 1568-px long edge");
    for request in mock.chat.requests() {
        assert_eq!(request["model"], "gpt-4o-mini", "the tars/ prefix is stripped");
        assert_eq!(request["max_tokens"], 1024);
        let parts = request["messages"][0]["content"].as_array().expect("content parts");
        assert!(parts[0]["text"].as_str().is_some_and(|t| t.contains("Transcribe all visible text")));
        assert_eq!(parts[1]["image_url"]["detail"], "high");
    }
    let report = report_of(&out);
    assert_eq!(report["images"]["captioned"], 2, "{report}");
    assert_eq!(report["images"]["cached"], 0);
    assert_eq!(report["caption_model"], MODEL);
    assert!(report["images"]["prompt_tokens"].as_u64().is_some_and(|t| t > 0), "{report}");
    assert_eq!(report["documents"]["new"], 3);
    let indexed = run(cli(Some(&mock.base())).arg("index").arg(&ds));
    assert_eq!(indexed.code, 0, "{}", indexed.all_output());

    // Each caption is its image's text, and the image is found by it, with format = image and its file.
    let hits = search(&mock, &ds, "brick wall lamppost", &["-k", "1", "--mode", "keyword"]);
    assert_eq!(hits[0]["doc"], "photos/bike.png", "{hits:?}");
    assert_eq!(hits[0]["text"], BIKE);
    assert_eq!(hits[0]["format"], "image");
    assert!(hits[0]["file"].as_str().is_some_and(|f| f.ends_with("photos/bike.png")), "{hits:?}");
    let hits = search(&mock, &ds, "sourdough sales", &["-k", "3", "--filter", "format = 'image'"]);
    let docs: Vec<&str> = hits.iter().filter_map(|h| h["doc"].as_str()).collect();
    assert_eq!(docs.len(), 2, "the filter keeps the images: {docs:?}");
    assert_eq!(docs[0], "chart.jpg");
    assert_eq!(hits[0]["text"], CHART);

    // Unchanged: nothing is read again, nothing sent.
    let requests = mock.chat.requests().len();
    let out = embed(&mock, input.path(), &ds, &["--caption-model", MODEL, "--json"]);
    assert_eq!(out.code, 0, "{}", out.all_output());
    assert_eq!(mock.chat.requests().len(), requests);
    assert_eq!(report_of(&out)["documents"]["unchanged"], 3);

    // Rewritten with the same bytes (a new mtime), and then a run from scratch: the captions come from the cache.
    let bike = input.path().join("photos/bike.png");
    write_aged(&bike, &std::fs::read(&bike).expect("read"), 30);
    let out = embed(&mock, input.path(), &ds, &["--caption-model", MODEL, "--json"]);
    assert_eq!(out.code, 0, "{}", out.all_output());
    let rewritten = report_of(&out);
    assert_eq!(
        (rewritten["images"]["cached"].as_u64(), rewritten["documents"]["unchanged"].as_u64()),
        (Some(1), Some(3))
    );
    let out = embed(&mock, input.path(), &ds, &["--caption-model", MODEL, "--json", "--overwrite"]);
    assert_eq!(out.code, 0, "{}", out.all_output());
    let again = report_of(&out);
    assert_eq!((again["images"]["cached"].as_u64(), again["images"]["captioned"].as_u64()), (Some(2), Some(0)));
    assert_eq!(mock.chat.requests().len(), requests, "no run paid for a caption twice");

    // Without a caption model images are not read, and the run says so: a new one is left out, a changed one keeps
    // the caption it had.
    write_aged(&input.path().join("photos/new.gif"), &image_bytes(120, 80, image::ImageFormat::Gif), 20);
    write_aged(&input.path().join("chart.jpg"), &image_bytes(301, 200, image::ImageFormat::Jpeg), 20);
    let out = embed(&mock, input.path(), &ds, &["--json"]);
    assert_eq!(out.code, 0, "{}", out.all_output());
    let skipped = report_of(&out);
    assert_eq!(skipped["images"]["skipped"], 2, "{skipped}");
    assert_eq!(skipped["documents"]["deleted"], 0);
    let hits = search(&mock, &ds, "sourdough", &["-k", "5", "--mode", "keyword"]);
    let docs: Vec<&str> = hits.iter().filter_map(|h| h["doc"].as_str()).collect();
    assert_eq!(docs, ["chart.jpg"], "the old caption stays, the new image is not in the dataset");
    let text = embed(&mock, input.path(), &ds, &[]);
    assert!(text.stdout.contains("images: 2 skipped (no --caption-model"), "{}", text.stdout);
    assert_eq!(mock.chat.requests().len(), requests);

    // Another caption model writes new captions: every image is read and described again.
    mock.chat.for_image((1568, 784), Reply::text(&["A bicycle."]));
    mock.chat.for_image((301, 200), Reply::text(&["A chart."]));
    mock.chat.for_image((120, 80), Reply::text(&["A small gradient."]));
    let out = embed(&mock, input.path(), &ds, &["--caption-model", "tars/gpt-4o", "--json"]);
    assert_eq!(out.code, 0, "{}", out.all_output());
    assert_eq!(report_of(&out)["images"]["captioned"], 3);
    assert_eq!(mock.chat.violations(), Vec::<String>::new());
    let hits = search(&mock, &ds, "bicycle", &["-k", "1", "--mode", "keyword"]);
    assert_eq!(hits[0]["text"], "A bicycle.");
    assert_eq!(manifest_caption_model(&ds), "tars/gpt-4o");
}

fn manifest_caption_model(dataset: &Path) -> String {
    crate::util::manifest(dataset)["caption_model"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_failing_image_is_skipped_with_a_dead_letter_entry_and_the_run_goes_on() {
    let mock = MockServer::start();
    let (input, ds) = images_corpus();
    // A PNG by its first bytes that does not decode: failed before anything is sent.
    write_aged(&input.path().join("broken.png"), b"\x89PNG\r\n\x1a\nnot really", 60);
    mock.chat.for_image((1568, 784), Reply::refusal("I can't describe this image."));
    mock.chat.for_image(
        (300, 200),
        Reply::status(
            400,
            serde_json::json!({"error": {"message": "Invalid image.", "type": "invalid_request_error"}}),
        ),
    );

    let out = embed(&mock, input.path(), &ds, &["--caption-model", MODEL, "--json"]);
    assert_eq!(out.code, 1, "some images were not captioned: {}", out.all_output());
    let first = report_of(&out);
    assert_eq!(first["images"]["failed"], 3, "{first}");
    assert_eq!(first["status"]["partial"]["failed_chunks"], 0, "{first}");
    // The refusal was paid for: its usage counts.
    assert_eq!(first["images"]["prompt_tokens"], 300, "{first}");
    let all = out.all_output();
    for (file, why) in [
        ("broken.png", "cannot be decoded"),
        ("bike.png", "refused to describe it: I can't describe this image."),
        ("chart.jpg", "Invalid image."),
    ] {
        assert!(all.lines().any(|l| l.contains(file) && l.contains(why)), "{file}: {why}\n{all}");
    }
    assert!(out.stderr.contains("3 images could not be captioned"), "{}", out.stderr);
    assert_eq!(mock.chat.requests().len(), 2, "the broken image was never sent");

    // The rest of the run is published: the text document is there and searchable.
    let indexed = run(cli(Some(&mock.base())).arg("index").arg(&ds));
    assert_eq!(indexed.code, 0, "{}", indexed.all_output());
    let hits = search(&mock, &ds, "dough", &["-k", "5"]);
    let docs: Vec<&str> = hits.iter().filter_map(|h| h["doc"].as_str()).collect();
    assert_eq!(docs, ["notes.txt"]);

    // Each failure is a dead-letter line in the caption log, with its file and reason.
    let mut failures = Vec::new();
    for log in std::fs::read_dir(ds.join("captions")).expect("captions/") {
        let text = std::fs::read_to_string(log.expect("entry").path()).expect("read");
        failures.extend(json_lines(&text).into_iter().filter(|l| l["error"].is_string()));
    }
    let mut files: Vec<String> = failures
        .iter()
        .map(|l| Path::new(l["file"].as_str().expect("file")).file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["bike.png", "broken.png", "chart.jpg"]);

    // The next run tries the failed images again (the model now describes them); the broken one fails again. A
    // stream cut mid-caption is asked again: nothing was shown to anyone.
    mock.chat.for_image((1568, 784), Reply::text(&["A red bicycle ", "leaning"]).cut(2, End::Reset));
    script_captions(&mock);
    let out = embed(&mock, input.path(), &ds, &["--caption-model", MODEL, "--json"]);
    assert_eq!(out.code, 1, "{}", out.all_output());
    let again = report_of(&out);
    assert_eq!((again["images"]["captioned"].as_u64(), again["images"]["failed"].as_u64()), (Some(2), Some(1)));
    assert!(again["caption_failures"][0]["path"].as_str().is_some_and(|p| p.ends_with("broken.png")), "{again}");
    assert_eq!(mock.chat.requests().len(), 2 + 3, "the cut caption was asked for twice");
    let hits = search(&mock, &ds, "brick wall lamppost", &["-k", "1", "--mode", "keyword"]);
    assert_eq!(hits[0]["doc"], "photos/bike.png");
    assert_eq!(hits[0]["text"], BIKE);
}

#[test]
fn a_dry_run_estimates_the_image_tokens_by_the_documented_formulas_and_sends_nothing() {
    let mock = MockServer::start();
    let (input, ds) = images_corpus();
    let out = embed(&mock, input.path(), &ds, &["--caption-model", "tars/gpt-4o", "--dry-run", "--json"]);
    assert_eq!(out.code, 0, "{}", out.all_output());
    let report = &report_of(&out)["report"];
    assert_eq!(report["images"]["to_caption"], 2, "{report}");
    // gpt-4o at high detail: 1568 × 784 → 1536 × 768 → 3 × 2 tiles = 85 + 6 × 170; 300 × 200 → one tile.
    assert_eq!(report["images"]["estimated_image_tokens"], (85 + 6 * 170) + (85 + 170));
    assert!(report["images"]["estimated_cost_usd"].as_f64().is_some_and(|usd| usd > 0.0), "{report}");
    assert!(mock.chat.requests().is_empty());
    assert!(!ds.exists(), "a dry run writes nothing");

    let text = embed(&mock, input.path(), &ds, &["--caption-model", "tars/gpt-4o", "--dry-run"]);
    assert!(text.stdout.contains("would caption 2 images with tars/gpt-4o: ≈ 1360 prompt tokens"), "{}", text.stdout);
}

#[test]
fn captions_of_a_dataset_on_s3_go_up_with_it_so_another_machine_pays_for_none() {
    let Some(s3) = crate::util::s3::S3Server::start() else { return };
    s3.bucket("corpora");
    let mock = MockServer::start();
    let (input, _) = images_corpus();
    script_captions(&mock);
    let scratch = tempfile::tempdir().expect("tempdir");
    let url = "s3://corpora/photos";
    let embed_on = |mirror: &str, args: &[&str]| {
        let mut cmd = cli(Some(&mock.base()));
        s3.env(&mut cmd, &scratch.path().join(mirror));
        run(cmd.arg("embed").arg(input.path()).args(["--out", url, "--caption-model", MODEL, "--json"]).args(args))
    };
    let out = embed_on("machine-a", &[]);
    assert_eq!(out.code, 0, "{}", out.all_output());
    assert_eq!(report_of(&out)["images"]["captioned"], 2);
    let logs: Vec<(String, u64)> = s3.objects("corpora", "photos/captions/");
    assert_eq!(logs.len(), 1, "{logs:?}");

    // Another machine, with an empty mirror, rebuilds the dataset from scratch: every caption comes from the store.
    let out = embed_on("machine-b", &["--overwrite"]);
    assert_eq!(out.code, 0, "{}", out.all_output());
    let again = report_of(&out);
    assert_eq!((again["images"]["cached"].as_u64(), again["images"]["captioned"].as_u64()), (Some(2), Some(0)));
    assert_eq!(mock.chat.requests().len(), 2);
}
