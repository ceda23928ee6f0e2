//! What the structured-op tests share: the bindings they cap, the inverse Hessians they
//! start from, and the OBS saliency as both sides compute it.

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::ops::PERCDAMP;
use prunebench_kernels::rng::heavy_tailed;
use prunebench_kernels::{Backend, Matrix};

use super::backends::TestBackend;
use super::{down, up};

/// Bindings capped at 64 rows of 300 columns: W, Hinv, Hinv[S,:] and Y of the split cases
/// each span several bindings.
pub const SPLIT_BYTES: u64 = 64 * 300 * 4;

/// 128 KiB: H, U and Hinv of 300 columns (360 KB) and W of 130 x 300 in windows of rows; the
/// wide groups' blocks still fit.
pub const WIDE_SPLIT_BYTES: u64 = 128 << 10;

/// 8 KiB, the least wgpu takes: tensors come in windows of a few rows.
pub const WINDOW_BYTES: u64 = 8 << 10;

/// The backend with bindings capped at `SPLIT_BYTES`, W, Hinv and the k x k blocks of the
/// wider cases really split.
pub fn split<B: TestBackend>() -> B {
    let b = B::split(SPLIT_BYTES);
    for (rows, cols) in [(150, 300), (300, 300), (130, 200), (200, 200), (150, 150)] {
        assert!(b.is_split(rows, cols), "{rows}x{cols}");
    }
    b
}

/// The backend with bindings capped at `WIDE_SPLIT_BYTES`, Hinv of 300 columns split.
pub fn wide_split<B: TestBackend>() -> B {
    let b = B::split(WIDE_SPLIT_BYTES);
    assert!(b.is_split(300, 300));
    b
}

/// The Hessian of `tokens` heavy-tailed tokens of `cols` inputs through the reference's §3
/// update; `dead` columns of the tokens are zero (dead inputs).
pub fn hessian_of(tokens: usize, cols: usize, seed: u64, dead: &[usize]) -> Matrix {
    let cpu = CpuBackend::new();
    let mut x = heavy_tailed(tokens, cols, seed);
    for r in 0..x.rows {
        for &c in dead {
            x.data[r * cols + c] = 0.0;
        }
    }
    let mut h = cpu.zeros(cols, cols).unwrap();
    cpu.hessian_update(&mut h, 0, &up(&cpu, &x), 1).unwrap();
    down(&cpu, &h)
}

/// Where a case's W and damped inverse Hessian come from: W's seed, and the seed and the
/// tokens beyond 2·cols of the Hessian behind Hinv.
#[derive(Clone, Copy)]
pub struct Seeds {
    pub w: u64,
    pub hinv: u64,
    pub extra_tokens: usize,
}

impl Seeds {
    /// A damped inverse Hessian of `cols` inputs from a real Hessian, through §11's explicit
    /// inverse, rounded to f32 so that both sides start from the same values.
    pub fn hinv(&self, cols: usize) -> Matrix {
        let cpu = CpuBackend::new();
        let h = hessian_of(2 * cols + self.extra_tokens, cols, self.hinv, &[]);
        let e = cpu.hinv_explicit(&up(&cpu, &h), PERCDAMP).unwrap();
        down(&cpu, &e.hinv)
    }

    /// `hinv` from another seed of the Hessian.
    pub fn hinv_with(&self, cols: usize, seed: u64) -> Matrix {
        Seeds {
            hinv: seed,
            ..*self
        }
        .hinv(cols)
    }

    pub fn w(&self, rows: usize, cols: usize) -> Matrix {
        heavy_tailed(rows, cols, self.w)
    }
}

/// The OBS saliency of `groups` of `width` columns of W, as `b` scores it.
pub fn saliency<B: Backend>(
    b: &B,
    w: &Matrix,
    hinv: &Matrix,
    width: usize,
    groups: &[usize],
) -> Matrix {
    let s = b
        .obs_saliency(&up(b, w), &up(b, hinv), width, groups)
        .unwrap();
    down(b, &s)
}
