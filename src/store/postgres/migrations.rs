//! Versioned schema migrations of the PostgreSQL store, applied in order at start under an
//! advisory lock (replicas starting together take turns); `hookline.schema_version` records the
//! last applied.

/// Key of the advisory lock migrations run under (any constant that no other program uses).
pub const MIGRATION_LOCK: i64 = 0x686f_6f6b_6c69_6e65; // "hookline"

/// Each entry upgrades the schema by one version. Never edit a released entry: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the tables of SQLite's migrations 1 to 4, in one step.
    r#"
    CREATE TABLE events (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        namespace TEXT NOT NULL,
        source TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        accepted_at_ms BIGINT NOT NULL,
        body BYTEA NOT NULL,
        UNIQUE (namespace, source, event_id)
    );
    CREATE INDEX events_by_time ON events (accepted_at_ms);
    -- A job id is never reused (a sequence never goes back): the dead-letter and replay
    -- outboxes are keyed by it and outlive the job.
    CREATE TABLE jobs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_seq BIGINT NOT NULL REFERENCES events (seq),
        sub_uid TEXT NOT NULL,
        due_at_ms BIGINT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        first_attempt_ms BIGINT,
        replay_of TEXT
    );
    CREATE INDEX jobs_by_sub ON jobs (sub_uid, due_at_ms);
    CREATE INDEX jobs_by_event ON jobs (event_seq);
    CREATE UNIQUE INDEX jobs_by_replay ON jobs (replay_of) WHERE replay_of IS NOT NULL;
    CREATE TABLE attempts (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        sub_uid TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        at_ms BIGINT NOT NULL,
        status INTEGER,
        duration_ms BIGINT NOT NULL,
        error TEXT,
        outcome TEXT NOT NULL,
        next_retry_ms BIGINT
    );
    CREATE INDEX attempts_by_sub ON attempts (sub_uid, seq);
    CREATE INDEX attempts_by_time ON attempts (at_ms);
    CREATE TABLE dead_letters (
        job_id BIGINT PRIMARY KEY,
        sub_uid TEXT NOT NULL,
        namespace TEXT NOT NULL,
        subscription TEXT NOT NULL,
        event_seq BIGINT NOT NULL REFERENCES events (seq),
        failure TEXT NOT NULL
    );
    CREATE INDEX dead_letters_by_event ON dead_letters (event_seq);
    CREATE TABLE replay_outcomes (
        job_id BIGINT PRIMARY KEY,
        replay_of TEXT NOT NULL,
        delivered BOOLEAN NOT NULL,
        attempts INTEGER NOT NULL,
        status INTEGER,
        error TEXT,
        at_ms BIGINT NOT NULL
    );
    CREATE TABLE verifications (
        sub_uid TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        method TEXT NOT NULL,
        verified_at_ms BIGINT,
        token TEXT UNIQUE,
        code TEXT,
        expires_at_ms BIGINT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms BIGINT NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        rate_per_minute BIGINT,
        revalidate TEXT
    );
    "#,
    // 2: replicas: members heartbeat their lease; each key (a subscription's UID, or the
    // cluster-wide tasks) has at most one owner, whose claim's epoch fences its writes.
    r#"
    CREATE TABLE members (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE owners (
        key TEXT PRIMARY KEY,
        owner TEXT,
        epoch BIGINT NOT NULL
    );
    CREATE INDEX owners_by_owner ON owners (owner);
    "#,
    // 3: ordered delivery: each job keeps its event's `partitionkey` (hashed), and a job's lane
    // (its key's jobs, or all of a subscription's) is found in id order on an index. The
    // subscription index leaves `due_at_ms`, which no query ranges over and which every retry
    // moves (a retry can now be a HOT update).
    r#"
    ALTER TABLE jobs ADD COLUMN partition_hash BIGINT;
    DROP INDEX jobs_by_sub;
    CREATE INDEX jobs_by_sub ON jobs (sub_uid, id);
    CREATE INDEX jobs_by_partition ON jobs (sub_uid, partition_hash, id) WHERE partition_hash IS NOT NULL;
    "#,
    // 4: delivery queries across a namespace, by outcome, type, event and time: each attempt
    // names its subscription and where it went; the log is indexed in its order (time, then
    // sequence) per subscription and per namespace, for failed attempts only (partial) and per
    // namespace and type (see store/log.rs). Attempts logged before have no namespace: they
    // show in their subscription's log only.
    r#"
    ALTER TABLE attempts ADD COLUMN namespace TEXT, ADD COLUMN subscription TEXT, ADD COLUMN url TEXT;
    DROP INDEX attempts_by_sub;
    CREATE INDEX attempts_by_sub ON attempts (sub_uid, at_ms, seq);
    CREATE INDEX attempts_by_ns ON attempts (namespace, at_ms, seq);
    CREATE INDEX attempts_by_sub_failed ON attempts (sub_uid, at_ms, seq) WHERE outcome <> 'delivered';
    CREATE INDEX attempts_by_ns_failed ON attempts (namespace, at_ms, seq) WHERE outcome <> 'delivered';
    CREATE INDEX attempts_by_ns_type ON attempts (namespace, event_type, at_ms, seq);
    "#,
    // 5: the cluster-wide delivery log reads every attempt in its order (time, then sequence):
    // the time index pruning uses gains the sequence, as SQLite's has it implicitly (the rowid).
    r#"
    DROP INDEX attempts_by_time;
    CREATE INDEX attempts_by_time ON attempts (at_ms, seq);
    "#,
];
