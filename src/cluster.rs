//! Several replicas on one PostgreSQL store: this replica's membership. It heartbeats its lease,
//! claims the subscriptions (and the cluster-wide tasks) that rendezvous hashing over the live
//! members gives it, hands over what it should no longer own once its work there has stopped,
//! hands new jobs to the replicas that own them, and leaves cleanly on shutdown.
//!
//! Safety rests on two rules. A replica starts an attempt only if it ends before the replica's
//! lease can have run out (`delivery` cuts the attempt's timeout to what is left), and another
//! replica claims a subscription only once that lease has run out by the server's clock: so two
//! replicas never send for one subscription at once. And every outcome commits only under the
//! claim's current epoch (fencing), so a replica that lost its claim cannot change a job.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Future;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::WebhookSubscription;
use crate::delivery::Dispatchers;
use crate::ownership::{CLUSTER_TASKS, Ownership, owner_of};
use crate::registry::{Readiness, Registry};
use crate::report::Chain;
use crate::store::{Claim, JobRef, Listener, Member, Notice, PartitionKey, PostgresStore, StoreError};

/// Most new jobs announced in one notification: each takes at most 106 bytes (a UID, the job's
/// id and times, a partition key's hash) of the 8,000 a PostgreSQL notification may carry.
const JOBS_PER_NOTICE: usize = 75;
/// How soon after another member's lease runs out its work is claimed.
const TAKEOVER_DELAY: Duration = Duration::from_millis(50);
/// How long a round waits after a registry change for more: at start every subscription is one
/// change, and a round per change would renew the lease and read every claim a thousand times.
const REGISTRY_SETTLE: Duration = Duration::from_millis(100);

