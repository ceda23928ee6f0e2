//! Host-side planning written once for both GPU backends: how a tensor is cut into parts that
//! each fit one storage binding, how a flat array is cut into chunks, and how a launch's
//! workgroups are laid over a grid whose dimensions the device bounds. The backends only map a
//! planned range onto their own storage (wgpu: a window of one buffer; CubeCL: one handle per
//! slab) and their own launch call.

use crate::error::{KernelError, Result};

pub mod factor;
pub mod groups;
pub mod select;

/// A cut of `rows` rows into slabs of `slab_rows` rows each (the last may be shorter).
///
/// The cut depends only on its arguments, so two tensors of one shape planned under one limit
/// are cut alike and kernels may pair slab i with slab i.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slabs {
    pub rows: usize,
    /// Rows per slab (the last one may have fewer).
    pub slab_rows: usize,
}

impl Slabs {
    /// Slabs of rows of `cols` f32, each at most `room` bytes and `max_rows` rows. When they
    /// do not all fit one slab, every slab's height is a multiple of `align` rows, so that a
    /// block of `align` rows (a kernel's tile, a factor's block) never straddles two slabs.
    pub fn new(rows: usize, cols: usize, room: u64, align: usize, max_rows: usize) -> Result<Self> {
        let row_bytes = (cols.max(1) * 4) as u64;
        let fit = (room / row_bytes).min(max_rows as u64) as usize;
        if rows <= fit {
            return Ok(Self {
                rows,
                slab_rows: rows.max(1),
            });
        }
        let align = align.max(1);
        let slab_rows = fit / align * align;
        if slab_rows == 0 {
            return Err(KernelError::Unsupported(format!(
                "{align} rows of {cols} columns do not fit one storage binding of {room} bytes"
            )));
        }
        Ok(Self { rows, slab_rows })
    }

    pub fn count(&self) -> usize {
        self.rows.div_ceil(self.slab_rows).max(1)
    }

    /// First row and row count of slab `s`.
    pub fn range(&self, s: usize) -> (usize, usize) {
        let r0 = s * self.slab_rows;
        (r0, self.slab_rows.min(self.rows.saturating_sub(r0)))
    }

    /// Every slab as its rows [r0, r1); one empty slab for zero rows.
    pub fn bounds(&self) -> Vec<(usize, usize)> {
        (0..self.count())
            .map(|s| {
                let (r0, n) = self.range(s);
                (r0, r0 + n)
            })
            .collect()
    }

    /// The slab holding row `r` and the row's index inside it.
    pub fn locate(&self, r: usize) -> (usize, usize) {
        (r / self.slab_rows, r % self.slab_rows)
    }

    /// Slabs intersecting rows [r0, r1), as (slab, first global row, last global row + 1).
    pub fn covering(&self, r0: usize, r1: usize) -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        let mut r = r0;
        while r < r1 {
            let s = r / self.slab_rows;
            let end = ((s + 1) * self.slab_rows).min(r1);
            v.push((s, r, end));
            r = end;
        }
        v
    }
}

/// Kernels pair slab i of one operand with slab i of another: operands split differently
/// (made by backends with different binding limits) are refused rather than misread.
pub fn same_slabs(what: &str, a: &Slabs, b: &Slabs) -> Result<()> {
    if a != b {
        return Err(KernelError::InvalidArgument(format!(
            "{what}: the operands are split into different slabs ({} vs {} rows per slab); \
             use tensors made by one backend",
            a.slab_rows, b.slab_rows
        )));
    }
    Ok(())
}

/// Row runs [t, t + len) of the first `total` rows that lie inside one slab of each of two
/// cuts of the same rows: (first row, length, slab of a, its local row, slab of b, its local
/// row). What a product over rows split two ways (dYᵀX over tokens, a residual add) launches
/// once per run.
pub fn aligned_runs(
    a: &Slabs,
    b: &Slabs,
    total: usize,
) -> Vec<(usize, usize, usize, usize, usize, usize)> {
    common_pieces(total, &[a, b])
        .into_iter()
        .map(|(t, end)| {
            let ((sa, la), (sb, lb)) = (a.locate(t), b.locate(t));
            (t, end - t, sa, la, sb, lb)
        })
        .collect()
}

