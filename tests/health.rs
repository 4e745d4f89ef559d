//! Active health checks against real sockets on 127.0.0.1: one check of each
//! kind (`wsgate::upstream::health::check_once`), and the checker loop
//! (`wsgate::upstream::health::run`) taking servers down and bringing them back.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsgate::config::{HealthCheck, HealthCheckKind};
use wsgate::upstream::balance::Backend;
use wsgate::upstream::health::{check_once, run, CheckFailure};

use support::{header, poll_until, refused_addr, within, Behavior};

/// The name checks put in `Host` (and the WebSocket URL); connections go to
/// the backend's address, which differs on purpose.
const NAME: &str = "app.internal:8080";

fn health_check(kind: HealthCheckKind, timeout: Duration) -> HealthCheck {
    HealthCheck {
        kind,
        path: "/healthz".to_string(),
        interval: Duration::from_millis(100),
        timeout,
        rise: 2,
        fall: 2,
    }
}

fn backend(addr: SocketAddr) -> Arc<Backend> {
    Backend::new(NAME.into(), addr, 1, false, false)
}

async fn check(kind: HealthCheckKind, addr: SocketAddr) -> Result<(), CheckFailure> {
    let check = health_check(kind, Duration::from_secs(5));
    within("check_once", check_once(&check, None, &backend(addr))).await
}

/// What a [`RawServer`] does after reading a request head.
#[derive(Clone)]
enum Answer {
    /// Writes these bytes, then closes.
    Close(&'static [u8]),
    /// Writes the head and `body_bytes` of body, then holds the connection
    /// open without ending the body.
    Hold { head: &'static [u8], body_bytes: usize },
    /// Never writes anything; holds the connection until the peer closes it.
    Silent,
}

/// A raw HTTP/1.1 server: reads one request head per connection, reports it
/// and answers as told.
struct RawServer {
    addr: SocketAddr,
    heads: mpsc::UnboundedReceiver<String>,
    /// One message per connection, when the peer closed it (read EOF or error).
    closed: mpsc::UnboundedReceiver<()>,
    task: JoinHandle<()>,
}

impl RawServer {
    async fn start(answer: Answer) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (heads_tx, heads) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_raw(stream, answer.clone(), heads_tx.clone(), closed_tx.clone()));
            }
        });
        RawServer {
            addr,
            heads,
            closed,
            task,
        }
    }

    async fn next_head(&mut self) -> String {
        within("request head at the server", self.heads.recv()).await.unwrap()
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_raw(
    mut stream: TcpStream,
    answer: Answer,
    heads: mpsc::UnboundedSender<String>,
    closed: mpsc::UnboundedSender<()>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
    match answer {
        Answer::Close(bytes) => {
            let _ = stream.write_all(bytes).await;
            let _ = stream.shutdown().await;
        }
        Answer::Hold { head, body_bytes } => {
            let _ = stream.write_all(head).await;
            let _ = stream.write_all(&vec![b'x'; body_bytes]).await;
        }
        Answer::Silent => {}
    }
    // Hold until the peer is gone (a write to it may also block: the peer
    // stopped reading, then closed).
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    let _ = closed.send(());
}

// ---- tcp ----

#[tokio::test]
async fn tcp_passes_when_the_port_accepts() {
    let acceptor = support::Backend::start(Behavior::Silent).await;
    check(HealthCheckKind::Tcp, acceptor.addr).await.unwrap();
    poll_until(Duration::from_secs(5), "the check's connection accepted", || {
        acceptor.accepts() == 1
    })
    .await;
}

#[tokio::test]
async fn tcp_fails_with_connect_on_a_closed_port() {
    let failure = check(HealthCheckKind::Tcp, refused_addr().await).await.unwrap_err();
    assert!(matches!(failure, CheckFailure::Connect(_)), "{failure:?}");
    assert!(failure.to_string().starts_with("connect failed"), "{failure}");
}

// ---- http ----

#[tokio::test]
async fn http_passes_on_200_and_sends_a_plain_get() {
    let mut server = RawServer::start(Answer::Close(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ))
    .await;
    check(HealthCheckKind::Http, server.addr).await.unwrap();
    let head = server.next_head().await;
    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
    assert_eq!(header(&head, "host"), Some(NAME), "{head}");
    assert_eq!(header(&head, "user-agent"), Some("wsgate-health-check"), "{head}");
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
}

#[tokio::test]
async fn http_fails_with_the_status_on_503() {
    let server = RawServer::start(Answer::Close(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy",
    ))
    .await;
    let failure = check(HealthCheckKind::Http, server.addr).await.unwrap_err();
    assert!(matches!(failure, CheckFailure::Status(503)), "{failure:?}");
    assert!(failure.to_string().contains("503"), "{failure}");
}

#[tokio::test]
async fn http_fails_on_a_redirect() {
    let server = RawServer::start(Answer::Close(
        b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ))
    .await;
    let failure = check(HealthCheckKind::Http, server.addr).await.unwrap_err();
    assert!(matches!(failure, CheckFailure::Status(302)), "{failure:?}");
}

#[tokio::test]
async fn http_times_out_against_a_server_that_never_answers() {
    let mut server = RawServer::start(Answer::Silent).await;
    let limit = Duration::from_millis(300);
    let check = health_check(HealthCheckKind::Http, limit);
    let started = Instant::now();
    let failure = within("check_once", check_once(&check, None, &backend(server.addr)))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(failure, CheckFailure::Timeout), "{failure:?}");
    assert!(took >= limit && took < limit + Duration::from_secs(1), "took {took:?}");
    server.next_head().await;
    // The timed-out check leaves nothing behind: its connection is closed.
    within("the check's connection closed", server.closed.recv())
        .await
        .unwrap();
}

