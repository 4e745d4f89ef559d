//! What a graceful shutdown says while it waits, and the second signal that
//! cuts it short.
//!
//! A shutdown waits up to `shutdown_timeout` for connections to end, and a
//! plain tunnel ends only when its peers end it: an operator who pressed
//! Ctrl-C needs to be told what the process waits for, and, like most
//! daemons and command-line tools, a second Ctrl-C (or SIGTERM) stops it at
//! once.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

/// Says what the shutdown waits for and how to stop it sooner.
pub fn log_waiting(connections: usize, tunnels: usize, timeout: Duration) {
    tracing::info!(
        connections,
        tunnels,
        timeout_s = timeout.as_secs_f64(),
        "shutting down: waiting up to {} for {connections} connection(s) ({tunnels} tunnel(s)) to end; \
         SIGINT or SIGTERM again stops now",
        humantime::format_duration(timeout)
    );
}

/// From now on, a SIGINT or SIGTERM ends the process at once (exit status
/// 128 + the signal's number, as a shell reports a process killed by it),
/// saying so. Called once a first signal began the graceful shutdown.
pub fn stop_at_once_on_second_signal() {
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        tracing::warn!("cannot handle a second SIGINT or SIGTERM: the shutdown runs to its end");
        return;
    };
    tokio::spawn(async move {
        let (name, number) = tokio::select! {
            _ = interrupt.recv() => ("SIGINT", libc::SIGINT),
            _ = terminate.recv() => ("SIGTERM", libc::SIGTERM),
        };
        tracing::warn!(signal = name, "second {name}: stopping now, open connections are cut");
        crate::telemetry::log_writer::flush();
        std::process::exit(128 + number);
    });
}
