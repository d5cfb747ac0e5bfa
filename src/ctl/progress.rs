//! Progress of long commands: dog's bar on a terminal stdout (`vdi create
//! -P`, `vdi clone`), and sheepctl's own line on a terminal stderr (byte
//! count, rate, ETA) for `vdi read`, `vdi write` and, when stdout is not a
//! terminal, `vdi create -P` / `vdi clone`. When neither is a terminal
//! nothing is printed, so redirected output stays byte-identical to dog's.

use super::out;
use crate::dogfmt;
use std::io::Write;
use std::time::{Duration, Instant};

fn isatty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

fn screen_width() -> i32 {
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } < 0 {
        return 80;
    }
    ws.ws_col as i32
}

/// dog's `show_progress` (the caller checked that stdout is a terminal).
fn dog_bar(done: u64, total: u64) {
    let w = screen_width();
    if w <= 0 {
        return;
    }
    let w = w as usize;
    let bar = w.saturating_sub(30);
    let mut s = format!("{:5.1} % [", done as f64 / total as f64 * 100.0);
    for i in 0..bar {
        let lo = total as u128 * i as u128 / bar as u128;
        let hi = total as u128 * (i as u128 + 1) / bar as u128;
        if hi <= done as u128 {
            s.push('=');
        } else if lo <= done as u128 && (done as u128) < hi {
            s.push('>');
        } else {
            s.push(' ');
        }
    }
    s.push_str(&format!(
        "] {} / {}",
        dogfmt::size_str(done, false),
        dogfmt::size_str(total, false)
    ));
    s.truncate(w.saturating_sub(1));
    while s.len() < w {
        s.push(' ');
    }
    s.truncate(w);
    out(&format!("\r{s}"));
    if done == total {
        out("\n");
    }
    let _ = std::io::stdout().flush();
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    /// dog's bar on stdout.
    DogBar,
    /// Our line on stderr.
    Line,
}

/// One command's progress display.
pub struct Progress {
    mode: Mode,
    what: &'static str,
    total: u64,
    start: Instant,
    last: Option<Instant>,
}

impl Progress {
    /// For `vdi read` / `vdi write`: a line on stderr when it is a terminal.
    pub fn stderr(what: &'static str, total: u64) -> Progress {
        let mode = if isatty(libc::STDERR_FILENO) {
            Mode::Line
        } else {
            Mode::Off
        };
        Progress::with(mode, what, total)
    }

    /// For `vdi create -P` / `vdi clone`: dog's bar when stdout is a
    /// terminal (as dog), else our line when stderr is one.
    pub fn dog(what: &'static str, total: u64) -> Progress {
        let mode = if isatty(libc::STDOUT_FILENO) {
            Mode::DogBar
        } else if isatty(libc::STDERR_FILENO) {
            Mode::Line
        } else {
            Mode::Off
        };
        Progress::with(mode, what, total)
    }

    fn with(mode: Mode, what: &'static str, total: u64) -> Progress {
        Progress {
            mode,
            what,
            total,
            start: Instant::now(),
            last: None,
        }
    }

    /// `done` of `total` bytes are through.
    pub fn update(&mut self, done: u64) {
        match self.mode {
            Mode::Off => {}
            Mode::DogBar => dog_bar(done, self.total),
            Mode::Line => {
                // At most ten redraws a second, but always the last one.
                let now = Instant::now();
                let finished = done >= self.total;
                if !finished
                    && self
                        .last
                        .is_some_and(|t| now - t < Duration::from_millis(100))
                {
                    return;
                }
                self.last = Some(now);
                let line = progress_line(self.what, done, self.total, now - self.start);
                let mut e = std::io::stderr().lock();
                let _ = write!(e, "\r{line}\x1b[K");
                if finished {
                    let _ = writeln!(e);
                }
                let _ = e.flush();
            }
        }
    }

    /// Ends an unfinished line (an error follows on its own line).
    pub fn abort(&mut self) {
        if self.mode == Mode::Line && self.last.is_some() {
            let _ = writeln!(std::io::stderr().lock());
        }
        self.mode = Mode::Off;
    }
}

/// A [`Progress::dog`] display driven by an admin operation's callback.
#[derive(Clone)]
pub struct Shared(std::sync::Arc<parking_lot::Mutex<Option<Progress>>>);

impl Shared {
    pub fn new() -> Shared {
        Shared(Default::default())
    }

    /// The callback; the display starts at the first call (it brings the total).
    pub fn func(&self, what: &'static str) -> crate::client::ProgressFn {
        let p = self.0.clone();
        std::sync::Arc::new(move |done, total| {
            p.lock()
                .get_or_insert_with(|| Progress::dog(what, total))
                .update(done)
        })
    }

    pub fn abort(&self) {
        if let Some(p) = self.0.lock().as_mut() {
            p.abort();
        }
    }
}

/// `write: 64.0 MB / 1.0 GB (6%), 12.3 MB/s, ETA 1m19s`.
fn progress_line(what: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let pct = if total == 0 {
        100
    } else {
        (done as u128 * 100 / total as u128) as u64
    };
    let eta = if done >= total {
        format!("{:.1}s", secs)
    } else if rate >= 1.0 {
        let left = ((total - done) as f64 / rate) as u64;
        format!("ETA {}", hms(left))
    } else {
        "ETA --".into()
    };
    format!(
        "{what}: {} / {} ({pct}%), {}/s, {eta}",
        dogfmt::size_str(done, false),
        dogfmt::size_str(total, false),
        dogfmt::size_str(rate as u64, false),
    )
}

fn hms(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_count_rate_and_eta() {
        let l = progress_line("write", 64 << 20, 1 << 30, Duration::from_secs(4));
        assert_eq!(l, "write: 64 MB / 1.0 GB (6%), 16 MB/s, ETA 1m00s");
        let l = progress_line("read", 1 << 30, 1 << 30, Duration::from_secs(2));
        assert_eq!(l, "read: 1.0 GB / 1.0 GB (100%), 512 MB/s, 2.0s");
        assert_eq!(hms(7322), "2h02m");
    }
}
