//! The live progress line (a terminal only) and a log writer that does not tear it.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::Stats;

/// The bar currently on screen, so log lines can be printed above it.
static ACTIVE: OnceLock<Mutex<Option<ProgressBar>>> = OnceLock::new();

fn active() -> &'static Mutex<Option<ProgressBar>> {
    ACTIVE.get_or_init(|| Mutex::new(None))
}

/// Whether to draw progress at all: only when a person is watching.
pub fn wanted(quiet: bool) -> bool {
    !quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// Redraws a one-line status from the run's counters until dropped.
pub struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(stats: Arc<Stats>) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
        bar.set_style(spinner_style());
        if let Ok(mut slot) = active().lock() {
            *slot = Some(bar.clone());
        }
        let ticker = tokio::spawn({
            let bar = bar.clone();
            async move {
                let started = Instant::now();
                let mut interval = tokio::time::interval(Duration::from_millis(200));
                let mut with_total = false;
                loop {
                    interval.tick().await;
                    // Once the pre-scan has the total, the line becomes a bar with percentage, rate and ETA
                    // (indicatif's, from the bytes read over time).
                    if !with_total && stats.prescan_done.load(Ordering::Relaxed) {
                        let total = Stats::get(&stats.input_bytes_total);
                        if total > 0 {
                            bar.set_message(status_line(&stats, started.elapsed(), true));
                            bar.set_length(total);
                            bar.set_style(bar_style());
                            bar.reset_eta();
                            with_total = true;
                        }
                    }
                    let read = Stats::get(&stats.input_bytes_planned);
                    bar.set_position(if with_total { read.min(bar.length().unwrap_or(read)) } else { read });
                    bar.set_message(status_line(&stats, started.elapsed(), with_total));
                    bar.tick();
                }
            }
        });
        Self { bar, ticker }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{elapsed_precise} [{bar:24}] {percent:>3}% {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} \
         eta {eta} {msg}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| spinner_style())
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
        if let Ok(mut slot) = active().lock() {
            *slot = None;
        }
    }
}

fn status_line(stats: &Stats, elapsed: Duration, with_total: bool) -> String {
    let g = Stats::get;
    let (chunks, embedded, failed) = (g(&stats.chunks), g(&stats.chunks_embedded), g(&stats.chunks_failed));
    let failed = if failed > 0 { format!(", {failed} failed") } else { String::new() };
    let in_flight = g(&stats.requests_in_flight);
    if with_total {
        // The bar says how far and how fast; the message what is being done.
        return format!("| {} docs, {embedded}/{chunks} chunks{failed}, {in_flight} in flight", g(&stats.documents));
    }
    let tokens = g(&stats.tokens_embedded);
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = tokens as f64 / secs;
    let scanned = if stats.prescan_done.load(Ordering::Relaxed) {
        String::new()
    } else {
        format!(" | scanning: {} files so far", g(&stats.input_files_total))
    };
    format!(
        "docs {} | chunks {embedded}/{chunks} embedded{failed} | tokens {tokens} ({rate:.0}/s) | requests {} ({in_flight} in flight, {} retries){scanned}",
        g(&stats.documents),
        g(&stats.requests),
        g(&stats.retries),
    )
}

/// A `tracing` writer for stderr that hides the progress line while a log line is printed.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

pub struct LineBuffer(Vec<u8>);

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.0);
        let write = || {
            let _ = std::io::stderr().lock().write_all(&bytes);
        };
        let bar = active().lock().ok().and_then(|slot| slot.clone());
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        LineBuffer(Vec::with_capacity(256))
    }
}
