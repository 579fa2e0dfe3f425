//! The live progress line (a terminal only) and a log writer that does not tear it.

use std::io::{IsTerminal, Write};
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
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        if let Ok(mut slot) = active().lock() {
            *slot = Some(bar.clone());
        }
        let ticker = tokio::spawn({
            let bar = bar.clone();
            async move {
                let started = Instant::now();
                let mut interval = tokio::time::interval(Duration::from_millis(200));
                loop {
                    interval.tick().await;
                    bar.set_message(status_line(&stats, started.elapsed()));
                    bar.tick();
                }
            }
        });
        Self { bar, ticker }
    }
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

fn status_line(stats: &Stats, elapsed: Duration) -> String {
    let g = Stats::get;
    let (chunks, embedded, failed) = (g(&stats.chunks), g(&stats.chunks_embedded), g(&stats.chunks_failed));
    let tokens = g(&stats.tokens_embedded);
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = tokens as f64 / secs;
    let eta = if stats.source_done.load(std::sync::atomic::Ordering::Relaxed) && embedded > 0 {
        let left = chunks.saturating_sub(embedded + failed) as f64;
        let per_chunk = secs / embedded as f64;
        format!(" eta {:.0}s", left * per_chunk)
    } else {
        String::new()
    };
    format!(
        "docs {} | chunks {embedded}/{chunks} embedded{} | tokens {tokens} ({rate:.0}/s) | requests {} ({} in flight, {} retries){eta}",
        g(&stats.documents),
        if failed > 0 { format!(", {failed} failed") } else { String::new() },
        g(&stats.requests),
        g(&stats.requests_in_flight),
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
