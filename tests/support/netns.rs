//! A backend host that can vanish: a network namespace of the test's own,
//! joined to the host by a veth pair on a private /30, and an nftables
//! table that can drop every packet to and from the namespace's address
//! (no FIN, no reset: a host that lost power, a path that went dark).
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); without them the test
//! fails saying so rather than skipping (CI installs both). Everything is
//! named after the test process's id (and a count, for tests running side
//! by side) and removed when [`DeadHostNet`] is dropped, on a panic too.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{Backend, Behavior};

/// The namespace, its veth pair and the nftables table of one test process.
pub struct DeadHostNet {
    namespace: String,
    host_link: String,
    table: String,
    /// The host's end of the veth pair.
    pub host_ip: Ipv4Addr,
    /// The namespace's end: where its backends listen.
    pub far_ip: Ipv4Addr,
}

impl DeadHostNet {
    /// Makes the namespace, links it to the host and sets up the (empty)
    /// drop rules' table with a counter of connection attempts to it.
    pub fn create() -> DeadHostNet {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "tests/dead_host.rs needs root: it makes a network namespace and nftables rules"
        );
        for (tool, version, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
            let found = Command::new(tool)
                .arg(version)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            assert!(
                found,
                "tests/dead_host.rs needs `{tool}` (Debian package {package}): apt-get install {package}"
            );
        }
        static MADE: AtomicU32 = AtomicU32::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        assert!(n < 4, "at most four per test process");
        let pid = std::process::id();
        // A /30 of its own: distinct within the process, and most likely
        // from other processes' too.
        let subnet = ((pid % 62) * 4 + n) as u8;
        // Built first, so that a step failing below still cleans up the others.
        let net = DeadHostNet {
            namespace: format!("wsgate-test-{pid}-{n}"),
            host_link: format!("wsg{pid}{n}h"),
            table: format!("wsgate_test_{pid}_{n}"),
            host_ip: Ipv4Addr::new(10, 213, subnet, 1),
            far_ip: Ipv4Addr::new(10, 213, subnet, 2),
        };
        let (ns, host, far) = (&net.namespace, &net.host_link, format!("wsg{pid}{n}n"));
        run(&["ip", "netns", "add", ns]);
        run(&["ip", "link", "add", host, "type", "veth", "peer", "name", &far]);
        run(&["ip", "link", "set", &far, "netns", ns]);
        run(&["ip", "addr", "add", &format!("{}/30", net.host_ip), "dev", host]);
        run(&["ip", "link", "set", host, "up"]);
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/30", net.far_ip),
            "dev",
            &far,
        ]);
        run(&["ip", "-n", ns, "link", "set", &far, "up"]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        nft(&format!(
            "table inet {table} {{\n\
             chain output {{ type filter hook output priority 0; policy accept;\n\
             ip daddr {far} tcp flags & (syn | ack) == syn counter\n}}\n\
             chain input {{ type filter hook input priority 0; policy accept; }}\n}}\n",
            table = net.table,
            far = net.far_ip
        ));
        net
    }

    /// Drops every packet between the host and the namespace's address,
    /// both ways: established connections get neither data nor a reset.
    pub fn blackhole(&self) {
        nft(&format!(
            "add rule inet {table} output ip daddr {far} drop\n\
             add rule inet {table} input ip saddr {far} drop\n",
            table = self.table,
            far = self.far_ip
        ));
    }

    /// Connection attempts (SYNs, retransmissions included) sent to the
    /// namespace's address so far.
    pub fn syns_sent(&self) -> u64 {
        let listing = run(&["nft", "list", "chain", "inet", &self.table, "output"]);
        let after = listing
            .split("counter packets ")
            .nth(1)
            .unwrap_or_else(|| panic!("no counter in:\n{listing}"));
        after
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unreadable counter in:\n{listing}"))
    }

    /// A TCP connection to `addr` made from inside the namespace (a socket
    /// belongs to the namespace it was made in, wherever it is used then).
    pub fn connect_from_far(&self, addr: SocketAddr) -> tokio::net::TcpStream {
        let netns = self.open();
        let stream = std::thread::spawn(move || {
            join(&netns);
            std::net::TcpStream::connect_timeout(&addr, super::TIMEOUT)
        })
        .join()
        .expect("the connecting thread")
        .unwrap_or_else(|e| panic!("connect to {addr} from the namespace: {e}"));
        stream.set_nonblocking(true).expect("non-blocking");
        stream.set_nodelay(true).expect("nodelay");
        tokio::net::TcpStream::from_std(stream).expect("a tokio stream")
    }

    fn open(&self) -> std::fs::File {
        std::fs::File::open(format!("/var/run/netns/{}", self.namespace)).expect("open the namespace")
    }

    /// An echo backend ([`Backend`]) listening inside the namespace, on a
    /// thread of its own that joined the namespace before binding.
    pub fn echo_backend(&self) -> FarBackend {
        let netns = self.open();
        let ip = self.far_ip;
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            join(&netns);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind((ip, 0))
                    .await
                    .expect("bind in the namespace");
                let backend = Backend::on(listener, Behavior::Echo);
                addr_tx.send(backend.addr).expect("send the address");
                let _ = stopped.await;
                drop(backend);
            });
        });
        let addr = addr_rx
            .recv_timeout(super::TIMEOUT)
            .expect("the backend in the namespace did not start");
        FarBackend {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for DeadHostNet {
    fn drop(&mut self) {
        // Each step on its own: one that fails (never made) must not keep
        // the others from running. Deleting the namespace deletes the veth
        // pair with it; the link is deleted too in case the move failed.
        let _ = quiet(&["nft", "delete", "table", "inet", &self.table]);
        let _ = quiet(&["ip", "netns", "del", &self.namespace]);
        let _ = quiet(&["ip", "link", "del", &self.host_link]);
    }
}

/// An echo backend inside the namespace; stopped when dropped.
pub struct FarBackend {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FarBackend {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Moves the calling thread into the network namespace `netns`.
fn join(netns: &std::fs::File) {
    // SAFETY: setns(2) on a descriptor of a network namespace moves only
    // the calling thread, a thread of the test's own made for this.
    let joined = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs a command, failing the test with its output if it fails; returns
/// its standard output.
fn run(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        output.status.success(),
        "{} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn quiet(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

/// Loads an nftables script (`nft -f -`).
fn nft(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .expect("nft's stdin")
        .write_all(script.as_bytes())
        .expect("write the nft script");
    let output = child.wait_with_output().expect("nft");
    assert!(
        output.status.success(),
        "nft -f - failed ({}): {}\n--- script:\n{script}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
