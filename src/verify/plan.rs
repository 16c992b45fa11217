//! The pure part of verification: given the stored record, what to do now.

use std::time::Duration;

use crate::api::ValidationMethod;
use crate::store::{Millis, Verification};

/// What the verifier does now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// This URL was verified with this method.
    Verified(Verification),
    /// An attempt was made recently; wait until `next_attempt_at`.
    Wait(Verification),
    /// Run a handshake, continuing this record.
    Attempt(Verification),
}

/// Delay before handshake attempt `n + 1`: 10 s doubling to 5 minutes.
pub fn retry_delay(attempts: u32) -> Duration {
    Duration::from_secs(10u64.saturating_mul(1 << attempts.saturating_sub(1).min(5)))
        .min(Duration::from_secs(300))
}

/// Decide, from the record of this subscription (if any), what to do for `url` and `method`.
///
/// A record for another URL or method, or acted on for another `revalidate` value, counts for
/// nothing: a new handshake starts from scratch.
pub fn plan(
    existing: Option<&Verification>,
    uid: &str,
    url: &str,
    method: ValidationMethod,
    revalidate: Option<&str>,
    now: Millis,
) -> Plan {
    let method = format!("{method:?}");
    match existing {
        Some(v) if v.url == url && v.method == method && v.revalidate.as_deref() == revalidate => {
            if v.verified_at.is_some() {
                Plan::Verified(v.clone())
            } else if v.next_attempt_at > now {
                Plan::Wait(v.clone())
            } else {
                Plan::Attempt(v.clone())
            }
        }
        _ => Plan::Attempt(Verification {
            sub_uid: uid.to_string(),
            url: url.to_string(),
            method,
            revalidate: revalidate.map(str::to_string),
            ..Verification::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(url: &str, verified: bool, next: Millis) -> Verification {
        Verification {
            sub_uid: "u".into(),
            url: url.into(),
            method: "Event".into(),
            verified_at: verified.then_some(1),
            next_attempt_at: next,
            ..Verification::default()
        }
    }

    #[test]
    fn a_verified_url_stays_verified() {
        let v = record("https://a/", true, 0);
        assert!(matches!(
            plan(Some(&v), "u", "https://a/", ValidationMethod::Event, None, 100),
            Plan::Verified(_)
        ));
    }

    #[test]
    fn another_url_or_method_starts_over() {
        let v = record("https://a/", true, 0);
        let Plan::Attempt(fresh) = plan(Some(&v), "u", "https://b/", ValidationMethod::Event, None, 100)
        else {
            panic!("a new URL needs a handshake")
        };
        assert_eq!((fresh.url.as_str(), fresh.verified_at, fresh.attempts), ("https://b/", None, 0));
        assert!(matches!(
            plan(Some(&v), "u", "https://a/", ValidationMethod::Options, None, 100),
            Plan::Attempt(_)
        ));
    }

    #[test]
    fn changing_back_never_reuses_an_old_verification() {
        // The record only ever holds the current URL: a->b overwrote a's verification.
        let b = record("https://b/", false, 0);
        let Plan::Attempt(v) = plan(Some(&b), "u", "https://a/", ValidationMethod::Event, None, 100) else {
            panic!("back to a: verify again")
        };
        assert_eq!(v.verified_at, None);
    }

    #[test]
    fn attempts_wait_for_their_time_and_revalidate_forces_one() {
        let v = record("https://a/", false, 500);
        assert!(matches!(
            plan(Some(&v), "u", "https://a/", ValidationMethod::Event, None, 100),
            Plan::Wait(_)
        ));
        assert!(matches!(
            plan(Some(&v), "u", "https://a/", ValidationMethod::Event, None, 500),
            Plan::Attempt(_)
        ));
        assert!(matches!(
            plan(Some(&v), "u", "https://a/", ValidationMethod::Event, Some("1"), 100),
            Plan::Attempt(_)
        ));
        let verified = record("https://a/", true, 0);
        assert!(
            matches!(
                plan(Some(&verified), "u", "https://a/", ValidationMethod::Event, Some("2"), 100),
                Plan::Attempt(_)
            ),
            "a new revalidate value re-verifies even a verified endpoint"
        );
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        assert_eq!(retry_delay(1), Duration::from_secs(10));
        assert_eq!(retry_delay(2), Duration::from_secs(20));
        assert_eq!(retry_delay(5), Duration::from_secs(160));
        assert_eq!(retry_delay(50), Duration::from_secs(300));
    }
}
