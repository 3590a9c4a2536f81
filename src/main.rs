//! The `middleway` binary: parse the command line, start telemetry, dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use middleway::config::{self, ConfigError, DatabaseSettings, Settings};
use middleway::pools::mysql::{describe, tool_pool};
use middleway::startup::{Application, StartupError};

/// jemalloc instead of glibc's malloc: it leaves untouched pages of large
/// buffers unbacked (actix gives each connection two 8 KB buffers, mostly
/// unused) and fragments less across threads (bench/README.md, "What moved
/// the lock numbers").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "middleway",
    version,
    about = "HTTP front for MySQL reads and Redis locks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (configured by the environment).
    Serve,
    /// Apply the migrations to DATABASE_URL and exit.
    Migrate,
    /// Insert N realistic transcriptions into DATABASE_URL.
    Seed {
        /// How many rows to insert.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
        rows: u64,
    },
}

/// A failure and the exit code it maps to (API.md: 2 configuration, 1 other).
enum Failure {
    Config(ConfigError),
    Other(String),
}

impl From<StartupError> for Failure {
    fn from(error: StartupError) -> Self {
        match error {
            StartupError::Config(e) => Failure::Config(e),
            StartupError::Io(e) => Failure::Other(e.to_string()),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    middleway::telemetry::init(config::log_format_from_env());
    let outcome = match cli.command {
        Command::Serve => serve().await,
        Command::Migrate => migrate().await,
        Command::Seed { rows } => seed(rows).await,
    };
    // Spans still queued for the collector go out before the process ends.
    middleway::telemetry::flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("middleway: configuration error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("middleway: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve() -> Result<(), Failure> {
    let settings = Settings::from_env().map_err(Failure::Config)?;
    raise_descriptor_limit();
    let app = Application::build(settings).await?;
    tracing::info!(public = %app.public_addr(), admin = %app.admin_addr(), "serving");
    app.run_until_stopped()
        .await
        .map_err(|e| Failure::Other(e.to_string()))
}

/// Every waiting request holds a connection, so the service needs as many
/// descriptors as it may have callers: the soft limit goes up to the hard
/// one (as Go's runtime and nginx's `worker_rlimit_nofile` do).
fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let before = limit.current;
        limit.current = limit.maximum;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::info!(?before, now = ?limit.current, "raised the descriptor limit"),
            Err(error) => tracing::warn!(%error, "could not raise the descriptor limit"),
        }
    }
}

/// `migrate` and `seed` need only the database.
async fn database() -> Result<sqlx::MySqlPool, Failure> {
    let settings = DatabaseSettings::from_env().map_err(Failure::Config)?;
    middleway::crypto::install_provider();
    tool_pool(&settings)
        .await
        .map_err(|e| Failure::Other(format!("cannot connect to DATABASE_URL: {}", describe(&e))))
}

async fn migrate() -> Result<(), Failure> {
    let pool = database().await?;
    middleway::MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| Failure::Other(format!("migration failed: {e}")))?;
    pool.close().await;
    tracing::info!("migrations applied");
    Ok(())
}

async fn seed(rows: u64) -> Result<(), Failure> {
    let pool = database().await?;
    let started = std::time::Instant::now();
    middleway::seed::seed(&pool, rows)
        .await
        .map_err(|e| Failure::Other(format!("seed failed: {}", describe(&e))))?;
    pool.close().await;
    tracing::info!(rows, seconds = started.elapsed().as_secs_f64(), "seeded");
    Ok(())
}
