//! The `wsgate` command: parse arguments, load the configuration, start logging, run.

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wsgate::config::{self, Config, LogFormat};
use wsgate::lifecycle::handover::{self, Channel};
use wsgate::lifecycle::{descriptors, notify, version};
use wsgate::server::reload::Reloader;
use wsgate::server::Server;
use wsgate::tools::{certgen, client, demo, manual};
use wsgate::tunnel::drain::DrainClose;

/// A TLS-terminating reverse proxy for WebSocket backends.
#[derive(Parser)]
#[command(version = version::version(), about)]
struct Cli {
    /// The configuration file.
    #[arg(short, long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Load and validate the configuration (files, certificates, addresses); print every problem.
    Check {
        /// The configuration file (the same as `wsgate --config FILE check`).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run the proxy and, beside it, a small echo backend: a working demo in one command.
    Demo {
        /// The configuration file (the same as `wsgate --config FILE demo`).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Where the echo backend listens (the example configuration's upstream points here).
        #[arg(long, default_value = "127.0.0.1:9001")]
        backend: SocketAddr,
    },
    /// Make a development CA and a server certificate signed by it (never for production).
    Cert {
        /// Directory to write dev-ca.pem, <base>.pem and <base>-key.pem into.
        #[arg(long, default_value = "certs")]
        out_dir: PathBuf,
        /// File name stem of the certificate and key.
        #[arg(long, default_value = "localhost")]
        base: String,
        /// DNS names and IP addresses the certificate is for (repeatable).
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1", "::1"])]
        names: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Open a WebSocket, send each line of standard input, print what comes back.
    Client {
        /// ws:// or wss:// URL.
        url: String,
        /// CA certificate (PEM) to trust for wss://, e.g. certs/dev-ca.pem.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// After standard input ends, close once no reply has arrived for this long.
        #[arg(long, default_value = "2s", value_parser = config::units::parse_duration)]
        wait: std::time::Duration,
    },
    /// Write shell completions and man pages into a directory (for packagers).
    #[command(hide = true)]
    Generate {
        /// Directory to write completions/ and man/ into.
        #[arg(long)]
        out_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut raised = None;
    if matches!(cli.command, None | Some(Command::Demo { .. })) {
        // Before anything can replace the file: an upgrade starts what is there then.
        handover::remember_executable();
        // Each tunnel holds two descriptors: all the hard limit allows.
        raised = Some(descriptors::raise_nofile_limit());
    }
    // The proxy logs its traffic as its configuration says, once loaded
    // (see `run`); the one-shot tools only their problems.
    if !matches!(cli.command, None | Some(Command::Demo { .. })) {
        init_logging(LogFormat::Text, "warn", Writer::Direct);
    }
    // Started by a running wsgate to take over from it (a binary upgrade).
    let inherited = match cli.command {
        None => handover::inherited(),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(wsgate::lifecycle::memory::collect_if_asked)
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wsgate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match cli.command {
        None => runtime.block_on(run(&cli.config, None, raised, inherited)),
        Some(Command::Demo { config, backend }) => {
            runtime.block_on(run(&config.unwrap_or(cli.config), Some(backend), raised, None))
        }
        Some(Command::Check { config }) => check(&config.unwrap_or(cli.config)),
        Some(Command::Cert {
            out_dir,
            base,
            names,
            force,
        }) => match certgen::write(&out_dir, &base, &names, force) {
            Ok(paths) => {
                for path in paths {
                    println!("wrote {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(error) => fail(error),
        },
        Some(Command::Generate { out_dir }) => match manual::write(Cli::command(), &out_dir) {
            Ok(paths) => {
                for path in paths {
                    println!("wrote {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(error) => fail(format!("{}: {error}", out_dir.display())),
        },
        Some(Command::Client { url, ca, wait }) => {
            let options = client::ClientOptions { url, ca, wait };
            let input = tokio::io::BufReader::new(tokio::io::stdin());
            match runtime.block_on(client::run(options, input, tokio::io::stdout())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(error),
            }
        }
    };
    // Don't wait for a blocking read of standard input the client no longer needs.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    wsgate::telemetry::log_writer::finish();
    code
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            // wsgate raises its soft limit to the hard one when it starts.
            if let Ok(limit) = descriptors::NofileLimit::current() {
                if let Some(warning) = descriptors::max_connections_warning(config.global.max_connections, limit.hard) {
                    eprintln!("warning: {}: {warning}", path.display());
                }
            }
            println!(
                "{}: ok ({}, {}, {})",
                path.display(),
                count(config.listeners.len(), "listener"),
                count(config.routes.len(), "route"),
                count(config.upstreams.len(), "upstream")
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} problem(s) found", path.display(), errors.errors().len());
            ExitCode::FAILURE
        }
    }
}

/// `1 route`, `2 routes`.
fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

async fn run(
    path: &Path,
    demo_backend: Option<SocketAddr>,
    raised: Option<std::io::Result<descriptors::Raised>>,
    predecessor: Option<Channel>,
) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            if let Some(channel) = predecessor {
                let reason = format!("{}: {} problem(s) found", path.display(), errors.errors().len());
                handover::refuse(&channel, &reason);
            }
            return ExitCode::FAILURE;
        }
    };
    // Read once: a reload does not change how or what is logged.
    init_logging(config.global.log_format, &config.global.log_filter, Writer::Buffered);
    tracing::info!(version = version::version(), "wsgate starting");
    // Taking over from a running wsgate: its listeners, then its tunnels.
    let (predecessor, passed, admin) = match predecessor {
        Some(channel) => {
            let taken = tokio::task::spawn_blocking(move || {
                let taken = wsgate::server::handover::take(&channel);
                (channel, taken)
            })
            .await;
            match taken {
                Ok((channel, Ok(taken))) => {
                    tracing::info!(pid = taken.predecessor, "taking over from the running process");
                    let passed = wsgate::lifecycle::listen_fds::Activated::from_sockets(taken.listeners);
                    (Some(channel), passed, taken.admin)
                }
                Ok((_, Err(why))) => return fail(format!("cannot take over: {why}")),
                Err(error) => return fail(format!("cannot take over: {error}")),
            }
        }
        None => (None, wsgate::lifecycle::listen_fds::Activated::from_env(), None),
    };
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    log_nofile_limit(raised, config.global.max_connections);
    if let Some(address) = demo_backend {
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener,
            Err(error) => return fail(format!("demo backend: cannot bind {address}: {error}")),
        };
        // demo::serve says where it listens.
        tokio::spawn(demo::serve(listener));
    }
    let server = match Server::bind_with(config.clone(), passed, admin).await {
        Ok(server) => server,
        Err(error) => {
            if let Some(channel) = &predecessor {
                handover::refuse(channel, &error.to_string());
            }
            return fail(error);
        }
    };
    let taking_over = predecessor.is_some();
    if let Some(channel) = predecessor {
        if let Err(error) = server.take_tunnels_from(channel) {
            return fail(format!("cannot take over: {error}"));
        }
    }
    // Signals are handled from here on, so a SIGTERM right after readiness drains.
    let shutdown = shutdown_signal();
    reload_on_hangup(path, server.reloader());
    upgrade_on_user1(server.upgrader());
    // Bound, so connections are accepted from here on (queued until the
    // accept loops run): systemd may start what is ordered after us.
    // Taking over, this process speaks to systemd only once the old one
    // has made it the main process (`server::handover`).
    let _watchdog = match taking_over {
        false => {
            notify::ready();
            notify::spawn_watchdog()
        }
        true => None,
    };
    if demo_backend.is_some() {
        // After the lines logged so far, not before them.
        wsgate::telemetry::log_writer::flush();
        for listener in &config.listeners {
            if let Some(address) = server.local_addr(&listener.name) {
                let scheme = if listener.tls.is_some() { "https" } else { "http" };
                eprintln!("demo: open {scheme}://localhost:{}/ in a browser", address.port());
            }
        }
    }
    server
        .run(async move {
            let why = shutdown.await;
            wsgate::lifecycle::shutdown::stop_at_once_on_second_signal();
            notify::stopping();
            why
        })
        .await;
    ExitCode::SUCCESS
}

/// Says the open-file limit the proxy runs under and the tunnels it has
/// room for, and warns when `max_connections` is beyond them.
fn log_nofile_limit(raised: Option<std::io::Result<descriptors::Raised>>, max_connections: usize) {
    let limit = match raised {
        Some(Ok(raised)) => {
            let (limit, hard) = (raised.limit.soft, raised.limit.hard);
            let tunnels = descriptors::tunnels_allowed(limit);
            if raised.before < limit {
                tracing::info!(
                    from = raised.before,
                    limit,
                    hard,
                    tunnels,
                    "open-file limit raised from {} to {limit}: room for {tunnels} tunnels",
                    raised.before
                );
            } else {
                tracing::info!(
                    limit,
                    hard,
                    tunnels,
                    "open-file limit {limit}: room for {tunnels} tunnels"
                );
            }
            limit
        }
        Some(Err(error)) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            match descriptors::NofileLimit::current() {
                Ok(limit) => limit.soft,
                Err(_) => return,
            }
        }
        None => return,
    };
    if let Some(warning) = descriptors::max_connections_warning(max_connections, limit) {
        tracing::warn!("{warning}");
    }
}

/// Reloads the configuration file on every SIGHUP (`systemctl reload`),
/// telling systemd around it. A file that does not load keeps the running
/// configuration; the run loop logs every problem.
fn reload_on_hangup(path: &Path, reloader: Reloader) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(%error, "cannot handle SIGHUP: reload by signal is off");
            return;
        }
    };
    let path = path.to_owned();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
            notify::reloading();
            let _ = reloader.reload_file(&path).await;
            notify::ready();
        }
    });
}

