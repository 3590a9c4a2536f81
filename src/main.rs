//! The `middleway` binary: parse the command line, start telemetry, dispatch.

use std::process::ExitCode;
use std::str::FromStr;

use clap::{Parser, Subcommand};
use middleway::config::{self, ConfigError, Settings};
use middleway::startup::{Application, StartupError};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

/// jemalloc instead of glibc's malloc: it leaves untouched pages of large
/// buffers unbacked (actix gives each connection two 8 KB buffers, mostly
/// unused) and fragments less across threads. 10,000 waiting lock requests
/// measured 217 MiB against 283 MiB (bench/README.md).
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
    let app = Application::build(settings).await?;
    tracing::info!(public = %app.public_addr(), admin = %app.admin_addr(), "serving");
    app.run_until_stopped()
        .await
        .map_err(|e| Failure::Other(e.to_string()))
}

/// `migrate` and `seed` need only the database.
async fn database() -> Result<sqlx::MySqlPool, Failure> {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            Failure::Config(ConfigError {
                variable: "DATABASE_URL",
                message: "is required".into(),
            })
        })?;
    let options = MySqlConnectOptions::from_str(url.trim()).map_err(|_| {
        Failure::Config(ConfigError {
            variable: "DATABASE_URL",
            message: "is not a valid mysql:// URL".into(),
        })
    })?;
    MySqlPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|e| Failure::Other(format!("cannot connect to DATABASE_URL: {}", describe(&e))))
}

/// A sqlx error without the URL or credentials it may carry.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
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
