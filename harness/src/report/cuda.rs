//! "CUDA resources": what `prunebench compile` found per kernel and architecture (registers,
//! shared memory, spills, theoretical occupancy), from its JSON files given to `report` beside
//! the results files.

use std::path::Path;

use serde::Deserialize;

use crate::error::{HarnessError, Result};
use prunebench_models::input::read_input_text;

/// The `schema` of `prunebench compile --out` files.
pub const SCHEMA: &str = "prunebench.cuda-compile/1";

#[derive(Clone, Debug, Deserialize)]
pub struct CudaKernel {
    pub name: String,
    pub variant: String,
    pub arch: String,
    pub cube_dim: [u32; 3],
    pub registers: Option<u32>,
    pub shared_bytes: Option<u32>,
    pub spill_bytes: Option<u32>,
    pub occupancy: Option<f64>,
    pub status: String,
}

/// From the factor's plan: its GEMM-shaped launches with fewer cubes than the architecture
/// has SMs, and the share of its flops they do.
#[derive(Clone, Debug, Deserialize)]
pub struct FactorPlan {
    pub launches: usize,
    pub launches_under_one_wave: usize,
    pub flops: f64,
    pub flops_under_one_wave: f64,
}

/// A case of a `compile` run (only what the report shows is read).
#[derive(Clone, Debug, Deserialize)]
pub struct CudaCase {
    pub case: String,
    pub arch: String,
    #[serde(default)]
    pub factor_plan: Option<FactorPlan>,
}

/// One `compile` run.
#[derive(Clone, Debug, Deserialize)]
pub struct CudaCompile {
    pub nvrtc: String,
    pub model: String,
    pub kernels: Vec<CudaKernel>,
    #[serde(default)]
    pub cases: Vec<CudaCase>,
}

/// One row per HINV_FACTOR case and architecture: its plan's launches under one wave and
/// their share of the flops.
pub fn factor_rows(c: &CudaCompile) -> Vec<Vec<String>> {
    c.cases
        .iter()
        .filter_map(|k| {
            let f = k.factor_plan.as_ref()?;
            Some(vec![
                format!("`{}`", k.case),
                k.arch.clone(),
                format!("{} of {}", f.launches_under_one_wave, f.launches),
                format!(
                    "{:.1}% of {:.3e}",
                    100.0 * f.flops_under_one_wave / f.flops.max(1.0),
                    f.flops
                ),
            ])
        })
        .collect()
}

/// Whether the JSON text is a `compile` file (read before trying it as a results file).
pub fn is_compile_file(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("schema")
                .and_then(|s| s.as_str())
                .map(|s| s == SCHEMA)
        })
        .unwrap_or(false)
}

pub fn read(path: &Path) -> Result<Option<CudaCompile>> {
    // Worded as for a results file: the same paths are given to `report` for either.
    let text = read_input_text(path, "a results JSON file")?;
    if !is_compile_file(&text) {
        return Ok(None);
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| HarnessError::Config(format!("{}: {e}", path.display())))
}

/// The table's rows: one per kernel name, variant and cube dim, with each architecture's
/// figures side by side, worst occupancy first (the rows a reader should look at).
pub fn rows(c: &CudaCompile, archs: &[String]) -> Vec<Vec<String>> {
    let mut keys: Vec<(String, String, [u32; 3])> = Vec::new();
    for k in &c.kernels {
        let key = (k.name.clone(), k.variant.clone(), k.cube_dim);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let find = |key: &(String, String, [u32; 3]), arch: &str| {
        c.kernels.iter().find(|k| {
            k.name == key.0 && k.variant == key.1 && k.cube_dim == key.2 && k.arch == arch
        })
    };
    let worst = |key: &(String, String, [u32; 3])| {
        archs
            .iter()
            .filter_map(|a| find(key, a))
            .map(|k| {
                if k.status == "ok" {
                    k.occupancy.unwrap_or(0.0)
                } else {
                    -1.0
                }
            })
            .fold(f64::INFINITY, f64::min)
    };
    keys.sort_by(|a, b| worst(a).total_cmp(&worst(b)).then(a.0.cmp(&b.0)));
    keys.iter()
        .map(|key| {
            let mut row = vec![
                format!("`{}`", key.0),
                key.1.clone(),
                format!("{}x{}x{}", key.2[0], key.2[1], key.2[2]),
            ];
            for a in archs {
                row.push(match find(key, a) {
                    Some(k) if k.status == "ok" => format!(
                        "{} regs, {} B shared, {} B spilled, {:.0}%",
                        k.registers.unwrap_or(0),
                        k.shared_bytes.unwrap_or(0),
                        k.spill_bytes.unwrap_or(0),
                        k.occupancy.unwrap_or(0.0) * 100.0
                    ),
                    Some(_) => "**error**".into(),
                    None => "–".into(),
                });
            }
            row
        })
        .collect()
}

/// The architectures in `c`, in the order they first appear.
pub fn archs(c: &CudaCompile) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for k in &c.kernels {
        if !v.contains(&k.arch) {
            v.push(k.arch.clone());
        }
    }
    v
}

/// One line per architecture: kernels, failures, spilling kernels, the lowest occupancy.
pub fn totals(c: &CudaCompile) -> Vec<String> {
    archs(c)
        .iter()
        .map(|a| {
            let mine: Vec<&CudaKernel> = c.kernels.iter().filter(|k| &k.arch == a).collect();
            let failed = mine.iter().filter(|k| k.status != "ok").count();
            let spilling = mine
                .iter()
                .filter(|k| k.spill_bytes.unwrap_or(0) > 0)
                .count();
            let lowest = mine.iter().filter(|k| k.status == "ok").min_by(|x, y| {
                x.occupancy
                    .unwrap_or(0.0)
                    .total_cmp(&y.occupancy.unwrap_or(0.0))
            });
            format!(
                "{a}: {} kernels, {failed} failed, {spilling} spilling; lowest occupancy {}",
                mine.len(),
                lowest.map_or("–".into(), |k| format!(
                    "{:.0}% (`{}`)",
                    k.occupancy.unwrap_or(0.0) * 100.0,
                    k.name
                ))
            )
        })
        .collect()
}
