//! Which work this replica owns. Every subscription (and the cluster-wide tasks, under
//! [`CLUSTER_TASKS`]) is owned by one live replica at a time, so that its dispatcher, handshake
//! and delivery-status writes run in one place and `maxConcurrency` and rate limits hold across
//! replicas without per-request coordination.
//!
//! This is the shared view; the replica's membership task (`cluster`) keeps it current from the
//! ownership rows in PostgreSQL. With the SQLite store there is one replica, which owns
//! everything for good ([`Ownership::solo`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};

/// The key under which the cluster-wide tasks (FailedEvent writer, replay results, pruning) are
/// owned, like a subscription's UID.
pub const CLUSTER_TASKS: &str = "@cluster";

/// What this replica owns: key → the epoch of its claim.
pub type Owned = Arc<HashMap<String, i64>>;

/// This replica's share of the work; cheap to clone.
#[derive(Clone)]
pub struct Ownership {
    inner: Arc<Inner>,
}

struct Inner {
    /// This replica's identity among the members (its name and this process's incarnation).
    member: String,
    /// One replica owns everything, with no lease (the SQLite store).
    solo: bool,
    owned: watch::Sender<Owned>,
    /// Until when this replica's lease surely holds, by the local clock.
    lease_until: Mutex<Option<Instant>>,
    /// Keys whose work is still running here, with how many runners each.
    running: Mutex<HashMap<String, usize>>,
    stopped: Notify,
    /// Bumped by [`Ownership::resync`]: work started before restarts from the store.
    generation: std::sync::atomic::AtomicU64,
}

impl Ownership {
    fn new(member: String, solo: bool) -> Ownership {
        Ownership {
            inner: Arc::new(Inner {
                member,
                solo,
                owned: watch::Sender::new(Arc::default()),
                lease_until: Mutex::new(None),
                running: Mutex::default(),
                stopped: Notify::new(),
                generation: Default::default(),
            }),
        }
    }

    /// The only replica: it owns every key, at epoch 0, with no lease to run out.
    pub fn solo() -> Ownership {
        Ownership::new(String::new(), true)
    }

    /// One of several replicas, known to the others as `member`; owns nothing until its
    /// membership task claims work.
    pub fn shared(member: String) -> Ownership {
        Ownership::new(member, false)
    }

    /// This replica's member identity (empty when solo).
    pub fn member(&self) -> &str {
        &self.inner.member
    }

    /// Whether this replica is the only one.
    pub fn is_solo(&self) -> bool {
        self.inner.solo
    }

    /// The epoch under which this replica owns `key`, if it does.
    pub fn epoch(&self, key: &str) -> Option<i64> {
        if self.inner.solo {
            return Some(0);
        }
        self.inner.owned.borrow().get(key).copied()
    }

    /// Whether this replica owns `key`.
    pub fn owns(&self, key: &str) -> bool {
        self.epoch(key).is_some()
    }

    /// What this replica owns now (with one replica: nothing is listed, everything is owned).
    pub fn owned(&self) -> Owned {
        self.inner.owned.borrow().clone()
    }

    /// A receiver that changes whenever what this replica owns does.
    pub fn subscribe(&self) -> watch::Receiver<Owned> {
        self.inner.owned.subscribe()
    }

    /// How long this replica's lease surely holds: work started now must end within it, so that
    /// no other replica can be sending for the same subscription meanwhile. `None` once it may
    /// have run out.
    pub fn lease_left(&self) -> Option<Duration> {
        if self.inner.solo {
            return Some(Duration::MAX);
        }
        let until = (*self.inner.lease_until.lock().unwrap_or_else(|e| e.into_inner()))?;
        until.checked_duration_since(Instant::now()).filter(|left| !left.is_zero())
    }

    /// The membership task: this is what the replica owns now.
    pub fn set_owned(&self, owned: HashMap<String, i64>) {
        self.inner.owned.send_if_modified(|current| {
            let changed = **current != owned;
            if changed {
                *current = Arc::new(owned);
            }
            changed
        });
    }

    /// Restart all work from the store: hand-overs of new jobs may have been missed (the
    /// connection that hears them was lost). Receivers of [`Ownership::subscribe`] are woken.
    pub fn resync(&self) {
        self.inner.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.inner.owned.send_modify(|_| {});
    }

