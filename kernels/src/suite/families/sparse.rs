//! The sparse-inference ops of §13: compressing a pruned weight (dense f16, 2:4, bitmap) and
//! the product Y = X·Wᵀ from the compressed weight. Their names, small and model cases, work
//! model, inputs (weights pruned by the suite's own pruners), run and comparison.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::{not_in_family, Family};
use crate::cpu::CpuBackend;
use crate::error::Result;
use crate::formats::{self, PackedWeight, WeightFormat};
use crate::ops::{
    tolerance as tol, unstructured_k, Backend, MaskGroup, MaskPattern, ObsSelection, Score,
    Sparsity, OBS_BLOCK, PERCDAMP,
};
use crate::plan;
use crate::rng::{heavy_tailed, heavy_tailed_positive, Rng};
use crate::suite::case::{ModelShapes, Op, OpCase};
use crate::suite::compare::{value_check, Check};
use crate::suite::inputs::{correlated, hessian_of, scaled, shapes_only, CaseInputs};
use crate::suite::run::{never_ran, CaseOutput};
use crate::tensor::{Mask, Matrix};

const FAMILY: Family = Family::Sparse;

/// Where a compressed-weight case's mask comes from (§13): the suite's own pruners, whose
/// masks differ in how evenly rows are pruned, which a bitmap kernel feels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskSource {
    /// Nothing pruned: the dense baseline, a fully dense bitmap.
    None,
    /// Wanda's score, per row (or N:M).
    Wanda(Sparsity),
    /// |W| over the whole matrix (or N:M), as the magnitude repositories prune.
    Magnitude(Sparsity),
    /// SparseGPT's adaptive per-block selection with its OBS updates (the weights it leaves).
    SparseGpt(Sparsity),
    /// Random at this fraction with the middle row pruned whole (a row with no kept entry):
    /// for the correctness cases.
    Holes(f64),
}

impl MaskSource {
    pub fn label(&self) -> String {
        match self {
            MaskSource::None => "none".into(),
            MaskSource::Wanda(s) => format!("wanda{s}"),
            MaskSource::Magnitude(s) => format!("magnitude{s}"),
            MaskSource::SparseGpt(s) => format!("sparsegpt{s}"),
            MaskSource::Holes(p) => format!("holes{p}"),
        }
    }

    /// Entries a mask of this source keeps in a rows x cols weight, from the pruners' own
    /// counting rules (`None` for the random one, whose count depends on its draws).
    pub fn kept(&self, rows: usize, cols: usize) -> Option<usize> {
        let all = rows * cols;
        let nm = |n: usize, m: usize| all - rows * (cols / m) * n;
        Some(match *self {
            MaskSource::None => all,
            MaskSource::Wanda(Sparsity::Unstructured(p)) => all - rows * unstructured_k(p, cols),
            MaskSource::Magnitude(Sparsity::Unstructured(p)) => all - unstructured_k(p, all),
            MaskSource::SparseGpt(Sparsity::Unstructured(p)) => {
                let blocks = (0..cols).step_by(OBS_BLOCK);
                all - blocks
                    .map(|i| unstructured_k(p, rows * OBS_BLOCK.min(cols - i)))
                    .sum::<usize>()
            }
            MaskSource::Wanda(Sparsity::NM { n, m })
            | MaskSource::Magnitude(Sparsity::NM { n, m })
            | MaskSource::SparseGpt(Sparsity::NM { n, m }) => nm(n, m),
            MaskSource::Holes(_) => return None,
        })
    }
}

/// The weight format a product case runs: a device format, or structured pruning's compacted
/// dense weight (the intermediate dimension kept at this fraction, dense f16).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseFormat {
    Dense,
    TwoFour,
    Bitmap,
    Structured(f64),
}

impl CaseFormat {
    /// The format the weight is stored in on the device.
    pub fn storage(&self) -> WeightFormat {
        match self {
            CaseFormat::Dense | CaseFormat::Structured(_) => WeightFormat::Dense,
            CaseFormat::TwoFour => WeightFormat::TwoFour,
            CaseFormat::Bitmap => WeightFormat::Bitmap,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            CaseFormat::Structured(_) => "structured",
            f => f.storage().name(),
        }
    }

