//! Every op of the suite's table on every backend present, on a model's shapes. Time is the
//! backend's own (GPU timestamps where available) via `iter_custom`; throughput is the op's
//! work model: elements = flops, bytes = bytes moved. Independent input sets are rotated so
//! that a weight small enough for the last-level cache is not timed warm.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

use common::{device_time, for_each_backend, Visit};
use prunebench_kernels::suite::{self, model_cases, CaseInputs, ModelShapes, OpCase};
use prunebench_kernels::Backend;

const INPUT_SETS: usize = 3;

struct Ops<'a> {
    c: &'a mut Criterion,
    cases: Vec<OpCase>,
}

impl Visit for Ops<'_> {
    fn visit<B: Backend>(&mut self, b: &B) {
        let name = b.info().backend.clone();
        let mut group = self.c.benchmark_group(format!("ops/{name}"));
        // Flat sampling: ten samples of equal iteration counts, so a slow case (a layer on a
        // software rasteriser) costs tens of iterations, not the hundreds linear sampling needs.
        group.sampling_mode(SamplingMode::Flat);
        for case in &self.cases {
            let mut sets = Vec::new();
            for k in 0..INPUT_SETS {
                let mut c = *case;
                c.seed += 1000 * k as u64;
                let inputs = CaseInputs::generate(&c).expect("inputs");
                match suite::prepare(b, &c, &inputs) {
                    Ok(p) => sets.push(p),
                    Err(e) => {
                        eprintln!("{name} {}: skipped, {e}", case.name());
                        break;
                    }
                }
            }
            if sets.len() < INPUT_SETS {
                continue;
            }
            group.throughput(Throughput::ElementsAndBytes {
                elements: case.flops(),
                bytes: case.bytes(),
            });
            group.bench_function(case.name(), |bench| {
                bench.iter_custom(|iters| {
                    device_time(b, iters, |i| {
                        suite::execute(b, &mut sets[i as usize % INPUT_SETS])
                    })
                })
            });
        }
        group.finish();
    }
}

fn ops(c: &mut Criterion) {
    let (model, tokens) = common::model_and_tokens();
    let filter = std::env::var("PRUNEBENCH_BENCH_OPS")
        .ok()
        .map(|f| f.to_ascii_uppercase());
    let mut linears: Vec<(usize, usize)> =
        model.linears().iter().map(|l| (l.rows, l.cols)).collect();
    linears.sort_unstable();
    linears.dedup();
    let shapes = ModelShapes {
        linears,
        layer: model.layer_dims(),
        forward: model.forward_dims(),
        tokens,
    };
    let cases = model_cases(&shapes)
        .into_iter()
        .filter(|c| {
            filter
                .as_ref()
                .is_none_or(|f| c.name().contains(f.as_str()))
        })
        .collect();
    for_each_backend(&mut Ops { c, cases });
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = ops
}
criterion_main!(benches);
