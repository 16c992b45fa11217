//! Ordered delivery (`spec.delivery.ordering`). The jobs of one lane (a `partitionkey`'s under
//! `PartitionKey`, all of a subscription's under `Strict`) go one at a time, lowest id first: ids
//! follow the order in which events were accepted, so the order survives restarts and hand-overs
//! (it comes from the store). Of a lane only its first job is ever in the queue's due set, and
//! only while nothing else of the lane is out (attempted or expiring, its outcome not recorded
//! yet). A retried job comes back as its lane's first, so it holds back the later jobs of its
//! lane, and only those, until it is delivered, dead-lettered or expired.
//!
//! With several replicas a job can reach its dispatcher before an earlier job of its lane that
//! another replica accepted, whose announcement is still on the way. So there a job heard of from
//! ingest is released only after the store was asked for earlier jobs of its lane (a check);
//! jobs read from the store were complete up to the moment of the read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::api::Ordering;
use crate::store::{JobRef, PartitionKey};

/// Which jobs go one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LaneKey {
    /// All of the subscription's (`Strict`).
    All,
    /// Those of one `partitionkey`.
    Key(PartitionKey),
}

impl LaneKey {
    fn partition(self) -> Option<PartitionKey> {
        match self {
            LaneKey::All => None,
            LaneKey::Key(p) => Some(p),
        }
    }
}

#[derive(Debug, Default)]
struct Lane {
    /// The lane's jobs not started, by id.
    waiting: BTreeMap<i64, JobRef>,
    /// Its jobs started whose outcome is not back.
    out: usize,
}

/// How long a job a check found is remembered, to drop its announcement when it arrives.
const FOUND_KEPT: Duration = Duration::from_secs(60);

/// See the module docs. Every method that can move a job in or out of the queue's due set takes
/// that set (`due`).
#[derive(Debug)]
pub(super) struct Lanes {
    ordering: Ordering,
    lanes: HashMap<LaneKey, Lane>,
    /// Every job started (attempt or expiry) whose outcome is not back, ordered or not, and
    /// whether it still holds its lane (a delivered one does not): lanes are rebuilt around them
    /// when the ordering changes.
    out: HashMap<i64, (JobRef, bool)>,
    /// Jobs of lanes that are not in the due set.
    held: usize,
    /// Jobs heard of from ingest are checked against the store before they go (several replicas).
    check: bool,
    unchecked: HashSet<i64>,
    /// Lanes whose first job waits for a check, with that job.
    to_check: HashMap<LaneKey, JobRef>,
    /// A check is out.
    checking: bool,
    /// No check before this (the last one failed).
    check_after: Option<Instant>,
    /// Jobs checks found, and when.
    found: HashMap<i64, Instant>,
}

impl Lanes {
    /// Unordered, until [`Lanes::reorder`]; `check`: whether jobs heard of from ingest are checked.
    pub(super) fn new(check: bool) -> Self {
        Lanes {
            ordering: Ordering::Unordered,
            lanes: HashMap::new(),
            out: HashMap::new(),
            held: 0,
            check,
            unchecked: HashSet::new(),
            to_check: HashMap::new(),
            checking: false,
            check_after: None,
            found: HashMap::new(),
        }
    }

    fn lane_of(&self, job: &JobRef) -> Option<LaneKey> {
        match self.ordering {
            Ordering::Unordered => None,
            Ordering::PartitionKey => job.partition.map(LaneKey::Key),
            Ordering::Strict => Some(LaneKey::All),
        }
    }

    /// Jobs held back behind their lane's first (not in the due set).
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// The jobs held back, for a walk over every queued job.
    pub(super) fn held_jobs(&self, due: &BTreeSet<JobRef>) -> Vec<JobRef> {
        let all = self.lanes.values().flat_map(|l| l.waiting.values());
        all.filter(|j| !due.contains(j)).copied().collect()
    }

