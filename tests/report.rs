//! Results files and reports: the schema round-trips, a report built from fixture results of
//! several devices and backends names every op and device and computes speedups, compressed-
//! weight products get their "What pruning buys" section, the summary opens the report with
//! the pruned models' quality and each run's headline figures, and bad results files give
//! clear errors.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use prunebench_harness::bench::attach_payoff;
use prunebench_harness::report::Report;
use prunebench_harness::results::{
    Bound, Ceilings, QualityRecord, Record, RecordKind, ResultsFile, Status, TimingPolicy,
    ToolInfo, SCHEMA,
};
use prunebench_kernels::suite::{matmul_cases, OpCase};
use prunebench_kernels::BackendInfo;
use prunebench_models::output::Inputs;

fn record(key: &str, op: &str, backend: &str, device: &str, median: f64, bound: Bound) -> Record {
    let mut r = Record {
        key: key.into(),
        kind: if op.starts_with("LAYER_") {
            RecordKind::Layer
        } else {
            RecordKind::Op
        },
        op: op.into(),
        params: BTreeMap::new(),
        backend: backend.into(),
        device: device.into(),
        status: Status::Pass,
        detail: String::new(),
        median_s: Some(median),
        min_s: Some(median * 0.9),
        max_s: Some(median * 1.2),
        repeats: 5,
        time_source: "device_timestamps".into(),
        bytes: 64 << 20,
        flops: 1 << 30,
        gbps: None,
        tflops: None,
        bound,
        peak_fraction: None,
        checks: vec![],
        stages: BTreeMap::new(),
        payoff: None,
    };
    if r.kind == RecordKind::Layer {
        r.stages.insert("obs_prune".into(), median * 0.7);
    }
    r
}

fn fixture(backend: &str, device: &str, scale: f64, copy: f64, fma: f64) -> ResultsFile {
    let ceilings = Ceilings {
        copy_gbps: Some(copy),
        copy_bytes: 1 << 30,
        fma_tflops: Some(fma),
        fma_flops: 1 << 40,
        notes: vec![],
    };
    let mut records = vec![
        record(
            "PRUNE_WANDA(pattern=2:4,rows=4096,cols=11008)",
            "PRUNE_WANDA",
            backend,
            device,
            1e-3 * scale,
            Bound::Memory,
        ),
        record(
            "HESSIAN(cols=4096,tokens=2048,batch=1)",
            "HESSIAN",
            backend,
            device,
            5e-3 * scale,
            Bound::Compute,
        ),
        record(
            "LAYER(model=llama-7b,method=sparsegpt,sparsity=0.5,samples=16,tokens=256,linears=all)",
            "LAYER_SPARSEGPT",
            backend,
            device,
            2.0 * scale,
            Bound::Compute,
        ),
    ];
    for r in &mut records {
        r.derive_rates(&ceilings);
    }
    ResultsFile {
        schema: SCHEMA.into(),
        tool: ToolInfo {
            name: if backend == "pytorch" {
                "pytorch".into()
            } else {
                "prunebench".into()
            },
            version: "0.1.0".into(),
            git_commit: "abc123".into(),
            command: format!("prunebench bench --backend {backend}"),
        },
        date: "2026-11-28T12:00:00Z".into(),
        device: BackendInfo {
            backend: backend.into(),
            device: device.into(),
            api: "test".into(),
            device_type: "discrete".into(),
            ..Default::default()
        },
        ceilings,
        timing: TimingPolicy {
            warmup: 2,
            repeats: 5,
            input_sets: 3,
            source: "device_timestamps".into(),
        },
        records,
        quality: Vec::new(),
    }
}

/// The report of `files` written into `out`: its report.md.
fn rendered(files: &[std::path::PathBuf], out: &Path) -> String {
    Report::load(files)
        .unwrap()
        .write(out, &Inputs::new())
        .unwrap();
    std::fs::read_to_string(out.join("report.md")).unwrap()
}

