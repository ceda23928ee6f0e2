//! The `compile` table: one row per kernel and architecture, failures with their NVRTC log,
//! the cases that cannot fill a GPU, and totals per architecture.

use prunebench_kernels::cube::compile_only::{CaseLaunches, KernelReport, Target};
use prunebench_kernels::plan::factor::WaveShare;

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

pub fn print(
    kernels: &[KernelReport],
    cases: &[(&CaseLaunches, &str, Option<&WaveShare>)],
    targets: &[&Target],
) {
    println!(
        "{:<34} {:<9} {:<7} {:>14} {:>5} {:>7} {:>6} {:>5} status",
        "kernel", "variant", "arch", "cube dim", "regs", "shared", "spill", "occ"
    );
    for k in kernels {
        let dim = format!("{}x{}x{}", k.cube_dim[0], k.cube_dim[1], k.cube_dim[2]);
        println!(
            "{:<34} {:<9} {:<7} {:>14} {:>5} {:>7} {:>6} {:>5} {}",
            k.name,
            k.variant,
            k.arch,
            dim,
            opt(k.registers),
            opt(k.shared_bytes),
            opt(k.spill_bytes),
            k.occupancy
                .map_or_else(|| "-".into(), |o| format!("{:.0}%", o * 100.0)),
            k.status
        );
    }
    for k in kernels.iter().filter(|k| !k.ok()) {
        println!("\n{} {} on {}: error", k.name, k.variant, k.arch);
        for line in k.error.as_deref().unwrap_or("").lines().take(40) {
            println!("    {line}");
        }
    }
    let failed: Vec<_> = cases.iter().filter(|(_, s, _)| *s != "ok").collect();
    if !failed.is_empty() {
        println!("\ncases that stopped (their later kernels were not seen):");
        for (c, s, _) in failed {
            println!("  {:<64} {:<7} {s}", c.case, c.arch);
        }
    }
    let thin: Vec<_> = cases
        .iter()
        .filter(|(c, s, _)| *s == "ok" && c.launches > 0 && c.waves < 1.0)
        .collect();
    if !thin.is_empty() {
        println!("\ncases whose median launch is under one wave (fewer cubes than SMs):");
        for (c, _, _) in thin {
            println!(
                "  {:<64} {:<7} {:>5} launches, cubes {}/{}/{} (min/median/max), {:.2} waves",
                c.case, c.arch, c.launches, c.cubes_min, c.cubes_median, c.cubes_max, c.waves
            );
        }
    }
    let factors: Vec<_> = cases
        .iter()
        .filter_map(|(c, _, f)| f.map(|f| (c, f)))
        .collect();
    if !factors.is_empty() {
        println!("\nthe factor's GEMM-shaped launches under one wave, from its plan:");
        for (c, f) in factors {
            println!(
                "  {:<64} {:<7} {:>4} of {:>4} launches, {:>5.1}% of {:.3e} flops",
                c.case,
                c.arch,
                f.launches_under_one_wave,
                f.launches,
                100.0 * f.flops_under_one_wave / f.flops.max(1.0),
                f.flops
            );
        }
    }
    println!();
    for t in targets {
        let mine: Vec<_> = kernels.iter().filter(|k| k.arch == t.name).collect();
        let errors = mine.iter().filter(|k| !k.ok()).count();
        let spilling = mine
            .iter()
            .filter(|k| k.spill_bytes.unwrap_or(0) > 0)
            .count();
        let mut by_occ: Vec<_> = mine.iter().filter(|k| k.ok()).collect();
        by_occ.sort_by(|a, b| a.occupancy.partial_cmp(&b.occupancy).unwrap());
        let lowest: Vec<String> = by_occ
            .iter()
            .take(3)
            .map(|k| {
                format!(
                    "{} {:.0}% ({} regs, {} B shared, {} threads)",
                    k.name,
                    k.occupancy.unwrap_or(0.0) * 100.0,
                    opt(k.registers),
                    opt(k.shared_bytes),
                    k.cube_dim.iter().product::<u32>()
                )
            })
            .collect();
        println!(
            "{} ({}, {} SMs): {} kernels, {} failed, {} spilling; lowest occupancy: {}",
            t.name,
            t.gpu,
            t.sms,
            mine.len(),
            errors,
            spilling,
            if lowest.is_empty() {
                "-".into()
            } else {
                lowest.join("; ")
            }
        );
    }
}
