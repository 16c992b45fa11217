//! A real HTTP receiver on loopback that records every request and answers from a script.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::wait_until;

/// One recorded request.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    pub wall: SystemTime,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    }
}

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    RetryAfter(u16, u64),
    Redirect(u16, String),
    /// Wait this long, then answer 200.
    Delay(Duration),
    /// Answer 200 at once, then send the body one byte every `Duration`, `usize` bytes in all.
    Drip(Duration, usize),
    /// Answer 200 with a body of this many bytes, streamed as fast as the reader takes it.
    Huge(usize),
}

/// How the receiver answers endpoint-verification handshakes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Handshake {
    /// Answer the validation event with the code (synchronous) and allow any OPTIONS origin.
    #[default]
    Answer,
    /// Answer the OPTIONS handshake with `WebHook-Allowed-Origin: *` and this rate per minute.
    AllowWithRate(u32),
    /// Answer 200 without the code and refuse OPTIONS: a receiver that ignores handshakes.
    Ignore,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    validations: Vec<serde_json::Value>,
    handshake: Handshake,
    script: VecDeque<Reply>,
    default: Option<Reply>,
    /// Deliveries being answered now, and the most at once so far.
    in_flight: usize,
    max_in_flight: usize,
    /// Deliveries being answered now per `ce-partitionkey`, and the most of one key at once.
    in_flight_by_key: HashMap<String, usize>,
    max_in_flight_per_key: usize,
    /// Every this many deliveries, one is answered with this status instead.
    fail_every: Option<(usize, u16)>,
}

/// Counts one delivery (of a partition key, if it has one) as in flight until dropped
/// (answered, or the sender hung up).
struct InFlight(Arc<Mutex<Inner>>, Option<String>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.0.lock() {
            inner.in_flight -= 1;
            if let Some(n) = self.1.as_ref().and_then(|key| inner.in_flight_by_key.get_mut(key)) {
                *n -= 1;
            }
        }
    }
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut inner = inner.lock().expect("receiver lock");
        if method == axum::http::Method::OPTIONS {
            let mut r = StatusCode::OK.into_response();
            match inner.handshake {
                Handshake::Ignore => return StatusCode::METHOD_NOT_ALLOWED.into_response(),
                Handshake::Answer => {}
                Handshake::AllowWithRate(rate) => {
                    r.headers_mut().insert("webhook-allowed-rate", HeaderValue::from(rate));
                }
            }
            r.headers_mut().insert("webhook-allowed-origin", HeaderValue::from_static("*"));
            return r;
        }
        let is_validation =
            headers.get("ce-type").is_some_and(|t| t == "dev.hookline.subscription.validation");
        if is_validation {
            let data: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            inner.validations.push(data.clone());
            if inner.handshake == Handshake::Ignore {
                return StatusCode::OK.into_response();
            }
            let code = data["validationCode"].as_str().unwrap_or_default().to_string();
            return axum::Json(serde_json::json!({ "validationResponse": code })).into_response();
        }
        let key = headers.get("ce-partitionkey").and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut reply =
            inner.script.pop_front().or_else(|| inner.default.clone()).unwrap_or(Reply::Status(200));
        if let Some((every, code)) = inner.fail_every
            && (inner.received.len() + 1) % every == 0
        {
            reply = Reply::Status(code);
        }
        let status = match &reply {
            Reply::Status(code) | Reply::RetryAfter(code, _) | Reply::Redirect(code, _) => *code,
            _ => 200,
        };
        inner.received.push(Received {
            path: uri.path().to_string(),
            headers,
            body,
            at: Instant::now(),
            wall: SystemTime::now(),
            status,
        });
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        if let Some(key) = &key {
            let n = inner.in_flight_by_key.entry(key.clone()).or_default();
            *n += 1;
            let n = *n;
            inner.max_in_flight_per_key = inner.max_in_flight_per_key.max(n);
        }
        (reply, key)
    };
    let (reply, key) = reply;
    let _in_flight = InFlight(inner.clone(), key);
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code).expect("status").into_response(),
        Reply::RetryAfter(code, secs) => {
            let mut r = StatusCode::from_u16(code).expect("status").into_response();
            r.headers_mut().insert("retry-after", HeaderValue::from(secs));
            r
        }
        Reply::Redirect(code, to) => {
            let mut r = StatusCode::from_u16(code).expect("status").into_response();
            r.headers_mut().insert("location", HeaderValue::from_str(&to).expect("location"));
            r
        }
        Reply::Delay(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
        Reply::Drip(every, n) => {
            let stream = futures::stream::unfold(0usize, move |i| async move {
                if i >= n {
                    return None;
                }
                tokio::time::sleep(every).await;
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), i + 1))
            });
            axum::body::Body::from_stream(stream).into_response()
        }
        Reply::Huge(n) => {
            const CHUNK: usize = 64 * 1024;
            let stream = futures::stream::unfold(0usize, move |sent| async move {
                (sent < n).then(|| (Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; CHUNK])), sent + CHUNK))
            });
            axum::body::Body::from_stream(stream).into_response()
        }
    }
}