/// How often a member renews its lease: often enough that several renewals may fail in a row
/// before the lease runs short.
pub fn renew_interval(lease: Duration) -> Duration {
    (lease / 9).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

/// This replica's membership; see the module docs.
pub struct Membership {
    /// The shared store, which holds the members and their claims.
    pub store: Arc<PostgresStore>,
    /// What this replica owns, kept current here.
    pub ownership: Ownership,
    /// The subscriptions there are (the work to share).
    pub registry: Registry,
    /// Whether every subscription has been seen once (until then, an unknown key is no sign that
    /// a subscription was deleted); set not ready while the store cannot be reached.
    pub readiness: Readiness,
    /// Where jobs handed over by other replicas go.
    pub dispatchers: Arc<Dispatchers>,
    /// This replica's name, which ownership is balanced over.
    pub name: String,
    /// How long a lease holds without renewal.
    pub lease: Duration,
    /// Subscriptions this replica just claimed, to be reconciled (their handshakes and status
    /// are now its to run).
    pub acquired: mpsc::UnboundedSender<ObjectRef<WebhookSubscription>>,
}

/// What the membership loop keeps between rounds.
#[derive(Default)]
struct State {
    /// Keys being handed over: their work is stopping here; released once it has.
    handing_over: HashSet<String>,
    /// The first renewal is done (the others have been told this member joined).
    joined: bool,
}

impl Membership {
    /// Run until `leave` is cancelled; then release everything (once no work runs here any
    /// more) and end the lease, so the others take over at once. `forward` carries new jobs of
    /// subscriptions other replicas own.
    pub async fn run(self, mut forward: mpsc::UnboundedReceiver<(String, JobRef)>, leave: CancellationToken) {
        let me = self.ownership.member().to_string();
        info!(replica = %self.name, member = %me, lease = ?self.lease, "joining the replicas sharing the store");
        let (released_tx, mut released_rx) = mpsc::unbounded_channel::<(String, i64)>();
        let mut registry = self.registry.subscribe();
        let mut state = State::default();
        let mut listener: Option<Listener> = None;
        let mut due = Instant::now();
        let mut listen_due = Instant::now();
        loop {
            if listener.is_none() && Instant::now() >= listen_due {
                listener = self.listen().await;
                listen_due = Instant::now() + renew_interval(self.lease);
            }
            let next = due.saturating_duration_since(Instant::now());
            tokio::select! {
                biased;
                _ = leave.cancelled() => break,
                Some((key, epoch)) = released_rx.recv() => {
                    state.handing_over.remove(&key);
                    match self.store.release(&key, &me, epoch).await {
                        Ok(()) => info!(key, "handed over"),
                        Err(e) => warn!(key, error = %Chain(&e), "releasing a claim; it is taken over when the lease runs out"),
                    }
                    continue;
                }
                notice = next_notice(&mut listener) => match notice {
                    Some(Notice::Owners) => due = Instant::now(),
                    Some(Notice::Jobs(payload)) => {
                        self.receive_jobs(&payload);
                        continue;
                    }
                    None => {
                        // Hand-overs sent meanwhile may be lost: restart the dispatchers, which
                        // load their jobs from the store.
                        warn!("lost the connection that hears other replicas; restarting dispatchers from the store");
                        listener = None;
                        self.ownership.resync();
                        continue;
                    }
                },
                Some(first) = forward.recv() => {
                    self.send_jobs(first, &mut forward, &leave).await;
                    continue;
                }
                changed = registry.changed() => {
                    if changed.is_ok() {
                        due = due.min(Instant::now() + REGISTRY_SETTLE);
                    }
                }
                _ = tokio::time::sleep(next) => {}
            }
            if Instant::now() >= due {
                due = Instant::now() + self.round(&mut state, &released_tx).await;
            }
        }
        self.leave(&me).await;
    }

    async fn listen(&self) -> Option<Listener> {
        match self.store.listen().await {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(error = %Chain(&e), "cannot listen to the other replicas yet; retrying");
                None
            }
        }
    }

    /// One round: renew the lease, read the claims, claim and hand over to match rendezvous
    /// hashing over the live members. Returns how soon the next round is due.
    async fn round(&self, state: &mut State, released: &mpsc::UnboundedSender<(String, i64)>) -> Duration {
        let renew = renew_interval(self.lease);
        let me = self.ownership.member().to_string();
        let sent = Instant::now();
        let members = match self.store.heartbeat(&me, &self.name, self.lease).await {
            Ok(members) => members,
            Err(e) => {
                // Not ready while the store is gone: publishers go to a replica that can store.
                self.readiness.set_store_reachable(false);
                return self.renewal_failed(&e, renew);
            }
        };
        self.readiness.set_store_reachable(true);
        // The server set the lease from a moment after `sent`: by the local clock it surely
        // holds until `sent + lease`.
        self.ownership.renewed(Some(sent + self.lease));
        if !state.joined {
            state.joined = true;
            // Tell the others, so they hand over what is now this replica's.
            if let Err(e) = self.store.announce().await {
                warn!(error = %Chain(&e), "announcing this replica; the others notice at their next renewal");
            }
        }
        let claims = match self.store.claims().await {
            Ok(claims) => claims,
            Err(e) => return self.renewal_failed(&e, renew),
        };
        let seen = self.registry.seen();
        let mut keys: Vec<&str> = seen.keys().map(String::as_str).collect();
        keys.push(CLUSTER_TASKS);
        let plan = plan(&me, &members, &claims, &keys);

        let mut owned = HashMap::new();
        for (key, epoch) in plan.keep {
            if !state.handing_over.contains(&key) {
                owned.insert(key, epoch);
            }
        }
        for (key, epoch) in plan.hand_over {
            if state.handing_over.insert(key.clone()) {
                info!(key, "handing over to another replica once the work here has stopped");
                let (ownership, released) = (self.ownership.clone(), released.clone());
                tokio::spawn(async move {
                    ownership.stopped(&key).await;
                    let _ = released.send((key, epoch));
                });
            }
        }
        for key in plan.claim {
            match self.store.claim(&key, &me).await {
                Ok(Some(epoch)) => {
                    info!(key, epoch, "took over");
                    if let Some(sub) = seen.get(&key) {
                        let _ = self.acquired.send(sub.clone());
                    }
                    owned.insert(key, epoch);
                }
                Ok(None) => debug!(key, "another replica claimed it first"),
                Err(e) => warn!(key, error = %Chain(&e), "claiming"),
            }
        }
        // Claims on subscriptions deleted meanwhile (once every subscription has been seen).
        if self.readiness.loaded() {
            for key in plan.unknown {
                if let Err(e) = self.store.forget_claim(&key, &me).await {
                    warn!(key, error = %Chain(&e), "forgetting the claim on a deleted subscription");
                }
            }
        }
        self.ownership.set_owned(owned);
        // Next: the renewal, or just after the first other member's lease runs out.
        let soonest = members.iter().filter(|m| m.id != me).map(|m| m.left + TAKEOVER_DELAY).min();
        soonest.map_or(renew, |s| s.min(renew))
    }

    /// The lease could not be renewed: once it may have run out, this replica owns nothing
    /// (its dispatchers stop; no attempt outlives the lease anyway). Try again soon.
    fn renewal_failed(&self, e: &StoreError, renew: Duration) -> Duration {
        let owned_some = !self.ownership.owned().is_empty();
        if self.ownership.lease_left().is_none() {
            if owned_some {
                warn!(error = %Chain(e), "the lease ran out without renewal: this replica owns nothing until it renews");
            }
            self.ownership.renewed(None);
            self.ownership.set_owned(HashMap::new());
        } else {
            warn!(error = %Chain(e), "renewing the lease failed; retrying");
        }
        (renew / 2).max(Duration::from_millis(200))
    }

    /// Jobs another replica accepted for subscriptions: those this replica owns go to their
    /// dispatchers (the others' owners heard the same notification).
    fn receive_jobs(&self, payload: &str) {
        for (uid, job) in decode_jobs(payload) {
            if self.ownership.owns(&uid) {
                self.dispatchers.notify(&uid, job);
            }
        }
    }

    /// Announce `first` and every other job waiting, in as few notifications as fit; retry
    /// until announced (the owner would otherwise find them only when it reloads).
    async fn send_jobs(
        &self,
        first: (String, JobRef),
        forward: &mut mpsc::UnboundedReceiver<(String, JobRef)>,
        leave: &CancellationToken,
    ) {
        let mut jobs = vec![first];
        while jobs.len() < JOBS_PER_NOTICE {
            match forward.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let payload = encode_jobs(&jobs);
        let mut delay = Duration::from_millis(100);
        while let Err(e) = self.store.hand_over(&payload).await {
            warn!(error = %Chain(&e), jobs = jobs.len(), "handing new jobs to their owners; retrying");
            if leave.is_cancelled() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Stop owning anything, wait until no work runs here, release every claim and end the lease.
    async fn leave(&self, me: &str) {
        let owned: Vec<String> = self.ownership.owned().keys().cloned().collect();
        self.ownership.set_owned(HashMap::new());
        for key in &owned {
            self.ownership.stopped(key).await;
        }
        match self.store.leave(me).await {
            Ok(()) => info!(handed_over = owned.len(), "left the replicas; the others take over now"),
            Err(e) => {
                warn!(error = %Chain(&e), "leaving; the others take over when this replica's lease runs out")
            }
        }
    }
}

async fn next_notice(listener: &mut Option<Listener>) -> Option<Notice> {
    match listener {
        Some(l) => l.notices.recv().await,
        None => std::future::pending().await,
    }
}

/// What one round does, decided from the live members, the claims and the keys there are.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Claimed by this member and staying: key → epoch.
    keep: Vec<(String, i64)>,
    /// Claimed by this member, but another live member should own it: key → epoch.
    hand_over: Vec<(String, i64)>,
    /// Unowned (released, or its owner's lease ran out), and this member should own it.
    claim: Vec<String>,
    /// Claimed by this member, but no such key exists any more.
    unknown: Vec<String>,
}

/// Decide the round (pure; see [`Plan`]). Ownership is balanced over member *names*: a
/// replica restarted under its name is a new member (its old lease may still run) that gets the
/// same share.
fn plan(me: &str, members: &[Member], claims: &[Claim], keys: &[&str]) -> Plan {
    let live: HashMap<&str, &Member> = members.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    names.dedup();
    // The member standing for each name: its newest incarnation (the most lease left).
    let mut by_name: HashMap<&str, &Member> = HashMap::new();
    for m in members {
        let entry = by_name.entry(m.name.as_str()).or_insert(m);
        if m.left > entry.left {
            *entry = m;
        }
    }
    let rows: HashMap<&str, &Claim> = claims.iter().map(|c| (c.key.as_str(), c)).collect();
    let mut plan = Plan::default();
    for &key in keys {
        let desired = owner_of(key, &names).and_then(|n| by_name.get(n.as_str())).map(|m| m.id.as_str());
        let row = rows.get(key);
        match row.and_then(|c| c.owner.as_deref()) {
            Some(owner) if owner == me => {
                let epoch = row.map_or(0, |c| c.epoch);
                if desired.is_some_and(|d| d != me) {
                    plan.hand_over.push((key.to_string(), epoch));
                } else {
                    plan.keep.push((key.to_string(), epoch));
                }
            }
            Some(owner) if live.contains_key(owner) => {}
            _ if desired == Some(me) => plan.claim.push(key.to_string()),
            _ => {}
        }
    }
    let known: HashSet<&str> = keys.iter().copied().collect();
    plan.unknown = claims
        .iter()
        .filter(|c| c.owner.as_deref() == Some(me) && !known.contains(c.key.as_str()))
        .map(|c| c.key.clone())
        .collect();
    plan
}

/// Jobs as one notification's payload: `uid job_id due_at accepted_at` per line, and the
/// partition key's hash when the job has one.
fn encode_jobs(jobs: &[(String, JobRef)]) -> String {
    let mut out = String::new();
    for (uid, j) in jobs {
        out.push_str(&format!("{uid} {} {} {}", j.job_id, j.due_at, j.accepted_at));
        if let Some(p) = j.partition {
            out.push_str(&format!(" {}", p.0));
        }
        out.push('\n');
    }
    out
}

fn decode_jobs(payload: &str) -> Vec<(String, JobRef)> {
    payload
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let uid = parts.next()?.to_string();
            let mut number = || parts.next()?.parse::<i64>().ok();
            let (job_id, due_at, accepted_at) = (number()?, number()?, number()?);
            let partition = number().map(PartitionKey);
            Some((uid, JobRef { due_at, job_id, accepted_at, partition }))
        })
        .collect()
}

/// Run `work` while this replica owns `key` (always, with one replica): started when it is
/// claimed, cancelled when it is lost or handed over, until `stop`. The key counts as running
/// here until `work` has returned, so nobody else takes it over before.
pub async fn while_owned<F, Fut>(ownership: Ownership, key: &str, stop: CancellationToken, mut work: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut owned = ownership.subscribe();
    loop {
        if ownership.owns(key) {
            let running = ownership.running(key);
            let lost = stop.child_token();
            let watch = {
                let (ownership, lost, key) = (ownership.clone(), lost.clone(), key.to_string());
                let mut owned = ownership.subscribe();
                async move {
                    while ownership.owns(&key) {
                        if owned.changed().await.is_err() {
                            break;
                        }
                    }
                    lost.cancel();
                }
            };
            info!(key, "running the cluster-wide tasks here");
            tokio::select! {
                _ = work(lost.clone()) => {}
                _ = watch => {}
            }
            lost.cancel();
            drop(running);
            if stop.is_cancelled() {
                return;
            }
            info!(key, "the cluster-wide tasks stopped here");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = owned.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests;
