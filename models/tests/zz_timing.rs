use prunebench_models::config::lookup;
use prunebench_models::synthetic::SyntheticCalibration;
use prunebench_models::CalibrationSource;
#[test]
fn timing() {
    let cfg = lookup("llama-7b").unwrap();
    let t0 = std::time::Instant::now();
    let cal = SyntheticCalibration::new(&cfg, 0, 16, 256, 0);
    println!("structure {:?}", t0.elapsed());
    for (g, _) in cfg.input_groups() {
        let t = std::time::Instant::now();
        for s in 0..16 {
            std::hint::black_box(cal.input(g, s).unwrap());
        }
        println!("{} {:?}", g.name(), t.elapsed());
    }
    let t = std::time::Instant::now();
    for l in cfg.linears() {
        std::hint::black_box(cal.output_grad(&l, 0).unwrap());
    }
    println!("grads one sample all linears {:?}", t.elapsed());
    println!("total {:?}", t0.elapsed());
}
