//! prunebench: prune LLaMA layers with magnitude, Wanda, GBLM-Pruner and SparseGPT on any GPU,
//! verify every kernel against the f64 CPU reference, benchmark them, and report.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            // One clear line (with its causes), never a backtrace.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}
