//! A real HTTP/1.1 + WebSocket backend with configurable behaviours.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::within;

/// What the backend does with a request.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// WebSocket: echo text/binary, echo the client's close frame, pong pings;
    /// picks subprotocol `chat.v1` and extension `x-test-ext` when offered.
    /// HTTP: GET answers `backend GET {path}`, POST streams the body back.
    Echo,
    /// Answer every request with this status and body (no 101).
    Status(u16, &'static str),
    /// Answer the upgrade 101 with a wrong `Sec-WebSocket-Accept`.
    WrongAccept,
    /// Like `Echo`, but sends a close frame with this code and reason right after the 101.
    CloseAfterHandshake(u16, &'static str),
    /// Accept TCP connections, read everything, never answer.
    Silent,
    /// Like `Echo`, but a GET of `/` answers this HTML page (for a browser).
    Page(&'static str),
}

/// The head of a request the backend received.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

impl SeenRequest {
    /// The values of header `name`, each line on its own.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<non-utf8>").to_string())
            .collect()
    }
    /// The value of header `name`, which must appear at most once.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "header {name} appears {} times at the backend: {all:?}",
            all.len()
        );
        all.into_iter().next()
    }
}

#[derive(Default)]
struct Records {
    requests: Mutex<Vec<SeenRequest>>,
    closes: Mutex<Vec<(u16, String)>>,
    close_seen: Notify,
}

/// A real HTTP/1.1 + WebSocket backend on 127.0.0.1.
pub struct Backend {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    records: Arc<Records>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn echo() -> Backend {
        Backend::start(Behavior::Echo).await
    }

    pub async fn start(behavior: Behavior) -> Backend {
        Backend::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), behavior)
    }

    /// An echo backend on `addr` exactly (a server coming back on its old port).
    pub async fn echo_at(addr: SocketAddr) -> Backend {
        Backend::on(bind_again(addr).await, Behavior::Echo)
    }

    /// A backend serving `listener` with `behavior`.
    pub fn on(listener: TcpListener, behavior: Behavior) -> Backend {
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let records = Arc::new(Records::default());
        let (counter, state) = (accepts.clone(), records.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (behavior, state) = (behavior.clone(), state.clone());
                tokio::spawn(serve_backend_connection(stream, behavior, state));
            }
        });
        Backend {
            addr,
            accepts,
            records,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Request heads received so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.records.requests.lock().unwrap().clone()
    }

    /// The only request received so far.
    pub fn only_request(&self) -> SeenRequest {
        let requests = self.requests();
        assert_eq!(
            requests.len(),
            1,
            "backend saw {} requests: {requests:#?}",
            requests.len()
        );
        requests.into_iter().next().unwrap()
    }

    /// Waits for the first close frame a client sent to this backend: (code, reason).
    pub async fn wait_close(&self) -> (u16, String) {
        within("backend receiving a close frame", async {
            loop {
                if let Some(close) = self.records.closes.lock().unwrap().first().cloned() {
                    return close;
                }
                self.records.close_seen.notified().await;
            }
        })
        .await
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener on `addr` again, once the socket that had it is gone (a
/// dropped listener may not have been closed yet).
/// An address held for a backend that is not up yet: bound, so no other
/// socket on the machine (another test's listener) can take the port, but
/// not listening, so connects to it are refused until [`ReservedAddr::listen`].
/// (An address bound and released, like [`super::refused_addr`]'s, can be
/// handed to another test's listener in between.)
pub struct ReservedAddr {
    socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl ReservedAddr {
    pub fn new() -> ReservedAddr {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).expect("bind 127.0.0.1:0");
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("a bound address");
        ReservedAddr { socket, addr }
    }

    /// Starts listening on the held address.
    pub fn listen(self) -> TcpListener {
        self.socket.listen(1024).expect("listen");
        self.socket.set_nonblocking(true).expect("nonblocking");
        TcpListener::from_std(self.socket.into()).expect("a tokio listener")
    }
}

pub async fn bind_again(addr: SocketAddr) -> TcpListener {
    within("binding the old address again", async {
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        }
    })
    .await
}

/// Large enough for the 16 MiB message test, on both ends.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

async fn serve_backend_connection(stream: TcpStream, behavior: Behavior, records: Arc<Records>) {
    if let Behavior::Silent = behavior {
        let mut stream = stream;
        let mut sink = vec![0u8; 4096];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
        return;
    }
    let service = hyper::service::service_fn(move |req| {
        let (behavior, records) = (behavior.clone(), records.clone());
        async move { Ok::<_, Infallible>(backend_answer(req, behavior, records)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn offers(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(token))
}

fn backend_answer(mut req: Request<Incoming>, behavior: Behavior, records: Arc<Records>) -> Response<Body> {
    records.requests.lock().unwrap().push(SeenRequest {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let status = |code: u16, body: &'static str| {
        Response::builder()
            .status(code)
            .header("content-type", "text/plain")
            .body(full(body))
            .unwrap()
    };
    if let Behavior::Status(code, body) = behavior {
        return status(code, body);
    }
    let upgrade = offers(req.headers(), "upgrade", "websocket");
    if let (Behavior::Page(html), false, "/") = (&behavior, upgrade, req.uri().path()) {
        return Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(full(*html))
            .unwrap();
    }
    if !upgrade {
        return match *req.method() {
            Method::POST => Response::builder()
                .header("x-backend", "echo")
                .body(req.into_body().boxed())
                .unwrap(),
            _ => Response::builder()
                .header("x-backend", "echo")
                .body(full(format!("backend GET {}", req.uri().path())))
                .unwrap(),
        };
    }
    let key = header_str(req.headers(), "sec-websocket-key").as_bytes().to_vec();
    let accept = match behavior {
        Behavior::WrongAccept => derive_accept_key(b"not the key the client sent"),
        _ => derive_accept_key(&key),
    };
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept);
    if offers(req.headers(), "sec-websocket-protocol", "chat.v1") {
        response = response.header("sec-websocket-protocol", "chat.v1");
    }
    if offers(req.headers(), "sec-websocket-extensions", "x-test-ext") {
        response = response.header("sec-websocket-extensions", "x-test-ext");
    }
    if !matches!(behavior, Behavior::WrongAccept) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config())).await;
                backend_websocket(ws, behavior, records).await;
            }
        });
    }
    response.body(full(Bytes::new())).unwrap()
}

async fn backend_websocket<S>(mut ws: WebSocketStream<S>, behavior: Behavior, records: Arc<Records>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Behavior::CloseAfterHandshake(code, reason) = behavior {
        let _ = ws
            .close(Some(CloseFrame {
                code: code.into(),
                reason: reason.into(),
            }))
            .await;
    }
    while let Some(Ok(message)) = ws.next().await {
        if message.is_text() || message.is_binary() {
            if ws.send(message).await.is_err() {
                break;
            }
        } else if let Message::Close(frame) = message {
            let close = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
            records.closes.lock().unwrap().push(close);
            records.close_seen.notify_one();
            // tungstenite queues the close reply (same code and reason); the next poll sends it.
        }
        // Pings are answered by tungstenite itself.
    }
}