    /// The stored weight's shape for a rows x cols linear: structured pruning removes FFN
    /// channels or heads, which shrinks the wider side (up/gate/q/k/v lose rows, down and o
    /// lose columns).
    pub fn stored_shape(&self, rows: usize, cols: usize) -> (usize, usize) {
        match *self {
            CaseFormat::Structured(keep) => {
                let shrink = |n: usize| ((keep * n as f64).round() as usize).clamp(1, n);
                if cols > rows {
                    (rows, shrink(cols))
                } else {
                    (shrink(rows), cols)
                }
            }
            _ => (rows, cols),
        }
    }
}

/// Bytes of a compressed weight in `format` with `kept` kept entries: every buffer of the
/// layout in `formats`.
pub fn packed_bytes(format: WeightFormat, rows: usize, cols: usize, kept: usize) -> u64 {
    4 * match format {
        WeightFormat::Dense => rows * formats::dense_words_per_row(cols),
        WeightFormat::TwoFour => {
            rows * (formats::two_four_value_words_per_row(cols)
                + formats::two_four_code_words_per_row(cols))
        }
        WeightFormat::Bitmap => {
            rows * formats::bitmap_words_per_row(cols)
                + rows
                + 1
                + formats::bitmap_value_words(kept)
        }
    } as u64
}

impl OpCase {
    /// Entries a compressed-weight case keeps (structured: every entry of the smaller
    /// weight); `None` for other ops and random masks.
    pub fn kept(&self) -> Option<usize> {
        match self.op {
            Op::Compress(_, m) => m.kept(self.rows, self.cols),
            Op::Matmul { format, mask, .. } => {
                let (sr, sc) = format.stored_shape(self.rows, self.cols);
                mask.kept(sr, sc)
            }
            _ => None,
        }
    }

    /// The stored weight's bytes of a product case.
    pub fn weight_bytes(&self) -> Option<u64> {
        match self.op {
            Op::Matmul { format, .. } => {
                let (sr, sc) = format.stored_shape(self.rows, self.cols);
                let kept = self.kept().unwrap_or(sr * sc);
                Some(packed_bytes(format.storage(), sr, sc, kept))
            }
            _ => None,
        }
    }

    /// The dense f16 product of the same linear and token count: the baseline of a product
    /// case's speedup, and its bytes the numerator of the bandwidth bound S_max (§13).
    pub fn dense_equivalent(&self) -> Option<OpCase> {
        match self.op {
            Op::Matmul { n, .. } => Some(OpCase {
                op: Op::Matmul {
                    format: CaseFormat::Dense,
                    mask: MaskSource::None,
                    n,
                },
                ..*self
            }),
            _ => None,
        }
    }
}

// ---- The cases ----

const S24: Sparsity = Sparsity::NM { n: 2, m: 4 };

fn matmul(format: CaseFormat, mask: MaskSource, n: usize, rows: usize, cols: usize) -> OpCase {
    OpCase::new(Op::Matmul { format, mask, n }, rows, cols)
}

/// The compressed formats on odd shapes: columns that are not a multiple of a kernel unit,
/// a single row, N = 3 and N past one token block, a row with no kept entry, a fully dense
/// bitmap, 2:4 groups that keep fewer than two (kept zeros), each pruner's mask.
pub fn small_cases() -> Vec<OpCase> {
    use CaseFormat::{Bitmap, Dense, Structured, TwoFour};
    use MaskSource::{Holes, Magnitude, None, SparseGpt, Wanda};
    let half = Sparsity::Unstructured(0.5);
    let s34 = Sparsity::NM { n: 3, m: 4 };
    let mut v = vec![
        OpCase::new(Op::Compress(WeightFormat::Dense, Wanda(half)), 13, 37),
        OpCase::new(Op::Compress(WeightFormat::Dense, None), 1, 300),
        OpCase::new(Op::Compress(WeightFormat::TwoFour, Wanda(S24)), 13, 36),
        OpCase::new(Op::Compress(WeightFormat::TwoFour, Wanda(s34)), 13, 300),
        OpCase::new(Op::Compress(WeightFormat::TwoFour, Magnitude(S24)), 1, 40),
        OpCase::new(Op::Compress(WeightFormat::Bitmap, Wanda(half)), 13, 300),
        OpCase::new(Op::Compress(WeightFormat::Bitmap, Holes(0.6)), 13, 37),
        OpCase::new(Op::Compress(WeightFormat::Bitmap, None), 13, 300),
        OpCase::new(Op::Compress(WeightFormat::Bitmap, Magnitude(half)), 1, 37),
        OpCase::new(Op::Compress(WeightFormat::Bitmap, SparseGpt(half)), 13, 200),
    ];
    v.extend([
        matmul(Dense, None, 1, 13, 37),
        matmul(Dense, None, 3, 13, 300),
        matmul(Dense, None, 17, 1, 300),
        matmul(TwoFour, Wanda(S24), 3, 13, 300),
        matmul(TwoFour, Wanda(s34), 1, 1, 36),
        matmul(TwoFour, Magnitude(S24), 17, 13, 40),
        matmul(Bitmap, Holes(0.6), 3, 13, 300),
        matmul(Bitmap, None, 1, 13, 37),
        matmul(Bitmap, Magnitude(half), 17, 1, 300),
        matmul(Bitmap, SparseGpt(half), 3, 13, 200),
        matmul(Structured(0.5), None, 3, 13, 300),
        // From plan::SPARSE_TILED_FROM tokens, the tiled kernels: partial tiles of rows and
        // tokens, columns past the last 32-column chunk, one row.
        matmul(Dense, None, 131, 45, 37),
        matmul(TwoFour, Wanda(S24), 130, 33, 300),
        matmul(TwoFour, Wanda(s34), 128, 3, 36),
        matmul(Bitmap, Holes(0.6), 129, 45, 300),
        matmul(Bitmap, Magnitude(half), 197, 1, 70),
    ]);
    v
}

