//! The one registry of what a run reads, built from the command line itself: every path
//! argument of the subcommand except `--out` is an input (a folder, such as a checkpoint, with
//! everything in it), and every output is checked against the registry before any work and
//! again when it is written. A path option added to any subcommand is protected without a
//! list to keep in step, which is how `bench --model-ids F --out F` once replaced its input.

use std::path::PathBuf;

use clap::{ArgMatches, Command};
use prunebench_models::output::Inputs;

/// The argument that names an output; every other path argument is read.
const OUTPUT_ID: &str = "out";

/// The inputs named on the command line that `matches` (of `cmd`) holds.
pub fn registry(cmd: &Command, matches: &ArgMatches) -> Inputs {
    let mut inputs = Inputs::new();
    collect(cmd, matches, &mut inputs);
    inputs
}

fn collect(cmd: &Command, matches: &ArgMatches, inputs: &mut Inputs) {
    for id in matches.ids() {
        let id = id.as_str();
        if id == OUTPUT_ID {
            continue;
        }
        // Arguments of other types (numbers, names) answer with a downcast error: not paths.
        let Ok(Some(paths)) = matches.try_get_many::<PathBuf>(id) else {
            continue;
        };
        let arg = cmd.get_arguments().find(|a| a.get_id() == id);
        let flag = match arg.and_then(|a| a.get_long()) {
            Some(long) => format!("--{long}"),
            None => id.replace('_', " "),
        };
        for p in paths {
            if p.is_dir() {
                inputs.folder(p, &format!("the {flag} folder {}", p.display()));
            } else {
                inputs.file(p, &format!("the {flag} file {}", p.display()));
            }
        }
    }
    if let Some((name, sub)) = matches.subcommand() {
        if let Some(sub_cmd) = cmd.find_subcommand(name) {
            collect(sub_cmd, sub, inputs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    /// Every path argument of every subcommand is either `--out` or registered: a subcommand's
    /// path option that is neither would need this registry to know about it.
    #[test]
    fn every_path_option_is_an_input_or_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("input.bin");
        std::fs::write(&file, b"x").unwrap();
        let cmd = super::super::Cli::command();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                let mut argv = vec!["prunebench".to_string(), sub.get_name().to_string()];
                argv.push(format!("--{long}"));
                argv.push(file.display().to_string());
                // The subcommand's other required arguments are not given.
                let m = cmd
                    .clone()
                    .ignore_errors(true)
                    .try_get_matches_from(&argv)
                    .unwrap();
                let Some((_, sm)) = m.subcommand() else {
                    panic!("{} did not parse", sub.get_name())
                };
                let is_path = matches!(
                    sm.try_get_many::<PathBuf>(arg.get_id().as_str()),
                    Ok(Some(_))
                );
                if !is_path || long == OUTPUT_ID {
                    continue;
                }
                let inputs = registry(&cmd, &m);
                let err = prunebench_models::output::check_file(Path::new(&file), &inputs)
                    .expect_err(&format!("{} --{long} is not registered", sub.get_name()));
                assert!(err.to_string().contains(&format!("--{long}")), "{err}");
            }
        }
    }
}
