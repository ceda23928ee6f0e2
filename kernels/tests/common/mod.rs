//! What the GPU backends' per-family tests share: the comparisons with the reference, the
//! upload and download, `instantiate!` (one test per generic body for a backend), and in
//! `backends` the few knobs in which the backends differ.

// Each test file uses a part of this.
#![allow(dead_code)]

pub mod backends;
pub mod structured;

use prunebench_kernels::suite::{small_cases, verify_cases, OpCase};
use prunebench_kernels::{Backend, Matrix};

/// Test functions that call the generic bodies of the same names in the enclosing file for
/// backend `$B`, each with the attributes in `[...]` (`[]` for none): invoked inside a
/// per-backend module (`mod wgpu { ... }`), so `super::$name` is the body.
macro_rules! instantiate {
    ($B:ty, $attrs:tt, $($name:ident),+ $(,)?) => {
        $( instantiate!(@one $B, $attrs, $name); )+
    };
    (@one $B:ty, [$($attr:tt)*], $name:ident) => {
        $($attr)*
        #[test]
        fn $name() {
            super::$name::<$B>();
        }
    };
}

/// sum((got − want)²) / sum(want²).
pub fn nmse(want: &Matrix, got: &Matrix) -> f64 {
    assert_eq!(want.shape(), got.shape());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &b) in want.data.iter().zip(&got.data) {
        num += (b as f64 - a as f64).powi(2);
        den += (a as f64).powi(2);
    }
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// The largest |got − want| / |want| over the entries (NaN counts as failing).
pub fn max_rel(want: &Matrix, got: &Matrix) -> f64 {
    assert_eq!(want.shape(), got.shape());
    want.data
        .iter()
        .zip(&got.data)
        .map(|(&a, &b)| (b as f64 - a as f64).abs() / (a as f64).abs().max(f64::MIN_POSITIVE))
        .fold(
            0.0,
            |m: f64, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
        )
}

/// Fails unless `got` is within `tol` of `want` in nmse.
pub fn assert_close(what: &str, want: &Matrix, got: &Matrix, tol: f64) {
    let e = nmse(want, got);
    assert!(e <= tol, "{what}: nmse {e:e} > {tol:e}");
}

/// The entries' bit patterns: equal only where every entry is the same f32, signed zeros
/// and NaN payloads included.
pub fn bits(m: &Matrix) -> Vec<u32> {
    m.data.iter().map(|v| v.to_bits()).collect()
}

pub fn up<B: Backend>(b: &B, m: &Matrix) -> B::Tensor {
    b.upload(m).expect("upload")
}

pub fn down<B: Backend>(b: &B, t: &B::Tensor) -> Matrix {
    b.download(t).expect("download")
}

/// Runs `cases` on `b` and on the reference and fails listing every case that did not pass
/// (an unsupported case is a failure here: these shapes are small).
pub fn run_cases<B: Backend>(b: &B, cases: &[OpCase]) {
    let failures = verify_cases(b, cases);
    assert!(
        failures.is_empty(),
        "{}: {} of {} cases failed:\n{}",
        b.info().backend,
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The small cases whose op name starts with one of `prefixes`.
pub fn small_cases_named(prefixes: &[&str]) -> Vec<OpCase> {
    small_cases()
        .into_iter()
        .filter(|c| prefixes.iter().any(|p| c.op_name().starts_with(p)))
        .collect()
}
