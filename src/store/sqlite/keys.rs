//! The dedup check without an index keyed by event id. Producers mostly send UUIDs; a B-tree
//! keyed by them inserts each event into a different page, and every such page costs the writer
//! a WAL frame at commit (it doubled the store's cost per event). Instead the writer thread keeps
//! a hash of every stored event's namespace + source + id, with the row it names, in memory
//! (about 19–38 bytes per event in the dedup window, by how full the table happens to be), and the
//! events table keeps only indexes that grow at their end.
//!
//! A hash only points at candidates: each is checked against its row, so a collision never
//! makes a distinct event a duplicate. The map changes with the transaction: what a rolled-back
//! transaction (or savepoint) added or removed is undone, so it always mirrors the committed rows.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use rusqlite::{Connection, OptionalExtension, params};

/// The stored events' keys, by hash (see the module documentation).
pub(crate) struct Keys {
    /// Keyed per process, so that ids chosen to collide cannot be made to.
    hasher: RandomState,
    rows: HashMap<u64, i64>,
    /// Further rows whose keys hash alike (practically never any).
    more: HashMap<u64, Vec<i64>>,
    /// What the open transaction changed, to undo it if it rolls back.
    journal: Vec<Change>,
}

#[derive(Clone, Copy)]
enum Change {
    Added(u64, i64),
    Removed(u64, i64),
}

/// A point in the open transaction's changes (see [`Keys::undo_to`]).
pub(crate) struct Mark(usize);

impl Keys {
    pub(crate) fn new() -> Keys {
        Keys { hasher: RandomState::new(), rows: HashMap::new(), more: HashMap::new(), journal: vec![] }
    }

    /// Read every stored event's key (through the time index, which covers them).
    pub(crate) fn load(conn: &Connection) -> Result<Keys, rusqlite::Error> {
        let mut keys = Keys::new();
        let mut stmt =
            conn.prepare("SELECT seq, namespace, source, event_id FROM events INDEXED BY events_by_time")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let hash = keys.hash(r.get_ref(1)?.as_str()?, r.get_ref(2)?.as_str()?, r.get_ref(3)?.as_str()?);
            keys.insert(hash, r.get(0)?);
        }
        Ok(keys)
    }

    pub(crate) fn hash(&self, namespace: &str, source: &str, event_id: &str) -> u64 {
        // A tuple of strings hashes unambiguously (each string ends with a separator).
        self.hasher.hash_one((namespace, source, event_id))
    }

    /// The row holding this event, if one is stored.
    pub(crate) fn find(
        &self,
        conn: &Connection,
        hash: u64,
        (namespace, source, event_id): (&str, &str, &str),
    ) -> Result<Option<i64>, rusqlite::Error> {
        let candidates = self.rows.get(&hash).into_iter().chain(self.more.get(&hash).into_iter().flatten());
        let mut same = conn.prepare_cached(
            "SELECT 1 FROM events WHERE seq = ?1 AND namespace = ?2 AND source = ?3 AND event_id = ?4",
        )?;
        for &seq in candidates {
            if same.query_row(params![seq, namespace, source, event_id], |_| Ok(())).optional()?.is_some() {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    /// A row was stored under this hash.
    pub(crate) fn add(&mut self, hash: u64, seq: i64) {
        self.insert(hash, seq);
        self.journal.push(Change::Added(hash, seq));
    }

    /// A row was deleted.
    pub(crate) fn remove(&mut self, hash: u64, seq: i64) {
        if self.delete(hash, seq) {
            self.journal.push(Change::Removed(hash, seq));
        }
    }

    /// How many events are remembered.
    pub(crate) fn len(&self) -> usize {
        self.rows.len() + self.more.values().map(Vec::len).sum::<usize>()
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark(self.journal.len())
    }

    /// Undo every change of the open transaction (it rolled back).
    pub(crate) fn rollback(&mut self) {
        self.undo_to(Mark(0));
    }

    /// Undo the changes made since `mark` (their savepoint or transaction rolled back).
    pub(crate) fn undo_to(&mut self, Mark(mark): Mark) {
        while self.journal.len() > mark {
            match self.journal.pop() {
                Some(Change::Added(hash, seq)) => drop(self.delete(hash, seq)),
                Some(Change::Removed(hash, seq)) => self.insert(hash, seq),
                None => break,
            }
        }
    }

    /// The transaction committed: its changes stay.
    pub(crate) fn commit(&mut self) {
        self.journal.clear();
    }

    fn insert(&mut self, hash: u64, seq: i64) {
        if let Some(first) = self.rows.insert(hash, seq) {
            self.rows.insert(hash, first);
            self.more.entry(hash).or_default().push(seq);
        }
    }

    fn delete(&mut self, hash: u64, seq: i64) -> bool {
        if let Some(more) = self.more.get_mut(&hash)
            && let Some(i) = more.iter().position(|&s| s == seq)
        {
            more.swap_remove(i);
            if more.is_empty() {
                self.more.remove(&hash);
            }
            return true;
        }
        if self.rows.get(&hash) != Some(&seq) {
            return false;
        }
        match self.more.get_mut(&hash).and_then(Vec::pop) {
            Some(next) => {
                self.rows.insert(hash, next);
                if self.more.get(&hash).is_some_and(Vec::is_empty) {
                    self.more.remove(&hash);
                }
            }
            None => drop(self.rows.remove(&hash)),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sharing_a_hash_are_all_candidates_and_leave_one_by_one() {
        let mut keys = Keys::new();
        keys.add(7, 1);
        keys.add(7, 2);
        keys.add(7, 3);
        assert_eq!(keys.len(), 3);
        keys.remove(7, 1);
        keys.remove(7, 3);
        assert_eq!((keys.len(), keys.rows.get(&7)), (1, Some(&2)));
        keys.remove(7, 2);
        assert_eq!((keys.len(), keys.more.len()), (0, 0));
    }

    #[test]
    fn a_rollback_undoes_additions_and_removals_since_its_mark() {
        let mut keys = Keys::new();
        keys.add(1, 10);
        keys.commit();
        let mark = keys.mark();
        keys.add(2, 20);
        keys.remove(1, 10);
        keys.remove(3, 30); // absent: nothing to undo
        keys.undo_to(mark);
        assert_eq!((keys.rows.get(&1), keys.rows.get(&2), keys.len()), (Some(&10), None, 1));
    }
}
