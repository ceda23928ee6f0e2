//! `prunebench report`: Markdown and HTML (with SVG charts) from results files.

use std::process::ExitCode;

use anyhow::Result;

use prunebench_harness::report::Report;

use super::ReportArgs;

pub fn run(a: ReportArgs) -> Result<ExitCode> {
    let report = Report::load(&a.results)?;
    report.write(&a.out)?;
    println!(
        "report of {} run(s) written to {} (report.md, report.html)",
        report.runs.len(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
