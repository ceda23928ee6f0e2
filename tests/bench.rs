//! `prunebench bench` end to end on the CPU reference: ceilings measured, every selected case
//! verified and timed with its work and fraction of peak, a layer record with stage medians,
//! and a results file that `report` renders.

use std::process::Command;

use prunebench_harness::results::{RecordKind, ResultsFile, Status};

#[test]
fn bench_writes_a_results_file_report_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cpu.json");
    let run = Command::new(env!("CARGO_BIN_EXE_prunebench"))
        .args([
            "bench",
            "--backend",
            "cpu",
            "--op",
            "SCORE_WANDA",
            "--methods",
            "wanda",
            "--sparsities",
            "2:4",
            "--repeats",
            "3",
            "--warmup",
            "1",
            "--layer-repeats",
            "1",
            "--samples",
            "2",
            "--tokens",
            "16",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r = ResultsFile::read(&out).unwrap();
    assert!(r.ceilings.copy_gbps.unwrap() > 0.0, "{:?}", r.ceilings);
    assert!(r.ceilings.fma_tflops.unwrap() > 0.0, "{:?}", r.ceilings);
    assert_eq!(r.device.backend, "cpu");
    assert!(!r.tool.git_commit.is_empty());
    // The program by name: the test runs it by its full path, which a results file shared
    // between machines should not carry.
    assert!(
        r.tool.command.starts_with("prunebench bench --backend cpu"),
        "{}",
        r.tool.command
    );
    let ops: Vec<_> = r.records.iter().filter(|x| x.op == "SCORE_WANDA").collect();
    assert_eq!(ops.len(), 4, "one per distinct tiny shape");
    for rec in ops {
        assert_eq!(rec.status, Status::Pass, "{}", rec.key);
        assert_eq!(rec.repeats, 3);
        assert!(rec.median_s.unwrap() > 0.0 && rec.bytes > 0 && rec.flops > 0);
        assert!(rec.peak_fraction.unwrap() > 0.0);
        assert!(!rec.checks.is_empty());
    }
    let layer = r.records.iter().find(|x| x.op == "LAYER_WANDA").unwrap();
    assert!(layer.stages.contains_key("act_stat") && layer.stages.contains_key("prune_scored"));
    let report = Command::new(env!("CARGO_BIN_EXE_prunebench"))
        .args(["report"])
        .arg(&out)
        .arg("--out")
        .arg(dir.path().join("report"))
        .output()
        .unwrap();
    assert!(report.status.success());
    let md = std::fs::read_to_string(dir.path().join("report/report.md")).unwrap();
    assert!(md.contains("SCORE_WANDA") && md.contains("LAYER_WANDA"));
}

/// Whole-model records: the fixture checkpoint pruned per method through the sequential loop,
/// timed with its stages and work, and a "Whole models" section in the report.
#[test]
fn bench_times_whole_models_and_the_report_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cpu.json");
    let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/forward");
    let run = Command::new(env!("CARGO_BIN_EXE_prunebench"))
        .args(["bench", "--backend", "cpu", "--op", "ACT_STAT", "--methods"])
        .args([
            "wanda,sparsegpt,gblm",
            "--sparsities",
            "0.5",
            "--repeats",
            "2",
        ])
        .args([
            "--warmup",
            "1",
            "--layer-repeats",
            "1",
            "--samples",
            "4",
            "--tokens",
            "32",
        ])
        .arg("--checkpoint")
        .arg(fx.join("gqa"))
        .arg("--model-text")
        .arg(fx.join("text.txt"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    // gblm without --gradients is skipped, and says so.
    assert!(err.contains("gblm 0.5: skipped"), "{err}");
    let file = ResultsFile::read(&out).unwrap();
    let models: Vec<_> = file
        .records
        .iter()
        .filter(|r| r.kind == RecordKind::Model && r.op.starts_with("MODEL_"))
        .collect();
    assert_eq!(
        models.len(),
        2,
        "{:?}",
        models.iter().map(|r| &r.key).collect::<Vec<_>>()
    );
    for r in &models {
        assert!(
            r.median_s.unwrap() > 0.0 && r.flops > 0 && r.bytes > 0,
            "{}",
            r.key
        );
        assert!(
            r.key.contains("layers=3") && r.key.contains("seqlen=32"),
            "{}",
            r.key
        );
        assert!(!r.stages.is_empty(), "{}", r.key);
    }
    let md = rendered_report(&out, dir.path());
    assert!(
        md.contains("## Whole models") && md.contains("MODEL_SPARSEGPT"),
        "{md}"
    );
}

/// The whole-model GRADIENTS record: GBLM's statistic through the backward pass, once per run
/// (not per method: here there is none), with its work model and a row under "Whole models".
#[test]
fn bench_times_the_gradient_pass_of_a_whole_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cpu.json");
    let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/forward");
    let run = Command::new(env!("CARGO_BIN_EXE_prunebench"))
        .args([
            "bench",
            "--backend",
            "cpu",
            "--op",
            "ACT_STAT",
            "--methods",
            "none",
        ])
        .args(["--repeats", "1", "--warmup", "0", "--layer-repeats", "2"])
        .args(["--samples", "2", "--tokens", "16"])
        .arg("--checkpoint")
        .arg(fx.join("gqa"))
        .arg("--model-text")
        .arg(fx.join("text.txt"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let file = ResultsFile::read(&out).unwrap();
    let grads: Vec<_> = file
        .records
        .iter()
        .filter(|r| r.op == "GRADIENTS")
        .collect();
    assert_eq!(grads.len(), 1, "one per run, whatever the methods");
    let r = grads[0];
    assert_eq!(
        r.key,
        "GRADIENTS(model=gqa,nsamples=2,seqlen=16,layers=3,norm=l2)"
    );
    assert_eq!(r.kind, RecordKind::Model);
    assert_eq!(r.params["norm"], "l2");
    assert_eq!(r.repeats, 2);
    assert!(
        r.median_s.unwrap() > 0.0 && r.tflops.unwrap() > 0.0,
        "{r:?}"
    );
    // The work model by hand for the fixture (hidden 96, 6 heads of 16, 3 KV heads,
    // intermediate 200, 3 layers, vocabulary 320), T = 16, 2 windows. P = 85248 parameters in
    // a layer's linears, A = 2·16·17·96 = 52224 attention flops per layer forward.
    // Flops per window: 3·(8·P·T + 4.5·A) + 6·320·96·T = 36_389_376.
    // Bytes per window: 4·(3·3·P + 2·320·96) weights + 8·3·P accumulators = 5_360_640.
    assert_eq!(r.flops, 2 * 36_389_376);
    assert_eq!(r.bytes, 2 * 5_360_640);
    let md = rendered_report(&out, dir.path());
    let whole = md.find("## Whole models").expect("a Whole models section");
    let row = md
        .find("model=gqa,nsamples=2,seqlen=16,layers=3,norm=l2")
        .expect("the GRADIENTS row");
    assert!(row > whole && md[whole..].contains("### GRADIENTS"), "{md}");
}

/// `prunebench report` of one results file, rendered into `dir`/report: its report.md.
fn rendered_report(results: &std::path::Path, dir: &std::path::Path) -> String {
    let report = dir.join("report");
    let run = Command::new(env!("CARGO_BIN_EXE_prunebench"))
        .arg("report")
        .arg(results)
        .arg("--out")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read_to_string(report.join("report.md")).unwrap()
}
