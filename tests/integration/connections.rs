//! The ingest port under abuse, tried as a client inside the cluster would without any token:
//! connections that stall in their headers or body are cut off after `--read-timeout`, a body
//! announced over the limit is refused before it is read, and connections past the caps (per
//! client address, and in total) are refused with a 503 naming the cap, while other clients go
//! on publishing and Hookline's memory stays bounded.
//!
//! A client picks its address from 127.0.0.0/8 (all of it is loopback) to stand for different
//! pods.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{Hookline, LOCAL, TestEnv, process_memory, wait_until};

const WAIT: Duration = Duration::from_secs(30);

fn ingest_addr(h: &Hookline) -> SocketAddr {
    h.ingest.trim_start_matches("http://").parse().expect("ingest address")
}

/// A connection to `to` from 127.0.0.`host`.
async fn connect_from(host: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), 0))?;
    socket.connect(to).await
}

/// Everything the server sends until it closes the connection; `None` if it is still open after
/// `within`.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&got).into_owned())
}

fn publish_head(ns: &str, content_length: u64) -> String {
    format!(
        "POST /v1/namespaces/{ns}/events HTTP/1.1\r\nhost: hookline\r\n\
         content-type: application/cloudevents+json\r\ncontent-length: {content_length}\r\n\r\n"
    )
}