/// Token counts of the product cases: decode (1-16) and small batches (§13).
pub const MATMUL_TOKENS: [usize; 7] = [1, 2, 4, 8, 16, 64, 256];

/// Every format on each weight shape at every token count: the dense baseline, 2:4 from Wanda,
/// bitmaps from Wanda and magnitude at 50/60/70% and from SparseGPT at 50% (its mask costs an
/// OBS run on the reference per input set), structured at half the intermediate dimension.
pub fn matmul_cases(shapes: &[(usize, usize)]) -> Vec<OpCase> {
    use CaseFormat::{Bitmap, Dense, Structured, TwoFour};
    use MaskSource::{Magnitude, None, SparseGpt, Wanda};
    let mut v = Vec::new();
    for &(r, c) in shapes {
        for n in MATMUL_TOKENS {
            v.push(matmul(Dense, None, n, r, c));
            if c % 4 == 0 {
                v.push(matmul(TwoFour, Wanda(S24), n, r, c));
            }
            for p in [0.5, 0.6, 0.7] {
                let p = Sparsity::Unstructured(p);
                v.push(matmul(Bitmap, Wanda(p), n, r, c));
                v.push(matmul(Bitmap, Magnitude(p), n, r, c));
            }
            let half = Sparsity::Unstructured(0.5);
            v.push(matmul(Bitmap, SparseGpt(half), n, r, c));
            v.push(matmul(Structured(0.5), None, n, r, c));
        }
    }
    v
}

/// At a model's shapes: compression of each linear shape into each format its columns allow
/// (from the pruner whose pattern the format serves), then every product case.
pub(in crate::suite) fn model_cases(m: &ModelShapes) -> Vec<OpCase> {
    let mut v = Vec::new();
    for &(rows, cols) in &m.linears {
        let mut formats = vec![(WeightFormat::Dense, MaskSource::None)];
        if cols.is_multiple_of(4) {
            formats.push((WeightFormat::TwoFour, MaskSource::Wanda(S24)));
        }
        let half = Sparsity::Unstructured(0.5);
        formats.push((WeightFormat::Bitmap, MaskSource::Wanda(half)));
        v.extend(
            formats
                .into_iter()
                .map(|(f, source)| OpCase::new(Op::Compress(f, source), rows, cols)),
        );
    }
    v.extend(matmul_cases(&m.linears));
    v
}

// ---- Names and work model ----

/// The op's name without shape.
pub(in crate::suite) fn op_name(op: Op) -> String {
    match op {
        Op::Compress(..) => "COMPRESS".into(),
        Op::Matmul { .. } => "MATMUL".into(),
        op => not_in_family(op, FAMILY),
    }
}

/// The key parameters of the canonical name.
pub(in crate::suite) fn params(case: &OpCase) -> String {
    let (r, c) = (case.rows, case.cols);
    match case.op {
        Op::Compress(f, m) => format!("format={},mask={},rows={r},cols={c}", f.name(), m.label()),
        Op::Matmul { format, mask, n } => {
            let how = match (format, mask) {
                (CaseFormat::Structured(keep), _) => format!(",keep={keep}"),
                (_, MaskSource::None) => String::new(),
                (_, m) => format!(",mask={}", m.label()),
            };
            format!("format={}{how},n={n},rows={r},cols={c}", format.name())
        }
        op => not_in_family(op, FAMILY),
    }
}

