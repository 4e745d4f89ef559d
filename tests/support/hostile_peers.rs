//! Hostile peers and the real binary under resource limits: a `wsgate`
//! child process (JSON logs in a file, its CPU time, memory and descriptors
//! read from `/proc`), clients that trickle or stall, hand-made TLS
//! ClientHellos, a TLS client that records the certificate it was shown,
//! and a backend that sends as fast as the tunnel takes it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::{encode, within, TIMEOUT};

// ---------------------------------------------------------------- descriptors

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (children
/// inherit it); returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit");
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "setrlimit");
        }
    }
    // rlim_t is u64 here, not on every target.
    #[allow(clippy::unnecessary_cast)]
    let limit = limit.rlim_cur as u64;
    limit
}

/// Sets `command`'s `RLIMIT_NOFILE` to `soft` and `hard` before the exec.
pub fn limit_nofile(command: &mut std::process::Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only setrlimit(2) is called, which is
    // async-signal-safe, on values copied into the closure.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The soft and hard `RLIMIT_NOFILE` of process `pid`, from `/proc/PID/limits`.
pub fn proc_nofile_limit(pid: libc::pid_t) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/PID/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|word| word.parse().ok()).collect();
    assert_eq!(numbers.len(), 2, "soft and hard limits in {line:?}");
    (numbers[0], numbers[1])
}

// ---------------------------------------------------------------- the binary

/// Variables of the systemd protocols wsgate speaks: none is inherited
/// from the environment `cargo test` runs in.
pub const PROTOCOL_VARIABLES: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

/// The real `wsgate` binary, running a configuration written to a scratch
/// directory, logging JSON (at `WSGATE_LOG`) to a file there. Killed when
/// dropped, so a failed test leaves nothing running.
pub struct WsgateChild {
    child: Child,
    pid: libc::pid_t,
    dir: tempfile::TempDir,
    /// Listener name to bound address, from the `listening` lines.
    addrs: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
}

/// A `wsgate --config` command not yet started, with its scratch directory
/// (the config, the log, whatever else a test puts there). Tests that need
/// more than [`WsgateChild::start`] (variables of the service manager,
/// passed sockets, a shell around the exec) change the command first.
pub struct WsgateLaunch {
    command: Command,
    dir: tempfile::TempDir,
}

impl WsgateLaunch {
    /// Writes `toml` to a scratch directory and prepares `wsgate --config`
    /// on it, logging at `WSGATE_LOG=log_filter` to a file there, with none
    /// of the service manager's variables inherited. With `shell_prefix`,
    /// the binary is exec'd by `sh -c '<prefix> exec "$0" "$@"'`: variables
    /// holding the child's own pid (`$$`, kept by `exec`) can only be set
    /// that way.
    pub fn new(toml: &str, log_filter: &str, shell_prefix: Option<&str>) -> WsgateLaunch {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::in_dir(
            dir,
            toml,
            log_filter,
            shell_prefix,
            Path::new(env!("CARGO_BIN_EXE_wsgate")),
        )
    }

