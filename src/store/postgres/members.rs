//! Membership and ownership rows for replicas sharing the store: each member heartbeats its
//! lease; each key (a subscription's UID, or the cluster-wide tasks) has at most one owner, and
//! every claim gets a higher epoch than the one before, which fences the writes of the last.
//! Lease times are the server's clock (`now()`), so replicas' clocks never have to agree.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::PostgresStore;
use crate::store::{Fence, StoreError};

/// Channel on which members announce joining, leaving and released keys.
const OWNERS_CHANNEL: &str = "hookline_owners";
/// Channel on which new jobs are handed to the replicas owning their subscriptions.
const JOBS_CHANNEL: &str = "hookline_jobs";

/// A live member, as the server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its identity (name and incarnation).
    pub id: String,
    /// Its replica name, which ownership is balanced over.
    pub name: String,
    /// How long its lease still holds, by the server's clock.
    pub left: Duration,
}

/// One ownership row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The subscription's UID, or the cluster-wide tasks' key.
    pub key: String,
    /// The owning member; `None` when released.
    pub owner: Option<String>,
    /// The epoch of the last claim.
    pub epoch: i64,
}

/// What another member announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A member joined or left, or released keys: ownership may have moved.
    Owners,
    /// New jobs for subscriptions (the payload as sent, see [`PostgresStore::hand_over`]).
    Jobs(String),
}

/// A connection of its own that receives the members' announcements; announcements stop (the
/// receiver ends) when the connection is lost.
pub struct Listener {
    _client: tokio_postgres::Client,
    /// The announcements.
    pub notices: mpsc::UnboundedReceiver<Notice>,
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl PostgresStore {
    /// Renew (or start) member `id`'s lease for `lease`, and list the live members.
    pub async fn heartbeat(&self, id: &str, name: &str, lease: Duration) -> Result<Vec<Member>, StoreError> {
        let client = self.pool.get().await?;
        let upsert = client
            .prepare_cached(
                "INSERT INTO members (id, name, expires_at) VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')
                 ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
            )
            .await?;
        client.execute(&upsert, &[&id, &name, &millis(lease)]).await?;
        let live = client
            .prepare_cached(
                "SELECT id, name, (extract(epoch FROM expires_at - now()) * 1000)::bigint FROM members
                 WHERE expires_at > now() ORDER BY id",
            )
            .await?;
        Ok(client
            .query(&live, &[])
            .await?
            .iter()
            .map(|r| Member {
                id: r.get(0),
                name: r.get(1),
                left: Duration::from_millis(r.get::<_, i64>(2).max(0) as u64),
            })
            .collect())
    }

    /// Every ownership row.
    pub async fn claims(&self) -> Result<Vec<Claim>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached("SELECT key, owner, epoch FROM owners").await?;
        Ok(client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| Claim { key: r.get(0), owner: r.get(1), epoch: r.get(2) })
            .collect())
    }

    /// Claim `key` for `member` if no live member owns it; returns the new epoch if it did.
    pub async fn claim(&self, key: &str, member: &str) -> Result<Option<i64>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO owners (key, owner, epoch) VALUES ($1, $2, 1)
                 ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, epoch = owners.epoch + 1
                   WHERE owners.owner IS NULL OR NOT EXISTS (
                     SELECT 1 FROM members m WHERE m.id = owners.owner AND m.expires_at > now())
                 RETURNING epoch",
            )
            .await?;
        Ok(client.query_opt(&stmt, &[&key, &member]).await?.map(|r| r.get(0)))
    }

    /// Give up `member`'s claim on `key` (if it still holds it under `epoch`) and tell the others.
    pub async fn release(&self, key: &str, member: &str, epoch: i64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("UPDATE owners SET owner = NULL WHERE key = $1 AND owner = $2 AND epoch = $3")
            .await?;
        client.execute(&stmt, &[&key, &member, &epoch]).await?;
        self.announce().await
    }

    /// Tell the other members that ownership may have moved (a member joined or released keys).
    pub async fn announce(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.execute("SELECT pg_notify($1, '')", &[&OWNERS_CHANNEL]).await?;
        Ok(())
    }

    /// Forget the ownership row of a key that no longer exists (a deleted subscription), unless
    /// another live member holds it.
    pub async fn forget_claim(&self, key: &str, member: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("DELETE FROM owners WHERE key = $1 AND (owner = $2 OR owner IS NULL)")
            .await?;
        client.execute(&stmt, &[&key, &member]).await.map(drop).map_err(StoreError::from)
    }

    /// Leave: release every claim of `member`, end its lease, and tell the others.
    pub async fn leave(&self, member: &str) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("UPDATE owners SET owner = NULL WHERE owner = $1", &[&member]).await?;
        tx.execute("DELETE FROM members WHERE id = $1", &[&member]).await?;
        tx.execute("SELECT pg_notify($1, '')", &[&OWNERS_CHANNEL]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Announce new jobs to the replicas that own their subscriptions (one notification, at most
    /// 8,000 bytes; see [`Notice::Jobs`]).
    pub async fn hand_over(&self, payload: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.execute("SELECT pg_notify($1, $2)", &[&JOBS_CHANNEL, &payload]).await?;
        Ok(())
    }

    /// Listen to the members' announcements on a connection of its own.
    pub async fn listen(&self) -> Result<Listener, StoreError> {
        let (client, mut connection) = self.config.connect(self.tls.clone()).await?;
        let (tx, notices) = mpsc::unbounded_channel();
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message {
                    let notice = match n.channel() {
                        JOBS_CHANNEL => Notice::Jobs(n.payload().to_string()),
                        _ => Notice::Owners,
                    };
                    if tx.send(notice).is_err() {
                        return;
                    }
                }
            }
        });
        client.batch_execute(&format!("LISTEN {OWNERS_CHANNEL}; LISTEN {JOBS_CHANNEL}")).await?;
        Ok(Listener { _client: client, notices })
    }
}

/// The attempts (by position) whose claim is still current, locking those claims until the
/// transaction ends, so that no new claim commits between this check and the attempts' writes.
pub(super) async fn current(
    tx: &deadpool_postgres::Transaction<'_>,
    fences: &[(&str, &Fence)],
) -> Result<HashSet<(String, String, i64)>, tokio_postgres::Error> {
    if fences.is_empty() {
        return Ok(HashSet::new());
    }
    let keys: Vec<&str> = fences.iter().map(|(k, _)| *k).collect();
    let owners: Vec<&str> = fences.iter().map(|(_, f)| f.owner.as_str()).collect();
    let epochs: Vec<i64> = fences.iter().map(|(_, f)| f.epoch).collect();
    let stmt = tx
        .prepare_cached(
            "SELECT key, owner, epoch FROM owners
             WHERE (key, owner, epoch) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]))
             ORDER BY key FOR SHARE",
        )
        .await?;
    Ok(tx
        .query(&stmt, &[&keys, &owners, &epochs])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
