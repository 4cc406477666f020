//! Developer tasks. The README names two: `cargo xtask demo` and
//! `cargo xtask test`; both run `setup` first when something is missing.
//! `cargo xtask image` builds the sidecar image (README "Sidecar");
//! `cargo xtask layers` checks sg-user's layering (README "Layout").

mod image;
mod layers;
mod setup;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Developer tasks for the sg workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install packages (podman too), nightly rust-src, bpf-linker, the musl target; check the kernel and podman (idempotent)
    Setup,
    /// Build, then run the demonstration in throwaway network namespaces (root)
    Demo,
    /// Measure against iptables/nftables/xdp-filter; writes BENCHMARKS.md (root)
    Bench {
        /// Smaller run of the same sections (under 3 minutes)
        #[arg(long)]
        quick: bool,
    },
    /// Build the sidecar image (static sgctl, FROM scratch) with podman (root)
    Image {
        /// Image tag
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
    },
    /// Check sg-user's layers: one-way imports, no cycles, no over-long functions
    Layers,
    /// Everything CI runs: fmt, clippy -D warnings, layers, the sidecar image (root), unit, kernel, netns and podman tests
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter)
        #[arg(trailing_var_arg = true)]
        cargo_test_args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Demo => {
            ensure_setup()?;
            cargo(&["build", "--package", "sg-user", "--bin", "sgctl"])?;
            let sgctl = workspace_root().join("target/debug/sgctl");
            run(Command::new(&sgctl).arg("demo"), "sgctl demo")
        }
        Task::Bench { quick } => {
            ensure_setup()?;
            // Release build: the control-plane figures time `sgctl apply` itself.
            cargo(&[
                "build",
                "--release",
                "--package",
                "sg-user",
                "--bin",
                "sgctl",
                "--bin",
                "sg-cni",
            ])?;
            cargo(&[
                "build",
                "--release",
                "--package",
                "xtask",
                "--features",
                "bench",
                "--bin",
                "sg-bench",
            ])?;
            let bench = workspace_root().join("target/release/sg-bench");
            let command = if quick {
                "cargo xtask bench --quick"
            } else {
                "cargo xtask bench"
            };
            let mut cmd = Command::new(&bench);
            cmd.args([
                "--out",
                workspace_root().to_str().expect("utf-8 path"),
                "--command",
                command,
            ]);
            if quick {
                cmd.arg("--quick");
            }
            run(&mut cmd, "sg-bench")
        }
        Task::Image { tag } => {
            ensure_setup()?;
            image::build(&tag)
        }
        Task::Layers => layers::check(&workspace_root()),
        Task::Test { cargo_test_args } => {
            ensure_setup()?;
            cargo(&["fmt", "--all", "--", "--check"])
                .context("formatting differs: run `cargo fmt --all`")?;
            layers::check(&workspace_root())?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--features",
                "xtask/bench",
                "--",
                "-D",
                "warnings",
            ])?;
            // The podman sidecar test runs this image: build it from this tree.
            if setup::is_root() {
                image::build(image::DEFAULT_TAG)
                    .context("the podman sidecar test needs the sidecar image")?;
            }
            // `xtask/bench`: the benchmark's smoke test runs too.
            let mut args = vec!["test", "--workspace", "--features", "xtask/bench"];
            args.extend(cargo_test_args.iter().map(String::as_str));
            cargo_test(&args)
        }
    }
}

fn ensure_setup() -> Result<()> {
    if !setup::toolchain_ready() {
        eprintln!("xtask: toolchain incomplete, running `cargo xtask setup` first");
        setup::run()?;
    }
    Ok(())
}

pub(crate) fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where cargo puts build output (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub(crate) fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        Command::new(cargo).args(args).current_dir(workspace_root()),
        &format!("cargo {}", args.join(" ")),
    )
}

/// Runs `cargo test`, echoing its output, and ends with one summary line over
/// every test binary ("N passed, N failed, N ignored").
fn cargo_test(args: &[&str]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("could not start `cargo test`")?;
    let stdout = child.stdout.take().expect("piped");
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next()) {
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("`cargo test` failed ({status})");
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}
