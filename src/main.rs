//! The `manifold` command line: parse arguments, call into the library, set the exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use manifold::config::{Config, LogFormat};
use manifold::listener::Server;

// glibc malloc showed up as ~18% of CPU under fan-out load (many small JSON values
// and headers per request); mimalloc's thread-local free lists cut that sharply.
#[global_allocator]
static GLOBAL: manifold::base::alloc::Allocator = manifold::base::alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "manifold",
    version,
    about = "Config-driven API gateway and BFF aggregator"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file for `serve` (the default command).
    #[arg(
        long,
        global = true,
        env = "MANIFOLD_CONFIG",
        default_value = "routes.toml"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Run the gateway on routes.toml with built-in demo upstreams.
    Demo,
    /// Validate a config; exit 1 listing every error.
    Check { file: Option<PathBuf> },
    /// Print the compiled route table.
    Routes { file: Option<PathBuf> },
    /// Print an OpenAPI 3.1 document of the public routes.
    Openapi {
        file: Option<PathBuf>,
        /// The API's title (default: telemetry.service_name).
        #[arg(long)]
        title: Option<String>,
        /// The API's version (default: the config file's fingerprint).
        #[arg(long)]
        api_version: Option<String>,
    },
    /// Print the JSON Schema of routes.toml (for editor completion).
    Schema,
}

/// The example config and the schemas and `.proto` it names, for `manifold demo` run
/// outside the repository (written to a directory of their own, so their paths hold).
const BUNDLED: [(&str, &str); 8] = [
    ("routes.toml", include_str!("../routes.toml")),
    (
        "schemas/common.json",
        include_str!("../schemas/common.json"),
    ),
    ("schemas/user.json", include_str!("../schemas/user.json")),
    ("schemas/order.json", include_str!("../schemas/order.json")),
    (
        "schemas/orders.json",
        include_str!("../schemas/orders.json"),
    ),
    (
        "schemas/new-order.json",
        include_str!("../schemas/new-order.json"),
    ),
    (
        "schemas/recommendations.json",
        include_str!("../schemas/recommendations.json"),
    ),
    (
        "protos/profiles.proto",
        include_str!("../protos/profiles.proto"),
    ),
];

/// The bundled example written out under the temporary directory: its routes.toml.
fn bundled_config() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("manifold-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("schemas"))?;
    std::fs::create_dir_all(dir.join("protos"))?;
    for (name, text) in BUNDLED {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(dir.join("routes.toml"))
}

fn main() -> ExitCode {
    transparent_huge_pages();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check { file } => check(&file.unwrap_or(cli.config)),
        Command::Routes { file } => routes(&file.unwrap_or(cli.config)),
        Command::Openapi {
            file,
            title,
            api_version,
        } => openapi(
            &file.unwrap_or(cli.config),
            &manifold::config::openapi::Info {
                title,
                version: api_version,
            },
        ),
        Command::Schema => {
            let schema = manifold::config::schema::schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Serve => run(load(&cli.config), false, Some(cli.config.clone())),
        Command::Demo => {
            let config = if cli.config.exists() {
                load(&cli.config)
            } else {
                match bundled_config() {
                    Ok(path) => load(&path),
                    Err(e) => Err(StartError::Config(format!(
                        "cannot write the bundled example config: {e}"
                    ))),
                }
            };
            run(
                config,
                true,
                cli.config.exists().then(|| cli.config.clone()),
            )
        }
    }
}

/// mimalloc backs its heap with 2 MiB transparent huge pages where the kernel allows
/// them: measured, 4 µs less CPU per fan-out request and 1 µs per pass-through one,
/// but 23 MB of RSS idle instead of 14 (each thread's heap starts on a huge page). Off
/// by default, so an idle gateway stays small; `MIMALLOC_ALLOW_THP=1` turns them on.
fn transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some_and(|v| v == "1") {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only how the kernel
    // backs this process's future page faults.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Why the gateway did not start: printed once, on stderr, and the exit code is 1.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// Every problem in the config file, rendered with file:line:col.
    #[error("{0}")]
    Config(String),
    #[error("cannot start worker threads: {0}")]
    Workers(#[source] std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start the demo upstreams: {0}")]
    Demo(String),
    #[error(transparent)]
    Server(#[from] manifold::listener::StartError),
}

fn load(path: &Path) -> Result<Config, StartError> {
    Config::load(path).map_err(|d| StartError::Config(d.render()))
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            let plural = |n: usize, one: &str, many: &str| {
                format!("{n} {}", if n == 1 { one } else { many })
            };
            println!(
                "{}: ok ({}, {}, fingerprint {})",
                path.display(),
                plural(c.routes.len(), "route", "routes"),
                plural(c.upstreams.len(), "upstream", "upstreams"),
                c.version()
            );
            ExitCode::SUCCESS
        }
        Err(d) => {
            eprint!("{}", d.render());
            ExitCode::FAILURE
        }
    }
}

fn routes(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(d) => {
            eprint!("{}", d.render());
            return ExitCode::FAILURE;
        }
    };
    print!("{}", manifold::admin::route_table(&config));
    ExitCode::SUCCESS
}

