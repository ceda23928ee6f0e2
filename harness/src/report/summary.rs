//! The report's first section, what a reader takes in at a glance: the pruned models' quality
//! side by side (the runs' `quality` records), then each run's headline figures (verification,
//! how close its ops came to the device's peak, its whole-layer and whole-model times), before
//! the per-op rooflines and tables.

use super::markdown::Block;
use super::{fmt_time, params_of, trusted, Report, Run};
use crate::results::{QualityRecord, RecordKind, Status};

pub(super) fn section(report: &Report) -> Vec<Block> {
    let mut b = vec![Block::Heading(2, "Summary".into())];
    b.extend(quality(report));
    b.push(Block::Heading(3, "Runs at a glance".into()));
    b.push(Block::Para(
        "Per run: how many op cases passed verification against the CPU reference (of those \
         timed), the median and best fraction of the device's measured peak over the verified \
         op cases, and the whole-layer and whole-model records with their median times."
            .into(),
    ));
    let header = [
        "run",
        "op cases verified",
        "median % of peak",
        "best % of peak",
        "whole layers",
        "whole models",
    ]
    .map(String::from)
    .to_vec();
    let rows = report
        .runs
        .iter()
        .filter(|r| !r.file.records.is_empty())
        .map(headline)
        .collect();
    b.push(Block::Table(header, rows));
    b
}

fn headline(run: &Run) -> Vec<String> {
    let ops: Vec<_> = run
        .file
        .records
        .iter()
        .filter(|r| r.kind == RecordKind::Op)
        .collect();
    let passed = ops.iter().filter(|r| r.status == Status::Pass).count();
    let failed = ops.iter().filter(|r| r.status == Status::Fail).count();
    let unverified = ops.iter().all(|r| r.status == Status::Unverified);
    let verified = if ops.is_empty() {
        "–".to_string()
    } else if unverified {
        format!("none of {} (a baseline: not verified)", ops.len())
    } else if failed > 0 {
        format!("{passed} of {} (**{failed} FAIL**)", ops.len())
    } else {
        format!("{passed} of {}", ops.len())
    };
    let mut peaks: Vec<f64> = ops
        .iter()
        .filter(|r| r.status == Status::Pass)
        .filter_map(|r| r.peak_fraction)
        .collect();
    peaks.sort_by(f64::total_cmp);
    let pct = |v: Option<&f64>| v.map_or("–".into(), |p| format!("{:.0}%", 100.0 * p));
    let median = pct(peaks.get(peaks.len() / 2));
    let best = pct(peaks.last());
    let timed = |kind: RecordKind| {
        let parts: Vec<String> = run
            .file
            .records
            .iter()
            .filter(|r| r.kind == kind && trusted(r))
            .map(|r| {
                let name = if r.op == "GRADIENTS" {
                    "gradients".to_string()
                } else {
                    short_params(&r.key, &["method", "sparsity", "structure"])
                };
                format!("{name} {}", fmt_time(r.median_s.expect("trusted")))
            })
            .collect();
        if parts.is_empty() {
            "–".into()
        } else {
            parts.join("; ")
        }
    };
    vec![
        run.label.clone(),
        verified,
        median,
        best,
        timed(RecordKind::Layer),
        timed(RecordKind::Model),
    ]
}

/// The values of `names` among a key's parameters (`OP(a=1,b=2)`), space-separated.
fn short_params(key: &str, names: &[&str]) -> String {
    let params: Vec<(&str, &str)> = params_of(key)
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    names
        .iter()
        .filter_map(|n| params.iter().find(|(k, _)| k == n).map(|(_, v)| *v))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The pruned models' perplexities: one row per experiment (equal keys), one column per run
/// that has quality records, each cell with its change from the same run's dense model.
fn quality(report: &Report) -> Vec<Block> {
    let runs: Vec<&Run> = report
        .runs
        .iter()
        .filter(|r| !r.file.quality.is_empty())
        .collect();
    if runs.is_empty() {
        return Vec::new();
    }
    let mut keys: Vec<&QualityRecord> = Vec::new();
    for r in &runs {
        for q in &r.file.quality {
            if !keys.iter().any(|k| k.key == q.key) {
                keys.push(q);
            }
        }
    }
    // Name rows by what varies: the model and window length only where several appear.
    let several = |f: fn(&QualityRecord) -> String| {
        let mut v: Vec<String> = keys.iter().map(|q| f(q)).collect();
        v.sort();
        v.dedup();
        v.len() > 1
    };
    let by_model = several(|q| q.params.get("model").cloned().unwrap_or_default());
    let by_seqlen = several(|q| q.seqlen.to_string());
    let mut header = vec!["model".to_string()];
    header.extend(runs.iter().map(|r| r.label.clone()));
    let rows = keys
        .iter()
        .map(|k| {
            let mut row = vec![row_name(k, by_model, by_seqlen)];
            row.extend(runs.iter().map(|r| quality_cell(r, &k.key)));
            row
        })
        .collect();
    vec![
        Block::Heading(3, "Pruned-model quality".into()),
        Block::Para(
            "Perplexity of each model on its run's evaluation windows (lower is better), and \
             in brackets its change from the same run's dense model."
                .into(),
        ),
        Block::Table(header, rows),
    ]
}

fn row_name(q: &QualityRecord, by_model: bool, by_seqlen: bool) -> String {
    let p = &q.params;
    let mut s = q.method.clone();
    if let Some(sp) = p.get("sparsity") {
        s += &format!(" {sp}");
    }
    if let Some(sal) = p.get("saliency") {
        s += &format!(" ({sal})");
    }
    if let Some(r) = p.get("refit").filter(|r| r.as_str() != "none") {
        s += &format!(" + {r}");
    }
    if by_model {
        if let Some(m) = p.get("model") {
            s += &format!(", {m}");
        }
    }
    if by_seqlen {
        s += &format!(", T = {}", q.seqlen);
    }
    s
}

fn quality_cell(run: &Run, key: &str) -> String {
    let qs = &run.file.quality;
    let Some(q) = qs.iter().find(|q| q.key == key) else {
        return "–".into();
    };
    let dense = qs.iter().find(|d| {
        d.method == "dense"
            && d.seqlen == q.seqlen
            && d.windows == q.windows
            && d.params.get("model") == q.params.get("model")
    });
    match dense {
        Some(d) if q.method != "dense" => {
            format!("{:.3} ({:+.1}%)", q.ppl, 100.0 * (q.ppl / d.ppl - 1.0))
        }
        _ => format!("{:.3}", q.ppl),
    }
}