    /// [`WsgateLaunch::new`] running the binary at `binary`, in `dir` (which
    /// may hold that binary: a binary upgrade replaces it there).
    pub fn in_dir(
        dir: tempfile::TempDir,
        toml: &str,
        log_filter: &str,
        shell_prefix: Option<&str>,
        binary: &Path,
    ) -> WsgateLaunch {
        let config = dir.path().join("wsgate.toml");
        std::fs::write(&config, toml).expect("write config");
        let log = std::fs::File::create(dir.path().join("wsgate.log")).expect("log file");
        let mut command = match shell_prefix {
            Some(prefix) => {
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg(format!("{prefix} exec \"$0\" \"$@\""))
                    .arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .arg("--config")
            .arg(&config)
            .env("WSGATE_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        for variable in PROTOCOL_VARIABLES {
            command.env_remove(variable);
        }
        WsgateLaunch { command, dir }
    }

    /// A file in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The command, to add variables or descriptors before it starts.
    pub fn command(&mut self) -> &mut Command {
        &mut self.command
    }

    /// Sets the child's `RLIMIT_NOFILE` to `soft` and `hard` before the exec.
    pub fn limit_files(&mut self, soft: u64, hard: u64) {
        limit_nofile(self.command.as_std_mut(), soft, hard);
    }

    /// Starts the child, without waiting for anything.
    ///
    /// (A binary upgrade's new process inherits the log file: both write
    /// whole lines to one shared offset.)
    pub fn spawn(mut self) -> WsgateChild {
        let child = self.command.spawn().expect("start wsgate");
        let pid = child.id().expect("a running child") as libc::pid_t;
        WsgateChild {
            child,
            pid,
            dir: self.dir,
            addrs: Vec::new(),
            admin: None,
        }
    }
}

impl WsgateChild {
    /// Starts `wsgate --config` on `toml` (which must set `log_format =
    /// "json"`) with `WSGATE_LOG=log_filter`, and waits until every listener
    /// in `listeners` (and the admin listener, when configured) has logged
    /// its address. With `nofile`, the child's `RLIMIT_NOFILE` (soft and
    /// hard) is set to it before the exec.
    pub async fn start(toml: &str, listeners: &[&str], log_filter: &str, nofile: Option<u64>) -> WsgateChild {
        Self::start_with_nofile(toml, listeners, log_filter, nofile.map(|n| (n, n))).await
    }

    /// [`WsgateChild::start`] with the child's `RLIMIT_NOFILE` set to
    /// `(soft, hard)` before the exec.
    pub async fn start_with_nofile(
        toml: &str,
        listeners: &[&str],
        log_filter: &str,
        nofile: Option<(u64, u64)>,
    ) -> WsgateChild {
        assert!(
            toml.contains("log_format = \"json\""),
            "the child must log JSON:\n{toml}"
        );
        let mut launch = WsgateLaunch::new(toml, log_filter, None);
        if let Some((soft, hard)) = nofile {
            launch.limit_files(soft, hard);
        }
        let mut wsgate = launch.spawn();
        wsgate.wait_listening(listeners, toml.contains("[admin]")).await;
        wsgate
    }

    /// Waits until every listener in `listeners` (and the admin listener,
    /// `with_admin`) has logged its address in a JSON line; panics with the
    /// log if the child exits first or [`TIMEOUT`] passes.
    pub async fn wait_listening(&mut self, listeners: &[&str], with_admin: bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let lines = self.log_lines();
            let addrs: Vec<(String, SocketAddr)> = lines
                .iter()
                .filter(|l| l["message"] == "listening")
                .filter_map(|l| Some((l["listener"].as_str()?.to_owned(), l["address"].as_str()?.parse().ok()?)))
                .collect();
            let admin = lines
                .iter()
                .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("admin listener")))
                .and_then(|l| l["address"].as_str()?.parse().ok());
            let all = listeners.iter().all(|name| addrs.iter().any(|(n, _)| n == name));
            if all && (admin.is_some() || !with_admin) {
                self.addrs = addrs;
                self.admin = admin;
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("wsgate exited with {status} before listening\n--- log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "wsgate not listening within {TIMEOUT:?}\n--- log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no listener {name}"))
            .1
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("no [admin] listener")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("wsgate.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("wsgate.log")
    }

    /// Standard error, when the launch piped it (instead of the log file).
    pub fn take_stderr(&mut self) -> tokio::process::ChildStderr {
        self.child.stderr.take().expect("standard error piped by the launch")
    }

    /// The log so far, as written.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.pid, signal) }, 0, "kill");
    }

    /// Every complete JSON line of the log so far.
    pub fn log_lines(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Polls the log every 10 ms, for at most [`TIMEOUT`], until a line
    /// matches `matches`; returns that line.
    pub async fn wait_for_log(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_log_within(TIMEOUT, what, matches).await
    }

    pub async fn wait_for_log_within(&self, limit: Duration, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.log_lines().into_iter().find(&matches) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {what} within {limit:?}\n--- log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// User plus system CPU time the child has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).expect("/proc/PID/stat");
        // The command name is in parentheses and may hold spaces: fields
        // are counted from after it. utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// The child's resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        proc_status_kib(self.pid, "VmRSS").expect("VmRSS in /proc/PID/status") * 1024
    }

    /// How many descriptors the child holds open.
    pub fn open_fd_count(&self) -> usize {
        proc_fd_count(self.pid).expect("/proc/PID/fd")
    }

    /// The numbers of the descriptors the child holds open.
    pub fn open_fd_numbers(&self) -> Vec<u64> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("/proc/PID/fd")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Waits (at most 20 s) for the child to exit; its exit status.
    pub async fn exits(&mut self) -> std::process::ExitStatus {
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "wsgate still running 20s after the signal\n--- log:\n{}",
                self.log_tail(200)
            ),
        }
    }

    /// SIGTERM, then the exit, which must be a success.
    pub async fn stop(self) {
        self.signal(libc::SIGTERM);
        self.exits_successfully().await;
    }

    /// Waits (at most 20 s) for the child to exit, which must be a success.
    pub async fn exits_successfully(mut self) {
        let status = self.exits().await;
        assert!(
            status.success(),
            "wsgate exited with {status}\n--- log:\n{}",
            self.log_tail(200)
        );
    }
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `RssAnon`, `RssFile`), in
/// KiB; `None` once the process is gone.
pub fn proc_status_kib(pid: libc::pid_t, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// How many descriptors process `pid` holds open; `None` once it is gone.
pub fn proc_fd_count(pid: libc::pid_t) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Whether `line` is at `level` and was logged in the span of the
/// connection from `client` (the `conn` span the accept loop opens).
pub fn logged_for(line: &Value, level: &str, client: SocketAddr) -> bool {
    let client = client.to_string();
    line["level"] == level
        && line["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|span| span["client"] == client.as_str()))
}

// ---------------------------------------------------------------- slow peers

/// What became of a client that trickled its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Trickled {
    /// From the connect to the proxy ending the connection.
    pub lifetime: Duration,
    /// How many of its bytes it had sent by then.
    pub sent: usize,
}

/// A client sending its bytes one at a time, `pace` apart, and watching
/// for the proxy to end the connection (end of stream, or a reset, on the
/// read side).
pub struct Trickler {
    connected: Instant,
    sent: Arc<AtomicU64>,
    writer: tokio::task::JoinHandle<()>,
    ended: tokio::task::JoinHandle<Instant>,
}

impl Trickler {
    /// Connects to `addr` and starts trickling `bytes`; returns once
    /// connected. Having sent everything it holds the connection open.
    pub async fn start(addr: SocketAddr, bytes: Vec<u8>, pace: Duration) -> Trickler {
        Trickler::start_late(addr, bytes, pace, Duration::ZERO).await
    }

    /// As [`Trickler::start`], the first byte sent only `silent` after the
    /// connect.
    pub async fn start_late(addr: SocketAddr, bytes: Vec<u8>, pace: Duration, silent: Duration) -> Trickler {
        let stream = super::tcp_connect(addr).await;
        stream.set_nodelay(true).unwrap();
        let connected = Instant::now();
        let (mut read, mut write) = stream.into_split();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let writer = tokio::spawn(async move {
            // The silence is part of the attack, as the pace is.
            tokio::time::sleep(silent).await;
            for byte in bytes {
                if write.write_all(&[byte]).await.is_err() {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                // The pace is the attack under test, not a wait for readiness.
                tokio::time::sleep(pace).await;
            }
            std::future::pending::<()>().await;
        });
        let ended = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = read.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            Instant::now()
        });
        Trickler {
            connected,
            sent,
            writer,
            ended,
        }
    }

    pub fn has_ended(&self) -> bool {
        self.ended.is_finished()
    }

    /// Waits (at most [`TIMEOUT`]) for the proxy to end the connection.
    pub async fn ended(self) -> Trickled {
        let at = within("the proxy ending a trickling connection", self.ended)
            .await
            .expect("reader task");
        self.writer.abort();
        Trickled {
            lifetime: at.duration_since(self.connected),
            sent: self.sent.load(Ordering::SeqCst) as usize,
        }
    }
}

// ---------------------------------------------------------------- TLS by hand

/// A ClientHello that offers only `version` (0x0301 TLS 1.0, 0x0302 TLS
/// 1.1) as a client of that era sends it: no `supported_versions`
/// extension, CBC suites, SNI for `sni`; with `signature_algorithms`
/// (a TLS 1.2 extension, which such clients do not send) when asked.
/// rustls cannot send one.
pub fn legacy_client_hello(version: u16, sni: &str, signature_algorithms: bool) -> Vec<u8> {
    fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut hello = Vec::new();
    hello.extend_from_slice(&version.to_be_bytes());
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(0); // no session id
                   // ECDHE-RSA and RSA with AES-CBC-SHA: what TLS 1.0/1.1 clients offered.
    let suites: [u16; 4] = [0xc014, 0xc013, 0x0035, 0x002f];
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        hello.extend_from_slice(&suite.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // compression: null only
    let mut extensions = Vec::new();
    let name = sni.as_bytes();
    let mut server_name = Vec::new();
    server_name.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    server_name.push(0); // host_name
    server_name.extend_from_slice(&(name.len() as u16).to_be_bytes());
    server_name.extend_from_slice(name);
    extension(&mut extensions, 0x0000, &server_name);
    extension(&mut extensions, 0x000a, &[0, 4, 0, 0x1d, 0, 0x17]); // groups: x25519, secp256r1
    extension(&mut extensions, 0x000b, &[1, 0]); // point formats: uncompressed
    if signature_algorithms {
        // rsa_pkcs1_sha256, ecdsa_secp256r1_sha256, rsa_pkcs1_sha1
        extension(&mut extensions, 0x000d, &[0, 6, 4, 1, 4, 3, 2, 1]);
    }
    hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    hello.extend_from_slice(&extensions);
    let mut handshake = vec![0x01]; // client_hello
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01]; // handshake, record version TLS 1.0
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The first flight rustls sends for `config` and `sni`: a real ClientHello.
pub fn rustls_client_hello(config: Arc<rustls::ClientConfig>, sni: &str) -> Vec<u8> {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut connection = rustls::ClientConnection::new(config, name).expect("client connection");
    let mut hello = Vec::new();
    while connection.wants_write() {
        connection.write_tls(&mut hello).expect("write the ClientHello");
    }
    assert_eq!(hello.first(), Some(&0x16), "a handshake record");
    hello
}

/// A TLS record off the wire: content type and payload.
#[derive(Debug, PartialEq)]
pub struct Record {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Splits `bytes` into TLS records; `None` if they are not whole records.
pub fn records(mut bytes: &[u8]) -> Option<Vec<Record>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 5 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
        let payload = bytes.get(5..5 + len)?.to_vec();
        out.push(Record {
            kind: bytes[0],
            payload,
        });
        bytes = &bytes[5 + len..];
    }
    Some(out)
}

/// A verifier that accepts any certificate chain and keeps the end-entity
/// certificate it was shown, so a test can see which one the server chose
/// for a name it holds no certificate for. Handshake signatures are still
/// checked (with the ring provider's algorithms).
#[derive(Debug)]
pub struct RecordingVerifier {
    pub seen: Mutex<Option<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl RecordingVerifier {
    pub fn new() -> Arc<RecordingVerifier> {
        Arc::new(RecordingVerifier {
            seen: Mutex::new(None),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// A client configuration (ALPN http/1.1) that trusts whatever it is shown.
    pub fn client_config(self: &Arc<Self>) -> Arc<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    pub fn seen(&self) -> Option<CertificateDer<'static>> {
        self.seen.lock().unwrap().clone()
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------- a backend that floods

/// One backend connection past its handshake, sending 64 KiB binary frames
/// (or any frame, [`Flood::start_frames`]) as fast as its socket takes them, up to `target` bytes; `written`
/// counts what the kernel accepted. With the socket's send buffer fixed
/// small ([`set_send_buffer`]), the bytes in flight are those wsgate and
/// the client's kernel hold.
pub struct Flood {
    pub written: Arc<AtomicU64>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Flood {
    pub fn start<W: AsyncWrite + Unpin + Send + 'static>(write: W, target: u64) -> Flood {
        Flood::start_frames(write, encode(0x82, false, &vec![0x42; 64 * 1024]), target)
    }

    /// The same with `frame` sent over and over (a client's, masked).
    pub fn start_frames<W: AsyncWrite + Unpin + Send + 'static>(mut write: W, frame: Vec<u8>, target: u64) -> Flood {
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        let task = tokio::spawn(async move {
            let mut total = 0u64;
            while total < target {
                let mut rest = &frame[..];
                while !rest.is_empty() {
                    match write.write(rest).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            rest = &rest[n..];
                            total += n as u64;
                            counter.store(total, Ordering::SeqCst);
                        }
                    }
                }
            }
        });
        Flood { written, task }
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until no byte has been accepted for `quiet` (checked every
    /// 20 ms, at most [`TIMEOUT`]): the sender is stalled. Returns the
    /// bytes written by then; fails if the flood ran to its end instead.
    pub async fn stalled(&self, quiet: Duration) -> u64 {
        let deadline = Instant::now() + TIMEOUT;
        let (mut last, mut since) = (self.written(), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.written();
            assert!(
                !self.task.is_finished(),
                "the flood ended after {now} bytes: nothing held it back"
            );
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "still sending after {TIMEOUT:?}: {now} bytes"
            );
        }
    }
}

/// Fixes `stream`'s kernel send buffer (which also stops its autotuning).
pub fn set_send_buffer(stream: &TcpStream, bytes: usize) {
    socket2::SockRef::from(stream)
        .set_send_buffer_size(bytes)
        .expect("SO_SNDBUF");
}

/// A TCP connection to `addr` whose kernel receive buffer is fixed at
/// `bytes` before the connect (so the window it offers stays small).
pub async fn tcp_connect_small_window(addr: SocketAddr, bytes: u32) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    within("TCP connect", socket.connect(addr)).await.expect("TCP connect")
}

/// Copies the wsgate binary to `to`, its build label stamped `label`, so
/// that it reports version `X.Y.Z+label` (`wsgate::lifecycle::version`).
/// Written beside `to` and renamed over it, as a package manager replaces
/// a binary, so a process running the old file is not disturbed.
pub fn stamped_binary(to: &Path, label: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_wsgate")).expect("read the wsgate binary");
    let marker = wsgate::lifecycle::version::BUILD_LABEL_MARKER;
    let at = bytes
        .windows(marker.len())
        .position(|window| window == marker)
        .expect("the build label slot")
        + marker.len();
    assert!(label.len() < 32);
    bytes[at..at + 32].fill(0);
    bytes[at..at + label.len()].copy_from_slice(label.as_bytes());
    let staged = to.with_extension("new");
    std::fs::write(&staged, bytes).expect("write the stamped binary");
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, to).expect("install the stamped binary");
}

/// Puts a script at `to` that exits at once with an error: a broken
/// upgrade.
pub fn broken_binary(to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let staged = to.with_extension("new");
    std::fs::write(&staged, "#!/bin/sh\necho 'this binary is broken' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, to).expect("install the broken binary");
}
