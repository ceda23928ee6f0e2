//! How fast the CPU reference's f64 dense linear algebra is, next to numpy on the same shapes
//! and cores: the reference verifies every GPU result, so at full size verification waits on
//! these ops. Not a criterion bench: each op takes seconds at LLaMA-7B shapes, and the point
//! is one table with both figures, not statistics.
//!
//!   cargo bench -p prunebench-kernels --bench reference_speed
//!   cargo bench -p prunebench-kernels --bench reference_speed -- --cols 1024 --rows 1024 --samples 4
//!
//! Options (or the environment variable in brackets): --cols (REF_SPEED_COLS, 4096),
//! --rows (REF_SPEED_ROWS, 4096), --samples (REF_SPEED_SAMPLES, 16), --tokens
//! (REF_SPEED_TOKENS, 256), --reps (REF_SPEED_REPS, 1; the best run counts), --no-numpy.
//! numpy runs `baselines/numpy_linalg_speed.py` under PRUNEBENCH_PYTHON (default python3).

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use prunebench_kernels::cpu::linalg::{self, View};
use prunebench_kernels::cpu::{CpuBackend, CpuTensor};
use prunebench_kernels::ops::PERCDAMP;
use prunebench_kernels::rng::{heavy_tailed, Rng};
use prunebench_kernels::Backend;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../baselines/numpy_linalg_speed.py"
);

struct Config {
    cols: usize,
    rows: usize,
    samples: usize,
    tokens: usize,
    reps: usize,
    numpy: bool,
}

fn config() -> Config {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str, var: &str, default: usize| -> usize {
        let from_args = args
            .iter()
            .position(|a| a == flag)
            .map(|i| args.get(i + 1).cloned().unwrap_or_default());
        match from_args.or_else(|| std::env::var(var).ok()) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| panic!("{flag} / {var} must be a whole number, not {v:?}")),
            None => default,
        }
    };
    Config {
        cols: get("--cols", "REF_SPEED_COLS", 4096),
        rows: get("--rows", "REF_SPEED_ROWS", 4096),
        samples: get("--samples", "REF_SPEED_SAMPLES", 16),
        tokens: get("--tokens", "REF_SPEED_TOKENS", 256),
        reps: get("--reps", "REF_SPEED_REPS", 1).max(1),
        // `cargo bench` passes --bench to every target; everything else we do not know is
        // ignored too, so the target can sit beside criterion's in one `cargo bench`.
        numpy: !args.iter().any(|a| a == "--no-numpy"),
    }
}