fn write(dir: &Path, name: &str, f: &ResultsFile) -> std::path::PathBuf {
    let p = dir.join(name);
    f.write(&p).unwrap();
    p
}

#[test]
fn results_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture("wgpu", "NVIDIA H200", 1.0, 4000.0, 50.0);
    let p = write(dir.path(), "r.json", &f);
    assert_eq!(ResultsFile::read(&p).unwrap(), f);
    // Rates follow from the median: 64 MiB in 1 ms against a 4000 GB/s copy.
    let r = &f.records[0];
    let gbps = (64u64 << 20) as f64 / 1e-3 / 1e9;
    assert!((r.gbps.unwrap() - gbps).abs() < 1e-9);
    assert!((r.peak_fraction.unwrap() - gbps / 4000.0).abs() < 1e-12);
}

#[test]
fn a_report_puts_every_op_and_device_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        write(
            dir.path(),
            "cuda.json",
            &fixture("cubecl-cuda", "NVIDIA H200", 1.0, 4000.0, 50.0),
        ),
        write(
            dir.path(),
            "torch.json",
            &fixture("pytorch", "NVIDIA H200", 4.0, 4000.0, 50.0),
        ),
        write(
            dir.path(),
            "cpu.json",
            &fixture("cpu", "CPU reference (f64, 2 threads)", 100.0, 14.0, 0.16),
        ),
    ];
    let out = dir.path().join("report");
    let md = rendered(&files, &out);
    for needle in [
        "NVIDIA H200 · cubecl-cuda",
        "NVIDIA H200 · pytorch",
        "CPU reference (f64, 2 threads) · cpu",
        "### PRUNE_WANDA",
        "### HESSIAN",
        "### LAYER_SPARSEGPT",
        "pattern=2:4,rows=4096,cols=11008",
        "100.0× cpu",
        "4.00× pytorch",
        "obs_prune",
    ] {
        assert!(md.contains(needle), "report.md lacks '{needle}':\n{md}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Roofline: NVIDIA H200 · cubecl-cuda"));
    assert!(html.matches("<table>").count() >= 4);
    // Each chart the Markdown links to exists.
    for line in md.lines().filter(|l| l.starts_with("![")) {
        let file = line.split("](").nth(1).unwrap().trim_end_matches(')');
        assert!(out.join(file).exists(), "{file} missing");
    }
}

/// Compressed-weight products on one 256 x 688 weight as `bench` records them: dense, 2:4 and a
/// Wanda 50% bitmap at N = 1, 16 and 256, each sparse one with its payoff against dense. 2:4
/// is 1.5x, 1.2x and 0.9x dense; the bitmap 1.25x, 2x (failed verification) and 0.5x.
fn products(backend: &str, device: &str, device_type: &str) -> ResultsFile {
    let cases: Vec<OpCase> = matmul_cases(&[(256, 688)])
        .into_iter()
        .filter(|c| {
            let k = c.name();
            ["format=dense,", "format=2:4,", "mask=wanda0.5,"]
                .iter()
                .any(|f| k.contains(f))
                && [",n=1,", ",n=16,", ",n=256,"].iter().any(|n| k.contains(n))
        })
        .collect();
    assert_eq!(cases.len(), 9);
    let mut records: Vec<Record> = cases
        .iter()
        .map(|c| {
            let key = c.name();
            let n: f64 = key
                .split(",n=")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let dense = 1e-4 * (1.0 + n / 16.0);
            let speedup = match (key.split_once(",n=").unwrap().0, n as usize) {
                ("MATMUL(format=dense", _) => 1.0,
                ("MATMUL(format=2:4,mask=wanda2:4", 1) => 1.5,
                ("MATMUL(format=2:4,mask=wanda2:4", 16) => 1.2,
                ("MATMUL(format=2:4,mask=wanda2:4", _) => 0.9,
                (_, 1) => 1.25,
                (_, 16) => 2.0,
                _ => 0.5,
            };
            let mut r = record(
                &key,
                "MATMUL",
                backend,
                device,
                dense / speedup,
                Bound::Memory,
            );
            r.params = key
                .trim_end_matches(')')
                .split_once('(')
                .unwrap()
                .1
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            r.bytes = c.bytes();
            if key.contains("mask=wanda0.5,n=16,") {
                r.status = Status::Fail;
            }
            r
        })
        .collect();
    attach_payoff(&mut records, &cases);
    let mut f = fixture(backend, device, 1.0, 4000.0, 50.0);
    f.device.device_type = device_type.into();
    f.records = records;
    f
}