/// Cuts [0, len) where any of `cuts` has a slab boundary: every piece lies inside one slab of
/// each (a cut with fewer rows than `len` covers the rest as one slab).
pub fn common_pieces(len: usize, cuts: &[&Slabs]) -> Vec<(usize, usize)> {
    let at_zero: Vec<(&Slabs, usize)> = cuts.iter().map(|&s| (s, 0)).collect();
    offset_pieces(len, &at_zero)
}

/// Cuts [0, len) where stored row `row0 + t` of any (slabs, row0) in `cuts` crosses a slab
/// boundary: for operands that are blocks of larger matrices, their rows starting at row0.
pub fn offset_pieces(len: usize, cuts: &[(&Slabs, usize)]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut t = 0;
    while t < len {
        let end = cuts
            .iter()
            .map(|&(s, r0)| ((r0 + t) / s.slab_rows + 1) * s.slab_rows - r0)
            .fold(len, usize::min);
        v.push((t, end));
        t = end;
    }
    v
}

/// How one GEMM operand is stored: its rows cut into slabs, and whether the operand is the
/// transpose of what is stored (then the stored rows index the operand's columns).
#[derive(Clone, Copy, Debug)]
pub struct Stored<'a> {
    pub slabs: &'a Slabs,
    pub trans: bool,
}

/// One launch of a split GEMM C[m x n] (op)= A[m x k]·B[k x n]: the rows of C (`m`), its
/// columns (`n`) and the depth (`k`) it covers, each range inside one slab of every operand
/// that stores it. `first` marks the first depth piece of its block of C: it alone applies
/// the caller's β; the later ones accumulate onto it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPiece {
    pub m: (usize, usize),
    pub n: (usize, usize),
    pub k: (usize, usize),
    pub first: bool,
}

/// The launches of a GEMM whose operands are cut into slabs, in a fixed order (the depth
/// pieces of a block in increasing k), so a split product sums in the same order every run.
pub fn gemm_pieces(
    m: usize,
    n: usize,
    k: usize,
    a: Stored,
    b: Stored,
    c: &Slabs,
) -> Vec<GemmPiece> {
    let m_cuts: Vec<&Slabs> = [Some(c), (!a.trans).then_some(a.slabs)]
        .into_iter()
        .flatten()
        .collect();
    let k_cuts: Vec<&Slabs> = [a.trans.then_some(a.slabs), (!b.trans).then_some(b.slabs)]
        .into_iter()
        .flatten()
        .collect();
    let n_cuts: Vec<&Slabs> = b.trans.then_some(b.slabs).into_iter().collect();
    let ks = common_pieces(k.max(1), &k_cuts);
    let mut v = Vec::new();
    for &mr in &common_pieces(m, &m_cuts) {
        for &nr in &common_pieces(n, &n_cuts) {
            for (i, &kr) in ks.iter().enumerate() {
                let kr = if k == 0 { (0, 0) } else { kr };
                v.push(GemmPiece {
                    m: mr,
                    n: nr,
                    k: kr,
                    first: i == 0,
                });
            }
        }
    }
    v
}

/// Into how many parts each of a launch's `groups` workgroups' work is split so that the
/// launch reaches `fill` workgroups: 1 where it does already (or there is no work), else
/// ⌈fill / groups⌉, at most `max_parts` (at least 1).
pub fn parts_to_fill(groups: usize, fill: usize, max_parts: usize) -> usize {
    if groups == 0 || groups >= fill {
        return 1;
    }
    fill.div_ceil(groups).min(max_parts).max(1)
}

/// Columns each part of a decode-sized sparse product keeps at least, for
/// [`column_parts`].
pub const MIN_PART_COLUMNS: usize = 1024;

/// How a sparse product over blocks of at most 8 tokens (§13's decode path) whose `groups`
/// workgroups leave the device short of `fill` splits its columns: (parts, chunks per part)
/// over the ⌈cols / chunk⌉ chunks of X it stages, each part at least [`MIN_PART_COLUMNS`]
/// wide. Every part stages only its own chunks, so X's reads from L2 stay what they were
/// where fewer rows per workgroup would multiply them; the parts' partial outputs (8 tokens
/// by the rows) are summed by a second pass in part order, as the depth split's. At LLaMA-7B
/// 4096 x 4096 and 8 tokens: 256 workgroups of 16 rows, two parts of 2048 columns.
pub fn column_parts(groups: usize, cols: usize, chunk: usize, fill: usize) -> (usize, usize) {
    let chunks = cols.div_ceil(chunk.max(1)).max(1);
    // At least the parts wanted where the chunks allow (16 chunks for 5 parts: 6 of 3).
    let per = (chunks / column_parts_wanted(groups, cols, fill)).max(1);
    (chunks.div_ceil(per), per)
}