impl Receiver {
    /// Start a receiver that answers 200 unless told otherwise.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        Receiver::serve(listener, format!("http://127.0.0.1:{port}/hook"))
    }

    /// Start a receiver like [`Receiver::start`] that serves HTTPS on `https://127.0.0.1:…` with a
    /// certificate signed by `ca`.
    pub async fn start_tls(ca: &TestCa) -> Receiver {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let port = tcp.local_addr().expect("addr").port();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(vec![ca.leaf.clone()], ca.leaf_key.clone_key())
                .expect("server certificate");
        let listener = TlsListener { tcp, tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)) };
        Receiver::serve(listener, format!("https://127.0.0.1:{port}/hook"))
    }

    fn serve<L>(listener: L, url: String) -> Receiver
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver { url, inner, _stop: stop }
    }

    /// Answer the next requests with these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.lock().expect("lock").script.extend(replies);
    }

    /// Answer every request after the script with this.
    pub fn set_default(&self, reply: Reply) {
        self.inner.lock().expect("lock").default = Some(reply);
    }

    /// How to answer handshakes from now on.
    pub fn handshake(&self, handshake: Handshake) {
        self.inner.lock().expect("lock").handshake = handshake;
    }

    /// The data of every validation event received.
    pub fn validations(&self) -> Vec<serde_json::Value> {
        self.inner.lock().expect("lock").validations.clone()
    }

    /// Answer every `every`th delivery with `code` (after the script's reply is chosen).
    pub fn fail_every(&self, every: usize, code: u16) {
        self.inner.lock().expect("lock").fail_every = Some((every, code));
    }

    /// The most deliveries this receiver was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.inner.lock().expect("receiver lock").max_in_flight
    }

    /// The most deliveries of one `ce-partitionkey` this receiver was answering at once.
    pub fn max_in_flight_per_key(&self) -> usize {
        self.inner.lock().expect("receiver lock").max_in_flight_per_key
    }

    /// Everything received so far (validation events excluded).
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().expect("lock").received.clone()
    }

    /// Wait until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        wait_until(&format!("{n} requests at the receiver"), timeout, || async {
            let r = self.received();
            (r.len() >= n).then_some(r)
        })
        .await
    }
}

/// A throwaway CA and a serving certificate it signed for `127.0.0.1` and `localhost`.
pub struct TestCa {
    /// The CA certificate, PEM: what a client must trust.
    pub ca_pem: String,
    leaf: rustls::pki_types::CertificateDer<'static>,
    leaf_key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("serving certificate");
        TestCa {
            ca_pem: ca.pem(),
            leaf: leaf.der().clone(),
            leaf_key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

/// Accepts TCP connections and completes the TLS handshake; connections whose handshake fails
/// (a client that does not trust the certificate) are dropped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.tls.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An endpoint that accepts each connection, reads the start of the request, and resets the
/// connection (TCP RST) without answering. Returns its URL.
pub async fn resetting_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            // Linger 0: closing sends RST instead of FIN. (Deprecated because a non-zero linger
            // blocks the thread on drop; a zero one never does.)
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            drop(stream);
        }
    });
    format!("http://127.0.0.1:{port}/reset")
}
