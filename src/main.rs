//! prunebench: prune LLaMA layers with magnitude, Wanda, GBLM-Pruner and SparseGPT on any GPU,
//! verify every kernel against the f64 CPU reference, benchmark them, and report.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Before anything else, and before any thread: it sets an environment variable.
    prunebench_kernels::host::quiet_display_probes();
    let (args, inputs) = cli::parse();
    remove_temporaries_on_signals();
    match cli::run(args, &inputs) {
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

#[cfg(not(unix))]
fn remove_temporaries_on_signals() {}

/// A signal would end the process with a write's temporary still on disk: on SIGINT, SIGTERM
/// or SIGHUP every live temporary is removed first, then the process exits as a shell reports
/// a signal (128 + its number).
#[cfg(unix)]
fn remove_temporaries_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    eprintln!("interrupted (signal {sig}); unfinished outputs removed");
                    prunebench_models::output::remove_temporaries_and_exit(128 + sig);
                }
            });
        }
        Err(e) => eprintln!(
            "warning: cannot handle signals ({e}); an interrupted write may leave a temporary file"
        ),
    }
}
