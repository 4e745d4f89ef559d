//! The server's side of a binary upgrade ([`crate::lifecycle::handover`]):
//! the old process gives its listeners and tunnels away; the new one takes
//! them.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, error, info, warn};

use super::running::Running;
use crate::lifecycle::handover::{self, Channel, Message};
use crate::lifecycle::{notify, version};
use crate::proxy::Proxy;
use crate::tunnel::clock::monotonic_now;
use crate::tunnel::relocate::MovedTunnel;

/// How long the new process may take from its start to serving the
/// listeners (it loads the configuration and the certificates first).
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long the tunnels that can move get to stop and go; those that have
/// not (a direction held up by a peer that does not read) then stay and
/// are drained with the rest.
const MOVE_LIMIT: Duration = Duration::from_secs(5);

/// What an upgrade that went through did.
pub(crate) struct Given {
    pub(crate) moved: u64,
    pub(crate) stayed: u64,
    pub(crate) successor: u32,
}

/// Starts the binary at the path this one was started from and gives it
/// the listeners, then every tunnel that can move. An error before the new
/// process took the listeners leaves this one serving as it was.
pub(crate) async fn give(running: &mut Running, admin: Option<Arc<TcpListener>>) -> Result<Given, String> {
    let path = handover::executable().ok_or("the path of this binary is unknown")?;
    info!(binary = %path.display(), "SIGUSR1: upgrading to the binary at this path");
    let (mut child, channel) =
        handover::spawn_successor(path).map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    let channel = Arc::new(channel);
    let names: Vec<String> = running.listeners.iter().map(|l| l.name.clone()).collect();
    let sockets: Vec<Arc<TcpListener>> = running.listeners.iter().map(|l| l.socket.clone()).collect();
    let talk = {
        let channel = channel.clone();
        tokio::task::spawn_blocking(move || start_successor(&channel, names, &sockets, admin.as_deref()))
    };
    let answer = talk.await.unwrap_or_else(|e| Err(e.to_string()));
    let (version, pid) = match answer {
        Ok(answer) => answer,
        Err(why) => {
            let status = tokio::task::spawn_blocking(move || {
                // It answered or closed: give it a moment to exit on its own.
                for _ in 0..20 {
                    if let Ok(Some(status)) = child.try_wait() {
                        return status.to_string();
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
                match child.wait() {
                    Ok(status) => format!("{status}, stopped by this process"),
                    Err(error) => error.to_string(),
                }
            })
            .await
            .unwrap_or_default();
            return Err(format!("{why} (new process: {status})"));
        }
    };
    // Its own: it outlives this process.
    drop(child);
    if let Some(cluster) = running.current.load().cluster() {
        cluster.hand_over();
    }
    for listener in &running.listeners {
        listener.stop.cancel();
    }
    notify::main_pid(pid);
    if let Err(error) = channel.send(&Message::Main.encode(), &[]) {
        debug!(%error, "hand-over: the new process was not told it is the main one");
    }
    info!(%version, pid, "the new process serves the listeners; handing the tunnels over");
    let proxy = running.current.load_full();
    let (taker, taken) = mpsc::unbounded_channel();
    proxy.relocation.start(taker);
    let forward = {
        let channel = channel.clone();
        tokio::task::spawn_blocking(move || forward_tunnels(&channel, taken))
    };
    // Until every tunnel that can move went: those open, those whose
    // handshake was under way, and those of the requests still served here
    // (each connection ends after its request in flight).
    let deadline = Instant::now() + MOVE_LIMIT;
    let unsettled = || {
        let relocation = &proxy.relocation;
        let requests = proxy
            .stats
            .open_connections()
            .saturating_sub(proxy.stats.open_tunnels());
        relocation.waiting() + relocation.undecided() + requests > 0
    };
    while unsettled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stayed_movable = proxy.relocation.waiting();
    proxy.relocation.stop();
    let (moved, unsent) = forward.await.unwrap_or((0, Vec::new()));
    if !unsent.is_empty() {
        // The new process stopped taking them: they go on here.
        error!(
            tunnels = unsent.len(),
            "the new process stopped taking tunnels; they stay in this one"
        );
        for tunnel in unsent {
            proxy.adopt(tunnel, None);
        }
    }
    let stayed = proxy.stats.open_connections() as u64;
    let summary = Message::Summary { moved, stayed };
    let channel_done = tokio::task::spawn_blocking(move || channel.send(&summary.encode(), &[]));
    if let Ok(Err(error)) = channel_done.await {
        debug!(%error, "hand-over summary not sent");
    }
    info!(
        moved,
        stayed, stayed_movable, pid, "tunnels handed over; those that stayed (TLS, closing, held up) drain here"
    );
    Ok(Given {
        moved,
        stayed,
        successor: pid,
    })
}

/// Hello, the listeners, and the new process's answers.
fn start_successor(
    channel: &Channel,
    names: Vec<String>,
    sockets: &[Arc<TcpListener>],
    admin: Option<&TcpListener>,
) -> Result<(String, u32), String> {
    let broken = |e: std::io::Error| match gone(&e) {
        true => EXITED.to_owned(),
        false => format!("hand-over channel: {e}"),
    };
    channel.set_receive_timeout(Some(START_LIMIT)).map_err(broken)?;
    let hello = Message::Hello {
        protocol: handover::protocol(),
        version: version::version().to_owned(),
        pid: std::process::id(),
    };
    channel.send(&hello.encode(), &[]).map_err(broken)?;
    let (version, pid) = match answer(channel)? {
        Message::Accept { version, pid } => (version, pid),
        other => return Err(format!("unexpected answer {other:?}")),
    };
    let mut fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|s| s.as_fd()).collect();
    fds.extend(admin.map(AsFd::as_fd));
    let listeners = Message::Listeners {
        names,
        admin: admin.is_some(),
    };
    channel.send(&listeners.encode(), &fds).map_err(broken)?;
    match answer(channel)? {
        Message::Taken => Ok((version, pid)),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

const EXITED: &str = "the new binary exited before it took over";

/// The other end is closed: its process exited.
fn gone(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
    )
}

/// The next message from the new process; its refusal or its exit as an error.
fn answer(channel: &Channel) -> Result<Message, String> {
    match channel.receive() {
        Ok(Some((bytes, _))) => match Message::decode(&bytes) {
            Ok(Message::Refuse { reason }) => Err(format!("the new binary refused: {reason}")),
            Ok(message) => Ok(message),
            Err(error) => Err(error.to_string()),
        },
        Ok(None) => Err(EXITED.into()),
        Err(error) if gone(&error) => Err(EXITED.into()),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
            Err(format!("the new binary did not answer within {START_LIMIT:?}"))
        }
        Err(error) => Err(format!("hand-over channel: {error}")),
    }
}

/// Sends every tunnel that stopped to move, until the move is over; the
/// count sent, and the tunnels that could not be.
fn forward_tunnels(channel: &Channel, mut taken: mpsc::UnboundedReceiver<MovedTunnel>) -> (u64, Vec<MovedTunnel>) {
    let mut moved = 0;
    let mut unsent = Vec::new();
    while let Some(tunnel) = taken.blocking_recv() {
        if !unsent.is_empty() {
            unsent.push(tunnel);
            continue;
        }
        let (description, sockets) = tunnel.encode();
        let message = Message::Tunnel(description).encode();
        match channel.send(&message, &sockets) {
            Ok(()) => moved += 1,
            Err(error) => {
                warn!(%error, "hand-over channel broken");
                unsent.push(tunnel);
            }
        }
    }
    (moved, unsent)
}

/// The new process's side, up to serving the listeners: what it was given.
pub struct Taken {
    pub listeners: Vec<(String, std::net::TcpListener)>,
    pub admin: Option<std::net::TcpListener>,
    pub predecessor: u32,
}

/// Reads the old process's hello and checks this binary understands it,
/// then receives the listeners. Errors are told to the old process, which
/// goes on serving.
pub fn take(channel: &Channel) -> Result<Taken, String> {
    let broken = |e: std::io::Error| format!("hand-over channel: {e}");
    channel.set_receive_timeout(Some(START_LIMIT)).map_err(broken)?;
    let refuse = |reason: String| {
        handover::refuse(channel, &reason);
        reason
    };
    let (bytes, _) = channel
        .receive()
        .map_err(broken)?
        .ok_or("the old process closed the hand-over")?;
    let predecessor = match Message::decode(&bytes) {
        Ok(Message::Hello { protocol, pid, .. }) if protocol == handover::protocol() => pid,
        Ok(Message::Hello { protocol, .. }) => {
            return Err(refuse(format!(
                "hand-over protocol {protocol}, this binary ({}) speaks {}",
                version::version(),
                handover::protocol()
            )))
        }
        Ok(other) => return Err(refuse(format!("unexpected message {other:?}"))),
        Err(error) => return Err(refuse(error.to_string())),
    };
    let accepted = Message::Accept {
        version: version::version().to_owned(),
        pid: std::process::id(),
    };
    channel.send(&accepted.encode(), &[]).map_err(broken)?;
    let (bytes, mut fds) = channel
        .receive()
        .map_err(broken)?
        .ok_or("the old process closed the hand-over")?;
    let Ok(Message::Listeners { names, admin }) = Message::decode(&bytes) else {
        return Err(refuse("expected the listeners".into()));
    };
    if fds.len() != names.len() + usize::from(admin) {
        return Err(refuse("listeners and sockets do not match".into()));
    }
    let admin = admin.then(|| fds.pop()).flatten().map(std::net::TcpListener::from);
    let listeners = names
        .into_iter()
        .zip(fds.into_iter().map(|fd: OwnedFd| std::net::TcpListener::from(fd)))
        .collect();
    Ok(Taken {
        listeners,
        admin,
        predecessor,
    })
}

/// Tells the old process this one serves the listeners, then runs every
/// tunnel it sends, in `current`'s configuration, until it is done; once
/// systemd knows this process as the main one, starts speaking to it
/// (`READY=1`, the watchdog).
pub fn serve_handed_over(
    channel: Channel,
    current: Arc<ArcSwap<Proxy>>,
    permits: Arc<Semaphore>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    let metrics = current.load().stats.metrics().clone();
    channel.send(&Message::Taken.encode(), &[])?;
    channel.set_receive_timeout(None)?;
    let (adopt, mut adopted) = mpsc::unbounded_channel::<MovedTunnel>();
    tokio::spawn(async move {
        while let Some(tunnel) = adopted.recv().await {
            current.load().adopt(tunnel, permits.clone().try_acquire_owned().ok());
        }
    });
    std::thread::Builder::new()
        .name("wsgate-handover".into())
        .spawn(move || {
            let mut received = 0u64;
            // How long each tunnel was stopped, in microseconds.
            let mut pauses: Vec<u64> = Vec::new();
            loop {
                let (bytes, fds) = match channel.receive() {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(error) => {
                        warn!(%error, received, "hand-over channel broken");
                        break;
                    }
                };
                match Message::decode(&bytes) {
                    Ok(Message::Tunnel(description)) => {
                        let Ok::<[OwnedFd; 2], _>(sockets) = fds.try_into() else {
                            warn!("a moved tunnel came without its two sockets; lost");
                            continue;
                        };
                        match MovedTunnel::decode(&description, sockets) {
                            Ok(tunnel) => {
                                received += 1;
                                let paused = monotonic_now().saturating_sub(tunnel.stopped_at);
                                pauses.push(u64::try_from(paused.as_micros()).unwrap_or(u64::MAX));
                                let _ = adopt.send(tunnel);
                            }
                            Err(error) => warn!(%error, "a moved tunnel could not be read; lost"),
                        }
                    }
                    Ok(Message::Summary { moved, stayed }) => {
                        metrics.upgraded(received, stayed);
                        let [p50, p99, max] = percentiles(&mut pauses, [0.5, 0.99, 1.0]);
                        info!(
                            moved,
                            received,
                            stayed,
                            pause_p50_ms = p50,
                            pause_p99_ms = p99,
                            pause_max_ms = max,
                            "hand-over done: tunnels received; the rest drain in the old process"
                        );
                    }
                    Ok(Message::Main) => {
                        runtime.spawn(async {
                            notify::ready();
                            // Runs for the process's life.
                            drop(notify::spawn_watchdog());
                        });
                    }
                    Ok(other) => debug!(?other, "unexpected hand-over message ignored"),
                    Err(error) => warn!(%error, "unreadable hand-over message ignored"),
                }
            }
        })?;
    Ok(())
}

/// The `quantiles` (0 to 1) of `micros`, in milliseconds (0 when empty).
fn percentiles<const N: usize>(micros: &mut [u64], quantiles: [f64; N]) -> [f64; N] {
    micros.sort_unstable();
    quantiles.map(|q| {
        let Some(last) = micros.len().checked_sub(1) else {
            return 0.0;
        };
        let at = ((last as f64) * q).round() as usize;
        micros[at.min(last)] as f64 / 1000.0
    })
}

#[cfg(test)]
mod tests {
    use super::percentiles;

    #[test]
    fn percentiles_of_pauses() {
        let mut micros: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentiles(&mut micros, [0.5, 0.99, 1.0]), [51.0, 99.0, 100.0]);
        assert_eq!(percentiles(&mut [], [0.5]), [0.0]);
    }
}
