//! `corelog-bench`: how corelog proves it is fast, on the machine at hand.
//!
//! Every result is a ratio against something measured in the same run (here: plain aligned
//! O_DIRECT writes of the same bytes), never an absolute number judged in a test.

mod compare;
mod driver;
mod kafka;
mod nats;
mod peers;
mod plot;
mod redis_streams;
mod run;
mod sasl;
mod storage;
mod tls;
mod uring;

use clap::{Parser, Subcommand};

/// See the workspace Cargo.toml: the client's own allocations must not cost more than the
/// broker it measures.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "corelog-bench", version, about = "corelog benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Storage engine append+sync vs raw O_DIRECT writes of the same bytes.
    Storage(storage::Args),
    /// Run a workload against a Kafka-compatible broker (or a fresh corelog with --spawn).
    Run(run::Args),
    /// corelog and peers (tansu, NATS, Redis, raw disk) alternately on one workload, with ratios.
    Compare(compare::Args),
    /// Latency-percentile and throughput charts (SVG and PNG) from result files.
    Plot(plot::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Storage(args) => storage::run(args),
        Command::Run(args) => run::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Plot(args) => plot::run(args),
    };
    if let Err(e) = result {
        eprintln!("corelog-bench: {e}");
        std::process::exit(1);
    }
}