#[test]
fn compressed_weight_products_get_what_pruning_buys() {
    let dir = tempfile::tempdir().unwrap();
    let gpu = products("wgpu", "NVIDIA H200", "discrete");
    let files = [
        write(dir.path(), "gpu.json", &gpu),
        write(
            dir.path(),
            "lavapipe.json",
            &products("wgpu", "llvmpipe (LLVM 15.0.7, 256 bits)", "cpu"),
        ),
        // A run without products has no part in the section.
        write(
            dir.path(),
            "cpu.json",
            &fixture("cpu", "CPU reference", 100.0, 14.0, 0.16),
        ),
    ];
    let out = dir.path().join("report");
    let md = rendered(&files, &out);
    let section = md
        .split("## What pruning buys")
        .nth(1)
        .unwrap_or_else(|| panic!("no section:\n{md}"))
        .split("\n## ")
        .next()
        .unwrap();
    let payoff = |key: &str| {
        gpu.records
            .iter()
            .find(|r| r.key == key)
            .unwrap()
            .payoff
            .clone()
            .unwrap()
    };
    let two_four = payoff("MATMUL(format=2:4,mask=wanda2:4,n=1,rows=256,cols=688)");
    let bitmap = payoff("MATMUL(format=bitmap,mask=wanda0.5,n=1,rows=256,cols=688)");
    assert!((two_four.speedup.unwrap() - 1.5).abs() < 1e-9);
    for needle in [
        "### NVIDIA H200 · wgpu".to_string(),
        "### llvmpipe (LLVM 15.0.7, 256 bits) · wgpu".into(),
        "#### 256 x 688 weight (rows x cols)".into(),
        "| format · mask | memory ratio | S_max (N=1) | N=1 | N=16 | N=256 | efficiency (N=1) |"
            .into(),
        format!(
            "| 2:4 · wanda2:4 | {:.2} | {:.2} | 1.50× | 1.20× | 0.90× | {:.0}% |",
            two_four.memory_ratio,
            two_four.s_max,
            100.0 * 1.5 / two_four.s_max
        ),
        format!(
            "| bitmap · wanda0.5 | {:.2} | {:.2} | 1.25× | 2.00× **FAIL** | 0.50× | {:.0}% |",
            bitmap.memory_ratio,
            bitmap.s_max,
            100.0 * 1.25 / bitmap.s_max
        ),
        "S_max = the bandwidth bound".into(),
    ] {
        assert!(
            section.contains(&needle),
            "the section lacks '{needle}':\n{section}"
        );
    }
    // The dense baseline has no row of its own, and the run without products no part.
    assert!(!section.contains("| dense"), "{section}");
    assert!(!section.contains("CPU reference"), "{section}");
    // The software rasteriser's figures are called pipeline checks; the GPU's are not.
    assert_eq!(section.matches("pipeline checks, not GPU speed").count(), 1);
    let lavapipe = section.split("### llvmpipe").nth(1).unwrap();
    assert!(
        lavapipe.contains("pipeline checks, not GPU speed"),
        "{section}"
    );
    // One chart per run and shape, linked beside report.md and embedded in the HTML.
    let charts: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with("![What pruning buys: "))
        .map(|l| l.split("](").nth(1).unwrap().trim_end_matches(')'))
        .collect();
    assert_eq!(
        charts,
        [
            "payoff-1-nvidia-h200-wgpu-256x688.svg",
            "payoff-2-llvmpipe-llvm-15-0-7-256-bits-wgpu-256x688.svg"
        ]
    );
    for file in charts {
        let svg = std::fs::read_to_string(out.join(file)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("S_max"), "{file}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<h2>What pruning buys</h2>"));
    assert!(html.contains("<figcaption>What pruning buys: NVIDIA H200 · wgpu, 256 x 688"));
    assert!(html.contains("<td>2.00× <b>FAIL</b></td>"));
}

