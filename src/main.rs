//! The `manifold` command line: parse arguments, call into the library, set the exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use manifold::config::{Config, LogFormat};
use manifold::server::Server;

// glibc malloc showed up as ~18% of CPU under fan-out load (many small JSON values
// and headers per request); mimalloc's thread-local free lists cut that sharply.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
}

/// The example config, for `manifold demo` run outside the repository.
const BUNDLED_ROUTES: &str = include_str!("../routes.toml");

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check { file } => check(&file.unwrap_or(cli.config)),
        Command::Routes { file } => routes(&file.unwrap_or(cli.config)),
        Command::Serve => run(load(&cli.config), false),
        Command::Demo => {
            let config = if cli.config.exists() {
                load(&cli.config)
            } else {
                manifold::config::parse("routes.toml (bundled)", BUNDLED_ROUTES)
                    .map_err(|d| d.render())
            };
            run(config, true)
        }
    }
}

fn load(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|d| d.render())
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok ({} routes, {} upstreams)",
                path.display(),
                c.routes.len(),
                c.upstreams.len()
            );
            for key in manifold::config::not_yet_enforced(&c) {
                eprintln!("warning: {key} is valid but not enforced yet in this version");
            }
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

fn run(config: Result<Config, String>, demo: bool) -> ExitCode {
    let config = match config {
        Ok(c) => c,
        Err(text) => {
            eprint!("{text}");
            return ExitCode::FAILURE;
        }
    };
    let workers = config
        .server
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let loops = match manifold::server::spawn_workers(workers) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot start worker threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    // This loop runs signals, the admin listener and the demo services.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let format = config.telemetry.log_format;
        let (sink, _guard) = manifold::telemetry::init(format);
        for key in manifold::config::not_yet_enforced(&config) {
            tracing::warn!(key = %key, "valid but not enforced yet in this version");
        }
        if demo {
            match manifold::demo::start(&config).await {
                Ok(addrs) => tracing::info!(?addrs, "demo upstreams are serving"),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let server = match Server::start_on(config, sink, &loops).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        if demo {
            let mut text = String::from("\nmanifold demo is up. Try:\n\n");
            for line in manifold::demo::curl_lines(server.addr) {
                text.push_str("  ");
                text.push_str(&line);
                text.push('\n');
            }
            if let Some(a) = server.admin_addr {
                text.push_str(&format!("  curl -s http://{a}/routes\n"));
            }
            eprintln!("{text}");
        }
        if format == LogFormat::Pretty {
            tracing::info!("press Ctrl-C to stop");
        }
        wait_for_signal().await;
        tracing::info!("draining: finishing in-flight requests");
        server.shutdown();
        if server.wait().await {
            tracing::info!("drained; bye");
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
