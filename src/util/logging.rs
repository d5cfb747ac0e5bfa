//! Logging setup shared by the daemons: one `tracing` subscriber writing to
//! syslog when there is one (`/dev/log`) and asked for, else to stderr
//! (colours only when stderr is a terminal), plus an optional in-memory
//! ring of recent warnings and errors ([`LogRing`], sheepfs's `log` file).

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Where the log goes and what it keeps.
#[derive(Debug, Clone)]
pub struct LogSetup {
    /// Filter when `RUST_LOG` is unset, e.g. `"info"`.
    pub default_filter: String,
    /// Log to syslog under this ident when `/dev/log` exists; `None`: stderr.
    pub syslog: Option<&'static CStr>,
    /// Show each event's module path.
    pub target: bool,
    /// Also keep recent warnings and errors here.
    pub ring: Option<LogRing>,
}

/// Is there a syslog daemon to write to?
pub fn syslog_available() -> bool {
    std::path::Path::new("/dev/log").exists()
}

/// Installs the global subscriber (a second call does nothing). Returns
/// whether syslog is used.
pub fn init(s: LogSetup) -> bool {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(s.default_filter.as_str()));
    let to_syslog = s.syslog.filter(|_| syslog_available());
    let out: Box<dyn Layer<_> + Send + Sync> = match to_syslog {
        Some(ident) => {
            // SAFETY: the ident is a static C string, as openlog requires.
            unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            tracing_subscriber::fmt::layer()
                .with_writer(Syslog)
                .with_ansi(false)
                .without_time()
                .with_target(false)
                .with_filter(filter)
                .boxed()
        }
        None => tracing_subscriber::fmt::layer()
            .with_writer(io::stderr)
            .with_ansi(io::stderr().is_terminal())
            .with_target(s.target)
            .with_filter(filter)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(out)
        // Filtered, so that it does not switch on every debug span and
        // event (a span per FUSE request) just to ignore them.
        .with(s.ring.map(|r| r.with_filter(LevelFilter::WARN)))
        .try_init();
    to_syslog.is_some()
}

/// A `tracing_subscriber` writer that sends each formatted event to syslog
/// at the priority of its level.
#[derive(Debug, Clone, Copy, Default)]
pub struct Syslog;

/// One event being formatted for syslog; sent when dropped.
pub struct SyslogLine {
    prio: libc::c_int,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        while self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        if self.buf.is_empty() {
            return;
        }
        self.buf.retain(|&b| b != 0);
        if let Ok(c) = CString::new(std::mem::take(&mut self.buf)) {
            // SAFETY: "%s" with one valid C string argument.
            unsafe {
                libc::syslog(self.prio, c"%s".as_ptr(), c.as_ptr());
            }
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            prio: libc::LOG_INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let prio = match *meta.level() {
            Level::ERROR => libc::LOG_ERR,
            Level::WARN => libc::LOG_WARNING,
            Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        SyslogLine {
            prio,
            buf: Vec::new(),
        }
    }
}

/// Lines kept by a [`LogRing`] by default.
pub(crate) const RING_LINES: usize = 256;
/// Longest line kept (longer ones are cut), so the ring stays bounded.
const RING_LINE_MAX: usize = 1024;

/// The most recent warnings and errors as plain text lines
/// (`YYYY-MM-DD HH:MM:SS LEVEL message key=value...`), at most `cap` lines
/// of at most 1 KiB. A `tracing` layer; clones share the ring.
#[derive(Clone, Debug)]
pub struct LogRing {
    lines: Arc<Mutex<VecDeque<String>>>,
    cap: usize,
}

impl Default for LogRing {
    fn default() -> Self {
        LogRing::new(RING_LINES)
    }
}

impl LogRing {
    /// A ring keeping the last `cap` lines (at least one).
    pub fn new(cap: usize) -> LogRing {
        LogRing {
            lines: Arc::new(Mutex::new(VecDeque::with_capacity(cap.min(64)))),
            cap: cap.max(1),
        }
    }

    /// Appends a line (control characters replaced, cut at 1 KiB).
    pub fn push(&self, line: &str) {
        let mut l: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if l.len() > RING_LINE_MAX {
            let mut cut = RING_LINE_MAX;
            while !l.is_char_boundary(cut) {
                cut -= 1;
            }
            l.truncate(cut);
            l.push('…');
        }
        let mut v = self.lines.lock();
        if v.len() == self.cap {
            v.pop_front();
        }
        v.push_back(l);
    }

    /// Everything kept, oldest first, one line each.
    pub fn text(&self) -> String {
        let v = self.lines.lock();
        let mut s = String::with_capacity(v.iter().map(|l| l.len() + 1).sum());
        for l in v.iter() {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// Collects an event's message and fields as `message key=value...`.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, f: &Field, v: &str) {
        if f.name() == "message" {
            self.message.push_str(v);
        } else {
            let _ = write!(self.fields, " {}={v}", f.name());
        }
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            let _ = write!(self.message, "{v:?}");
        } else {
            let _ = write!(self.fields, " {}={v:?}", f.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for LogRing {
    fn on_event(&self, ev: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *ev.metadata().level();
        // Levels compare by verbosity: ERROR < WARN < INFO.
        if level > Level::WARN {
            return;
        }
        let mut l = Line::default();
        ev.record(&mut l);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let date = crate::dogfmt::fmt_date_seconds(now, crate::dogfmt::Tz::Local);
        self.push(&format!("{date} {level:>5} {}{}", l.message, l.fields));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_plain() {
        let r = LogRing::new(3);
        for i in 0..5 {
            r.push(&format!("line {i}\x1b[31m\n"));
        }
        let t = r.text();
        assert_eq!(t.lines().count(), 3);
        assert!(t.starts_with("line 2"));
        assert!(!t.contains('\x1b'));
        r.push(&"é".repeat(2000));
        assert!(r.text().lines().last().unwrap().len() <= RING_LINE_MAX + 3);
    }

    #[test]
    fn ring_keeps_warnings_only() {
        let r = LogRing::new(10);
        let sub = tracing_subscriber::registry().with(r.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!("not kept");
            tracing::warn!(vdi = "a", "kept");
            tracing::error!("also kept");
        });
        let t = r.text();
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(
            t.contains(" WARN kept vdi=\"a\"") || t.contains(" WARN kept vdi=a"),
            "{t}"
        );
        assert!(t.contains("ERROR also kept"));
    }
}
