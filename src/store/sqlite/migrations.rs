//! Versioned schema migrations, applied in order; `PRAGMA user_version` records the last applied.

/// Each entry upgrades the schema by one version. Never edit a released entry: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: events, jobs, delivery log, dead-letter outbox.
    r#"
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        namespace TEXT NOT NULL,
        source TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        accepted_at_ms INTEGER NOT NULL,
        body BLOB NOT NULL,
        UNIQUE (namespace, source, event_id)
    );
    CREATE TABLE jobs (
        -- AUTOINCREMENT: a job id is never reused, because the dead-letter and replay outboxes
        -- are keyed by it and outlive the job.
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_seq INTEGER NOT NULL REFERENCES events (seq),
        sub_uid TEXT NOT NULL,
        due_at_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        first_attempt_ms INTEGER
    );
    CREATE INDEX jobs_by_sub ON jobs (sub_uid, due_at_ms);
    CREATE INDEX jobs_by_event ON jobs (event_seq);
    CREATE TABLE attempts (
        seq INTEGER PRIMARY KEY,
        sub_uid TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        status INTEGER,
        duration_ms INTEGER NOT NULL,
        error TEXT,
        outcome TEXT NOT NULL,
        next_retry_ms INTEGER
    );
    CREATE INDEX attempts_by_sub ON attempts (sub_uid, seq);
    CREATE INDEX attempts_by_time ON attempts (at_ms);
    CREATE TABLE dead_letters (
        job_id INTEGER PRIMARY KEY,
        sub_uid TEXT NOT NULL,
        namespace TEXT NOT NULL,
        subscription TEXT NOT NULL,
        event_seq INTEGER NOT NULL REFERENCES events (seq),
        failure TEXT NOT NULL
    );
    "#,
    // 2: replays of FailedEvents: a job may be a replay (at most one pending per FailedEvent), and
    // its final outcome waits in an outbox until the FailedEvent is deleted or updated.
    r#"
    ALTER TABLE jobs ADD COLUMN replay_of TEXT;
    CREATE UNIQUE INDEX jobs_by_replay ON jobs (replay_of) WHERE replay_of IS NOT NULL;
    CREATE TABLE replay_outcomes (
        job_id INTEGER PRIMARY KEY,
        replay_of TEXT NOT NULL,
        delivered INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        status INTEGER,
        error TEXT,
        at_ms INTEGER NOT NULL
    );
    "#,
    // 3: endpoint verification per subscription and URL.
    r#"
    CREATE TABLE verifications (
        sub_uid TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        method TEXT NOT NULL,
        verified_at_ms INTEGER,
        token TEXT UNIQUE,
        code TEXT,
        expires_at_ms INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        rate_per_minute INTEGER,
        revalidate TEXT
    );
    "#,
    // 4: pruning finds old events and their dead letters by index instead of scanning every event
    // (a full scan of a large events table stalled the writer, and so every publish, each minute).
    r#"
    CREATE INDEX events_by_time ON events (accepted_at_ms);
    CREATE INDEX dead_letters_by_event ON dead_letters (event_seq);
    "#,
    // 5: deduplication leaves SQLite for the writer's memory (see `keys`): the events table loses
    // its unique index on (namespace, source, event_id), whose scattered inserts cost a page per
    // event, and its time index covers those columns instead, so the writer can load the keys at
    // start. A constraint goes only by rebuilding the table (foreign keys are off meanwhile).
    r#"
    CREATE TABLE events_new (
        seq INTEGER PRIMARY KEY,
        namespace TEXT NOT NULL,
        source TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        accepted_at_ms INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    INSERT INTO events_new (seq, namespace, source, event_id, event_type, accepted_at_ms, body)
        SELECT seq, namespace, source, event_id, event_type, accepted_at_ms, body FROM events;
    DROP TABLE events;
    ALTER TABLE events_new RENAME TO events;
    CREATE INDEX events_by_time ON events (accepted_at_ms, namespace, source, event_id);
    "#,
    // 6: ordered delivery: each job keeps its event's `partitionkey` (hashed), and a job's lane
    // (its key's jobs, or all of a subscription's) is found in id order on an index. The
    // subscription index leaves `due_at_ms`, which no query ranges over and every retry moves.
    r#"
    ALTER TABLE jobs ADD COLUMN partition_hash INTEGER;
    DROP INDEX jobs_by_sub;
    CREATE INDEX jobs_by_sub ON jobs (sub_uid, id);
    CREATE INDEX jobs_by_partition ON jobs (sub_uid, partition_hash, id) WHERE partition_hash IS NOT NULL;
    "#,
    // 7: delivery queries across a namespace, by outcome, type, event and time: each attempt
    // names its subscription and where it went; the log is indexed in its order (time, then
    // sequence: the rowid every SQLite index ends with) per subscription and per namespace,
    // for failed attempts only (partial) and per namespace and type (see store/log.rs).
    // Attempts logged before have no namespace: they show in their subscription's log only.
    r#"
    ALTER TABLE attempts ADD COLUMN namespace TEXT;
    ALTER TABLE attempts ADD COLUMN subscription TEXT;
    ALTER TABLE attempts ADD COLUMN url TEXT;
    DROP INDEX attempts_by_sub;
    CREATE INDEX attempts_by_sub ON attempts (sub_uid, at_ms);
    CREATE INDEX attempts_by_ns ON attempts (namespace, at_ms);
    CREATE INDEX attempts_by_sub_failed ON attempts (sub_uid, at_ms) WHERE outcome <> 'delivered';
    CREATE INDEX attempts_by_ns_failed ON attempts (namespace, at_ms) WHERE outcome <> 'delivered';
    CREATE INDEX attempts_by_ns_type ON attempts (namespace, event_type, at_ms);
    "#,
];
