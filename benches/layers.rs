//! Whole LLaMA layers pruned per method and sparsity on every backend present: the time of
//! the pruning stages on the device (statistics accumulation included), per
//! `PRUNEBENCH_BENCH_MODEL` with synthetic weights and calibration.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};

use common::{env_usize, for_each_backend, Visit};
use prunebench_harness::{prune_layer, Calibration, Method, PruneConfig};
use prunebench_kernels::{Backend, Sparsity};
use prunebench_models::synthetic::{synthetic_layer, SyntheticCalibration};
use prunebench_models::LayerWeights;

struct Layers<'a> {
    c: &'a mut Criterion,
    layer: LayerWeights,
    calib: SyntheticCalibration,
}

impl Visit for Layers<'_> {
    fn visit<B: Backend>(&mut self, b: &B) {
        let name = b.info().backend.clone();
        let mut group = self.c.benchmark_group(format!("layers/{name}"));
        // Flat sampling: ten samples of equal iteration counts, so a slow case (a layer on a
        // software rasteriser) costs tens of iterations, not the hundreds linear sampling needs.
        group.sampling_mode(SamplingMode::Flat);
        let calib = Calibration {
            source: &self.calib,
            ready: None,
        };
        for method in Method::ALL {
            for sparsity in [Sparsity::Unstructured(0.5), Sparsity::NM { n: 2, m: 4 }] {
                let cfg = PruneConfig::new(method, sparsity);
                let id = format!("{}/{method}/{sparsity}", self.layer.model.name);
                group.bench_function(id, |bench| {
                    bench.iter_custom(|iters| {
                        let mut total = 0.0;
                        for _ in 0..iters {
                            let run = prune_layer(b, &self.layer, &calib, &cfg, false, &|_| {})
                                .expect("layer pruning failed");
                            total += run.report.prune_seconds;
                        }
                        std::time::Duration::from_secs_f64(total)
                    })
                });
            }
        }
        group.finish();
    }
}

fn layers(c: &mut Criterion) {
    let (model, tokens) = common::model_and_tokens();
    let samples = env_usize("PRUNEBENCH_BENCH_SAMPLES", 4);
    let layer = synthetic_layer(&model, 0, &model.linears(), 0);
    let calib = SyntheticCalibration::new(&model, 0, samples, tokens, 0);
    for_each_backend(&mut Layers { c, layer, calib });
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = layers
}
criterion_main!(benches);