/// Bytes moved at the least: compression reads the f32 weight and its mask and writes the
/// packed buffers; the product reads the packed weight and X and writes Y.
pub(in crate::suite) fn bytes(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    let mask = r * c.div_ceil(32) * 4;
    let f = 4u64;
    match case.op {
        Op::Compress(format, _) => {
            let kept = case.kept().unwrap_or(case.rows * case.cols);
            f * r * c + mask + packed_bytes(format, case.rows, case.cols, kept)
        }
        Op::Matmul { format, n, .. } => {
            let (sr, sc) = format.stored_shape(case.rows, case.cols);
            let kept = case.kept().unwrap_or(sr * sc);
            packed_bytes(format.storage(), sr, sc, kept) + f * (n * (sr + sc)) as u64
        }
        op => not_in_family(op, FAMILY),
    }
}

/// What the kernels multiply: below [`plan::SPARSE_TILED_FROM`] tokens a sparse format skips
/// the pruned entries; from there the kernels decode the weight into dense tiles and multiply
/// every entry, zeros included; compression has no flops.
pub(in crate::suite) fn flops(case: &OpCase) -> u64 {
    match case.op {
        Op::Compress(..) => 0,
        Op::Matmul { format, n, .. } => {
            let (sr, sc) = format.stored_shape(case.rows, case.cols);
            let multiplied = if plan::sparse_tiled(n) {
                sr * sc
            } else {
                case.kept().unwrap_or(sr * sc)
            };
            2 * n as u64 * multiplied as u64
        }
        op => not_in_family(op, FAMILY),
    }
}

pub(in crate::suite) fn compute_bound(case: &OpCase) -> bool {
    match case.op {
        Op::Compress(..) => false,
        // From 64 tokens a dense f16 product does 64 flops per weight byte: past the
        // balance point of current GPUs' f32 units.
        Op::Matmul { n, .. } => n >= 64,
        op => not_in_family(op, FAMILY),
    }
}

// ---- Inputs ----

/// A weight pruned by the case's mask source, its values exactly f16; the product gets the
/// reference's compression of it, so a backend's product is tested on exactly that encoding.
pub(in crate::suite) fn inputs(case: &OpCase) -> Result<CaseInputs> {
    let (r, c, s) = (case.rows, case.cols, case.seed);
    let mut inp = CaseInputs::default();
    match case.op {
        Op::Compress(_, source) => {
            let (w, mask) = pruned_weight(source, r, c, s)?;
            inp.mask = Some((*mask).clone());
            inp.tensors = vec![("w", (*w).clone())];
        }
        Op::Matmul { format, mask, n } => {
            let (sr, sc) = format.stored_shape(r, c);
            let (w, m) = pruned_weight(mask, sr, sc, s)?;
            inp.packed = Some(formats::compress(&w, &m, format.storage())?);
            inp.tensors = vec![("x", heavy_tailed(n, sc, s + 2))];
        }
        op => not_in_family(op, FAMILY),
    }
    Ok(inp)
}

type PrunedWeight = (Arc<Matrix>, Arc<Mask>);

/// A weight pruned by `source`, its values exactly f16 (so compression round trips bit for
/// bit). SparseGPT's costs an OBS run on the reference, so every weight is kept for the
/// process: the product cases at every token count share it.
fn pruned_weight(source: MaskSource, rows: usize, cols: usize, seed: u64) -> Result<PrunedWeight> {
    static CACHE: OnceLock<Mutex<HashMap<String, PrunedWeight>>> = OnceLock::new();
    let key = format!("{}/{rows}x{cols}/{seed}", source.label());
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().expect("cache lock").get(&key) {
        return Ok(hit.clone());
    }
    let made = make_pruned_weight(source, rows, cols, seed)?;
    let made = (Arc::new(made.0), Arc::new(made.1));
    // Only SparseGPT's weights are costly enough to keep; the rest regenerate in moments.
    if matches!(source, MaskSource::SparseGpt(_)) && !shapes_only() {
        cache.lock().expect("cache lock").insert(key, made.clone());
    }
    Ok(made)
}

