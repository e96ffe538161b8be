//! What a person watching `berth mirror` sees: on a terminal, a line per image done and a
//! bar under them (images done of those chosen so far, bytes copied, blobs skipped, errors),
//! redrawn at most ten times a second; in a log (not a terminal), the lines only; with
//! `--json`, nothing but the report.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the bar is redrawn at most.
const REDRAW: Duration = Duration::from_millis(100);
const BAR_WIDTH: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Quiet,
    Lines,
    Bar,
}

pub struct Progress {
    mode: Mode,
    chosen: AtomicU64,
    done: AtomicU64,
    bytes: AtomicU64,
    skipped: AtomicU64,
    errors: AtomicU64,
    drawn: Mutex<Option<Instant>>,
}

impl Progress {
    /// Nothing on stderr (`--json`, a spawned task).
    pub fn quiet() -> Progress {
        Progress::with(Mode::Quiet)
    }

    /// A bar when stderr is a terminal, lines otherwise.
    pub fn for_stderr() -> Progress {
        Progress::with(if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        })
    }

    fn with(mode: Mode) -> Progress {
        Progress {
            mode,
            chosen: AtomicU64::new(0),
            done: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            drawn: Mutex::new(None),
        }
    }

    /// `n` more images were chosen (a mirror's tags were listed).
    pub fn chosen(&self, n: usize) {
        self.chosen.fetch_add(n as u64, Ordering::Relaxed);
        self.draw(false);
    }

    pub fn blob_copied(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.draw(false);
    }

    pub fn blob_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        self.draw(false);
    }

    /// An image finished (copied, up to date, skipped or failed): its line, then the bar.
    pub fn image(&self, line: &str, failed: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        match self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("berth mirror: {line}"),
            Mode::Bar => {
                // Clear the bar, print the line above where it was, draw the bar again.
                eprint!("\r\x1b[2K");
                eprintln!("berth mirror: {line}");
                self.draw(true);
            }
        }
    }

    /// Clears the bar before the summary.
    pub fn finish(&self) {
        if self.mode == Mode::Bar {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }

    fn draw(&self, now: bool) {
        if self.mode != Mode::Bar {
            return;
        }
        let mut last = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        if !now && last.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        *last = Some(Instant::now());
        eprint!("\r\x1b[2K{}", self.bar());
        let _ = std::io::stderr().flush();
    }

    /// `[#########...............] 12/50 images  340.2 MB  18 blobs there  1 error`
    fn bar(&self) -> String {
        let (done, chosen) = (
            self.done.load(Ordering::Relaxed),
            self.chosen.load(Ordering::Relaxed),
        );
        let filled = (done as usize * BAR_WIDTH)
            .checked_div(chosen as usize)
            .unwrap_or(0)
            .min(BAR_WIDTH);
        let errors = self.errors.load(Ordering::Relaxed);
        format!(
            "[{}{}] {done}/{chosen} images  {}  {} blobs there{}",
            "#".repeat(filled),
            ".".repeat(BAR_WIDTH - filled),
            human(self.bytes.load(Ordering::Relaxed)),
            self.skipped.load(Ordering::Relaxed),
            match errors {
                0 => String::new(),
                1 => "  1 error".to_owned(),
                n => format!("  {n} errors"),
            }
        )
    }
}

/// Bytes in decimal units, as `docker pull` shows them.
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_images_done_and_counts_bytes_and_errors() {
        let p = Progress::with(Mode::Quiet);
        p.chosen(4);
        p.blob_copied(340_200_000);
        p.blob_skipped();
        p.image("a:1", false);
        p.image("a:2", true);
        assert_eq!(
            p.bar(),
            "[############............] 2/4 images  340.2 MB  1 blobs there  1 error"
        );
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_500_000_000), "1.5 GB");
        let empty = Progress::with(Mode::Quiet);
        assert!(empty.bar().starts_with("[........................] 0/0"));
    }
}