    /// Queue a job; `heard`: from ingest rather than read from the store. `false` when it is
    /// known already (queued, out, or found by a check), and so not queued again.
    pub(super) fn admit(&mut self, job: JobRef, due: &mut BTreeSet<JobRef>, heard: bool) -> bool {
        let id = job.job_id;
        // Unordered jobs too: the ordering may change before they go.
        if heard && self.check {
            self.unchecked.insert(id);
        }
        let Some(lane) = self.lane_of(&job) else {
            due.insert(job);
            return true;
        };
        let queued = self.lanes.get(&lane).is_some_and(|l| l.waiting.contains_key(&id));
        if queued || self.out.contains_key(&id) || self.found.remove(&id).is_some() {
            return false;
        }
        self.insert(lane, job, due);
        true
    }

    /// Put `job` in its lane, before the lane's first if its id is lower.
    fn insert(&mut self, lane: LaneKey, job: JobRef, due: &mut BTreeSet<JobRef>) {
        let l = self.lanes.entry(lane).or_default();
        if let Some((_, first)) = l.waiting.first_key_value()
            && job.job_id < first.job_id
        {
            if due.remove(first) {
                self.held += 1;
            }
            self.to_check.remove(&lane);
        }
        if l.waiting.insert(job.job_id, job).is_none() {
            self.held += 1;
        }
        self.release(lane, due);
    }

    /// Let the lane's first job into the due set, if nothing of the lane is out and it needs no
    /// check (otherwise it waits for one).
    fn release(&mut self, lane: LaneKey, due: &mut BTreeSet<JobRef>) {
        let Some(l) = self.lanes.get(&lane) else { return };
        if l.out > 0 {
            return;
        }
        let Some((&id, &first)) = l.waiting.first_key_value() else {
            self.lanes.remove(&lane);
            return;
        };
        if due.contains(&first) {
            return;
        }
        if self.unchecked.contains(&id) {
            self.to_check.insert(lane, first);
            return;
        }
        due.insert(first);
        self.held -= 1;
    }

    /// `job` starts (an attempt or an expiry): it leaves the queue, and its lane waits for it.
    pub(super) fn start(&mut self, job: JobRef, due: &mut BTreeSet<JobRef>) {
        let released = due.remove(&job);
        self.out.insert(job.job_id, (job, true));
        self.unchecked.remove(&job.job_id);
        if let Some(lane) = self.lane_of(&job) {
            let l = self.lanes.entry(lane).or_default();
            if l.waiting.remove(&job.job_id).is_some() && !released {
                self.held -= 1;
            }
            l.out += 1;
            if !released {
                self.to_check.remove(&lane);
                self.release(lane, due);
            }
        }
    }

    /// The outcome of a started job is back: it left the queue (`None`) or comes back (`Some`,
    /// with its new due time). Either way its lane moves on.
    pub(super) fn finished(&mut self, job: JobRef, back: Option<JobRef>, due: &mut BTreeSet<JobRef>) {
        let started = self.out.remove(&job.job_id);
        let lane = started.filter(|(_, holds)| *holds).and_then(|(j, _)| self.lane_of(&j));
        if let Some(l) = lane.and_then(|lane| self.lanes.get_mut(&lane)) {
            l.out -= 1;
        }
        match (back, self.lane_of(&job)) {
            (Some(job), Some(lane)) => self.insert(lane, job, due),
            (Some(job), None) => {
                due.insert(job);
            }
            (None, _) => {}
        }
        if let Some(lane) = lane {
            self.release(lane, due);
        }
    }

    /// A started job was delivered (its endpoint answered 2xx): the next of its lane may go now,
    /// before the outcome is recorded. Should the record fail, the job comes back and is sent
    /// again, after (but its first delivery was before) the next one's.
    pub(super) fn delivered(&mut self, job: JobRef, due: &mut BTreeSet<JobRef>) {
        let lane = self.lane_of(&job);
        let Some((_, holds)) = self.out.get_mut(&job.job_id) else { return };
        if !std::mem::replace(holds, false) {
            return;
        }
        if let Some(lane) = lane {
            if let Some(l) = self.lanes.get_mut(&lane) {
                l.out -= 1;
            }
            self.release(lane, due);
        }
    }