fn make_pruned_weight(
    source: MaskSource,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Result<(Matrix, Mask)> {
    let cpu = CpuBackend::new();
    let w = scaled(heavy_tailed(rows, cols, seed), 0.02);
    // Zeros where only shapes are wanted, already exact in f16.
    let mut w = if shapes_only() {
        w
    } else {
        formats::round_to_f16(&w)
    };
    let scored = |score: Score<'_, _>, sp: Sparsity, group: MaskGroup| -> Result<Mask> {
        let s = cpu.score(&cpu.upload(&w)?, score)?;
        cpu.select_mask(&s, MaskPattern::new(sp, group))
    };
    let mask = match source {
        MaskSource::None => Mask::empty(rows, cols),
        // Where only shapes are wanted, every pruner's mask is a regular one of its pattern:
        // scoring and selecting at model sizes costs seconds per case, SparseGPT's OBS run on
        // the reference r·c² flops, and no kernel reads which entries were chosen.
        MaskSource::Wanda(sp) | MaskSource::Magnitude(sp) | MaskSource::SparseGpt(sp)
            if shapes_only() =>
        {
            regular_mask(sp, rows, cols)
        }
        MaskSource::Wanda(sp) => {
            let act = cpu.upload(&heavy_tailed_positive(1, cols, seed + 1))?;
            scored(Score::Wanda { act: &act }, sp, MaskGroup::PerRow)?
        }
        MaskSource::Magnitude(sp) => scored(Score::Magnitude, sp, MaskGroup::Matrix)?,
        MaskSource::SparseGpt(sp) => {
            // 256 calibration-like tokens: H is damped to full rank by the 1% of §6.
            let h = hessian_of(&correlated(256, cols, seed + 1), 1)?;
            let factor = cpu.hinv_factor(&cpu.upload(&h)?, PERCDAMP)?;
            let selection = match sp {
                Sparsity::Unstructured(p) => ObsSelection::Unstructured(p),
                Sparsity::NM { n, m } => ObsSelection::NM { n, m },
            };
            let mut wt = cpu.upload(&w)?;
            let out = cpu.obs_prune(&mut wt, &factor, selection, OBS_BLOCK)?;
            w = formats::round_to_f16(&cpu.download(&wt)?);
            out.mask
        }
        MaskSource::Holes(p) => {
            let mut rng = Rng::new(seed + 1);
            let mut m = Mask::empty(rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    m.set(r, c, rng.uniform() < p || (rows > 1 && r == rows / 2));
                }
            }
            m
        }
    };
    Ok((w, mask))
}

/// The first entries of every row (unstructured: as many as a per-row pruner takes) or of every
/// group of M (N:M) pruned.
fn regular_mask(sp: Sparsity, rows: usize, cols: usize) -> Mask {
    let mut m = Mask::empty(rows, cols);
    for r in 0..rows {
        for c in 0..cols {
            let pruned = match sp {
                Sparsity::Unstructured(p) => c < unstructured_k(p, cols),
                Sparsity::NM { n, m } => c % m < n && c / m < cols / m,
            };
            m.set(r, c, pruned);
        }
    }
    m
}

/// The weight a case compresses, for the comparison: the mask's kept entries, exactly f16.
pub fn compress_input(inp: &CaseInputs) -> (&Matrix, &Mask) {
    (
        inp.get("w"),
        inp.mask.as_ref().expect("a compression case has a mask"),
    )
}

// ---- Running on a backend ----

/// A sparse case's device tensors, by op.
pub enum Prepared<B: Backend> {
    Compress {
        w: B::Tensor,
        mask: B::Mask,
        format: WeightFormat,
        out: Option<B::Packed>,
    },
    Matmul {
        x: B::Tensor,
        w: B::Packed,
        out: Option<B::Tensor>,
    },
}

pub(in crate::suite) fn prepare<B: Backend>(
    b: &B,
    case: &OpCase,
    inp: &CaseInputs,
) -> Result<Prepared<B>> {
    Ok(match case.op {
        Op::Compress(format, _) => Prepared::Compress {
            w: b.upload(inp.get("w"))?,
            mask: b.upload_mask(inp.mask.as_ref().expect("compress case has a mask"))?,
            format,
            out: None,
        },
        Op::Matmul { .. } => Prepared::Matmul {
            x: b.upload(inp.get("x"))?,
            w: b.upload_packed(inp.packed.as_ref().expect("product case has a weight"))?,
            out: None,
        },
        op => not_in_family(op, FAMILY),
    })
}