fn openapi(path: &Path, info: &manifold::config::openapi::Info) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            let doc = manifold::config::openapi::document_with(&c, info);
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(d) => {
            eprint!("{}", d.render());
            ExitCode::FAILURE
        }
    }
}

/// Runs the gateway until SIGTERM/SIGINT; `watched` is reloaded on SIGHUP and on change.
/// The one exit path for a gateway that could not start.
fn run(config: Result<Config, StartError>, demo: bool, watched: Option<PathBuf>) -> ExitCode {
    match serve(config, demo, watched) {
        Ok(code) => code,
        Err(e) => {
            let text = e.to_string();
            eprint!("{text}");
            if !text.ends_with('\n') {
                eprintln!();
            }
            ExitCode::FAILURE
        }
    }
}

fn serve(
    config: Result<Config, StartError>,
    demo: bool,
    watched: Option<PathBuf>,
) -> Result<ExitCode, StartError> {
    let config = config?;
    let workers = config
        .server
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let loops = manifold::base::worker::spawn(workers).map_err(StartError::Workers)?;
    // This loop runs signals, the admin listener and the demo services.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    runtime.block_on(async move {
        let format = config.telemetry.log_format;
        let (sink, _guard) = manifold::telemetry::init(format);
        let shutdown = shutdown_signal();
        let mut reloads = reload_triggers(watched.as_deref());
        // Every client connection and every upstream connection is a descriptor; the
        // soft limit is often 1024 while the hard one allows far more.
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => tracing::info!(limit = n, "descriptor limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
        }
        if demo {
            let addrs = manifold::demo::start(&config)
                .await
                .map_err(StartError::Demo)?;
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            tracing::info!(addrs = %addrs.join(", "), "demo upstreams are serving");
        }
        let server = Server::start_on(config, sink, &loops)
            .await
            .inspect_err(|e| tracing::error!(error = %e, "cannot start"))?;
        if demo {
            let console = server.live.gateway.load().console.is_some();
            let text = manifold::demo::banner(server.addr, server.admin_addr, console);
            eprintln!("{text}");
        }
        if format == LogFormat::Pretty {
            tracing::info!("press Ctrl-C to stop");
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(why) = reloads.events.recv() => {
                    if let Some(path) = &watched {
                        // Editors and templating tools write in bursts (truncate, then
                        // write, then rename): read the file once it has settled.
                        settled(path, &mut reloads.events).await;
                        tracing::info!(trigger = why, "reloading the config");
                        let _ = server.reload_file(path).await;
                    }
                }
            }
        }
        drop(reloads);
        tracing::info!("draining: finishing in-flight requests");
        server.shutdown();
        if server.wait().await {
            tracing::info!("drained; bye");
            Ok(ExitCode::SUCCESS)
        } else {
            Ok(ExitCode::FAILURE)
        }
    })
}

/// A file is settled once its size and modification time stay the same, with no
/// change event, for this long.
const SETTLE_QUIET: Duration = Duration::from_millis(300);
/// A file that never settles is read after this long anyway (the reload then refuses
/// it if it is incomplete, and the old config keeps serving).
const SETTLE_MAX: Duration = Duration::from_secs(5);

/// Waits until the config file has stopped changing: a writer that truncates it and
/// writes the new text 200 ms later must not have its empty file loaded.
async fn settled(path: &Path, events: &mut tokio::sync::mpsc::Receiver<&'static str>) {
    let stat = || {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let give_up = tokio::time::Instant::now() + SETTLE_MAX;
    let mut last = stat();
    loop {
        tokio::time::sleep(SETTLE_QUIET).await;
        let mut changed = false;
        while events.try_recv().is_ok() {
            changed = true;
        }
        let now = stat();
        if (!changed && now == last) || tokio::time::Instant::now() >= give_up {
            return;
        }
        last = now;
    }
}

/// What starts a reload: SIGHUP, or a change to the config file. The watcher lives as
/// long as this value.
struct Reloads {
    events: tokio::sync::mpsc::Receiver<&'static str>,
    _watcher: Option<manifold::base::files::FileWatch>,
}

fn reload_triggers(path: Option<&Path>) -> Reloads {
    let (tx, events) = tokio::sync::mpsc::channel(16);
    let hup = tx.clone();
    // Registered now, not when the task first runs: SIGHUP's default is to terminate.
    let sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    tokio::spawn(async move {
        let Ok(mut sighup) = sighup else {
            return;
        };
        while sighup.recv().await.is_some() {
            let _ = hup.try_send("SIGHUP");
        }
    });
    // A watch that cannot be set up is logged; SIGHUP still reloads.
    let watcher = path.and_then(|p| {
        manifold::base::files::FileWatch::start(&[p.to_path_buf()], "config file", move || {
            let _ = tx.try_send("file changed");
        })
    });
    Reloads {
        events,
        _watcher: watcher,
    }
}

/// SIGTERM or SIGINT (Ctrl-C), listened for from the moment this is called: a
/// signal that arrives while the listeners start must drain, not kill, the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
