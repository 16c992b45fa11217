//! Retry decisions: what an HTTP outcome means, and when the next attempt is due.

use std::time::Duration;

use super::spec::RetrySchedule;
use crate::api::FailureReason;

/// What the endpoint answered to one delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The endpoint answered with this status code.
    Status {
        /// The HTTP status.
        code: u16,
        /// The delay its `Retry-After` header asked for.
        retry_after: Option<Duration>,
    },
    /// No answer: timeout, refused, reset, TLS failure… (short description, no secrets).
    NoAnswer(String),
}

impl Answer {
    /// The HTTP status, when the endpoint answered.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Answer::Status { code, .. } => Some(*code),
            Answer::NoAnswer(_) => None,
        }
    }
}

/// What to do after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Delivered.
    Done,
    /// Try again after this delay.
    Retry(Duration),
    /// Give up on the event.
    GiveUp(FailureReason),
    /// The endpoint is gone (410): give up and disable the subscription.
    Gone,
    /// Give up without a dead letter: nothing deliverable is left (the stored event does not
    /// parse, so no FailedEvent could hold it). [`next`] never answers this.
    Drop,
}

/// Exponential backoff before attempt `attempt + 1`, capped at `max`, with ±20% jitter.
///
/// `jitter` is a uniform sample in `[0, 1)` so the function stays pure.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(40);
    let base = initial.saturating_mul(1u32 << exp.min(31)).min(max);
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    base.mul_f64(factor).min(max)
}

/// Decide what follows attempt number `attempt` (from 1) that ended with `outcome`.
///
/// `age` is how long ago the event was accepted.
pub fn next(outcome: &Answer, attempt: u32, age: Duration, schedule: &RetrySchedule, jitter: f64) -> Next {
    let retry_after = match outcome {
        Answer::Status { code: 200..=299, .. } => return Next::Done,
        Answer::Status { code: 410, .. } => return Next::Gone,
        Answer::Status { code: 400 | 413, .. } => return Next::GiveUp(FailureReason::NonRetryableResponse),
        Answer::Status { retry_after, .. } => *retry_after,
        Answer::NoAnswer(_) => None,
    };
    if attempt >= schedule.max_attempts {
        return Next::GiveUp(FailureReason::MaxAttemptsExceeded);
    }
    let delay = match retry_after {
        Some(wanted) => wanted.min(schedule.max_backoff),
        None => backoff(attempt, schedule.initial_backoff, schedule.max_backoff, jitter),
    };
    if age + delay >= schedule.event_ttl {
        return Next::GiveUp(FailureReason::TtlExpired);
    }
    Next::Retry(delay)
}

/// Parse `Retry-After`: delay-seconds or an HTTP date, relative to `now`.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    Some(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule {
            max_attempts: 5,
            event_ttl: Duration::from_secs(3600),
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            breaker: None,
            disable_after: None,
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped_with_jitter_within_20_percent() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(5), s(60), 0.5), s(5));
        assert_eq!(backoff(2, s(5), s(60), 0.5), s(10));
        assert_eq!(backoff(3, s(5), s(60), 0.5), s(20));
        assert_eq!(backoff(10, s(5), s(60), 0.5), s(60));
        assert_eq!(backoff(1, s(5), s(60), 0.0), s(4));
        assert_eq!(backoff(1, s(5), s(60), 0.999_999_999), Duration::from_secs_f64(5.0 * 1.199_999_999_6));
        assert!(backoff(100, s(5), s(60), 1.0) <= s(60), "jitter never exceeds the cap");
    }

    #[test]
    fn outcomes_map_to_the_design_rules() {
        let s = schedule();
        let status = |code| Answer::Status { code, retry_after: None };
        let age = Duration::ZERO;
        assert_eq!(next(&status(200), 1, age, &s, 0.5), Next::Done);
        assert_eq!(next(&status(204), 1, age, &s, 0.5), Next::Done);
        assert_eq!(next(&status(410), 1, age, &s, 0.5), Next::Gone);
        assert_eq!(next(&status(400), 1, age, &s, 0.5), Next::GiveUp(FailureReason::NonRetryableResponse));
        assert_eq!(next(&status(413), 1, age, &s, 0.5), Next::GiveUp(FailureReason::NonRetryableResponse));
        for code in [301, 302, 307, 404, 429, 500, 503] {
            assert_eq!(next(&status(code), 1, age, &s, 0.5), Next::Retry(Duration::from_secs(5)), "{code}");
        }
        assert_eq!(
            next(&Answer::NoAnswer("timeout".into()), 2, age, &s, 0.5),
            Next::Retry(Duration::from_secs(10))
        );
    }

    #[test]
    fn attempts_and_ttl_end_retries() {
        let s = schedule();
        let fail = Answer::Status { code: 500, retry_after: None };
        assert_eq!(next(&fail, 5, Duration::ZERO, &s, 0.5), Next::GiveUp(FailureReason::MaxAttemptsExceeded));
        assert_eq!(
            next(&fail, 1, Duration::from_secs(3598), &s, 0.5),
            Next::GiveUp(FailureReason::TtlExpired)
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_max_backoff() {
        let s = schedule();
        let ra = |secs| Answer::Status { code: 429, retry_after: Some(Duration::from_secs(secs)) };
        assert_eq!(next(&ra(30), 1, Duration::ZERO, &s, 0.5), Next::Retry(Duration::from_secs(30)));
        assert_eq!(next(&ra(600), 1, Duration::ZERO, &s, 0.5), Next::Retry(Duration::from_secs(60)));
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = jiff::Timestamp::from_second(1_700_000_000).expect("ts");
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        let date = jiff::fmt::rfc2822::to_string(
            &(now + jiff::SignedDuration::from_secs(90)).to_zoned(jiff::tz::TimeZone::UTC),
        )
        .expect("format");
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn backoff_stays_within_jitter_of_the_capped_exponential(
            attempt in 1u32..200, initial_ms in 100u64..60_000, extra_ms in 0u64..3_600_000, jitter in 0.0f64..1.0,
        ) {
            let initial = Duration::from_millis(initial_ms);
            let max = initial + Duration::from_millis(extra_ms);
            let d = backoff(attempt, initial, max, jitter);
            let base = initial.saturating_mul(1u32 << (attempt - 1).min(31)).min(max);
            prop_assert!(d <= max, "never above maxBackoff");
            prop_assert!(d >= base.mul_f64(0.8) - Duration::from_micros(1), "at most 20% early");
            prop_assert!(d <= base.mul_f64(1.2) + Duration::from_micros(1), "at most 20% late");
        }

        #[test]
        fn retries_stop_at_max_attempts_and_ttl(attempt in 1u32..150, age_s in 0u64..100_000, code in 100u16..600) {
            let s = RetrySchedule {
                max_attempts: 30,
                event_ttl: Duration::from_secs(86_400),
                initial_backoff: Duration::from_secs(5),
                max_backoff: Duration::from_secs(3600),
                breaker: None,
                disable_after: None,
            };
            let age = Duration::from_secs(age_s);
            match next(&Answer::Status { code, retry_after: None }, attempt, age, &s, 0.5) {
                Next::Retry(d) => {
                    prop_assert!(attempt < s.max_attempts);
                    prop_assert!(age + d < s.event_ttl);
                    prop_assert!(!(200..300).contains(&code) && ![400, 410, 413].contains(&code));
                }
                Next::Done => prop_assert!((200..300).contains(&code)),
                Next::Gone => prop_assert_eq!(code, 410),
                Next::GiveUp(_) => {}
                Next::Drop => prop_assert!(false, "an answer never drops the event"),
            }
        }
    }
}