/// The parts a launch of `groups` workgroups over `cols` columns wants from
/// [`column_parts`] (the chunks may allow fewer): a backend that can stage smaller chunks
/// does so where its chunks are fewer.
pub fn column_parts_wanted(groups: usize, cols: usize, fill: usize) -> usize {
    parts_to_fill(groups, fill, cols / MIN_PART_COLUMNS)
}

/// Output tiles (64 x 64) below which a product is split over its depth, and the bounds on
/// that split: each piece keeps at least [`MIN_SPLIT_DEPTH`] of the depth (its partial tile,
/// 16 KB written and read back, stays under a tenth of the 128 KB per 64 of depth it reads),
/// and at most [`MAX_DEPTH_SPLIT`] pieces.
pub const MIN_SPLIT_DEPTH: usize = 256;
pub const MAX_DEPTH_SPLIT: usize = 8;

/// How many depth pieces a product C[m x n] = A[m x k]·B[k x n] runs as, so that a launch of
/// 64 x 64 tiles reaches `fill` workgroups (two waves of the device, [`groups::DEFAULT_FILL`]
/// where it does not say): LLaMA-7B's linear at 256 tokens is 256 tiles, a little under two
/// waves of 132 SMs with one of 8 warps each; two pieces make 512. The pieces run as one
/// batched launch, each writing its partial product, and a second pass sums them in piece
/// order, so the result is the same every run. Each piece's depth is a multiple of 4 (the
/// GEMMs' vector loads stay aligned) and the pieces are equal, so `k` must divide: the fewest
/// pieces that reach the fill and divide it, else the most below that do; 1 where the tiles
/// fill already or no split fits.
pub fn depth_split(m: usize, n: usize, k: usize, fill: usize) -> usize {
    let tiles = m.div_ceil(64) * n.div_ceil(64);
    let cap = MAX_DEPTH_SPLIT.min(k / MIN_SPLIT_DEPTH);
    let want = parts_to_fill(tiles, fill, cap);
    if want < 2 {
        return 1;
    }
    // The fewest pieces that reach the fill and cut k evenly (8192 deep wanting 3: 4), else
    // the most below that do.
    let even = |s: &usize| k.is_multiple_of(4 * s);
    (want..=cap)
        .find(even)
        .or_else(|| (2..want).rev().find(even))
        .unwrap_or(1)
}

/// The batch strides [A, B, C] of [`depth_split`]'s launch over pieces of `kp` of the depth,
/// each operand given as (stored transposed, leading dimension): kp values along a stored row
/// where the depth runs inside rows (A by rows, B transposed), kp stored rows where it runs
/// across them; each piece's partial C `part` values after the last.
pub fn depth_piece_strides(
    kp: usize,
    (a_trans, lda): (bool, usize),
    (b_trans, ldb): (bool, usize),
    part: usize,
) -> [usize; 3] {
    let step = |depth_in_row: bool, ld: usize| if depth_in_row { kp } else { kp * ld };
    [step(!a_trans, lda), step(b_trans, ldb), part]
}

/// Columns each part of a split row keeps at least (4 per invocation of 256), and the most
/// parts a row is split into, for [`row_parts`].
pub const MIN_ROW_PART: usize = 1024;
pub const MAX_ROW_PARTS: usize = 4;

/// How many workgroups a row-wise normalisation (RMSNorm: a sum over the row, then the row
/// scaled) gives each of `rows` rows of `cols`, so that a launch reaches `fill` workgroups:
/// LLaMA-7B at 256 tokens is 256 rows, under two waves of 132 SMs. Every part of a row sums
/// the whole row in the same order (the same factor, bit for bit, with no second pass) and
/// writes its own run of columns ([`row_part`]); the extra reads are of a row another
/// workgroup is reading, so they come from L2. 1 where the rows fill already.
pub fn row_parts(rows: usize, cols: usize, fill: usize) -> usize {
    parts_to_fill(rows, fill, MAX_ROW_PARTS.min(cols / MIN_ROW_PART))
}