async fn publish_one(h: &Hookline, ns: &str, id: &str) -> u16 {
    let event = json!({"specversion": "1.0", "id": id, "source": "/abuse", "type": "t"});
    h.publish(ns, &[("content-type", "application/cloudevents+json")], event.to_string(), None).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_requests_are_cut_off_and_oversized_bodies_refused_unread() {
    let env = TestEnv::with_crds("conn-timeouts").await;
    let mut flags = LOCAL.to_vec();
    flags.push("--read-timeout=1s");
    let h = env.start_hookline(&flags).await;
    let (to, ns) = (ingest_addr(&h), env.namespace.clone());

    // Half a request's headers, then nothing: closed, without an answer.
    let mut half = connect_from(2, to).await.expect("connect");
    half.write_all(format!("POST /v1/namespaces/{ns}/events HTTP/1.1\r\nhost: x\r\n").as_bytes())
        .await
        .expect("half the headers");
    let answer = until_closed(&mut half, WAIT).await.expect("a stalled request's connection is closed");
    assert_eq!(answer, "", "nothing is answered to half a request");

    // A connection idle after its request is closed too.
    let mut idle = connect_from(2, to).await.expect("connect");
    idle.write_all(b"GET /openapi.json HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("request");
    let answer = until_closed(&mut idle, WAIT).await.expect("an idle connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "the request itself was served: {answer:.80}");

    // A body that stops halfway: 408, and the connection closed.
    let mut slow = connect_from(2, to).await.expect("connect");
    slow.write_all(format!("{}{{\"specversion\":", publish_head(&ns, 200)).as_bytes()).await.expect("a part");
    let answer = until_closed(&mut slow, WAIT).await.expect("a stalled body's connection is closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--read-timeout"), "the refusal names the setting: {answer}");

    // 10 GiB announced: refused at once, although not a byte of it was sent.
    let mut huge = connect_from(2, to).await.expect("connect");
    huge.write_all(publish_head(&ns, 10 << 30).as_bytes()).await.expect("headers");
    let answer = until_closed(&mut huge, WAIT).await.expect("the connection is closed after the 413");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    assert_eq!(publish_one(&h, &ns, "after").await, 202, "publishing works as before");
    let timeouts = |part| format!("hookline_read_timeouts_total{{server=\"ingest\",part=\"{part}\"}}");
    assert!(h.metric(&timeouts("headers")).await.unwrap_or(0.0) >= 2.0, "both closed connections counted");
    assert_eq!(h.metric(&timeouts("body")).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_caps_are_refused_while_others_publish() {
    const PER_CLIENT: usize = 50;
    const TOTAL: usize = 120;
    const FLOOD: usize = 2000;
    let env = TestEnv::with_crds("conn-caps").await;
    let per_client = format!("--max-connections-per-client={PER_CLIENT}");
    let total = format!("--max-connections={TOTAL}");
    let mut flags = LOCAL.to_vec();
    flags.extend([per_client.as_str(), total.as_str(), "--read-timeout=5m"]);
    let h = env.start_hookline(&flags).await;
    let pid = h.child.id().expect("pid");
    let (to, ns) = (ingest_addr(&h), env.namespace.clone());
    assert_eq!(publish_one(&h, &ns, "before").await, 202);
    let before = process_memory(pid, "VmRSS");

    // One address takes its share with requests it never finishes.
    let mut held = Vec::new();
    for _ in 0..PER_CLIENT {
        let mut c = connect_from(2, to).await.expect("connect");
        c.write_all(b"POST /v1/namespaces/x/events HTTP/1.1\r\n").await.expect("a start");
        held.push(c);
    }
    wait_until("the server holds the share", WAIT, || async {
        let open = h.metric("hookline_connections_open{server=\"ingest\"}").await?;
        (open >= PER_CLIENT as f64).then_some(())
    })
    .await;
    // Its next connections are refused with an answer that says why, thousands of times, while
    // another address publishes.
    let mut refused = connect_from(2, to).await.expect("connect");
    let answer = until_closed(&mut refused, WAIT).await.expect("a refused connection is closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("--max-connections-per-client"), "the refusal names the cap: {answer}");
    let flood = tokio::spawn(async move {
        let mut not_refused = 0;
        for _ in 0..FLOOD {
            let Ok(mut c) = connect_from(2, to).await else { continue };
            let _ = c.write_all(b"POST /v1/namespaces/x/events HTTP/1.1\r\n").await;
            // Closed at once (answered or not): refused. Still open: it was admitted.
            if until_closed(&mut c, Duration::from_secs(5)).await.is_none() {
                not_refused += 1;
            }
        }
        not_refused
    });
    for i in 0..50 {
        assert_eq!(publish_one(&h, &ns, &format!("during-{i}")).await, 202, "another address publishes");
    }
    assert_eq!(flood.await.expect("flood"), 0, "every connection past the share was refused");

    // Other addresses fill the server; the next one is refused for the total, not its share.
    let (mut host, mut on_host) = (3, 0);
    let answer = loop {
        assert!(held.len() <= TOTAL, "{} connections held, over the total of {TOTAL}", held.len());
        if on_host == PER_CLIENT - 1 {
            (host, on_host) = (host + 1, 0);
        }
        on_host += 1;
        let mut c = connect_from(host, to).await.expect("connect");
        c.write_all(b"POST /v1/namespaces/x/events HTTP/1.1\r\n").await.expect("a start");
        if let Some(answer) = until_closed(&mut c, Duration::from_millis(500)).await {
            break answer;
        }
        held.push(c);
    };
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("--max-connections)"), "the refusal names the total: {answer}");
    let refusals =
        |reason| format!("hookline_connections_refused_total{{server=\"ingest\",reason=\"{reason}\"}}");
    assert!(h.metric(&refusals("max_connections_per_client")).await.unwrap_or(0.0) >= FLOOD as f64);
    assert!(h.metric(&refusals("max_connections")).await.unwrap_or(0.0) >= 1.0);
    let grown = process_memory(pid, "VmRSS").saturating_sub(before);
    eprintln!("resident memory grew by {} KiB holding {} connections", grown >> 10, held.len());
    assert!(grown < 32 << 20, "memory grew by {} MiB", grown >> 20);

    // Closing them frees their places.
    drop(held);
    wait_until("publishing works again once they closed", WAIT, || async {
        (publish_one(&h, &ns, "after").await == 202).then_some(())
    })
    .await;
}
