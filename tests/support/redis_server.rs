//! A real `redis-server` (Debian's package) for the tests of `[cluster]`:
//! started on a free loopback port with no persistence, in a scratch
//! directory; stopped, paused, restarted and flushed as a test needs.
//! Killed when dropped.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TestCerts, TIMEOUT};

pub struct RedisServer {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    /// TLS only (`rediss://`), with the test CA's server certificate for localhost.
    tls: Option<TlsFiles>,
    /// `requirepass`.
    password: Option<String>,
}

struct TlsFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    ca: Vec<u8>,
}

impl RedisServer {
    /// A fresh server on a port nothing listens on, ready to answer.
    pub fn start() -> RedisServer {
        RedisServer::new(None, None)
    }

    /// A server that speaks only TLS (with `certs`' server certificate) and
    /// asks for `password`.
    pub fn start_tls(certs: &TestCerts, password: &str) -> RedisServer {
        let tls = TlsFiles {
            cert: certs.server_cert(),
            key: certs.server_key(),
            ca: std::fs::read(certs.ca_pem()).expect("the test CA"),
        };
        RedisServer::new(Some(tls), Some(password.to_owned()))
    }

    fn new(tls: Option<TlsFiles>, password: Option<String>) -> RedisServer {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let mut redis = RedisServer {
            child: None,
            addr,
            dir: tempfile::tempdir().expect("tempdir"),
            tls,
            password,
        };
        redis.resume_serving();
        redis
    }

    /// The URL wsgate is given: without the password, which goes in a file.
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("rediss://localhost:{}/0", self.addr.port()),
            None => format!("redis://{}/0", self.addr),
        }
    }

    /// Stops the server (SIGKILL: nothing is saved, as after a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.resume_serving();
    }

    /// SIGSTOP: connections are accepted by the kernel and never answered,
    /// like a store that hangs. [`RedisServer::resume`] undoes it.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// FLUSHALL: every key gone, the server up.
    pub fn flush(&self) {
        let mut connection = self.connection();
        let _: () = redis::cmd("FLUSHALL").query(&mut connection).expect("FLUSHALL");
    }

    /// A synchronous connection, for looking at the keys.
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(TIMEOUT)
            .expect("connect to redis-server")
    }

    /// A client of this server, trusting the test CA and knowing the password.
    fn client(&self) -> redis::Client {
        // redis takes the process's rustls provider, which a build with two
        // (the `aws-lc` feature) must name, as wsgate does.
        wsgate::tls::install_default_provider();
        let url = match &self.password {
            Some(password) => self.url().replacen("://", &format!("://:{password}@"), 1),
            None => self.url(),
        };
        match &self.tls {
            Some(tls) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(tls.ca.clone()),
                },
            ),
            None => redis::Client::open(url),
        }
        .expect("client")
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server running");
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0, "kill");
    }

    fn resume_serving(&mut self) {
        let port = self.addr.port().to_string();
        let mut command = Command::new("redis-server");
        match &self.tls {
            Some(tls) => {
                command
                    .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key);
            }
            None => {
                command.args(["--port", &port]);
            }
        }
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        let client = self.client();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.as_deref() == Ok("PONG") {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server exited with {status} (port {} taken?)", self.addr.port());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server not answering within {TIMEOUT:?}: {pong:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server ignores SIGKILL's wait until it runs again.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
        }
        self.stop();
    }
}
