use std::collections::VecDeque;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A client whose bytes arrive in the given pieces, one per read, and
/// which keeps what it is sent.
struct Client {
    pieces: VecDeque<Vec<u8>>,
    sent: Vec<u8>,
}

impl AsyncRead for Client {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(mut piece) = this.pieces.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                this.pieces.push_front(piece.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().sent.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

const MAX_HEAD: usize = 256;

/// What hyper would read through the guard, with reads of `read_size`,
/// and what the guard answered at shutdown.
fn through_guard(pieces: Vec<Vec<u8>>, read_size: usize) -> (Vec<u8>, String) {
    let client = Client {
        // An empty read would be the end of the stream.
        pieces: pieces.into_iter().filter(|piece| !piece.is_empty()).collect(),
        sent: Vec::new(),
    };
    let mut guard = FramingGuard::new(client, MAX_HEAD);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let mut read = Vec::new();
        let mut chunk = vec![0; read_size];
        for _ in 0..100_000 {
            let n = guard.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            read.extend_from_slice(&chunk[..n]);
        }
        guard.shutdown().await.unwrap();
        let answer = String::from_utf8(guard.io.sent.clone()).unwrap();
        (read, answer)
    })
}

/// Every split of `stream` in two, and in pieces of 1 to 7 bytes, read
/// with small and large reads.
fn splits(stream: &[u8]) -> Vec<(String, Vec<Vec<u8>>, usize)> {
    let mut cases = Vec::new();
    for at in 0..=stream.len() {
        for read_size in [3, 8192] {
            let pieces = vec![stream[..at].to_vec(), stream[at..].to_vec()];
            cases.push((format!("split at {at}, reads of {read_size}"), pieces, read_size));
        }
    }
    for size in 1..8 {
        let pieces = stream.chunks(size).map(<[u8]>::to_vec).collect();
        cases.push((format!("pieces of {size}"), pieces, 8192));
    }
    cases
}

const TRAP: &str = "GET /trap HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";

fn keep_alive_stream() -> String {
    let chunked = format!("{:x};ext=1\r\n{TRAP}\r\n0\r\nX-Trailer: 1\r\n\r\n", TRAP.len());
    format!(
        "POST /a HTTP/1.1\r\nHost: x\r\ncontent-length: {}\r\n\r\n{TRAP}\
         \r\nPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}\
         GET /c HTTP/1.1\nHost: x\n\n\
         POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        TRAP.len()
    )
}

#[test]
fn well_framed_keep_alive_requests_pass_unchanged_however_they_are_split() {
    let stream = keep_alive_stream();
    for (what, pieces, read_size) in splits(stream.as_bytes()) {
        let (read, answer) = through_guard(pieces, read_size);
        assert_eq!(String::from_utf8_lossy(&read), stream, "{what}");
        assert_eq!(answer, "", "{what}");
    }
}

#[test]
fn cl_with_te_is_refused_with_400_after_the_requests_before_it() {
    let before = keep_alive_stream();
    for head in [
        "POST /e HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /e HTTP/1.1\r\nTransfer-Encoding: chunked\r\nCONTENT-LENGTH:4\r\n\r\n",
    ] {
        let stream = format!("{before}{head}0\r\n\r\n{TRAP}");
        for (what, pieces, read_size) in splits(stream.as_bytes()) {
            let (read, answer) = through_guard(pieces, read_size);
            assert_eq!(String::from_utf8_lossy(&read), before, "{what}: {head:?}");
            assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{what}: {answer:?}");
            assert!(answer.contains("\r\nconnection: close\r\n"), "{what}: {answer:?}");
        }
    }
}

#[test]
fn a_request_line_longer_than_the_head_limit_is_414_and_one_at_the_limit_passes() {
    let at_limit = format!("GET /{} HTTP/1.1", "a".repeat(MAX_HEAD - 14));
    assert_eq!(at_limit.len(), MAX_HEAD);
    let over = format!("GET /{} HTTP/1.1", "a".repeat(MAX_HEAD - 13));
    let fits = format!("{at_limit}\r\n\r\n");
    for (what, pieces, read_size) in splits(fits.as_bytes()) {
        let (read, answer) = through_guard(pieces, read_size);
        assert_eq!(read, fits.as_bytes(), "{what}");
        assert_eq!(answer, "", "{what}");
    }
    let refused = format!("GET / HTTP/1.1\r\n\r\n{over}\r\n\r\n");
    for (what, pieces, read_size) in splits(refused.as_bytes()) {
        let (read, answer) = through_guard(pieces, read_size);
        assert_eq!(read, b"GET / HTTP/1.1\r\n\r\n", "{what}");
        assert!(
            answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"),
            "{what}: {answer:?}"
        );
    }
}

#[test]
fn a_head_over_the_limit_goes_to_hyper_whole_for_its_431() {
    let fields: String = (0..20).map(|i| format!("X-{i}: {}\r\n", "v".repeat(20))).collect();
    let stream = format!("GET / HTTP/1.1\r\n{fields}\r\n");
    assert!(stream.len() > MAX_HEAD);
    for (what, pieces, read_size) in splits(stream.as_bytes()) {
        let (read, answer) = through_guard(pieces, read_size);
        assert_eq!(read, stream.as_bytes(), "{what}");
        assert_eq!(answer, "", "{what}");
    }
}

#[test]
fn past_an_upgrade_head_the_bytes_are_not_read_as_requests() {
    let stream = format!("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n{TRAP}");
    for (what, pieces, read_size) in splits(stream.as_bytes()) {
        let (read, answer) = through_guard(pieces, read_size);
        assert_eq!(read, stream.as_bytes(), "{what}");
        assert_eq!(answer, "", "{what}");
    }
}

#[test]
fn a_client_that_leaves_mid_head_gives_hyper_what_it_sent() {
    let stream = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Le";
    for (what, pieces, read_size) in splits(stream) {
        let (read, answer) = through_guard(pieces, read_size);
        assert_eq!(read, stream, "{what}");
        assert_eq!(answer, "", "{what}");
    }
}

#[test]
fn bytes_not_yet_taken_come_back_with_the_stream() {
    let client = Client {
        pieces: vec![
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n".to_vec(),
            b"\r\nframe".to_vec(),
        ]
        .into(),
        sent: Vec::new(),
    };
    let mut guard = FramingGuard::new(client, MAX_HEAD);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut chunk = [0; 10];
    let n = runtime.block_on(guard.read(&mut chunk)).unwrap();
    assert_eq!(&chunk[..n], b"GET /ws HT");
    let (_, rest) = guard.into_parts();
    assert_eq!(&rest[..], b"TP/1.1\r\nUpgrade: websocket\r\n\r\nframe");
}
