//! The report's content as a list of blocks, rendered to Markdown and to self-contained HTML.

use super::charts::Chart;
use super::cuda;
use super::payoff;
use super::summary;
use super::{fmt_time, params_of, trusted, Report, Run};
use crate::results::{Bound, Record, Status};

pub(super) enum Block {
    Heading(usize, String),
    Para(String),
    Table(Vec<String>, Vec<Vec<String>>),
    Chart(usize),
}

fn cell(report: &Report, run: &Run, key: &str) -> String {
    let Some(r) = run.record(key) else {
        return "–".into();
    };
    let status = match r.status {
        Status::Pass => "",
        Status::Unverified => " †",
        Status::Fail => " **FAIL**",
        Status::Unsupported => return format!("unsupported: {}", r.detail),
        Status::Error => return format!("error: {}", r.detail),
    };
    let Some(t) = r.median_s else {
        return format!("no time{status}");
    };
    let mut s = fmt_time(t);
    match r.bound {
        Bound::Memory => {
            if let Some(g) = r.gbps {
                s += &format!(" · {g:.1} GB/s");
            }
        }
        Bound::Compute => {
            if let Some(f) = r.tflops {
                s += &format!(" · {:.2} TFLOP/s", f);
            }
        }
    }
    if let Some(p) = r.peak_fraction {
        s += &format!(" · {:.0}% of peak", 100.0 * p);
    }
    let mut vs = Vec::new();
    if run.file.device.backend != "cpu" && trusted(r) {
        if let Some(c) = report.cpu_time(key) {
            vs.push(format!("{:.1}× cpu", c / t));
        }
    }
    if run.file.device.backend != "pytorch" {
        if let Some(b) = report.baseline_time(run, key) {
            vs.push(format!("{:.2}× pytorch", b / t));
        }
    }
    if !vs.is_empty() {
        s += &format!(" ({})", vs.join(", "));
    }
    s + status
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

fn build(report: &Report, charts: &[Chart]) -> Vec<Block> {
    let mut b = vec![
        Block::Heading(1, "prunebench report".into()),
        Block::Para(format!(
            "{} results file(s). Times are medians over repeats with the time source each \
             device's run names (device timestamps where the API has them). Memory-bound ops \
             are scored against the copy bandwidth measured on the same device, compute-bound \
             ops against its measured f32 FMA rate; fractions are not clamped. † = timed \
             without verification against the CPU reference; **FAIL** = verification failed, \
             the time is not to be trusted. Speedups: × cpu against the CPU reference, \
             × pytorch against the PyTorch baseline on the same device.",
            report.runs.len()
        )),
    ];
    b.extend(summary::section(report));
    b.push(Block::Heading(2, "Devices and ceilings".into()));
    let rows = report
        .runs
        .iter()
        .map(|r| {
            let f = &r.file;
            vec![
                r.label.clone(),
                format!("{} / {}", f.device.backend, f.device.api),
                if f.device.driver.is_empty() {
                    "–".into()
                } else {
                    f.device.driver.clone()
                },
                opt(f.ceilings.copy_gbps, 1),
                opt(f.ceilings.fma_tflops, 3),
                f.timing.source.clone(),
                format!("{} {}", f.tool.name, f.tool.git_commit),
                f.date.clone(),
                f.ceilings.notes.join("; "),
            ]
        })
        .collect();
    b.push(Block::Table(
        [
            "run",
            "backend / API",
            "driver",
            "copy GB/s",
            "FMA TFLOP/s",
            "timing",
            "tool",
            "date",
            "notes",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    ));
    for (i, c) in charts.iter().enumerate() {
        if c.kind == "roofline" {
            b.push(Block::Chart(i));
        }
    }
    b.extend(payoff_section(report, charts));
    let kind = |op: &str| {
        if op.starts_with("LAYER_") {
            1
        } else if op.starts_with("MODEL_") || op == "GRADIENTS" {
            2
        } else {
            0
        }
    };
    for (section, want) in [("Ops", 0), ("Whole layers", 1), ("Whole models", 2)] {
        let layer = want > 0;
        let ops: Vec<(&String, &Vec<String>)> = report
            .ops
            .iter()
            .filter(|(op, _)| kind(op) == want)
            .collect();
        if ops.is_empty() {
            continue;
        }
        b.push(Block::Heading(2, section.into()));
        for (op, keys) in ops {
            b.push(Block::Heading(3, op.clone()));
            if let Some(i) = charts.iter().position(|c| c.kind == "op" && &c.title == op) {
                b.push(Block::Chart(i));
            }
            let mut header = vec!["parameters".to_string()];
            header.extend(report.runs.iter().map(|r| r.label.clone()));
            let rows = keys
                .iter()
                .map(|k| {
                    let mut row = vec![params_of(k).to_string()];
                    row.extend(report.runs.iter().map(|r| cell(report, r, k)));
                    row
                })
                .collect();
            b.push(Block::Table(header, rows));
            if layer {
                b.extend(stage_table(report, keys));
            }
        }
    }
    b.extend(cuda_section(report));
    b.push(Block::Heading(2, "How these results were made".into()));
    for r in &report.runs {
        b.push(Block::Para(format!(
            "{}: `{}` ({} {}, {})",
            r.label, r.file.tool.command, r.file.tool.name, r.file.tool.version, r.file.date
        )));
    }
    b
}

/// "CUDA resources": per kernel, each architecture's registers, shared memory, spills and
/// theoretical occupancy from `prunebench compile`, lowest occupancy first.
fn cuda_section(report: &Report) -> Vec<Block> {
    let mut b = Vec::new();
    for c in &report.cuda {
        b.push(Block::Heading(2, "CUDA resources".into()));
        b.push(Block::Para(format!(
            "Every CubeCL kernel launched by the op cases at {} shapes (and the whole-layer \
             runs), generated as CUDA C++ and compiled by {} with ptxas's report, without a \
             GPU (`prunebench compile`). Occupancy is theoretical: resident warps per SM over \
             the SM's 64, from registers, shared memory and threads per block.",
            c.model, c.nvrtc
        )));
        b.push(Block::Para(cuda::totals(c).join("; ")));
        let archs = cuda::archs(c);
        let mut header: Vec<String> = ["kernel", "variant", "cube dim"].map(String::from).to_vec();
        header.extend(archs.iter().cloned());
        b.push(Block::Table(header, cuda::rows(c, &archs)));
        let factor = cuda::factor_rows(c);
        if !factor.is_empty() {
            b.push(Block::Para(
                "The inverse-Hessian factor's GEMM-shaped launches with fewer cubes than the \
                 architecture has SMs, from its plan, and the share of its flops they do (the \
                 rest of its work fills at least one wave)."
                    .into(),
            ));
            let header = ["case", "arch", "launches under one wave", "their flops"]
                .map(String::from)
                .to_vec();
            b.push(Block::Table(header, factor));
        }
    }
    b
}

/// "What pruning buys": per run and weight shape, a chart and a table of each compressed
/// format's speedup over dense; nothing when no run timed a compressed-weight product.
fn payoff_section(report: &Report, charts: &[Chart]) -> Vec<Block> {
    if !payoff::any(report) {
        return Vec::new();
    }
    let mut b = vec![
        Block::Heading(2, "What pruning buys".into()),
        Block::Para(
            "Each compressed weight format's product Y = X·Wᵀ for N tokens against the dense \
             f16 product of the same weight and N: speedup (the N= columns) = dense f16 time / \
             this format's time, on the same device with the same kernel design; S_max = the \
             bandwidth bound, the dense product's bytes over this format's (weight, X and Y); \
             efficiency = speedup / S_max; memory ratio = this format's weight bytes over dense \
             f16's. A memory-bound kernel at its best reaches S_max at small N; at large N the \
             product becomes compute-bound and sparse formats lose their edge. † and **FAIL** \
             mark the product or its dense baseline as in the tables below; the charts draw \
             trusted speedups only, with each format's S_max dashed in the same colour."
                .into(),
        ),
    ];
    for run in &report.runs {
        let shapes = payoff::shapes(run);
        if shapes.is_empty() {
            continue;
        }
        b.push(Block::Heading(3, run.label.clone()));
        if let Some(what) = payoff::not_a_gpu(run) {
            b.push(Block::Para(format!(
                "**Note:** this run's device is {what} (`{}`, device type `{}`): its figures \
                 are pipeline checks, not GPU speed.",
                run.file.device.device, run.file.device.device_type
            )));
        }
        for shape in &shapes {
            b.push(Block::Heading(
                4,
                format!("{} x {} weight (rows x cols)", shape.rows, shape.cols),
            ));
            let title = payoff::chart_title(run, shape);
            if let Some(i) = charts
                .iter()
                .position(|c| c.kind == "payoff" && c.title == title)
            {
                b.push(Block::Chart(i));
            }
            let (header, rows) = payoff::table(run, shape);
            b.push(Block::Table(header, rows));
        }
    }
    b
}

/// Per-stage medians of layer records, one row per (key, run).
fn stage_table(report: &Report, keys: &[String]) -> Option<Block> {
    let mut rows = Vec::new();
    for k in keys {
        for run in &report.runs {
            if let Some(r) = run.record(k).filter(|r| !r.stages.is_empty()) {
                let stages: Vec<String> = r
                    .stages
                    .iter()
                    .map(|(s, t)| format!("{s} {}", fmt_time(*t)))
                    .collect();
                rows.push(vec![
                    params_of(k).to_string(),
                    run.label.clone(),
                    stages.join(", "),
                ]);
            }
        }
    }
    (!rows.is_empty()).then(|| {
        Block::Table(
            vec!["parameters".into(), "run".into(), "stage medians".into()],
            rows,
        )
    })
}

pub fn render(report: &Report, charts: &[Chart]) -> String {
    let mut out = String::new();
    for block in build(report, charts) {
        match block {
            Block::Heading(n, t) => out += &format!("{} {t}\n\n", "#".repeat(n)),
            Block::Para(t) => out += &format!("{t}\n\n"),
            Block::Table(h, rows) => {
                let esc = |s: &str| s.replace('|', "\\|");
                out += &format!(
                    "| {} |\n",
                    h.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
                );
                out += &format!("|{}\n", "---|".repeat(h.len()));
                for r in rows {
                    out += &format!(
                        "| {} |\n",
                        r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
                    );
                }
                out += "\n";
            }
            Block::Chart(i) => out += &format!("![{}]({})\n\n", charts[i].title, charts[i].file),
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Inline Markdown the report uses: `code` and **bold**.
fn inline(s: &str) -> String {
    let mut out = String::new();
    let mut code = false;
    for (i, part) in html_escape(s).split('`').enumerate() {
        if i > 0 {
            out += if code { "</code>" } else { "<code>" };
            code = !code;
        }
        let mut bold = false;
        for (j, p) in part.split("**").enumerate() {
            if j > 0 {
                out += if bold { "</b>" } else { "<b>" };
                bold = !bold;
            }
            out += p;
        }
    }
    out
}

pub fn render_html(report: &Report, charts: &[Chart]) -> String {
    let mut body = String::new();
    for block in build(report, charts) {
        match block {
            Block::Heading(n, t) => body += &format!("<h{n}>{}</h{n}>\n", html_escape(&t)),
            Block::Para(t) => body += &format!("<p>{}</p>\n", inline(&t)),
            Block::Table(h, rows) => {
                body += "<table><thead><tr>";
                for c in h {
                    body += &format!("<th>{}</th>", html_escape(&c));
                }
                body += "</tr></thead><tbody>\n";
                for r in rows {
                    body += "<tr>";
                    for c in r {
                        body += &format!("<td>{}</td>", inline(&c));
                    }
                    body += "</tr>\n";
                }
                body += "</tbody></table>\n";
            }
            Block::Chart(i) => {
                body += &format!(
                    "<figure>{}<figcaption>{}</figcaption></figure>\n",
                    charts[i].svg,
                    html_escape(&charts[i].title)
                )
            }
        }
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>prunebench report</title>\n<style>\
body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}}\
table{{border-collapse:collapse;margin:1em 0;font-size:13px}}th,td{{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}}\
th{{background:#f3f3f3}}code{{background:#f3f3f3;padding:1px 3px}}figure{{margin:1em 0}}svg{{max-width:100%;height:auto}}\
</style></head><body>\n{body}</body></html>\n"
    )
}

/// A record's value for charts: its fraction of peak where known.
pub fn chart_value(r: &Record) -> Option<f64> {
    if trusted(r) {
        r.peak_fraction
    } else {
        None
    }
}
