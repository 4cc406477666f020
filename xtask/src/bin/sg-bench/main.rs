//! The benchmark runner behind `cargo xtask bench` (needs root): writes
//! BENCHMARKS.md and its SVG charts into the given directory.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
mod bench;
#[cfg(test)]
mod smoke;

use bench::{BenchConfig, report};

#[derive(Parser)]
#[command(
    name = "sg-bench",
    about = "Measure sg against its peers; writes BENCHMARKS.md"
)]
struct Args {
    /// Smaller run of the same sections (under 3 minutes)
    #[arg(long)]
    quick: bool,
    /// Directory for BENCHMARKS.md and the charts
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Run only these sections (repeatable): per-packet, traffic, prog-cost,
    /// control, scale, containers, hosts, pressure
    #[arg(long)]
    only: Vec<String>,
    /// The command to print as the one that produced the numbers
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !sg_user::sys::netns::is_root() {
        bail!("the benchmark loads eBPF programs and creates namespaces: run it as root");
    }
    let mut cfg = if args.quick {
        BenchConfig::quick()
    } else {
        BenchConfig::full()
    };
    cfg.only = args.only;
    let sgctl = bench::control::sibling_sgctl()?;
    let results = bench::run(&cfg, &sgctl, &mut |step| eprintln!("bench: {step}"))?;
    let charts = report::charts(&results, &args.out)?;
    let md = report::markdown(&results, &args.command, &charts);
    let path = args.out.join("BENCHMARKS.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    std::fs::write(
        args.out.join("bench-results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    eprintln!("bench: wrote {} ({:.0} s)", path.display(), results.seconds);
    Ok(())
}
