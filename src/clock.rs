//! Injected time. Core code asks a [`Clock`] for "now" so lockouts, expiry and
//! timeouts are tested with fixed instants instead of sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of the current time in unix seconds.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the unix epoch.
    fn now(&self) -> i64;
}

/// The wall clock; used only at the edges (server start, CLI).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock frozen at `now`.
    pub fn new(now: i64) -> Self {
        Self(Arc::new(AtomicI64::new(now)))
    }

    /// Moves the clock forward by `secs`.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// Formats unix seconds as LDAP GeneralizedTime (`YYYYMMDDHHMMSSZ`).
pub fn generalized_time(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}{:02}{:02}{:02}{:02}{:02}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
}

/// Parses GeneralizedTime (`YYYYMMDDHH[MM[SS[.f]]]Z` or with `±HHMM`) into unix seconds.
pub fn parse_generalized_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits < 10 || digits % 2 != 0 || digits > 14 {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> { s.get(from..from + len)?.parse().ok() };
    let year = num(0, 4)? as i32;
    let month = time::Month::try_from(u8::try_from(num(4, 2)?).ok()?).ok()?;
    let day = u8::try_from(num(6, 2)?).ok()?;
    let hour = u8::try_from(num(8, 2)?).ok()?;
    let minute = if digits >= 12 { u8::try_from(num(10, 2)?).ok()? } else { 0 };
    let second = if digits >= 14 { u8::try_from(num(12, 2)?).ok()? } else { 0 };
    let mut rest = &s[digits..];
    if let Some(frac) = rest.strip_prefix(['.', ',']) {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" => 0,
        _ if rest.len() == 5 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(3..5)?.parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let time = time::Time::from_hms(hour, minute, second).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc().unix_timestamp() - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generalized_time_round_trips() {
        assert_eq!(generalized_time(0), "19700101000000Z");
        assert_eq!(generalized_time(1_795_000_000), "20261118110640Z");
        assert_eq!(parse_generalized_time("20261118110640Z"), Some(1_795_000_000));
        assert_eq!(parse_generalized_time("20261118110640.5Z"), Some(1_795_000_000));
        assert_eq!(parse_generalized_time("20261118120640+0100"), Some(1_795_000_000));
        assert_eq!(parse_generalized_time("2026111811Z"), Some(1_794_999_600));
        assert_eq!(parse_generalized_time("garbage"), None);
        assert_eq!(parse_generalized_time("20261318080640Z"), None);
    }

    #[test]
    fn manual_clock_advances() {
        let c = ManualClock::new(100);
        c.advance(5);
        assert_eq!(c.now(), 105);
    }
}