/// The columns [c0, c1) part `part` of `parts` writes of a row of `cols`: runs of a multiple
/// of 4 columns (aligned vec4s where the row is), the last one shorter, some empty at the end
/// when `cols` is small. The kernels compute the same runs.
pub fn row_part(part: usize, parts: usize, cols: usize) -> (usize, usize) {
    let run = cols.div_ceil(parts.max(1)).next_multiple_of(4);
    ((part * run).min(cols), ((part + 1) * run).min(cols))
}

/// The query rows an attention tile may take, largest first: 16 per row of invocations
/// times 4, 2 or 1 rows each (the register tile's height).
pub const ATTENTION_QUERY_ROWS: [usize; 3] = [64, 32, 16];

/// The widest head that 16-row attention tiles take: at head_dim 128, ptxas gives the CUDA
/// kernel of one query row per unit 40 registers and a 12-16 byte spill (sm_90a and sm_80),
/// where 32 and 64 rows spill nothing.
pub const ATTENTION_16_ROWS_MAX_HEAD: usize = 64;

/// Query rows per attention tile (workgroup) over `windows` windows of `span` query rows,
/// `heads` query heads of `head_dim`: the largest of [`ATTENTION_QUERY_ROWS`] whose tiles
/// reach `fill`, else the smallest the head takes (32 rows past
/// [`ATTENTION_16_ROWS_MAX_HEAD`]). Each tile reads its head's K and V up to its last query
/// once, so halving the tile doubles those reads, which come from L2 where the tiles of a
/// head run together; at LLaMA-7B's 32 heads of 128 and 256 tokens, 64-row tiles are 128
/// workgroups, under one wave of 132 SMs, and 32-row tiles 256. Long sequences keep 64.
pub fn attention_query_rows(
    windows: usize,
    span: usize,
    heads: usize,
    head_dim: usize,
    fill: usize,
) -> usize {
    let smallest = if head_dim > ATTENTION_16_ROWS_MAX_HEAD {
        32
    } else {
        16
    };
    ATTENTION_QUERY_ROWS
        .into_iter()
        .filter(|&rows| rows >= smallest)
        .find(|&rows| windows * span.div_ceil(rows) * heads >= fill)
        .unwrap_or(smallest)
}

/// Query rows and keys per block of attention's backward (its two tile kernels take the same
/// block, so a key block's first query block starts with it): 32 where the dK/dV launch, a
/// workgroup per (window, block of keys, KV head), fills `fill` with them, else 16. Each
/// block recomputes P and dS for its blocks of the other side, so halving them doubles those
/// reads of Q, dO, K and V (from L2) but not the flops; at LLaMA-7B's 32 KV heads and 256
/// tokens, 32-row blocks are 256 workgroups per launch, 16-row ones 512.
pub fn attention_backward_block(
    windows: usize,
    span: usize,
    kv_heads: usize,
    fill: usize,
) -> usize {
    if windows * span.div_ceil(32) * kv_heads >= fill {
        32
    } else {
        16
    }
}

/// How attention's backward splits each KV head's group of `group` query heads over parts of
/// its dK/dV launch (`cubes` workgroups: windows x key blocks x KV heads) so that the launch
/// reaches `fill`: (parts, query heads per part), the last part taking the remainder. Each
/// part sums its heads' shares of dK and dV into a partial, and a second pass adds the
/// partials in part order (deterministic, no atomics). LLaMA-2-70B at 256 tokens (8 KV heads
/// of 8 query heads, 16 key blocks): 128 workgroups, 3 parts of 3, 3 and 2 heads. (1, group)
/// where the launch fills already or there is one head per group.
pub fn attention_group_parts(cubes: usize, group: usize, fill: usize) -> (usize, usize) {
    let group = group.max(1);
    let per = group.div_ceil(parts_to_fill(cubes, fill, group));
    (group.div_ceil(per), per)
}

/// Element ranges [e0, e1) of a flat array of `n` values, each at most `room` bytes, their
/// boundaries on multiples of `granule` values (so vector views of a chunk stay aligned).
pub fn flat_chunks(n: usize, room: u64, granule: usize) -> Vec<(usize, usize)> {
    let granule = granule.max(1);
    let per = ((room / 4) as usize / granule * granule).max(granule);
    (0..n.max(1))
        .step_by(per)
        .map(|e0| (e0, (e0 + per).min(n)))
        .collect()
}

/// A launch of `groups` workgroups laid over x and then y, neither above `max_per_dim` (the
/// device's limit per grid dimension); kernels rebuild the linear index from their position
/// and the grid's x size, and skip the few past `groups` in the last row.
pub fn grid(groups: u64, max_per_dim: u32) -> [u32; 3] {
    let groups = groups.max(1);
    let x = groups.min(max_per_dim.max(1) as u64);
    [x as u32, groups.div_ceil(x) as u32, 1]
}

