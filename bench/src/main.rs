//! mwbench: one load generator for every strategy (HDR histograms, the same
//! driver), so middleway is compared with the alternatives on equal terms.
//! `bench/run.sh` drives it; see bench/README.md.

mod http;
mod load;
mod lock_costs;
mod read_path;
mod report;
mod scenarios;
mod strategies;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mwbench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub struct Target {
    /// middleway's public address.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub service: String,
    /// middleway's admin address (metrics).
    #[arg(long, default_value = "127.0.0.1:19090")]
    pub admin: String,
    /// A bearer key middleway accepts.
    #[arg(long)]
    pub key: String,
}

#[derive(Subcommand)]
enum Command {
    /// Primary-key reads: direct MySQL strategies against middleway.
    Mysql {
        #[command(flatten)]
        target: Target,
        /// The seeded database, for the direct strategies.
        #[arg(long)]
        mysql_url: String,
        /// A root connection for sampling Threads_connected.
        #[arg(long)]
        mysql_root_url: String,
        /// Rows in the table (ids 1..=rows).
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Comma-separated strategies (connect-per-request, connection-per-instance,
        /// middleway-new-conn, middleway-keep-alive, ceiling; and direct-persistent,
        /// middleway-batch-10, middleway-batch-100, whose cells count requests, not rows).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "connect-per-request,connection-per-instance,middleway-new-conn,middleway-keep-alive,ceiling"
        )]
        strategies: Vec<String>,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "10,50,100,150,170,250,500,1000"
        )]
        concurrency: Vec<usize>,
        /// Operations per cell.
        #[arg(long, default_value_t = 10_000)]
        requests: u64,
        /// Runs per cell; the best (highest throughput) is kept.
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// The ceiling's pool size (the service's DB_POOL_MAX).
        #[arg(long, default_value_t = 32)]
        pool: u32,
        /// Append JSON lines here.
        #[arg(long)]
        out: String,
    },
    /// acquire+release cycles: middleway, the same scripts without HTTP, and naive BLPOP/LPUSH.
    Locks {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        redis_url: String,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "middleway,direct-scripts,naive-blpop"
        )]
        strategies: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "10,50,100,250,500,1000")]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 10_000)]
        requests: u64,
        #[arg(long, default_value_t = 1000)]
        names: usize,
        #[arg(long, default_value_t = 2)]
        runs: usize,
        #[arg(long)]
        out: String,
    },
    /// Release-to-next-grant latency with many waiters on one name.
    Handoff {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 100)]
        waiters: usize,
        #[arg(long, default_value_t = 2000)]
        handoffs: u64,
    },
    /// Many concurrent waiters: Redis connections and the service's memory.
    Waiters {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        redis_url: String,
        /// The service's process id (for RSS).
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 10_000)]
        waiters: usize,
        #[arg(long, default_value_t = 100)]
        names: usize,
    },
    /// The service's CPU time per GET /transcriptions/{id} (from /proc/<pid>/stat).
    ReadCpu {
        #[command(flatten)]
        target: Target,
        /// The service's process id.
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
    },
    /// GETs at fixed offered rates; latency from each request's intended start.
    OpenLoop {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Offered rates, requests per second, in order.
        #[arg(long, value_delimiter = ',', default_value = "5000")]
        rates: Vec<u64>,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Keep-alive connections the requests are spread over.
        #[arg(long, default_value_t = 256)]
        connections: usize,
        /// Report the first rate whose p99 passes this.
        #[arg(long, default_value_t = 10.0)]
        p99_limit_ms: f64,
    },
    /// GETs from many callers spread over several replicas (DB_FLEET_MAX on or off).
    Fleet {
        /// The replicas' public addresses, comma-separated.
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
        #[arg(long)]
        key: String,
        #[arg(long)]
        mysql_root_url: String,
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 1000)]
        concurrency: usize,
        #[arg(long, default_value_t = 50_000)]
        requests: u64,
        /// What the report calls this row.
        #[arg(long)]
        label: String,
    },
    /// Idle waiters, one per lock: Redis commands per second and connections.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        redis_url: String,
        #[arg(long, default_value_t = 2000)]
        waiters: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Clients on two replicas share one mutex: grants per client on each.
    Fairness {
        #[command(flatten)]
        target: Target,
        /// The second replica's public address.
        #[arg(long)]
        second_service: String,
        #[arg(long, default_value_t = 40)]
        clients_first: usize,
        #[arg(long, default_value_t = 4)]
        clients_second: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Acquire/release churn on a few mutexes: Redis connections opened.
    Churn {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        redis_url: String,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value_t = 50)]
        names: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Script cost on a 1024-permit semaphore with and without a hand-off in progress.
    HandoffCost {
        #[command(flatten)]
        target: Target,
        /// The second replica's public address (it gets stopped and resumed).
        #[arg(long)]
        second_service: String,
        /// The second replica's process id.
        #[arg(long)]
        second_pid: i32,
        #[arg(long)]
        redis_url: String,
    },
    /// Writes the Markdown report and the charts from JSON lines.
    Report {
        #[arg(long)]
        input: String,
        /// Output path without extension: writes <stem>.md, <stem>-mysql.png, <stem>-locks.png.
        #[arg(long)]
        stem: String,
        /// Extra Markdown (machine description, commands) to put at the top.
        #[arg(long)]
        preamble: Option<String>,
        /// Extra Markdown lines (hand-off, waiters) to append.
        #[arg(long)]
        appendix: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Mysql {
            target,
            mysql_url,
            mysql_root_url,
            rows,
            strategies,
            concurrency,
            requests,
            runs,
            pool,
            out,
        } => {
            scenarios::mysql(
                &target,
                &mysql_url,
                &mysql_root_url,
                rows,
                &strategies,
                &concurrency,
                requests,
                runs,
                pool,
                &out,
            )
            .await
        }
        Command::Locks {
            target,
            redis_url,
            strategies,
            concurrency,
            requests,
            names,
            runs,
            out,
        } => {
            scenarios::locks(
                &target,
                &redis_url,
                &strategies,
                &concurrency,
                requests,
                names,
                runs,
                &out,
            )
            .await
        }
        Command::Handoff {
            target,
            waiters,
            handoffs,
        } => scenarios::handoff(&target, waiters, handoffs).await,
        Command::Waiters {
            target,
            redis_url,
            pid,
            waiters,
            names,
        } => scenarios::waiters(&target, &redis_url, pid, waiters, names).await,
        Command::ReadCpu {
            target,
            pid,
            rows,
            concurrency,
            requests,
        } => read_path::cpu_per_get(&target, pid, rows, concurrency, requests).await,
        Command::OpenLoop {
            target,
            rows,
            rates,
            seconds,
            connections,
            p99_limit_ms,
        } => read_path::open_loop(&target, rows, &rates, seconds, connections, p99_limit_ms).await,
        Command::Fleet {
            services,
            key,
            mysql_root_url,
            rows,
            concurrency,
            requests,
            label,
        } => {
            read_path::fleet(
                &services,
                &key,
                &mysql_root_url,
                rows,
                concurrency,
                requests,
                &label,
            )
            .await
        }
        Command::Idle {
            target,
            redis_url,
            waiters,
            seconds,
        } => lock_costs::idle(&target, &redis_url, waiters, seconds).await,
        Command::Fairness {
            target,
            second_service,
            clients_first,
            clients_second,
            seconds,
        } => {
            lock_costs::fairness(
                &target,
                &second_service,
                clients_first,
                clients_second,
                seconds,
            )
            .await
        }
        Command::Churn {
            target,
            redis_url,
            clients,
            names,
            seconds,
        } => lock_costs::churn(&target, &redis_url, clients, names, seconds).await,
        Command::HandoffCost {
            target,
            second_service,
            second_pid,
            redis_url,
        } => lock_costs::handoff_cost(&target, &second_service, second_pid, &redis_url).await,
        Command::Report {
            input,
            stem,
            preamble,
            appendix,
        } => report::write(&input, &stem, preamble.as_deref(), appendix.as_deref()),
    }
}