/// Upgrades the binary on every SIGUSR1 (`systemctl kill -s USR1 wsgate`):
/// the binary now at the path this one started from takes over
/// ([`handover`]). A failed upgrade is logged and this process serves on.
fn upgrade_on_user1(upgrader: tokio::sync::mpsc::Sender<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut user1 = match signal(SignalKind::user_defined1()) {
        Ok(user1) => user1,
        Err(error) => {
            tracing::warn!(%error, "cannot handle SIGUSR1: upgrade by signal is off");
            return;
        }
    };
    tokio::spawn(async move {
        while user1.recv().await.is_some() {
            if upgrader.try_send(()).is_err() {
                tracing::warn!("SIGUSR1: an upgrade is already under way");
            }
        }
    });
}

/// Completes on SIGINT or SIGTERM (shut down: clients are told 1001 "going
/// away") or SIGUSR2 (a planned restart: 1012 "service restart", so clients
/// reconnect knowing the service is coming back).
///
/// The handlers are installed when this is called, not when the future is
/// first polled: called before telling systemd we are ready, a SIGTERM sent
/// right after readiness drains instead of killing the process.
fn shutdown_signal() -> impl Future<Output = DrainClose> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::user_defined2()),
    );
    async move {
        let (Ok(mut interrupt), Ok(mut terminate), Ok(mut restart)) = signals else {
            let _ = tokio::signal::ctrl_c().await;
            return DrainClose::SHUTDOWN;
        };
        tokio::select! {
            _ = interrupt.recv() => DrainClose::SHUTDOWN,
            _ = terminate.recv() => DrainClose::SHUTDOWN,
            _ = restart.recv() => DrainClose::RESTART,
        }
    }
}