    /// How many times [`Ownership::resync`] was called: work started under an older count
    /// restarts.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The membership task: the lease was renewed and holds until `until` (local clock).
    pub fn renewed(&self, until: Option<Instant>) {
        *self.inner.lease_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    /// Work on `key` starts here; it counts as running until the guard is dropped.
    pub fn running(&self, key: &str) -> Running {
        *self.inner.running.lock().unwrap_or_else(|e| e.into_inner()).entry(key.to_string()).or_default() +=
            1;
        Running { ownership: self.clone(), key: key.to_string() }
    }

    /// Whether work on `key` still runs here (a dispatcher that was told to stop may still be
    /// finishing its in-flight attempts).
    pub fn is_running(&self, key: &str) -> bool {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner()).contains_key(key)
    }

    /// Wait until no work on `key` runs here any more (its in-flight attempts have ended and
    /// are recorded), so another replica may take it over.
    pub async fn stopped(&self, key: &str) {
        loop {
            let notified = self.inner.stopped.notified();
            if !self.is_running(key) {
                return;
            }
            notified.await;
        }
    }
}

/// Marks work on one key as running while it lives.
pub struct Running {
    ownership: Ownership,
    key: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let inner = &self.ownership.inner;
        let mut running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = running.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.key);
            }
        }
        drop(running);
        inner.stopped.notify_waiters();
        // Work waiting for this to stop (a restarted dispatcher) may start now.
        inner.owned.send_modify(|_| {});
    }
}

/// The member that should own `key` among `members` (by name): rendezvous hashing, so that a
/// member joining or leaving moves only the keys it gains or loses. Stable across processes
/// and builds (SHA-256, not the standard library's hasher).
pub fn owner_of<'a>(key: &str, members: &'a [String]) -> Option<&'a String> {
    members.iter().max_by_key(|m| {
        let digest = Sha256::new().chain_update(key).chain_update([0]).chain_update(m.as_bytes()).finalize();
        (u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()), m.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("hookline-{i}")).collect()
    }

    #[test]
    fn rendezvous_spreads_keys_and_moves_only_the_leavers() {
        let three = names(3);
        let keys: Vec<String> = (0..3000).map(|i| format!("uid-{i}")).collect();
        let mut counts = HashMap::new();
        for k in &keys {
            *counts.entry(owner_of(k, &three).expect("an owner")).or_insert(0) += 1;
        }
        assert!(counts.values().all(|&n| (800..=1200).contains(&n)), "about a third each: {counts:?}");
        let two = names(2);
        for k in &keys {
            let before = owner_of(k, &three).expect("an owner");
            if before != "hookline-2" {
                assert_eq!(owner_of(k, &two), Some(before), "{k} stays where it was");
            }
        }
        assert_eq!(owner_of("k", &[]), None);
    }

    #[test]
    fn solo_owns_everything_for_good() {
        let solo = Ownership::solo();
        assert_eq!(solo.epoch("any"), Some(0));
        assert_eq!(solo.lease_left(), Some(Duration::MAX));
    }

    #[test]
    fn a_shared_replica_owns_what_it_is_given_while_its_lease_holds() {
        let o = Ownership::shared("a/1".into());
        assert!(!o.owns("s"));
        assert_eq!(o.lease_left(), None, "no lease yet");
        o.set_owned(HashMap::from([("s".to_string(), 3)]));
        assert_eq!(o.epoch("s"), Some(3));
        o.renewed(Some(Instant::now() + Duration::from_secs(10)));
        assert!(o.lease_left().is_some_and(|left| left > Duration::from_secs(9)));
        o.renewed(Some(Instant::now()));
        assert_eq!(o.lease_left(), None, "run out");
    }

    #[tokio::test]
    async fn stopped_waits_for_every_runner() {
        let o = Ownership::shared("a/1".into());
        let (first, second) = (o.running("s"), o.running("s"));
        drop(first);
        let waiting = tokio::spawn({
            let o = o.clone();
            async move { o.stopped("s").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one runner left");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").expect("join");
        tokio::time::timeout(Duration::from_secs(1), o.stopped("never-ran")).await.expect("nothing runs");
    }
}