#[test]
fn without_products_there_is_no_what_pruning_buys() {
    let dir = tempfile::tempdir().unwrap();
    let files = [write(
        dir.path(),
        "gpu.json",
        &fixture("wgpu", "NVIDIA H200", 1.0, 4000.0, 50.0),
    )];
    let out = dir.path().join("report");
    Report::load(&files)
        .unwrap()
        .write(&out, &Inputs::new())
        .unwrap();
    for name in ["report.md", "report.html"] {
        let text = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(!text.contains("What pruning buys"), "{name}:\n{text}");
    }
    assert!(!names_in(&out).iter().any(|f| f.starts_with("payoff-")));
}

#[test]
fn bad_results_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str, needle: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let e = match Report::load(&[&p]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{name} should be refused"),
        };
        assert!(e.contains(needle) && e.contains(name), "{e}");
        let out = Command::new(env!("CARGO_BIN_EXE_prunebench"))
            .args(["report", p.to_str().unwrap(), "--out"])
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle));
        assert!(!dir.path().join("out").exists(), "no report for bad input");
    };
    check("garbage.json", "{ not json", "not valid JSON");
    check("other.json", r#"{"schema": "something/9"}"#, "something/9");
    check("noschema.json", r#"{"results": []}"#, "no \"schema\" field");
    check(
        "partial.json",
        &format!(r#"{{"schema": "{SCHEMA}", "records": []}}"#),
        "does not match",
    );
}

/// A results path that is a directory or a FIFO is named as such (a FIFO without a writer
/// would otherwise block the report forever), with exit status 2.
#[cfg(unix)]
#[test]
fn results_paths_that_are_not_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder.json");
    std::fs::create_dir(&folder).unwrap();
    let fifo = dir.path().join("fifo.json");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for (p, needle) in [
        (
            &folder,
            "folder.json is a directory, expected a results JSON file",
        ),
        (
            &fifo,
            "fifo.json is a FIFO (named pipe), expected a results JSON file",
        ),
    ] {
        // In a thread, so that a load blocked on the FIFO fails the test instead of hanging.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = p.clone();
        std::thread::spawn(move || tx.send(Report::load(&[&path]).err().map(|e| e.to_string())));
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("loading {} blocked", p.display()))
            .unwrap_or_else(|| panic!("{} should be refused", p.display()));
        assert!(e.contains(needle), "{e}");
        // The command line reads it the same way (so, having passed above, does not block).
        let out = Command::new(env!("CARGO_BIN_EXE_prunebench"))
            .args(["report", p.to_str().unwrap(), "--out"])
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle));
        assert!(!dir.path().join("out").exists(), "no report for bad input");
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A report that cannot be completed leaves no part of itself: before, the charts were
/// written one by one into the target and stayed there when a later file failed.
#[test]
fn a_failed_report_leaves_no_part_of_itself() {
    let dir = tempfile::tempdir().unwrap();
    let results = write(
        dir.path(),
        "wgpu.json",
        &fixture("wgpu", "NVIDIA H200", 1.0, 4000.0, 50.0),
    );
    // The last file the report writes cannot replace a folder of the same name.
    let out = dir.path().join("report");
    std::fs::create_dir_all(out.join("report.html")).unwrap();
    std::fs::write(out.join("notes.txt"), "kept").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_prunebench"))
        .args(["report", results.to_str().unwrap(), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(
        err.contains("report.html") && err.contains("it is a folder"),
        "{err}"
    );
    assert_eq!(names_in(&out), ["notes.txt", "report.html"]);
    assert_eq!(
        names_in(dir.path()),
        ["report", "wgpu.json"],
        "a temporary was left"
    );

    // A results file inside the target, named like one of the report's files, is an input.
    std::fs::remove_dir(out.join("report.html")).unwrap();
    let inside = write(&out, "report.md", &fixture("cpu", "CPU", 100.0, 14.0, 0.16));
    let mut inputs = Inputs::new();
    inputs.file(&inside, "the results file");
    let e = Report::load(&[&inside])
        .unwrap()
        .write(&out, &inputs)
        .unwrap_err()
        .to_string();
    assert!(e.contains("refusing to overwrite an input"), "{e}");
    assert_eq!(names_in(&out), ["notes.txt", "report.md"]);
    assert_eq!(ResultsFile::read(&inside).unwrap().device.backend, "cpu");

    // Into a new folder, the complete report appears at once, and the folder is nothing else.
    let fresh = dir.path().join("fresh");
    Report::load(&[&results])
        .unwrap()
        .write(&fresh, &Inputs::new())
        .unwrap();
    assert!(names_in(&fresh).contains(&"report.html".to_string()));
    assert_eq!(names_in(dir.path()), ["fresh", "report", "wgpu.json"]);
}

/// A `prunebench compile` file among the results gives "CUDA resources": each kernel with
/// every architecture's figures side by side, the lowest occupancy first, a failure marked.
#[test]
fn compile_files_give_cuda_resources() {
    let dir = tempfile::tempdir().unwrap();
    let results = write(
        dir.path(),
        "gpu.json",
        &fixture("wgpu", "NVIDIA H200", 1.0, 4000.0, 50.0),
    );
    let kernel = |name: &str, arch: &str, regs: u32, spill: u32, occ: f64, status: &str| {
        serde_json::json!({
            "name": name, "variant": "0a1b2c3d", "arch": arch, "cube_dim": [256, 1, 1],
            "registers": regs, "shared_bytes": 1024, "spill_bytes": spill,
            "occupancy": occ, "status": status, "error": null
        })
    };
    let compile = serde_json::json!({
        "schema": prunebench_harness::report::cuda::SCHEMA,
        "nvrtc": "NVRTC 13.5",
        "model": "llama-7b",
        "kernels": [
            kernel("fill_kernel", "sm_90a", 16, 0, 1.0, "ok"),
            kernel("fill_kernel", "sm_80", 16, 0, 1.0, "ok"),
            kernel("attention_kernel", "sm_90a", 255, 752, 0.125, "ok"),
            kernel("attention_kernel", "sm_80", 0, 0, 0.0, "error"),
        ],
        "cases": [
            {
                "case": "HINV_FACTOR(cols=4096)", "arch": "sm_90a", "launches": 210,
                "cubes_min": 1, "cubes_median": 27, "cubes_max": 65536, "waves": 0.2,
                "status": "ok",
                "factor_plan": {
                    "launches": 202, "launches_under_one_wave": 179,
                    "flops": 4.637e10, "flops_under_one_wave": 2.8286e9
                }
            },
            {
                "case": "ACT_STAT(cols=37,tokens=7,batch=3)", "arch": "sm_90a", "launches": 2,
                "cubes_min": 1, "cubes_median": 1, "cubes_max": 1, "waves": 0.01,
                "status": "ok"
            }
        ]
    });
    let cfile = dir.path().join("compile.json");
    std::fs::write(&cfile, compile.to_string()).unwrap();
    let out = dir.path().join("report");
    Report::load(&[results, cfile])
        .unwrap()
        .write(&out, &Inputs::new())
        .unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "## CUDA resources",
        "llama-7b",
        "sm_90a: 2 kernels, 0 failed, 1 spilling; lowest occupancy 12% (`attention_kernel`)",
        "sm_80: 2 kernels, 1 failed, 0 spilling",
        "| kernel | variant | cube dim | sm_90a | sm_80 |",
        "| `attention_kernel` | 0a1b2c3d | 256x1x1 | 255 regs, 1024 B shared, 752 B spilled, 12% | **error** |",
        "| case | arch | launches under one wave | their flops |",
        "| `HINV_FACTOR(cols=4096)` | sm_90a | 179 of 202 | 6.1% of 4.637e10 |",
    ] {
        assert!(md.contains(needle), "report.md lacks '{needle}':\n{md}");
    }
    // Worst first; cases without a factor plan have no row.
    assert!(md.find("`attention_kernel`").unwrap() < md.find("`fill_kernel`").unwrap());
    assert!(!md.contains("ACT_STAT"));
}

fn perplexity(method: &str, sparsity: Option<&str>, ppl: f64) -> QualityRecord {
    let mut params = BTreeMap::from([
        ("model".to_string(), "tiny-llama".to_string()),
        ("method".to_string(), method.to_string()),
    ]);
    let mut key = format!("PERPLEXITY(model=tiny-llama,method={method}");
    if let Some(sp) = sparsity {
        params.insert("sparsity".into(), sp.into());
        key += &format!(",sparsity={sp}");
    }
    QualityRecord {
        key: key + ",seqlen=256)",
        method: method.into(),
        params,
        backend: "cpu".into(),
        device: "CPU".into(),
        windows: 32,
        seqlen: 256,
        tokens: 8160,
        nll: ppl.ln(),
        ppl,
        sparsity_achieved: Some(0.5),
        prune_seconds: Some(1.0),
        eval_seconds: Some(2.0),
        detail: String::new(),
    }
}

#[test]
fn the_summary_opens_the_report_with_quality_and_headlines() {
    let dir = tempfile::tempdir().unwrap();
    let mut ours = fixture("cpu", "CPU reference (f64, 2 threads)", 100.0, 14.0, 0.16);
    ours.records[0].status = Status::Fail;
    let mut quality = fixture("cpu", "CPU reference (f64, 2 threads)", 1.0, 14.0, 0.16);
    quality.records.clear();
    quality.date = "2026-12-06T00:00:00Z".into();
    quality.quality = vec![
        perplexity("dense", None, 16.0),
        perplexity("wanda", Some("0.5"), 18.0),
    ];
    let mut torch = quality.clone();
    torch.device.backend = "pytorch".into();
    torch.quality = vec![
        perplexity("dense", None, 16.0),
        perplexity("wanda", Some("0.5"), 17.6),
        perplexity("magnitude", Some("0.5"), 20.0),
    ];
    let files = [
        write(dir.path(), "ours.json", &ours),
        write(dir.path(), "quality.json", &quality),
        write(dir.path(), "torch.json", &torch),
    ];
    // The quality file survives the round trip.
    assert_eq!(ResultsFile::read(&files[1]).unwrap(), quality);
    let out = dir.path().join("report");
    let md = rendered(&files, &out);
    let summary = md.find("## Summary").expect("a summary");
    assert!(summary < md.find("## Devices and ceilings").unwrap());
    assert!(summary < md.find("## Ops").unwrap());
    let section = &md[summary..md.find("## Devices and ceilings").unwrap()];
    for needle in [
        "| wanda 0.5 | 18.000 (+12.5%) | 17.600 (+10.0%) |",
        "| magnitude 0.5 | – | 20.000 (+25.0%) |",
        "| dense | 16.000 | 16.000 |",
        // One of the fixture's two op cases failed verification.
        "| 1 of 2 (**1 FAIL**) |",
        "| sparsegpt 0.5 200.000 s |",
    ] {
        assert!(
            section.contains(needle),
            "the summary lacks '{needle}':\n{section}"
        );
    }
}
