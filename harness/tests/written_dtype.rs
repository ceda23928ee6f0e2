//! The reconstruction error a layer reports is that of the weights as its dtype stores them,
//! which is what `--out` writes: on a bf16 layer SparseGPT's updated weights are rounded to
//! bf16, and the report measures those, with the f32 figure beside it.

use prunebench_harness::{prune_layer, Calibration, Method, PruneConfig};
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::{Backend, Sparsity};
use prunebench_models::config::lookup;
use prunebench_models::synthetic::{synthetic_layer, SyntheticCalibration};
use prunebench_models::{CalibrationSource, DType};

#[test]
fn a_bf16_layer_reports_the_error_of_its_written_weights() {
    let cfg = lookup("tiny").unwrap();
    let linears = cfg.linears();
    let mut layer = synthetic_layer(&cfg, 0, &linears[..3], 4);
    // A bf16 checkpoint's weights: bf16-exact values, read into f32.
    layer.dtypes = vec![DType::BF16; layer.linears.len()];
    for (_, w) in &mut layer.linears {
        DType::BF16.round_trip(&mut w.data);
    }
    let cal = SyntheticCalibration::new(&cfg, 0, 4, 32, 4);
    let b = CpuBackend::new();
    let run = prune_layer(
        &b,
        &layer,
        &Calibration {
            source: &cal,
            ready: None,
        },
        &PruneConfig::new(Method::Sparsegpt, Sparsity::NM { n: 2, m: 4 }),
        true,
        &|_| {},
    )
    .unwrap();

    let g = linears[0].input;
    let mut h = b.zeros(256, 256).unwrap();
    for s in 0..cal.samples() {
        let x = b.upload(&cal.input(g, s).unwrap()).unwrap();
        b.hessian_update(&mut h, s, &x, 1).unwrap();
    }
    for (((spec, original), (_, written)), report) in layer
        .linears
        .iter()
        .zip(&run.pruned)
        .zip(&run.report.linears)
    {
        let mut rounded = written.data.clone();
        DType::BF16.round_trip(&mut rounded);
        assert_eq!(
            rounded, written.data,
            "{}: kept weights are not bf16",
            spec.name
        );
        let want = b
            .recon_error(
                &b.upload(original).unwrap(),
                &b.upload(written).unwrap(),
                &h,
            )
            .unwrap()
            .relative();
        assert!(
            (report.recon_error - want).abs() <= 1e-12 * want,
            "{}: reported {} vs written weights' {want}",
            spec.name,
            report.recon_error
        );
        let f32_error = report.recon_error_f32.expect("f32 figure on a bf16 layer");
        assert_ne!(
            f32_error, report.recon_error,
            "{}: the rounding should show",
            spec.name
        );
    }
}