#[tokio::test]
async fn http_does_not_wait_for_a_huge_body() {
    let server = RawServer::start(Answer::Hold {
        head: b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n",
        body_bytes: 1024 * 1024,
    })
    .await;
    let started = Instant::now();
    check(HealthCheckKind::Http, server.addr).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn http_does_not_wait_for_a_body_that_stalls() {
    let server = RawServer::start(Answer::Hold {
        head: b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        body_bytes: 10,
    })
    .await;
    let started = Instant::now();
    check(HealthCheckKind::Http, server.addr).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn http_fails_with_connect_on_a_closed_port() {
    let failure = check(HealthCheckKind::Http, refused_addr().await).await.unwrap_err();
    assert!(matches!(failure, CheckFailure::Connect(_)), "{failure:?}");
}

#[tokio::test]
async fn http_fails_when_the_connection_closes_without_an_answer() {
    let server = RawServer::start(Answer::Close(b"")).await;
    let failure = check(HealthCheckKind::Http, server.addr).await.unwrap_err();
    assert!(matches!(failure, CheckFailure::Http(_)), "{failure:?}");
}

// ---- websocket ----

/// A tokio-tungstenite server that accepts one handshake and reports the code
/// of the first close frame it receives (`None`: the stream ended without one).
async fn websocket_server() -> (SocketAddr, oneshot::Receiver<Option<u16>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let code = loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break None,
            }
        };
        let _ = tx.send(code);
    });
    (addr, rx)
}

#[tokio::test]
async fn websocket_passes_and_closes_with_1000() {
    let (addr, close) = websocket_server().await;
    check(HealthCheckKind::Websocket, addr).await.unwrap();
    let code = within("the server seeing a close frame", close).await.unwrap();
    assert_eq!(code, Some(1000));
}

