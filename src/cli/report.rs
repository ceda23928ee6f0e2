//! `prunebench report`: Markdown and HTML (with SVG charts) from results files.

use std::process::ExitCode;

use anyhow::Result;

use prunebench_harness::report::Report;
use prunebench_models::output::Inputs;

use super::ReportArgs;

pub fn run(a: ReportArgs, inputs: &Inputs) -> Result<ExitCode> {
    super::check_out_folder(&a.out, inputs)?;
    let report = Report::load(&a.results)?;
    report.write(&a.out, inputs).map_err(super::out_error)?;
    println!(
        "report of {} run(s) written to {} (report.md, report.html)",
        report.runs.len(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
