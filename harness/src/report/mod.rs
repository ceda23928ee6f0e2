//! Reports from results files: a Markdown page and a self-contained HTML page with SVG charts,
//! putting every device and backend side by side per op, with speedups against the CPU
//! reference and the PyTorch baseline where those ran on the same device, and what pruning buys:
//! each compressed weight format's product against dense on the same device.

mod charts;
pub mod cuda;
mod markdown;
mod payoff;
mod summary;

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{HarnessError, Result};
use prunebench_models::output::{Inputs, PartialDir};

use crate::results::{Record, ResultsFile, Status};

/// One results file as a column of the report.
pub struct Run {
    pub label: String,
    pub file: ResultsFile,
}

impl Run {
    pub fn record(&self, key: &str) -> Option<&Record> {
        self.file.records.iter().find(|r| r.key == key)
    }
}

pub struct Report {
    pub runs: Vec<Run>,
    /// Op (or layer) name -> keys in a stable order.
    pub ops: BTreeMap<String, Vec<String>>,
    /// `prunebench compile` files given among the results: the "CUDA resources" section.
    pub cuda: Vec<cuda::CudaCompile>,
}

impl Report {
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Report> {
        if paths.is_empty() {
            return Err(HarnessError::Config("no results files given".into()));
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut cuda = Vec::new();
        for p in paths {
            if let Some(c) = cuda::read(p.as_ref())? {
                cuda.push(c);
                continue;
            }
            let file = ResultsFile::read(p.as_ref())?;
            let mut label = format!("{} · {}", file.device.device, file.device.backend);
            if file.records.is_empty() && !file.quality.is_empty() {
                label += " · quality";
            }
            if runs.iter().any(|r| r.label == label) {
                label = format!("{label} ({})", file.date);
            }
            runs.push(Run { label, file });
        }
        let mut ops: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for run in &runs {
            for r in &run.file.records {
                let keys = ops.entry(r.op.clone()).or_default();
                if !keys.contains(&r.key) {
                    keys.push(r.key.clone());
                }
            }
        }
        Ok(Report { runs, ops, cuda })
    }

    /// The CPU reference's time for `key` (any run with backend cpu).
    fn cpu_time(&self, key: &str) -> Option<f64> {
        self.runs
            .iter()
            .filter(|r| r.file.device.backend == "cpu")
            .filter_map(|r| r.record(key))
            .filter(|r| trusted(r))
            .find_map(|r| r.median_s)
    }

    /// The PyTorch baseline's time for `key` on the same device as `run`.
    fn baseline_time(&self, run: &Run, key: &str) -> Option<f64> {
        self.runs
            .iter()
            .filter(|r| r.file.device.backend == "pytorch" && same_device(r, run))
            .filter_map(|r| r.record(key))
            .find_map(|r| r.median_s)
    }

    /// Writes `report.md` (with its charts as SVG files beside it) and `report.html` into
    /// `dir`, creating it if needed. Everything is written into a temporary folder beside `dir`
    /// first and moved in only once complete, so a failure (a full disk) leaves no part of a
    /// report; no file may replace one of `inputs`.
    pub fn write(&self, dir: &Path, inputs: &Inputs) -> Result<()> {
        let partial = PartialDir::create(dir)?;
        // Inside the temporary folder, which is removed whole on failure, the files need no
        // temporaries of their own.
        let put = |name: &str, text: &str| {
            std::fs::write(partial.path().join(name), text)
                .map_err(|e| HarnessError::Config(format!("{}: {e}", dir.join(name).display())))
        };
        let charts = charts::all(self);
        for c in &charts {
            put(&c.file, &c.svg)?;
        }
        put("report.md", &markdown::render(self, &charts))?;
        put("report.html", &markdown::render_html(self, &charts))?;
        Ok(partial.commit(inputs)?)
    }
}

/// A time to compare against: verified, or a baseline that has no verification of its own.
pub fn trusted(r: &Record) -> bool {
    matches!(r.status, Status::Pass | Status::Unverified) && r.median_s.is_some()
}

/// Whether two runs used the same silicon: the same GPU by name (vendors spell it differently
/// across APIs: "NVIDIA H200" in Vulkan, "H200" elsewhere), or both the host CPU (the CPU
/// reference, a CPU PyTorch and a software rasteriser such as lavapipe all run there).
fn same_device(a: &Run, b: &Run) -> bool {
    let (da, db) = (&a.file.device, &b.file.device);
    if da.device_type == "cpu" && db.device_type == "cpu" {
        return true;
    }
    let norm = |s: &str| {
        s.to_ascii_lowercase()
            .replace("nvidia", "")
            .trim()
            .to_string()
    };
    let (x, y) = (norm(&da.device), norm(&db.device));
    !x.is_empty() && !y.is_empty() && (x.contains(&y) || y.contains(&x))
}

/// The parameters of a key, e.g. `rows=4096,cols=11008`, for table rows.
pub fn params_of(key: &str) -> &str {
    key.split_once('(')
        .map(|(_, p)| p.trim_end_matches(')'))
        .unwrap_or(key)
}

pub fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}
