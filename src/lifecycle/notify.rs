//! Telling systemd how the proxy is doing (sd_notify(3)): ready, reloading,
//! stopping, and alive (the watchdog).
//!
//! With `Type=notify`, systemd treats the service as started only on
//! `READY=1`, so units ordered after wsgate start once clients can connect,
//! and `systemctl start` fails if the listeners cannot be bound. With
//! `WatchdogSec=`, a proxy whose runtime stopped making progress is killed
//! and restarted instead of holding its ports while serving nothing.
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is not set (run by hand, in
//! tests, under another supervisor). A failed notification is logged at debug
//! and otherwise ignored: being unable to tell systemd something is no reason
//! to stop proxying. The environment is left as it is, so that later
//! notifications (a reload's `RELOADING=1` and `READY=1`) reach systemd too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tracing::debug;

/// `READY=1`: the listeners are bound and connections are accepted (queued
/// in the kernel's backlog until the accept loops run). Send it after
/// start-up, and again when a reload announced by [`reloading`] is done.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// `RELOADING=1` with `MONOTONIC_USEC=<now>`: the configuration is being
/// read again. systemd then shows the unit as "reloading" and `systemctl
/// reload` waits until [`ready`] is sent, so call `ready()` when the reload
/// is over, whether it succeeded or kept the old configuration.
///
/// The timestamp is what systemd's reload protocol requires (sd_notify(3),
/// systemd 253 and later): without it a reload is not accepted. If the
/// monotonic clock cannot be read, nothing is sent, rather than a
/// `RELOADING=1` systemd would not accept.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(error) => debug!(%error, "systemd notification RELOADING=1 not sent: no monotonic clock"),
    }
}

/// `MAINPID=<pid>`: the process that took over at a binary upgrade is the
/// service's main process from now on (its notifications count, and
/// `systemctl kill`, `reload` and the watchdog address it).
///
/// This process says nothing more afterwards: systemd would only log each
/// message of a process that is no longer the main one.
pub fn main_pid(pid: u32) {
    send(&[NotifyState::MainPid(pid)]);
    HANDED_OVER.store(true, Ordering::Release);
}

/// Set once [`main_pid`] named another process.
static HANDED_OVER: AtomicBool = AtomicBool::new(false);

/// `STOPPING=1`: shutdown began (no new connections; open ones are drained).
/// systemd shows the unit as "deactivating" from here on instead of
/// "active" while the drain lasts.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Starts sending `WATCHDOG=1` every half of the interval systemd asked for
/// (`WATCHDOG_USEC`, for this process if `WATCHDOG_PID` is set); `None` when
/// no watchdog is wanted or there is no `NOTIFY_SOCKET`.
///
/// The pings come from a task on the proxy's runtime on purpose: they stop
/// when the runtime stops making progress, which is what the watchdog is
/// there to catch. Half the interval leaves a missed tick of slack.
pub fn spawn_watchdog() -> Option<JoinHandle<()>> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let interval = sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero())?;
    let every = (interval / 2).max(Duration::from_millis(1));
    debug!(?interval, ?every, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    }))
}

fn send(states: &[NotifyState]) {
    if HANDED_OVER.load(Ordering::Acquire) {
        return;
    }
    // A change of state reaches the service manager after the lines logged
    // before it (a second at most): the journal, and whoever waits for
    // READY=1 and then reads the log, sees them in order. Not for the
    // watchdog's pings, which say nothing new.
    if !matches!(states, [NotifyState::Watchdog]) {
        crate::telemetry::log_writer::flush();
    }
    if let Err(error) = sd_notify::notify(states) {
        let states: Vec<String> = states.iter().map(ToString::to_string).collect();
        debug!(%error, ?states, "systemd notification not sent");
    }
}
