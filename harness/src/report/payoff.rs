//! "What pruning buys" (ALGORITHMS.md §13): per run and weight shape, each compressed format's
//! speedup over the dense f16 product at each token count N, against its bandwidth bound S_max.

use std::collections::BTreeMap;

use super::{trusted, Report, Run};
use crate::results::{Record, Status};

/// The products of one format and mask (or kept fraction) on one weight shape.
pub struct Line<'a> {
    /// `2:4 · wanda2:4`, `bitmap · magnitude0.6`, `structured · keep=0.5`.
    pub label: String,
    /// Token count N -> the product's record.
    pub by_n: BTreeMap<usize, &'a Record>,
}

/// One weight shape (rows x cols) of a run: the token counts timed and a line per format.
pub struct Shape<'a> {
    pub rows: usize,
    pub cols: usize,
    /// Ascending.
    pub tokens: Vec<usize>,
    pub lines: Vec<Line<'a>>,
}

/// A parameter of a record: from `params`, or parsed from the key where `params` lacks it.
fn param<'r>(r: &'r Record, name: &str) -> Option<&'r str> {
    if let Some(v) = r.params.get(name) {
        return Some(v);
    }
    r.key
        .split_once('(')?
        .1
        .trim_end_matches(')')
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

fn num(r: &Record, name: &str) -> Option<usize> {
    param(r, name)?.parse().ok()
}

fn line_label(r: &Record) -> String {
    let format = param(r, "format").unwrap_or("?");
    match (param(r, "keep"), param(r, "mask")) {
        (Some(keep), _) => format!("{format} · keep={keep}"),
        (None, Some(mask)) if mask != "none" => format!("{format} · {mask}"),
        _ => format.to_string(),
    }
}

/// The compressed-weight products of a run (MATMUL records that carry a payoff), by shape in
/// the order the file first names them, each format's line in that order too.
pub fn shapes(run: &Run) -> Vec<Shape<'_>> {
    let mut shapes: Vec<Shape> = Vec::new();
    let products = run
        .file
        .records
        .iter()
        .filter(|r| r.op == "MATMUL" && r.payoff.is_some());
    for r in products {
        let (Some(rows), Some(cols), Some(n)) = (num(r, "rows"), num(r, "cols"), num(r, "n"))
        else {
            continue;
        };
        let i = match shapes.iter().position(|s| s.rows == rows && s.cols == cols) {
            Some(i) => i,
            None => {
                shapes.push(Shape {
                    rows,
                    cols,
                    tokens: Vec::new(),
                    lines: Vec::new(),
                });
                shapes.len() - 1
            }
        };
        let shape = &mut shapes[i];
        if !shape.tokens.contains(&n) {
            shape.tokens.push(n);
        }
        let label = line_label(r);
        let j = match shape.lines.iter().position(|l| l.label == label) {
            Some(j) => j,
            None => {
                shape.lines.push(Line {
                    label,
                    by_n: BTreeMap::new(),
                });
                shape.lines.len() - 1
            }
        };
        shape.lines[j].by_n.insert(n, r);
    }
    for s in &mut shapes {
        s.tokens.sort_unstable();
    }
    shapes
}

/// Whether any run has a compressed-weight product to show.
pub fn any(report: &Report) -> bool {
    report.runs.iter().any(|r| !shapes(r).is_empty())
}

/// What the run's device is when it is not a GPU: the host CPU, or a software rasteriser
/// (lavapipe, llvmpipe, SwiftShader) that a GPU API exposes on the CPU.
pub fn not_a_gpu(run: &Run) -> Option<&'static str> {
    let d = &run.file.device;
    let name = d.device.to_ascii_lowercase();
    if ["lavapipe", "llvmpipe", "swiftshader"]
        .iter()
        .any(|s| name.contains(s))
    {
        Some("a software rasteriser on the CPU")
    } else if d.device_type == "cpu" {
        Some("the host CPU")
    } else {
        None
    }
}

pub fn chart_title(run: &Run, shape: &Shape) -> String {
    format!(
        "What pruning buys: {}, {} x {}",
        run.label, shape.rows, shape.cols
    )
}

/// The dense baseline a product's speedup was taken against, in the same run.
fn dense<'a>(run: &'a Run, r: &Record) -> Option<&'a Record> {
    run.record(&r.payoff.as_ref()?.dense_key)
}

/// A product's speedup where both its time and the dense time can be trusted (for charts).
pub fn trusted_speedup(run: &Run, r: &Record) -> Option<f64> {
    let p = r.payoff.as_ref()?;
    (trusted(r) && dense(run, r).is_some_and(trusted))
        .then_some(p.speedup)
        .flatten()
}

/// A figure of a product for the table, with the marks of the report: † where it or its dense
/// baseline was timed without verification, **FAIL** where either failed verification.
fn figure(run: &Run, r: Option<&Record>, value: impl Fn(&Record) -> Option<String>) -> String {
    let Some(r) = r else {
        return "–".into();
    };
    match r.status {
        Status::Unsupported => return "unsupported".into(),
        Status::Error => return "error".into(),
        _ => {}
    }
    let statuses = [Some(r.status), dense(run, r).map(|d| d.status)];
    let mark = if statuses.contains(&Some(Status::Fail)) {
        " **FAIL**"
    } else if statuses.contains(&Some(Status::Unverified)) {
        " †"
    } else {
        ""
    };
    match value(r) {
        Some(v) => v + mark,
        None if r.median_s.is_none() => format!("no time{mark}"),
        None => format!("no dense time{mark}"),
    }
}

/// The table of one shape: a row per format and mask; memory ratio, S_max at N = 1, the
/// speedup at each N, the efficiency at N = 1.
pub fn table(run: &Run, shape: &Shape) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header: Vec<String> = ["format · mask", "memory ratio", "S_max (N=1)"]
        .map(String::from)
        .to_vec();
    header.extend(shape.tokens.iter().map(|n| format!("N={n}")));
    header.push("efficiency (N=1)".into());
    let rows = shape
        .lines
        .iter()
        .map(|line| {
            let one = line.by_n.get(&1).copied();
            let memory = line
                .by_n
                .values()
                .find_map(|r| r.payoff.as_ref())
                .map_or("–".into(), |p| format!("{:.2}", p.memory_ratio));
            let s_max = one
                .and_then(|r| r.payoff.as_ref())
                .map_or("–".into(), |p| format!("{:.2}", p.s_max));
            let mut row = vec![line.label.clone(), memory, s_max];
            for n in &shape.tokens {
                row.push(figure(run, line.by_n.get(n).copied(), |r| {
                    r.payoff.as_ref()?.speedup.map(|s| format!("{s:.2}×"))
                }));
            }
            row.push(figure(run, one, |r| {
                r.payoff
                    .as_ref()?
                    .efficiency
                    .map(|e| format!("{:.0}%", 100.0 * e))
            }));
            row
        })
        .collect();
    (header, rows)
}
