//! Fault points for tests. Compiled in only with the `fault-injection` cargo
//! feature (off by default: a release server has no switch that kills it or
//! slows it down); with the feature, still inert unless the environment names
//! them:
//! - `SHEEP_LITE_CRASH_AT=<point>`: the server kills itself (SIGKILL: no
//!   cleanup, no flush) when it reaches that point of a multi-step operation,
//!   so tests can check crash recovery at each step;
//! - `SHEEP_LITE_FAIL_AT=<point>`: the step at that point fails with EIO, so
//!   tests can check that a failed operation is undone;
//! - `SHEEP_LITE_REQ_FAULTS=<rule>[,<rule>...]`, each rule
//!   `<OPNAME>:<n>[/<period>]:<action>`: the n-th request of that opcode
//!   (counted from 1 since start, every opcode separately; then every
//!   `period`-th after it, if given) is, before it runs, delayed
//!   (`delay=<ms>`: the handler sleeps, e.g. past a client's timeout) or
//!   answered with an error (`eio`, `nospace`), e.g.
//!   `WRITE_OBJ:3:delay=800,READ_OBJ:1/10:eio`.
//!
//! Points: `<op>-intent` (the intent is durable; op = create, clone,
//! snapshot, rebase), `<op>-base` (the base inodes are changed; op = clone,
//! snapshot, rebase), `<op>-inode` (the new inode is written; op = create,
//! clone, snapshot, rebase), `delete-intent`, `delete-inode` (the inode is
//! cleared).

use super::error::OpResult;

#[cfg(feature = "fault-injection")]
pub const CRASH_ENV: &str = "SHEEP_LITE_CRASH_AT";
#[cfg(feature = "fault-injection")]
pub const FAIL_ENV: &str = "SHEEP_LITE_FAIL_AT";
#[cfg(feature = "fault-injection")]
pub const REQ_ENV: &str = "SHEEP_LITE_REQ_FAULTS";

/// Dies or fails here if the environment asks for it.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) -> OpResult<()> {
    Ok(())
}

/// Delays or fails this request if a rule of `SHEEP_LITE_REQ_FAULTS` matches it.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn request(_opcode: u8) -> OpResult<()> {
    Ok(())
}

/// Whether request faults are configured (their delays must run on the
/// blocking pool).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn requests_active() -> bool {
    false
}

#[cfg(feature = "fault-injection")]
pub use imp::{point, request, requests_active};

#[cfg(feature = "fault-injection")]
mod imp {
    use super::{OpResult, CRASH_ENV, FAIL_ENV, REQ_ENV};
    use crate::proto::{op, SdRes};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    fn var(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|s| !s.is_empty())
    }

    /// Dies or fails here if the environment asks for it.
    pub fn point(name: &str) -> OpResult<()> {
        static AT: OnceLock<(Option<String>, Option<String>)> = OnceLock::new();
        let (crash, fail) = AT.get_or_init(|| (var(CRASH_ENV), var(FAIL_ENV)));
        if crash.as_deref() == Some(name) {
            tracing::error!(point = name, "{CRASH_ENV} reached: killing this process");
            // SAFETY: plain kill(2) of this very process.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            std::process::abort();
        }
        if fail.as_deref() == Some(name) {
            tracing::error!(point = name, "{FAIL_ENV} reached: failing this step");
            return Err(SdRes::EIO);
        }
        Ok(())
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Action {
        Delay(Duration),
        Fail(SdRes),
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Rule {
        opcode: u8,
        nth: u64,
        period: Option<u64>,
        action: Action,
    }

    impl Rule {
        fn fires_at(&self, count: u64) -> bool {
            match self.period {
                Some(p) => count >= self.nth && (count - self.nth) % p == 0,
                None => count == self.nth,
            }
        }
    }

    fn opcode_named(name: &str) -> Option<u8> {
        (0..=u8::MAX).find(|&o| op::name(o) == name)
    }

    fn parse_rule(s: &str) -> Result<Rule, String> {
        let mut parts = s.trim().splitn(3, ':');
        let (Some(name), Some(when), Some(action)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("expected OPNAME:N[/PERIOD]:ACTION".into());
        };
        let opcode = opcode_named(name).ok_or_else(|| format!("unknown opcode {name}"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("'{v}' is not a positive count"))
        };
        let (nth, period) = match when.split_once('/') {
            Some((n, p)) => (num(n)?, Some(num(p)?)),
            None => (num(when)?, None),
        };
        let action = match action {
            "eio" => Action::Fail(SdRes::EIO),
            "nospace" => Action::Fail(SdRes::NO_SPACE),
            a => match a.strip_prefix("delay=").map(str::parse::<u64>) {
                Some(Ok(ms)) => Action::Delay(Duration::from_millis(ms)),
                _ => return Err(format!("unknown action '{a}'")),
            },
        };
        Ok(Rule {
            opcode,
            nth,
            period,
            action,
        })
    }

    struct Rules {
        rules: Vec<Rule>,
        counts: Vec<AtomicU64>,
    }

    fn rules() -> &'static Rules {
        static RULES: OnceLock<Rules> = OnceLock::new();
        RULES.get_or_init(|| {
            let rules = var(REQ_ENV)
                .map(|v| {
                    v.split(',')
                        .filter_map(|r| match parse_rule(r) {
                            Ok(rule) => Some(rule),
                            Err(e) => {
                                tracing::error!("{REQ_ENV}: rule '{r}' ignored: {e}");
                                None
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            Rules {
                rules,
                counts: (0..=u8::MAX).map(|_| AtomicU64::new(0)).collect(),
            }
        })
    }

    /// Delays or fails this request if a rule of [`REQ_ENV`] matches it.
    pub fn requests_active() -> bool {
        !rules().rules.is_empty()
    }

    pub fn request(opcode: u8) -> OpResult<()> {
        let r = rules();
        if r.rules.is_empty() {
            return Ok(());
        }
        let n = r.counts[opcode as usize].fetch_add(1, Ordering::Relaxed) + 1;
        for rule in r
            .rules
            .iter()
            .filter(|x| x.opcode == opcode && x.fires_at(n))
        {
            tracing::warn!(op = op::name(opcode), n, action = ?rule.action, "{REQ_ENV}: injecting");
            match rule.action {
                // Handlers run on the blocking pool: sleeping here holds
                // this request only.
                Action::Delay(d) => std::thread::sleep(d),
                Action::Fail(res) => return Err(res),
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rules_parse_and_fire() {
            let r = parse_rule("WRITE_OBJ:3/5:delay=800").unwrap();
            assert_eq!(r.opcode, op::WRITE_OBJ);
            assert_eq!(r.action, Action::Delay(Duration::from_millis(800)));
            let fired: Vec<u64> = (1..=14).filter(|&n| r.fires_at(n)).collect();
            assert_eq!(fired, [3, 8, 13]);
            let r = parse_rule("READ_OBJ:2:eio").unwrap();
            assert_eq!(r.action, Action::Fail(SdRes::EIO));
            assert!(r.fires_at(2) && !r.fires_at(4));
            for bad in [
                "WRITE_OBJ:0:eio",
                "NOPE:1:eio",
                "WRITE_OBJ:1:boom",
                "WRITE_OBJ:1",
            ] {
                assert!(parse_rule(bad).is_err(), "{bad}");
            }
        }
    }
}
