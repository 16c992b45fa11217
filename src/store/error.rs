//! What can go wrong in the store, sorted for callers: a full disk (answered 507), a stale
//! claim, and the databases' own failures.

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database")]
    Sqlite(#[source] rusqlite::Error),
    /// PostgreSQL failed, or the connection to it.
    #[error("PostgreSQL")]
    Postgres(#[source] tokio_postgres::Error),
    /// No connection to PostgreSQL could be had from the pool (the server is unreachable, or
    /// every connection is busy for longer than the pool waits).
    #[error("no PostgreSQL connection")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The connection pool could not be built.
    #[error("building the PostgreSQL connection pool")]
    PoolBuild(#[source] deadpool_postgres::BuildError),
    /// The database URL could not be read. The URL itself is never shown: it may hold a password.
    #[error("the database URL is not valid")]
    DatabaseUrl(#[source] tokio_postgres::Error),
    /// The database URL's TLS settings (`sslmode`, `sslrootcert`) cannot be used.
    #[error("the database URL's TLS settings: {0}")]
    DatabaseTls(String),
    /// Connecting to PostgreSQL at start failed.
    #[error("connecting to PostgreSQL at {target}")]
    Connect {
        /// Host, port, database and user (never the password).
        target: String,
        /// What went wrong.
        #[source]
        source: Box<StoreError>,
    },
    /// The store's disk is full: nothing was written.
    #[error("the store's disk is full")]
    Full,
    /// The shared transaction a request was part of failed to commit (one error, shared by every
    /// request of the transaction).
    #[error("commit failed")]
    Commit(#[source] std::sync::Arc<rusqlite::Error>),
    /// The transaction shared by a group of requests (publishes, or attempt records) failed: one
    /// error, shared by every request of the group.
    #[error("the transaction shared with other requests failed")]
    Shared(#[source] std::sync::Arc<StoreError>),
    /// The attempt was made under a claim that is no longer current: another replica owns the
    /// subscription now, and the outcome was not recorded.
    #[error("this replica no longer owns the subscription; the outcome was not recorded")]
    Fenced,
    /// The writer answered a request it had not run (a bug).
    #[error("the store answered a request it had not run")]
    NotRun,
    /// Opening the data directory failed.
    #[error("data directory {path}")]
    DataDir {
        /// The data directory, or the file in it.
        path: String,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The store's writer thread is gone (the process is shutting down).
    #[error("the store is closed")]
    Closed,
    /// A schema migration would have left rows referring to rows that are not there; it was
    /// rolled back (a bug in the migration).
    #[error("schema migration {version} would break references from table {table}")]
    Migration {
        /// The migration's number.
        version: usize,
        /// A table with a row whose reference would dangle.
        table: String,
    },
}

impl StoreError {
    /// A stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::Sqlite(_)
            | StoreError::Commit(_)
            | StoreError::NotRun
            | StoreError::Migration { .. } => "sqlite",
            StoreError::Postgres(_) => "postgres",
            StoreError::Pool(_) | StoreError::Connect { .. } => "unavailable",
            StoreError::DatabaseUrl(_) | StoreError::DatabaseTls(_) | StoreError::PoolBuild(_) => "config",
            StoreError::Full => "full",
            StoreError::Fenced => "fenced",
            StoreError::Shared(e) => e.metric_label(),
            StoreError::DataDir { .. } => "data_dir",
            StoreError::Closed => "closed",
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if is_full(&e) { StoreError::Full } else { StoreError::Sqlite(e) }
    }
}

/// Whether SQLite failed because the disk is full.
pub(super) fn is_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // 53100 disk_full: the server could not write, so nothing was committed.
        if e.code() == Some(&tokio_postgres::error::SqlState::DISK_FULL) {
            StoreError::Full
        } else {
            StoreError::Postgres(e)
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::from(e),
            e => StoreError::Pool(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_its_own_error() {
        let full =
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
        assert!(matches!(StoreError::from(full), StoreError::Full));
        let busy =
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
        assert!(matches!(StoreError::from(busy), StoreError::Sqlite(_)));
    }
}
