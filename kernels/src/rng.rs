//! A small seeded generator (xoshiro256**, seeded by SplitMix64) and the data shapes tests and
//! synthetic layers draw from. Written here rather than taken from `rand` so that a seed gives
//! the same layer on every platform and every future version: results must be reproducible.

use crate::tensor::Matrix;

#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    /// An independent stream for a named purpose, so adding a draw in one place does not shift
    /// every later value.
    pub fn derive(seed: u64, stream: &[u64]) -> Self {
        let mut h = seed ^ 0x51_7C_C1_B7_27_22_0A_95;
        for &s in stream {
            h = Rng::new(h ^ s.rotate_left(17)).next_u64();
        }
        Rng::new(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Standard normal (Box-Muller; one value per call keeps the stream simple).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1], so ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Student-t with `nu` degrees of freedom: heavy tails for test data.
    pub fn student_t(&mut self, nu: u32) -> f64 {
        let z = self.normal();
        let chi2: f64 = (0..nu).map(|_| self.normal().powi(2)).sum();
        z / (chi2 / nu as f64).sqrt()
    }
}

/// Test data of the kind the kernels must survive: Student-t(3) entries and a few columns
/// 10-100x larger than the rest (as LLaMA's outlier channels), never zero.
pub fn heavy_tailed(rows: usize, cols: usize, seed: u64) -> Matrix {
    if draws_skipped() {
        // Zeros: the allocator hands out untouched pages for them, which no one reads.
        return Matrix::zeros(rows, cols);
    }
    let mut rng = Rng::new(seed);
    let col_scale: Vec<f32> = (0..cols)
        .map(|_| {
            if rng.uniform() < 0.03 {
                (10.0 + 90.0 * rng.uniform()) as f32
            } else {
                (0.5 + rng.uniform()) as f32
            }
        })
        .collect();
    Matrix::from_fn(rows, cols, |_, c| {
        let v = rng.student_t(3) as f32 * col_scale[c];
        if v == 0.0 {
            f32::MIN_POSITIVE
        } else {
            v
        }
    })
}

/// Strictly positive heavy-tailed data, for statistics that must be non-negative.
pub fn heavy_tailed_positive(rows: usize, cols: usize, seed: u64) -> Matrix {
    let mut m = heavy_tailed(rows, cols, seed);
    // Skipped draws are zeros already: the pass would only touch their untouched pages.
    if draws_skipped() {
        return m;
    }
    for v in &mut m.data {
        *v = v.abs();
    }
    m
}

thread_local! {
    static DRAWS_SKIPPED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every heavy-tailed draw on this thread replaced by zeros: for inputs whose
/// values nothing reads (a run that needs their shapes only), where drawing model-sized
/// tensors (a Student-t sample per value) would be most of the time.
pub fn skipping_draws<T>(f: impl FnOnce() -> T) -> T {
    let before = DRAWS_SKIPPED.with(|d| d.replace(true));
    let out = f();
    DRAWS_SKIPPED.with(|d| d.set(before));
    out
}

/// Whether this thread is inside [`skipping_draws`].
pub fn draws_skipped() -> bool {
    DRAWS_SKIPPED.with(|d| d.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_plausible_moments() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut r = Rng::new(1);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
        assert_ne!(
            Rng::derive(1, &[2]).next_u64(),
            Rng::derive(1, &[3]).next_u64()
        );
    }

    #[test]
    fn heavy_tailed_has_no_zeros_and_outlier_columns() {
        let m = heavy_tailed(64, 200, 3);
        assert!(m.data.iter().all(|v| *v != 0.0 && v.is_finite()));
        let col_abs = |c: usize| (0..64).map(|r| m.get(r, c).abs()).sum::<f32>();
        let sums: Vec<f32> = (0..200).map(col_abs).collect();
        let max = sums.iter().cloned().fold(0.0, f32::max);
        let median = {
            let mut s = sums.clone();
            s.sort_by(|a, b| a.total_cmp(b));
            s[100]
        };
        assert!(max > 8.0 * median, "max {max} median {median}");
    }
}