pub(in crate::suite) fn execute<B: Backend>(b: &B, p: &mut Prepared<B>) -> Result<()> {
    match p {
        Prepared::Compress {
            w,
            mask,
            format,
            out,
        } => *out = Some(b.compress(w, mask, *format)?),
        Prepared::Matmul { x, w, out } => *out = Some(b.sparse_matmul(x, w)?),
    }
    Ok(())
}

pub(in crate::suite) fn collect<B: Backend>(b: &B, p: &Prepared<B>) -> Result<CaseOutput> {
    let mut o = CaseOutput::default();
    match p {
        Prepared::Compress { out, .. } => {
            let packed = out.as_ref().ok_or_else(never_ran)?;
            o.packed = Some(b.download_packed(packed)?);
            // The round trip on the same backend: decompression is checked here too.
            o.values.push(("w", b.download(&b.decompress(packed)?)?));
        }
        Prepared::Matmul { out, .. } => {
            o.values
                .push(("y", b.download(out.as_ref().ok_or_else(never_ran)?)?));
        }
    }
    Ok(o)
}

// ---- Comparison ----

/// The checks of one case: reference output `want`, backend output `got`.
pub(in crate::suite) fn compare(
    case: &OpCase,
    inputs: &CaseInputs,
    want: &CaseOutput,
    got: &CaseOutput,
) -> Vec<Check> {
    match case.op {
        Op::Compress(..) => compress_checks(inputs, want, got),
        Op::Matmul { .. } => matmul_checks(inputs, want, got),
        op => not_in_family(op, FAMILY),
    }
}

/// Compression is exact: the device buffers equal the reference's word for word, and the
/// backend's own decompression gives the masked f16 weight bit for bit.
fn compress_checks(inputs: &CaseInputs, want: &CaseOutput, got: &CaseOutput) -> Vec<Check> {
    let words = match (&want.packed, &got.packed) {
        (Some(a), Some(b)) if a.format == b.format && (a.rows, a.cols) == (b.rows, b.cols) => {
            let differ = |x: &[u32], y: &[u32]| {
                if x.len() != y.len() {
                    f64::INFINITY
                } else {
                    x.iter().zip(y).filter(|(p, q)| p != q).count() as f64
                }
            };
            differ(&a.values, &b.values) + differ(&a.meta, &b.meta) + differ(&a.offsets, &b.offsets)
        }
        _ => f64::INFINITY,
    };
    let (w, mask) = compress_input(inputs);
    let truth = formats::masked_f16(w, mask);
    let bits = match got.value("w") {
        Some(d) if d.shape() == truth.shape() => d
            .data
            .iter()
            .zip(&truth.data)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count() as f64,
        _ => f64::INFINITY,
    };
    vec![
        Check::new("packed words", "mismatches", words, 0.0),
        Check::new("decompressed w", "mismatches", bits, 0.0),
    ]
}

/// The product against the f64 reference: per output, the error over Σ|w·x| (the scale of
/// the f32 accumulation's rounding), and as a whole.
fn matmul_checks(inputs: &CaseInputs, want: &CaseOutput, got: &CaseOutput) -> Vec<Check> {
    let scale = inputs
        .packed
        .as_ref()
        .and_then(|p: &PackedWeight| formats::decompress(p).ok())
        .map(|w| abs_product(inputs.get("x"), &w));
    let bound = match (want.value("y"), got.value("y"), &scale) {
        (Some(a), Some(b), Some(sc)) if a.shape() == b.shape() && a.shape() == sc.shape() => a
            .data
            .iter()
            .zip(&b.data)
            .zip(&sc.data)
            .map(|((&a, &b), &s)| (b as f64 - a as f64).abs() / (s as f64).max(f64::MIN_POSITIVE))
            .fold(0.0, |m: f64, e| {
                if e.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(e)
                }
            }),
        _ => f64::INFINITY,
    };
    vec![
        Check::new(
            "y",
            "max_error_over_sum_abs",
            bound,
            tol::SPARSE_MATMUL_BOUND,
        ),
        value_check("y", want, got, tol::SPARSE_MATMUL_NMSE),
    ]
}

/// Σ_k |x_tk·w_rk| for every output (t, r), in f64.
fn abs_product(x: &Matrix, w: &Matrix) -> Matrix {
    Matrix::from_fn(x.rows, w.rows, |t, r| {
        x.row(t)
            .iter()
            .zip(w.row(r))
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum::<f64>() as f32
    })
}
