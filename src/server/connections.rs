//! How Hookline's HTTP servers hold up against clients that hold connections: every connection is
//! counted, in total and per client address, and one past either cap is refused with a short
//! `503` that says which cap it met; a client has [`ConnectionLimits::read_timeout`] to send a
//! request's headers (or, idle between requests, the next one's), after which the connection is
//! closed. Request bodies get the same time, counted by the routes that read them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Limits every HTTP server of Hookline keeps (`--read-timeout`, `--max-connections`,
/// `--max-connections-per-client`), each server counting its own connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a client has to send a request's headers, the next request's on a connection
    /// kept alive, and a request's body.
    pub read_timeout: Duration,
    /// Open connections at most, from all clients together.
    pub max_connections: usize,
    /// Open connections at most from one client address.
    pub max_per_client: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { read_timeout: Duration::from_secs(30), max_connections: 2048, max_per_client: 256 }
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The server holds as many connections as it may.
    #[error("this server holds its maximum of {0} open connections (--max-connections); retry later")]
    Total(usize),
    /// The client's address holds as many connections as one address may.
    #[error(
        "your address holds its maximum of {0} open connections to this server \
         (--max-connections-per-client); reuse or close one"
    )]
    PerClient(usize),
}

impl Refusal {
    /// A fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Refusal::Total(_) => "max_connections",
            Refusal::PerClient(_) => "max_connections_per_client",
        }
    }
}

/// The open connections of one server, in total and by client address.
#[derive(Clone, Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    open: Arc<Mutex<Open>>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    client: IpAddr,
    open: Arc<Mutex<Open>>,
}

impl Admission {
    /// No connection open yet.
    pub fn new(limits: ConnectionLimits) -> Self {
        Self { limits, open: Arc::default() }
    }

    /// Admit a connection from `client`, or say which cap it meets. An IPv4 address in IPv6
    /// form counts as the IPv4 address.
    pub fn admit(&self, client: IpAddr) -> Result<Admitted, Refusal> {
        let client = client.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.limits.max_connections {
            return Err(Refusal::Total(self.limits.max_connections));
        }
        let of_client = open.by_client.entry(client).or_default();
        if *of_client >= self.limits.max_per_client {
            return Err(Refusal::PerClient(self.limits.max_per_client));
        }
        *of_client += 1;
        open.total += 1;
        Ok(Admitted { client, open: self.open.clone() })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

/// How long a refused client gets to read its `503` before the connection is dropped.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Refused connections answered at once; past this, a refused connection is closed without an
/// answer, so a flood of them costs no more than this many small tasks.
const REFUSALS_AT_ONCE: usize = 64;

/// Answers refused connections, a bounded number at a time.
#[derive(Clone, Debug)]
pub struct Refuser(Arc<Semaphore>);

impl Default for Refuser {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(REFUSALS_AT_ONCE)))
    }
}

impl Refuser {
    /// Answer `stream` with a `503` naming `refusal`, and close it. The request is not read
    /// beyond what the client sends before it sees the answer (it is read and dropped, so that
    /// closing does not reset the connection before the client read the answer).
    pub fn refuse(&self, mut stream: TcpStream, refusal: Refusal) {
        let Ok(permit) = self.0.clone().try_acquire_owned() else { return };
        tokio::spawn(async move {
            let body = serde_json::json!({ "error": refusal.to_string() }).to_string();
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
                 connection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(REFUSAL_TIME, async {
                stream.write_all(answer.as_bytes()).await?;
                stream.shutdown().await?;
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await? > 0 {}
                std::io::Result::Ok(())
            })
            .await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_per_client: usize) -> ConnectionLimits {
        ConnectionLimits { max_connections, max_per_client, ..ConnectionLimits::default() }
    }

    #[test]
    fn one_address_gets_its_share_and_others_the_rest() {
        let admission = Admission::new(limits(5, 2));
        let (a, b, c) =
            ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"), "::1".parse().expect("ip"));
        let a1 = admission.admit(a).expect("first of a");
        let _a2 = admission.admit(a).expect("second of a");
        assert_eq!(admission.admit(a).err(), Some(Refusal::PerClient(2)));
        let _b1 = admission.admit(b).expect("b is not a");
        let _b2 = admission.admit(b).expect("b's second");
        let _c1 = admission.admit(c).expect("the fifth");
        assert_eq!(admission.admit(c).err(), Some(Refusal::Total(5)), "the total holds before the share");
        assert_eq!(admission.open(), 5);
        drop(a1);
        assert_eq!(admission.open(), 4);
        let _a3 = admission.admit(a).expect("a closed one, so it may open one");
    }

    #[test]
    fn an_ipv4_address_in_ipv6_form_is_the_same_client() {
        let admission = Admission::new(limits(10, 1));
        let _v4 = admission.admit("192.0.2.7".parse().expect("ip")).expect("first");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(admission.admit(mapped).err(), Some(Refusal::PerClient(1)));
    }

    #[test]
    fn closing_every_connection_forgets_the_address() {
        let admission = Admission::new(limits(10, 3));
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let held: Vec<_> = (0..3).map(|_| admission.admit(ip).expect("admitted")).collect();
        drop(held);
        assert_eq!(admission.open(), 0);
        assert!(admission.open.lock().expect("lock").by_client.is_empty(), "no entry left behind");
    }

    #[test]
    fn a_refusal_names_the_flag_to_raise() {
        assert!(Refusal::Total(7).to_string().contains("--max-connections)"));
        assert!(Refusal::PerClient(3).to_string().contains("--max-connections-per-client"));
    }
}