    /// A queued job in the due set is to be attempted at another time.
    pub(super) fn reschedule(&mut self, job: JobRef, to: JobRef, due: &mut BTreeSet<JobRef>) {
        if !due.remove(&job) {
            return;
        }
        if let Some(l) = self.lane_of(&job).and_then(|lane| self.lanes.get_mut(&lane)) {
            l.waiting.insert(job.job_id, to);
        }
        due.insert(to);
    }

    /// A queued job in the due set is no longer in the store.
    pub(super) fn forget(&mut self, job: JobRef, due: &mut BTreeSet<JobRef>) {
        if !due.remove(&job) {
            return;
        }
        self.unchecked.remove(&job.job_id);
        if let Some(lane) = self.lane_of(&job) {
            if let Some(l) = self.lanes.get_mut(&lane) {
                l.waiting.remove(&job.job_id);
            }
            self.release(lane, due);
        }
    }

    /// Rebuild the lanes for `ordering` (a spec change; and the first plan, since a queue starts
    /// unordered), around the jobs out.
    pub(super) fn reorder(&mut self, ordering: Ordering, due: &mut BTreeSet<JobRef>) {
        let mut all: BTreeMap<i64, JobRef> = due.iter().map(|j| (j.job_id, *j)).collect();
        for l in self.lanes.values() {
            all.extend(l.waiting.iter().map(|(id, j)| (*id, *j)));
        }
        due.clear();
        self.lanes.clear();
        self.to_check.clear();
        self.held = 0;
        self.ordering = ordering;
        for (job, _) in self.out.values().filter(|(_, holds)| *holds) {
            if let Some(lane) = self.lane_of(job) {
                self.lanes.entry(lane).or_default().out += 1;
            }
        }
        for job in all.into_values() {
            match self.lane_of(&job) {
                Some(lane) => self.insert(lane, job, due),
                None => {
                    due.insert(job);
                }
            }
        }
    }

    /// Whether the lanes were built for `ordering`.
    pub(super) fn ordered_by(&self, ordering: Ordering) -> bool {
        self.ordering == ordering
    }

    /// The lanes' first jobs to check now (one check at a time), as the store is asked: the lane's
    /// `partitionkey` (none: all of the subscription's jobs) and the job's id. The check's answer
    /// goes to [`Lanes::checked`] with the jobs.
    pub(super) fn checks(&mut self, now: Instant) -> (Vec<JobRef>, Option<Duration>) {
        if self.checking || self.to_check.is_empty() {
            return (vec![], None);
        }
        if let Some(after) = self.check_after.filter(|after| *after > now) {
            return (vec![], Some(after - now));
        }
        self.checking = true;
        (self.to_check.drain().map(|(_, job)| job).collect(), None)
    }

    /// What the store is asked for `jobs` (see [`Lanes::checks`]).
    pub(super) fn question(&self, jobs: &[JobRef]) -> Vec<(Option<PartitionKey>, i64)> {
        jobs.iter().filter_map(|j| Some((self.lane_of(j)?.partition(), j.job_id))).collect()
    }

    /// The store's answer to a check of `asked`: earlier jobs of their lanes that were not known
    /// here yet (`Err`: the check is repeated after `retry`).
    pub(super) fn checked(
        &mut self,
        asked: Vec<JobRef>,
        found: Result<Vec<JobRef>, ()>,
        due: &mut BTreeSet<JobRef>,
        now: Instant,
        retry: Duration,
    ) {
        self.checking = false;
        let Ok(found) = found else {
            self.check_after = Some(now + retry);
            for job in asked {
                if let Some(lane) = self.lane_of(&job) {
                    self.release(lane, due);
                }
            }
            return;
        };
        self.check_after = None;
        self.found.retain(|_, at| now.duration_since(*at) < FOUND_KEPT);
        for job in found {
            let Some(lane) = self.lane_of(&job) else { continue };
            let queued = self.lanes.get(&lane).is_some_and(|l| l.waiting.contains_key(&job.job_id));
            if queued || self.out.contains_key(&job.job_id) {
                continue;
            }
            self.found.insert(job.job_id, now);
            self.insert(lane, job, due);
        }
        for job in asked {
            self.unchecked.remove(&job.job_id);
            if let Some(lane) = self.lane_of(&job) {
                self.release(lane, due);
            }
        }
    }
}