/// How many items of `groups_each` workgroups one launch takes along a grid dimension of at
/// most `max_per_dim` (at least one, so a caller always progresses): e.g. attention's windows,
/// each `tiles` query tiles.
pub fn items_per_launch(groups_each: usize, max_per_dim: u32) -> usize {
    (max_per_dim as usize / groups_each.max(1)).max(1)
}

/// The tokens of each id, a counting sort of `ids` (each below `vocab`) in one array, so it
/// is one upload and one binding: `lists[v]..lists[v + 1]` index the positions t with
/// ids[t] = v, in increasing order, stored from `lists[vocab + 1]` on. What the embedding's
/// backward sums by: each id's rows of dh in token order, with no atomics.
pub fn id_lists(ids: &[u32], vocab: usize) -> Vec<u32> {
    let mut lists = vec![0u32; vocab + 1 + ids.len()];
    for &id in ids {
        lists[id as usize + 1] += 1;
    }
    for v in 0..vocab {
        lists[v + 1] += lists[v];
    }
    let mut next = lists[..vocab].to_vec();
    let (_, positions) = lists.split_at_mut(vocab + 1);
    for (t, &id) in ids.iter().enumerate() {
        let k = &mut next[id as usize];
        positions[*k as usize] = t as u32;
        *k += 1;
    }
    lists
}

/// How a product from a compressed weight (§13) is cut, the same on both GPU backends and in
/// the work model: from this many tokens it runs as tiles of [`SPARSE_TILE_ROWS`] weight rows
/// by [`SPARSE_TILE_TOKENS`] tokens, each decoding its weight chunk into a dense tile (so the
/// weight is read N/64 times, not N/8); below, as blocks of at most 8 tokens that skip what
/// is pruned. At 128 tokens a 4096-row weight makes 256 tiles, about two waves of 132 SMs.
pub const SPARSE_TILED_FROM: usize = 128;
pub const SPARSE_TILE_ROWS: usize = 32;
pub const SPARSE_TILE_TOKENS: usize = 64;

