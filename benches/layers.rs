//! Whole LLaMA layers pruned per method and sparsity on every backend present: the time of
//! the pruning stages on the device (statistics accumulation included), per
//! `PRUNEBENCH_BENCH_MODEL` with synthetic weights and calibration.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};

use common::{env_usize, for_each_backend, Visit};
use prunebench_harness::{prune_layer, Calibration, Method, PruneConfig, RefitConfig};
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
        // Each mask method at both patterns, structured pruning, and magnitude with PERP's re-fit
        // (§12) after it.
        let refit = RefitConfig {
            items: RefitConfig::parse_items("norm,masklora:16").expect("a valid list"),
            ..RefitConfig::default()
        };
        let mut runs: Vec<(PruneConfig, String)> = Vec::new();
        for method in Method::ALL {
            for sparsity in [Sparsity::Unstructured(0.5), Sparsity::NM { n: 2, m: 4 }] {
                let id = format!("{}/{method}/{sparsity}", self.layer.model.name);
                runs.push((PruneConfig::new(method, sparsity), id));
            }
        }
        // Structured pruning (§11) at 30% of the layer's parameters, the default obs saliency
        // and compensation.
        runs.push((
            PruneConfig::new(Method::Structured, Sparsity::Unstructured(0.3)),
            format!("{}/structured/0.3", self.layer.model.name),
        ));
        let mut cfg = PruneConfig::new(Method::Magnitude, Sparsity::Unstructured(0.5));
        cfg.refit = refit;
        runs.push((
            cfg,
            format!(
                "{}/magnitude/0.5/refit=norm+masklora:16",
                self.layer.model.name
            ),
        ));
        {
            for (cfg, id) in runs {
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