/// How log lines reach standard error.
enum Writer {
    /// Each line written by whoever logs it: the one-shot tools, whose
    /// lines interleave with what they print themselves.
    Direct,
    /// Through the log writer's thread: the proxy, whose workers must not
    /// wait on standard error (`telemetry::log_writer`).
    Buffered,
}

/// Logs to standard error in `format`, filtered by `WSGATE_LOG` when it is
/// set (and valid), else by `filter`.
fn init_logging(format: LogFormat, filter: &str, writer: Writer) {
    match writer {
        Writer::Direct => install_logging(format, filter, std::io::stderr),
        Writer::Buffered => install_logging(format, filter, wsgate::telemetry::log_writer::start()),
    }
}

fn install_logging<W>(format: LogFormat, filter: &str, writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_env("WSGATE_LOG").unwrap_or_else(|_| EnvFilter::new(filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_timer(wsgate::telemetry::line_format::LineTime);
    match format {
        LogFormat::Text if std::io::stderr().is_terminal() => logs.with_ansi(true).init(),
        LogFormat::Text => logs
            .with_ansi(false)
            .fmt_fields(wsgate::telemetry::line_format::PlainFields)
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    wsgate::telemetry::log_writer::flush();
    eprintln!("wsgate: {error}");
    ExitCode::FAILURE
}

/// mimalloc: a sixth fewer instructions per handshake than glibc's
/// allocator, and less resident per idle tunnel once tuned
/// ([`wsgate::lifecycle::memory`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run before `main`, ahead of the first allocation: mimalloc reads each
/// option once, when it first needs it.
#[used]
#[link_section = ".init_array"]
static TUNE_ALLOCATOR: extern "C" fn() = wsgate::lifecycle::memory::tune_allocator;