/// Whether a product over `n` tokens runs as dense tiles.
pub fn sparse_tiled(n: usize) -> bool {
    n >= SPARSE_TILED_FROM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabs_are_aligned_and_cover_every_row() {
        // 64·400·2 bytes hold 128 rows of 100 columns (aligned to 64) of 200.
        let s = Slabs::new(200, 100, 64 * 400 * 2, 64, usize::MAX).unwrap();
        assert_eq!(s.slab_rows, 128);
        assert_eq!(s.bounds(), vec![(0, 128), (128, 200)]);
        assert_eq!(s.locate(130), (1, 2));
        assert_eq!(s.covering(100, 150), vec![(0, 100, 128), (1, 128, 150)]);
        // What fits whole is one slab whatever the alignment.
        assert_eq!(
            Slabs::new(10, 10, 1 << 20, 64, usize::MAX).unwrap().count(),
            1
        );
        assert!(Slabs::new(1000, 1 << 20, 1 << 20, 64, usize::MAX).is_err());
        // A row cap splits what would fit.
        let capped = Slabs::new(10, 1, 1 << 20, 1, 4).unwrap();
        assert_eq!(capped.bounds(), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(
            Slabs::new(0, 5, 1 << 20, 1, 4).unwrap().bounds(),
            vec![(0, 0)]
        );
    }

    #[test]
    fn aligned_runs_stay_inside_one_slab_of_each_cut() {
        let a = Slabs::new(200, 1, 64 * 4, 64, usize::MAX).unwrap();
        let b = Slabs::new(200, 1, 100 * 4, 1, usize::MAX).unwrap();
        let runs = aligned_runs(&a, &b, 150);
        assert_eq!(
            runs,
            vec![
                (0, 64, 0, 0, 0, 0),
                (64, 36, 1, 0, 0, 64),
                (100, 28, 1, 36, 1, 0),
                (128, 22, 2, 0, 1, 28),
            ]
        );
    }

    #[test]
    fn gemm_pieces_respect_every_operands_slabs() {
        // C = X·Wᵀ: X (70 x 8) in slabs of 32 rows, W (50 x 8, stored as rows of n) in slabs
        // of 20, C (70 x 50) in slabs of 64.
        let x = Slabs::new(70, 8, 32 * 32, 1, usize::MAX).unwrap();
        let w = Slabs::new(50, 8, 20 * 32, 1, usize::MAX).unwrap();
        let c = Slabs::new(70, 50, 64 * 200, 1, usize::MAX).unwrap();
        let a = Stored {
            slabs: &x,
            trans: false,
        };
        let b = Stored {
            slabs: &w,
            trans: true,
        };
        let pieces = gemm_pieces(70, 50, 8, a, b, &c);
        let ms: Vec<_> = pieces.iter().map(|p| p.m).collect();
        assert!(ms.contains(&(32, 64)) && ms.contains(&(64, 70)));
        assert_eq!(pieces.len(), 3 * 3);
        assert!(pieces.iter().all(|p| p.k == (0, 8) && p.first));
        // A depth split: Xᵀ·Y over tokens cut two ways accumulates in increasing k.
        let t1 = Slabs::new(100, 4, 40 * 16, 1, usize::MAX).unwrap();
        let t2 = Slabs::new(100, 6, 30 * 24, 1, usize::MAX).unwrap();
        let one = Slabs::new(4, 6, 1 << 20, 1, usize::MAX).unwrap();
        let a = Stored {
            slabs: &t1,
            trans: true,
        };
        let b = Stored {
            slabs: &t2,
            trans: false,
        };
        let ks: Vec<_> = gemm_pieces(4, 6, 100, a, b, &one)
            .iter()
            .map(|p| (p.k, p.first))
            .collect();
        assert_eq!(
            ks,
            vec![
                ((0, 30), true),
                ((30, 40), false),
                ((40, 60), false),
                ((60, 80), false),
                ((80, 90), false),
                ((90, 100), false),
            ]
        );
    }

    #[test]
    fn depth_splits_fill_two_waves_with_equal_aligned_pieces() {
        // LLaMA-7B's linear at 256 tokens: 256 tiles, under 264; two pieces of 2048.
        assert_eq!(depth_split(256, 4096, 4096, 264), 2);
        assert_eq!(depth_split(256, 4096, 11008, 264), 2);
        // LLaMA-2-70B's LM-head chunk: 128 tiles want 3 pieces, 8192 cuts evenly into 4.
        assert_eq!(depth_split(256, 2048, 8192, 264), 4);
        // Enough tiles already, or a device that reports nothing beyond the default.
        assert_eq!(depth_split(2048, 4096, 4096, 264), 1);
        assert_eq!(depth_split(256, 4096, 4096, groups::DEFAULT_FILL), 1);
        // Two tiles want eight pieces; 1032 deep allows four of 258, but 1032 is not a
        // multiple of 16, so three of 344.
        assert_eq!(depth_split(37, 70, 1032, 256), 3);
        // Too shallow to split, or no aligned equal cut.
        assert_eq!(depth_split(37, 70, 511, 256), 1);
        assert_eq!(depth_split(37, 70, 1030, 256), 1);
        assert_eq!(depth_split(0, 70, 4096, 256), 1);
    }

    #[test]
    fn column_parts_take_whole_chunks_of_at_least_1024_columns() {
        // 4096 columns in chunks of 512: two parts of four chunks at 256 workgroups.
        assert_eq!(column_parts(256, 4096, 512, 264), (2, 4));
        // 64 workgroups want 5 parts of 16 chunks: 6, of 3 chunks and the last of 1.
        assert_eq!(column_parts(64, 8192, 512, 264), (6, 3));
        // 128 want 3 of 2 chunks: 2 (a backend stages smaller chunks where it can).
        assert_eq!(column_parts_wanted(128, 8192, 264), 3);
        assert_eq!(column_parts(128, 8192, 4096, 264), (2, 1));
        assert_eq!(column_parts(512, 4096, 512, 264), (1, 8));
        // Five workgroups want 52 parts; 2100 columns allow two, so three of one chunk (the
        // last 52 columns), or of 2, 2 and 1.
        assert_eq!(column_parts(5, 2100, 1024, 256), (3, 1));
        assert_eq!(column_parts(3, 2100, 512, 256), (3, 2));
        // Too narrow to split.
        assert_eq!(column_parts(3, 2047, 512, 256), (1, 4));
        assert_eq!(parts_to_fill(0, 256, 8), 1);
        assert_eq!(parts_to_fill(10, 256, 0), 1);
    }

    #[test]
    fn row_parts_fill_two_waves_and_cover_each_row_once() {
        assert_eq!(row_parts(256, 4096, 264), 2);
        assert_eq!(row_parts(2048, 4096, 264), 1);
        assert_eq!(row_parts(3, 4100, 256), 4);
        // Narrow rows stay whole.
        assert_eq!(row_parts(3, 1000, 256), 1);
        assert_eq!(row_parts(0, 4096, 256), 1);
        for (parts, cols) in [(2, 4096), (3, 4096), (4, 4100), (3, 5), (4, 1)] {
            let runs: Vec<_> = (0..parts).map(|p| row_part(p, parts, cols)).collect();
            assert_eq!(runs[0].0, 0);
            assert_eq!(runs[parts - 1].1, cols);
            assert!(runs.windows(2).all(|w| w[0].1 == w[1].0));
            assert!(runs.iter().all(|r| r.0 % 4 == 0 || r.0 == cols));
        }
    }

    #[test]
    fn attention_tiles_shrink_only_until_they_fill() {
        // LLaMA-7B, 32 heads of 128: 2048 tokens fill with 64 rows; 256 tokens take 32.
        assert_eq!(attention_query_rows(1, 2048, 32, 128, 264), 64);
        assert_eq!(attention_query_rows(1, 256, 32, 128, 264), 32);
        assert_eq!(attention_query_rows(8, 256, 32, 128, 264), 64);
        // Heads of up to 64 go down to 16 rows.
        assert_eq!(attention_query_rows(1, 256, 32, 64, 264), 16);
        assert_eq!(attention_query_rows(1, 256, 32, 64, 256), 32);
        // Too little work to fill at any size takes the smallest tile the head allows.
        assert_eq!(attention_query_rows(1, 13, 6, 16, 256), 16);
        assert_eq!(attention_query_rows(1, 13, 6, 128, 256), 32);
        assert_eq!(attention_query_rows(0, 0, 6, 16, 256), 16);
    }

    #[test]
    fn attention_backward_blocks_halve_only_short_of_the_fill() {
        assert_eq!(attention_backward_block(1, 2048, 32, 264), 32);
        assert_eq!(attention_backward_block(1, 256, 32, 264), 16);
        assert_eq!(attention_backward_block(8, 256, 32, 264), 32);
        assert_eq!(attention_backward_block(1, 13, 3, 256), 16);
    }

    #[test]
    fn group_parts_split_the_heads_only_short_of_the_fill() {
        assert_eq!(attention_group_parts(128, 8, 264), (3, 3));
        assert_eq!(attention_group_parts(1024, 8, 264), (1, 8));
        assert_eq!(attention_group_parts(5, 8, 256), (8, 1));
        assert_eq!(attention_group_parts(5, 1, 256), (1, 1));
        assert_eq!(attention_group_parts(100, 3, 256), (3, 1));
    }

    #[test]
    fn chunks_are_granular_and_cover_every_value() {
        assert_eq!(
            flat_chunks(300, 128 * 4, 64),
            vec![(0, 128), (128, 256), (256, 300)]
        );
        assert_eq!(flat_chunks(0, 1024, 64), vec![(0, 0)]);
        // A room below one granule still progresses.
        assert_eq!(flat_chunks(100, 8, 64), vec![(0, 64), (64, 100)]);
    }

    #[test]
    fn grids_stay_within_the_device_limit() {
        assert_eq!(grid(0, 65_535), [1, 1, 1]);
        assert_eq!(grid(70_000, 65_535), [65_535, 2, 1]);
        assert_eq!(grid(70_000, i32::MAX as u32), [70_000, 1, 1]);
        assert_eq!(items_per_launch(4, 65_535), 16_383);
        assert_eq!(items_per_launch(100_000, 65_535), 1);
    }

    #[test]
    fn id_lists_hold_each_ids_tokens_in_order() {
        // Ids 0 and 3 never seen; 2 at tokens 0, 2 and 4; 1 at 1 and 3.
        let lists = id_lists(&[2, 1, 2, 1, 2], 4);
        assert_eq!(lists[..5], [0, 0, 2, 5, 5]);
        assert_eq!(lists[5..], [1, 3, 0, 2, 4]);
        assert_eq!(id_lists(&[], 2), vec![0, 0, 0]);
        assert_eq!(id_lists(&[], 0), vec![0]);
    }
}