#[tokio::test]
async fn websocket_sends_a_real_opening_handshake() {
    let mut server = RawServer::start(Answer::Close(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")).await;
    let _ = check(HealthCheckKind::Websocket, server.addr).await;
    let head = server.next_head().await;
    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
    assert_eq!(header(&head, "host"), Some(NAME), "{head}");
    assert_eq!(header(&head, "user-agent"), Some("wsgate-health-check"), "{head}");
    assert_eq!(
        header(&head, "upgrade").map(str::to_lowercase).as_deref(),
        Some("websocket")
    );
    assert_eq!(header(&head, "sec-websocket-version"), Some("13"), "{head}");
    assert!(header(&head, "sec-websocket-key").is_some(), "{head}");
}

#[tokio::test]
async fn websocket_fails_against_a_plain_http_200() {
    let server = RawServer::start(Answer::Close(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ))
    .await;
    let failure = check(HealthCheckKind::Websocket, server.addr).await.unwrap_err();
    assert!(matches!(failure, CheckFailure::Status(200)), "{failure:?}");
}

#[tokio::test]
async fn websocket_fails_on_a_wrong_accept_key() {
    let server = RawServer::start(Answer::Close(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ))
    .await;
    let failure = check(HealthCheckKind::Websocket, server.addr).await.unwrap_err();
    assert!(matches!(failure, CheckFailure::Handshake(_)), "{failure:?}");
    assert!(failure.to_string().to_lowercase().contains("accept"), "{failure}");
}

#[tokio::test]
async fn websocket_times_out_against_a_server_that_never_answers() {
    let server = RawServer::start(Answer::Silent).await;
    let limit = Duration::from_millis(300);
    let check = health_check(HealthCheckKind::Websocket, limit);
    let started = Instant::now();
    let failure = within("check_once", check_once(&check, None, &backend(server.addr)))
        .await
        .unwrap_err();
    assert!(matches!(failure, CheckFailure::Timeout), "{failure:?}");
    assert!(
        started.elapsed() < limit + Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

// ---- run ----

/// A port that is bound but not listening: connections to it are refused,
/// and `listen` later opens it without racing anyone for the port.
fn bound_closed_port() -> (TcpSocket, SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

fn spawn_run(
    check: HealthCheck,
    backends: impl Fn() -> Arc<Vec<Arc<Backend>>> + Send + Sync + 'static,
) -> (CancellationToken, JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(run("pool".into(), check, None, backends, stop.clone()));
    (stop, task)
}

async fn stop_promptly(stop: CancellationToken, task: JoinHandle<()>) {
    stop.cancel();
    timeout(Duration::from_secs(1), task)
        .await
        .expect("run returns promptly once stopped")
        .unwrap();
}

#[tokio::test]
async fn run_takes_a_dead_server_down_and_brings_it_back_after_rise_successes() {
    let live = support::Backend::start(Behavior::Silent).await;
    let (closed_socket, closed_addr) = bound_closed_port();
    within("sanity: the closed port refuses", async {
        assert!(TcpStream::connect(closed_addr).await.is_err());
    })
    .await;
    let (live_backend, dead_backend) = (backend(live.addr), backend(closed_addr));
    let list = Arc::new(vec![live_backend.clone(), dead_backend.clone()]);
    // interval 100ms, rise 2, fall 2
    let check = health_check(HealthCheckKind::Tcp, Duration::from_millis(200));
    let (stop, task) = spawn_run(check, move || list.clone());

    poll_until(Duration::from_secs(5), "the closed server marked down", || {
        assert!(live_backend.is_healthy(), "the live server must stay up");
        !dead_backend.is_healthy()
    })
    .await;
    assert!(!dead_backend.is_available());
    assert!(live.accepts() >= 2, "both rounds checked the live server too");

    let revived = support::Backend::on(closed_socket.listen(128).unwrap(), Behavior::Silent);
    poll_until(Duration::from_secs(5), "the revived server marked up", || {
        dead_backend.is_healthy()
    })
    .await;
    assert!(dead_backend.is_available());
    assert!(live_backend.is_healthy());
    poll_until(
        Duration::from_secs(5),
        "rise = 2 successful checks reached the revived server",
        || revived.accepts() >= 2,
    )
    .await;

    stop_promptly(stop, task).await;
}

#[tokio::test]
async fn run_checks_the_backends_of_each_round() {
    let backends: Arc<Mutex<Arc<Vec<Arc<Backend>>>>> = Arc::default();
    let current = backends.clone();
    // interval 100ms, rise 2, fall 2
    let check = health_check(HealthCheckKind::Tcp, Duration::from_millis(200));
    let (stop, task) = spawn_run(check, move || current.lock().unwrap().clone());

    let added = support::Backend::start(Behavior::Silent).await;
    let dead = backend(refused_addr().await);
    *backends.lock().unwrap() = Arc::new(vec![backend(added.addr), dead.clone()]);
    poll_until(Duration::from_secs(5), "a server added later is checked", || {
        added.accepts() >= 1
    })
    .await;
    poll_until(
        Duration::from_secs(5),
        "a dead server added later is marked down",
        || !dead.is_healthy(),
    )
    .await;

    stop_promptly(stop, task).await;
}

#[tokio::test]
async fn run_stops_promptly_in_the_middle_of_a_check() {
    let mut server = RawServer::start(Answer::Silent).await;
    let list = Arc::new(vec![backend(server.addr)]);
    let (stop, task) = spawn_run(
        health_check(HealthCheckKind::Http, Duration::from_secs(30)),
        move || list.clone(),
    );
    // The check is now waiting for an answer that never comes.
    server.next_head().await;
    stop_promptly(stop, task).await;
    within("the abandoned check's connection closed", server.closed.recv())
        .await
        .unwrap();
}
