//! `ditto pair --kill-primary-after DURATION` and `--kill-secondary-after DURATION`: fault
//! injection for tests and demos (docs/pair.md, Fault injection). DURATION is a time with
//! its unit (`300ms`, `1.5s`, `2m`) or a range `A..B` of two such times, from which one is
//! picked at random (uniformly, to the microsecond) when the pair starts.
//!
//! The flags are parsed here rather than by clap so that a bad value is one line of error
//! (clap's errors span several lines).

use std::time::Duration;

use replica::report::Died;
use replica::supervisor::Kill;
use thiserror::Error;

/// The longest kill time accepted: longer is surely a typo (`30m` for `30ms`?) and a test
/// would wait for ever.
pub const MAX_KILL_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A bad `--kill-*-after` value; each displays as one line.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DurationError {
    /// Not a number with a unit.
    #[error("'{0}' is not a duration: expected a number and a unit (ms, s or m), e.g. 300ms, 1.5s, or a range 1s..3s")]
    Malformed(String),
    /// Beyond [`MAX_KILL_AFTER`].
    #[error("'{0}' is longer than 24 hours")]
    TooLong(String),
    /// A range whose end comes before its start.
    #[error("the range '{0}' ends before it starts")]
    BackwardRange(String),
}

/// One time with its unit.
fn parse_one(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let bad = || DurationError::Malformed(t.to_string());
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(bad()),
    };
    // A plain decimal: no sign, no exponent, no "inf" (the split above let only digits and
    // dots through).
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    let secs = v * scale;
    if !secs.is_finite() || secs > MAX_KILL_AFTER.as_secs_f64() {
        return Err(DurationError::TooLong(t.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A kill time: one duration, or a range `A..B` (inclusive) to pick from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillAfter {
    /// The earliest time.
    pub from: Duration,
    /// The latest time (equal to `from` for a single duration).
    pub to: Duration,
}

impl KillAfter {
    /// Parses `1.5s`, `300ms`, `2m` or a range `1s..3s`.
    pub fn parse(s: &str) -> Result<KillAfter, DurationError> {
        match s.split_once("..") {
            None => {
                let d = parse_one(s)?;
                Ok(KillAfter { from: d, to: d })
            }
            Some((a, b)) => {
                let (from, to) = (parse_one(a)?, parse_one(b)?);
                if to < from {
                    return Err(DurationError::BackwardRange(s.trim().to_string()));
                }
                Ok(KillAfter { from, to })
            }
        }
    }

    /// The time to kill at: `from` plus `random` (any u64) scaled into the range, to the
    /// microsecond.
    pub fn pick(&self, random: u64) -> Duration {
        let span = (self.to - self.from).as_micros() as u64;
        match span.checked_add(1) {
            Some(n) => self.from + Duration::from_micros(random % n),
            None => self.from + Duration::from_micros(random),
        }
    }
}

/// Eight random bytes from the kernel (getrandom); a time-derived value if it has none.
fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into the u64 we own.
    let n = unsafe { libc::getrandom((&raw mut v).cast(), 8, 0) };
    if n == 8 {
        v
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
}

/// The kill the flags ask for, its time picked; one line of error for a bad value or both
/// flags at once.
pub fn kill_from_flags(
    primary: Option<&str>,
    secondary: Option<&str>,
) -> Result<Option<Kill>, String> {
    let (flag, target, value) = match (primary, secondary) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(
                "--kill-primary-after and --kill-secondary-after exclude each other: a pair survives one death"
                    .into(),
            )
        }
        (Some(v), None) => ("--kill-primary-after", Died::Primary, v),
        (None, Some(v)) => ("--kill-secondary-after", Died::Secondary, v),
    };
    let range = KillAfter::parse(value).map_err(|e| format!("{flag}: {e}"))?;
    Ok(Some(Kill {
        target,
        after: range.pick(random_u64()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn single_durations_with_units() {
        for (s, d) in [
            ("300ms", ms(300)),
            ("1.5s", ms(1500)),
            ("2m", ms(120_000)),
            (" 0s ", ms(0)),
            ("0.25ms", Duration::from_micros(250)),
        ] {
            assert_eq!(KillAfter::parse(s), Ok(KillAfter { from: d, to: d }), "{s}");
        }
    }

    #[test]
    fn ranges_pick_inside_them() {
        let r = KillAfter::parse("1s..3s").unwrap();
        assert_eq!((r.from, r.to), (ms(1000), ms(3000)));
        assert_eq!(r.pick(0), ms(1000));
        assert_eq!(r.pick(2_000_000), ms(3000));
        assert_eq!(r.pick(2_000_001), ms(1000));
        for x in [1u64, 77, 1 << 40, u64::MAX] {
            let t = r.pick(x);
            assert!(t >= r.from && t <= r.to, "{t:?}");
        }
        let one = KillAfter::parse("500ms..500ms").unwrap();
        assert_eq!(one.pick(u64::MAX), ms(500));
        assert_eq!(KillAfter::parse("300ms..1.5s").unwrap().to, ms(1500));
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        for s in [
            "",
            "5",
            "s",
            "1.5",
            "abc",
            "1.5h",
            "-1s",
            "+1s",
            "1e3s",
            "1..2s",
            "1s..",
            "..2s",
            "1.s",
            ".5s",
            "1s..2s..3s",
            "inf s",
            "NaNs",
            "1 s",
        ] {
            let e = KillAfter::parse(s).unwrap_err();
            let msg = e.to_string();
            assert_eq!(msg.lines().count(), 1, "{s}: {msg}");
            assert!(matches!(e, DurationError::Malformed(_)), "{s}: {e:?}");
        }
        assert!(matches!(
            KillAfter::parse("3s..1s"),
            Err(DurationError::BackwardRange(_))
        ));
        assert!(matches!(
            KillAfter::parse("100000m"),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn the_flags_pick_one_kill() {
        assert_eq!(kill_from_flags(None, None), Ok(None));
        let k = kill_from_flags(Some("2s"), None).unwrap().unwrap();
        assert_eq!((k.target, k.after), (Died::Primary, ms(2000)));
        let k = kill_from_flags(None, Some("1s..2s")).unwrap().unwrap();
        assert_eq!(k.target, Died::Secondary);
        assert!(k.after >= ms(1000) && k.after <= ms(2000));
        let both = kill_from_flags(Some("1s"), Some("1s")).unwrap_err();
        assert!(both.contains("exclude each other"), "{both}");
        let bad = kill_from_flags(None, Some("soon")).unwrap_err();
        assert!(
            bad.starts_with("--kill-secondary-after: 'soon' is not a duration"),
            "{bad}"
        );
    }
}
