//! Helpers the structured-op tests of both GPU backends share: the comparisons with the
//! reference and the upload.

use prunebench_kernels::{Backend, Matrix};

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

pub fn up<B: Backend>(b: &B, m: &Matrix) -> B::Tensor {
    b.upload(m).expect("upload")
}
