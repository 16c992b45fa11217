//! Endpoint verification: before any event is sent, the endpoint proves it wants the traffic
//! (`Event`: Azure Event Grid's validation handshake; `Options`: the CloudEvents webhook
//! abuse-protection handshake), and its addresses pass the SSRF guard. Verification is per URL and
//! kept in the store, so a restart does not re-verify and a changed URL never reuses an old one.

mod handshake;
pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;

use crate::api::{ValidationMethod, WebhookSubscription, annotations};
use crate::outbound::clients::Clients;
use crate::outbound::secrets::SecretCache;
use crate::outbound::ssrf::{Guard, GuardError};
use crate::policy::decision::EndpointState as State;
use crate::report::Chain;
use crate::store::{Store, now_ms};
use plan::{Plan, plan};

/// How long a validation code and URL are accepted.
pub const CODE_TTL: Duration = Duration::from_secs(600);
/// While a code is outstanding, how often the controller looks whether the URL was opened.
pub const POLL_WHILE_PENDING: Duration = Duration::from_secs(3);
/// How often a blocked endpoint's addresses are checked again (DNS may change).
pub const BLOCKED_RECHECK: Duration = Duration::from_secs(60);

/// The CloudEvent type of the validation event.
pub const VALIDATION_EVENT_TYPE: &str = "dev.hookline.subscription.validation";

/// The verdict for one subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Where the endpoint stands.
    pub state: State,
    /// `WebHook-Allowed-Rate` from an Options handshake, requests per minute.
    pub rate_per_minute: Option<u32>,
    /// Look again this soon (a code is outstanding, an attempt is due, or the endpoint is blocked).
    pub recheck_in: Option<Duration>,
}

/// Runs handshakes; shared by all reconciliations.
pub struct Verifier {
    /// Where verification records are kept.
    pub store: Arc<dyn Store>,
    /// HTTP clients per CA bundle.
    pub clients: Clients,
    /// The SSRF guard every endpoint address must pass.
    pub guard: Arc<Guard>,
    /// Signing keys for signed validation events.
    pub secrets: SecretCache,
    /// Base of validation URLs (`--public-url`); without it only the synchronous answer works.
    pub public_url: Option<String>,
}

impl Verifier {
    /// Where `sub`'s endpoint stands; runs a handshake when one is due and `act` (this replica
    /// owns the subscription; another replica only reads where the owner's handshake stands).
    pub async fn verify(
        &self,
        sub: &WebhookSubscription,
        signing_secret: Option<&str>,
        act: bool,
    ) -> Verdict {
        let method = sub.spec.validation.method;
        let url = &sub.spec.endpoint.url;
        if method == ValidationMethod::None {
            let state = State::Verified(
                "validation.method is None and the operator allows unverified endpoints".into(),
            );
            return Verdict { state, rate_per_minute: None, recheck_in: None };
        }
        if let Err(e) = self.check_address(url).await {
            let state = match e {
                GuardError::Blocked(b) => State::Blocked(format!(
                    "{url} resolves to {b}, which Hookline never sends to; point the subscription at a public \
                     endpoint, or have the operator allow that network with --allow-cidr"
                )),
                e => State::Failed(format!("{}; retrying", Chain(&e))),
            };
            return Verdict { state, rate_per_minute: None, recheck_in: Some(BLOCKED_RECHECK) };
        }
        let uid = sub.uid().unwrap_or_default();
        let revalidate = sub.annotations().get(annotations::REVALIDATE).cloned();
        let now = now_ms();
        let existing = match self.store.verification(&uid).await {
            Ok(v) => v,
            Err(e) => {
                let state =
                    State::Pending(format!("cannot read the verification record ({}); retrying", Chain(&e)));
                return Verdict { state, rate_per_minute: None, recheck_in: Some(POLL_WHILE_PENDING) };
            }
        };
        match plan(existing.as_ref(), &uid, url, method, revalidate.as_deref(), now) {
            Plan::Verified(v) => Verdict {
                state: State::Verified(verified_message(&v.message, v.rate_per_minute)),
                rate_per_minute: v.rate_per_minute,
                recheck_in: None,
            },
            Plan::Wait(v) => not_yet(&v, now),
            Plan::Attempt(_) if !act => Verdict {
                state: State::Pending("the replica that owns this subscription runs its handshake".into()),
                rate_per_minute: None,
                recheck_in: Some(POLL_WHILE_PENDING),
            },
            Plan::Attempt(record) => {
                let v = handshake::attempt(self, sub, record, signing_secret, now).await;
                if let Err(e) = self.store.put_verification(v.clone()).await {
                    tracing::warn!(subscription = %sub.name_any(), error = %Chain(&e), "saving the verification record");
                }
                if v.verified_at.is_some() {
                    let state = State::Verified(verified_message(&v.message, v.rate_per_minute));
                    Verdict { state, rate_per_minute: v.rate_per_minute, recheck_in: None }
                } else {
                    not_yet(&v, now)
                }
            }
        }
    }

    /// Resolve the endpoint's host through the guard. The controller's spec check accepted the
    /// URL, so it parses; a host it cannot find is an empty name, which does not resolve.
    async fn check_address(&self, url: &str) -> Result<(), GuardError> {
        let parsed = url::Url::parse(url).ok();
        let host = parsed.as_ref().and_then(|u| u.host_str()).unwrap_or_default();
        let port = parsed.as_ref().and_then(|u| u.port_or_known_default()).unwrap_or(443);
        self.guard.resolve(host, port).await.map(|_| ())
    }
}

fn verified_message(message: &str, rate: Option<u32>) -> String {
    match rate {
        Some(r) => format!("{message}; the endpoint allows {r} requests per minute, which Hookline honours"),
        None => message.to_string(),
    }
}

/// Not verified yet: look again at the next attempt, or sooner while a code is outstanding (the
/// validation URL may be opened any moment).
fn not_yet(v: &crate::store::Verification, now: crate::store::Millis) -> Verdict {
    let until_next = Duration::from_millis((v.next_attempt_at - now).max(0) as u64);
    let recheck = if v.code.is_some() { until_next.min(POLL_WHILE_PENDING) } else { until_next };
    Verdict { state: waiting(v), rate_per_minute: None, recheck_in: Some(recheck) }
}

fn waiting(v: &crate::store::Verification) -> State {
    let next =
        jiff::Timestamp::from_millisecond(v.next_attempt_at).map(|t| t.to_string()).unwrap_or_default();
    let hint =
        "to try again now: kubectl annotate whsub <name> hookline.dev/revalidate=$(date +%s) --overwrite";
    let text = format!("{} Next attempt at {next}; {hint}.", v.message);
    if v.code.is_some() { State::Pending(text) } else { State::Failed(text) }
}
