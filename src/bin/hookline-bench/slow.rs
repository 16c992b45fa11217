//! Slow clients for the `slow` phase: connections that send a request's start and then a header
//! line now and then, never finishing it, from a few loopback addresses standing for other pods.
//! Each one that is closed (refused, or cut off by Hookline's read timeout) opens again a second
//! later, so thousands are attempted throughout the phase.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;

/// The addresses slow clients come from: 127.0.0.2 to 127.0.0.5.
const ADDRESSES: u8 = 4;

/// How often a slow client sends one more header line.
const DRIP: Duration = Duration::from_secs(5);

/// Counts of what the slow clients met.
#[derive(Default)]
pub struct Slow {
    /// Connections opened (accepted by the kernel: admitted or refused later by Hookline).
    opened: AtomicU64,
    /// Connections Hookline closed after answering (a refusal) or without answering (a timeout).
    answered: AtomicU64,
    closed_silently: AtomicU64,
    /// Connections open now.
    open: AtomicU64,
}

impl Slow {
    /// `clients` slow clients against `ingest` (`host:port`) until `stop`.
    pub fn start(ingest: SocketAddr, clients: usize, stop: CancellationToken) -> Arc<Slow> {
        let slow = Arc::new(Slow::default());
        for i in 0..clients {
            let (slow, stop) = (slow.clone(), stop.clone());
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % ADDRESSES as usize) as u8));
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    slow.one(from, ingest, &stop).await;
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            });
        }
        slow
    }

    /// One connection, held for as long as Hookline lets it be.
    async fn one(&self, from: IpAddr, to: SocketAddr, stop: &CancellationToken) {
        let Ok(socket) = TcpSocket::new_v4() else { return };
        if socket.bind(SocketAddr::new(from, 0)).is_err() {
            return;
        }
        let Ok(mut stream) = socket.connect(to).await else { return };
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        let _ = stream.write_all(b"POST /v1/namespaces/slow/events HTTP/1.1\r\nhost: hookline\r\n").await;
        let mut buf = [0u8; 512];
        let mut line = 0u64;
        let answered = loop {
            tokio::select! {
                () = stop.cancelled() => break None,
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break Some(false),
                    Ok(_) => break Some(true),
                },
                () = tokio::time::sleep(DRIP) => {
                    line += 1;
                    if stream.write_all(format!("x-slow-{line}: 1\r\n").as_bytes()).await.is_err() {
                        break Some(false);
                    }
                }
            }
        };
        match answered {
            Some(true) => self.answered.fetch_add(1, Ordering::Relaxed),
            Some(false) => self.closed_silently.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// What the slow clients met, as `slow_*` keys of the result.
    pub fn report(&self, into: &mut Map<String, Value>) {
        into.insert("slow_opened".into(), self.opened.load(Ordering::Relaxed).into());
        into.insert("slow_answered".into(), self.answered.load(Ordering::Relaxed).into());
        into.insert("slow_closed_silently".into(), self.closed_silently.load(Ordering::Relaxed).into());
        into.insert("slow_open_at_end".into(), self.open.load(Ordering::Relaxed).into());
    }
}