/// The best of `reps` runs of `f`, in seconds; `setup` builds each run's input untimed.
fn best<I, O>(reps: usize, mut setup: impl FnMut() -> I, mut f: impl FnMut(I) -> O) -> f64 {
    (0..reps)
        .map(|_| {
            let input = setup();
            let t0 = Instant::now();
            std::hint::black_box(f(input));
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn normal(rows: usize, cols: usize, seed: u64) -> Vec<f64> {
    let mut r = Rng::new(seed);
    (0..rows * cols).map(|_| r.normal()).collect()
}

fn tensor(rows: usize, cols: usize, data: Vec<f64>) -> CpuTensor {
    CpuTensor { rows, cols, data }
}

/// (op, shape, seconds) for the reference, in the order numpy's script prints them.
fn reference(c: &Config) -> Vec<(String, String, f64)> {
    let b = CpuBackend::new();
    let n = c.cols;
    let mut out = Vec::new();
    let mut record = |op: &str, shape: String, s: f64| {
        eprintln!("  {op} {shape}: {s:.3} s");
        out.push((op.to_string(), shape, s));
    };

    let a = normal(n, n, 1);
    let bm = normal(n, n, 2);
    let s = best(
        c.reps,
        || vec![0.0; n * n],
        |mut cm| {
            let rows = View::rows(0, n);
            linalg::gemm(n, n, n, 1.0, &a, rows, &bm, rows, 0.0, &mut cm, rows);
            cm
        },
    );
    record("gemm", format!("{n}x{n}x{n}"), s);

    // A·Aᵀ + n·I: comfortably positive definite, as numpy's script builds it.
    let mut spd = vec![0.0; n * n];
    linalg::gemm(
        n,
        n,
        n,
        1.0,
        &a,
        View::rows(0, n),
        &a,
        View::transposed(0, n),
        0.0,
        &mut spd,
        View::rows(0, n),
    );
    for i in 0..n {
        spd[i * n + i] += n as f64;
    }
    let s = best(
        c.reps,
        || spd.clone(),
        |mut l| {
            linalg::cholesky_lower(&mut l, n).expect("A·Aᵀ + n·I is positive definite");
            l
        },
    );
    record("cholesky", format!("{n}"), s);
    let mut l = spd.clone();
    linalg::cholesky_lower(&mut l, n).expect("A·Aᵀ + n·I is positive definite");
    let s = best(c.reps, || (), |_| linalg::invert_lower(&l, n));
    record("tri_inverse", format!("{n}"), s);
    drop((a, bm, spd, l));

    let xs: Vec<CpuTensor> = (0..c.samples)
        .map(|i| b.upload(&heavy_tailed(c.tokens, n, 10 + i as u64)).unwrap())
        .collect();
    let s = best(
        c.reps,
        || CpuTensor::zeros(n, n),
        |mut h| {
            for (seen, x) in xs.iter().enumerate() {
                b.hessian_update(&mut h, seen, x, 1).unwrap();
            }
            h
        },
    );
    record(
        "hessian",
        format!("{}x{}, {n} cols", c.samples, c.tokens),
        s,
    );
    let mut h = CpuTensor::zeros(n, n);
    for (seen, x) in xs.iter().enumerate() {
        b.hessian_update(&mut h, seen, x, 1).unwrap();
    }
    drop(xs);

    let s = best(c.reps, || (), |_| b.hinv_factor(&h, PERCDAMP).unwrap());
    record("hinv_factor", format!("{n}"), s);

    let w = b.upload(&heavy_tailed(c.rows, n, 3)).unwrap();
    // Half the entries zeroed: the values do not change the work, only the figure.
    let pruned = tensor(
        c.rows,
        n,
        w.data
            .iter()
            .enumerate()
            .map(|(i, &v)| if i % 2 == 0 { 0.0 } else { v })
            .collect(),
    );
    let s = best(c.reps, || (), |_| b.recon_error(&w, &pruned, &h).unwrap());
    record("recon_error", format!("{}x{n}", c.rows), s);
    out
}

/// numpy's seconds per op, or why there are none.
fn numpy(c: &Config) -> Result<HashMap<String, f64>, String> {
    let python = std::env::var("PRUNEBENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let found = Command::new(&python)
        .args(["-c", "import numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        return Err(format!(
            "numpy not found (`{python} -c 'import numpy'` failed; set PRUNEBENCH_PYTHON to a \
             python that has it)"
        ));
    }
    eprintln!("numpy ({python} {SCRIPT}) ...");
    let o = Command::new(&python)
        .arg(SCRIPT)
        .args(["--cols", &c.cols.to_string()])
        .args(["--rows", &c.rows.to_string()])
        .args(["--samples", &c.samples.to_string()])
        .args(["--tokens", &c.tokens.to_string()])
        .args(["--reps", &c.reps.to_string()])
        .output()
        .map_err(|e| format!("could not run {SCRIPT}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{SCRIPT} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let mut times = HashMap::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if line.starts_with('#') {
            // What BLAS numpy runs, and on how many threads: the figures mean little without it.
            println!("{line}");
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if let [op, _shape, secs] = f[..] {
            if let Ok(s) = secs.parse::<f64>() {
                times.insert(op.to_string(), s);
            }
        }
    }
    Ok(times)
}

fn main() {
    let c = config();
    eprintln!(
        "reference speed: cols {}, rows {}, {} samples x {} tokens, best of {}",
        c.cols, c.rows, c.samples, c.tokens, c.reps
    );
    let ours = reference(&c);
    let theirs = if c.numpy {
        numpy(&c)
    } else {
        Err("numpy skipped (--no-numpy)".into())
    };
    println!("# prunebench: {}", CpuBackend::new().info().device);
    if let Err(why) = &theirs {
        println!("# {why}");
    }
    println!(
        "{:<12} {:<22} {:>13} {:>10} {:>7}",
        "op", "shape", "prunebench s", "numpy s", "ratio"
    );
    for (op, shape, s) in &ours {
        let np = theirs.as_ref().ok().and_then(|t| t.get(op).copied());
        let (np_s, ratio) = match np {
            Some(t) => (format!("{t:.3}"), format!("{:.2}", s / t)),
            None => ("-".into(), "-".into()),
        };
        println!("{op:<12} {shape:<22} {s:>13.3} {np_s:>10} {ratio:>7}");
    }
}
