//! SparseGPT's blocked OBS prune (§7). Per column block [i1, i2):
//!
//! 1. the block's rows of U are gathered into one contiguous scratch buffer (U may be split
//!    into slabs; a block may straddle two), and diag(U1) out of it;
//! 2. unstructured: the block's floor(p·rows·B) lowest W²/d² are chosen by two launches
//!    (select/block.rs: a 16-bit histogram, then the candidates of the threshold's bin) and
//!    the start of the block's launch below, which finds the threshold among the candidates
//!    and writes its rows' mask words (ties by linear index r·B + c, as the reference); the
//!    global radix select where the selection buffer does not fit one binding;
//! 3. one launch runs the sequential column loop: each cube owns a few rows, each row's B
//!    weights live in the registers of `lanes` threads, U1 streams through shared memory a
//!    chunk of rows at a time (the whole 128x128 block, 64 KiB, would not fit everywhere), the
//!    error of column i is made by the lane that owns the column and every lane applies the
//!    rank-1 update to its columns; N:M decisions are taken on the current weights when
//!    i % m == 0. Where a row's lanes are exactly one plane, the error goes from its owner by
//!    a plane shuffle and a step needs no barrier (a lane only touches its own columns);
//!    otherwise through shared memory, two barriers per step;
//! 4. the lazy update W[:, i2:] −= Err1 · U[i1:i2, i2:] is the tiled GEMM.
//!
//! The loss is reduced per cube and summed on the device at the end.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{arg, same_slabs, CubeMask, CubeTensor};
use super::super::CubeBackend;
use super::copy::{copy2d, gather_rows, Rect};
use super::fill::{copy_u32, fill_u32};
use super::gemm::{gemm, Gemm, View};
use super::reduce::{cube_sum, sum, CUBE};
use super::score::zero_columns;
use super::select::{end_block_selection, select_block, select_global, write_rows_mask, SRC_OBS};
use crate::compose;
use crate::error::{KernelError, Result};
use crate::ops::{HinvFactor, ObsOutcome, ObsSelection};
use crate::plan::select::block;

/// Largest OBS block the in-block kernel takes (its diag and U chunks live in shared memory).
pub const MAX_BLOCK: usize = 1024;
/// f32 of U1 held in shared memory at a time.
const U_CHUNK: usize = 2048;
/// Shared memory the end of a block's selection adds to the in-block kernel: two candidate
/// histograms with their scans, the tie count's scan and the mask pass's (1 KiB each, 256
/// words), and a few words of results.
const END_SELECTION_SHARED: usize = 6 * 1024 + 64;
/// f32 of current weights an N:M decision may stage in shared memory.
const NM_STAGE: usize = 2048;

/// How the in-block kernel maps a block of width `block` onto 256 threads.
#[derive(Clone, Copy, Debug)]
struct Layout {
    lanes: u32,
    slots: u32,
    rows_per_cube: u32,
    chunk: u32,
    words: u32,
}

impl Layout {
    fn new(block: usize) -> Self {
        // At most 16 weights per thread in registers, and at least 32 lanes per row: a cube
        // owns 8 rows or fewer, so a 4096-row weight makes 512 cubes (about four waves of an
        // H100's 132 SMs; 32 rows per cube made 128, under one) and each step's rank-1
        // update is spread over more lanes.
        let lanes = block
            .div_ceil(16)
            .next_power_of_two()
            .clamp(32, CUBE as usize);
        Self {
            lanes: lanes as u32,
            slots: block.div_ceil(lanes) as u32,
            rows_per_cube: CUBE / lanes as u32,
            chunk: (U_CHUNK / block).clamp(1, block) as u32,
            words: (block / 32 + 2) as u32,
        }
    }
}

#[cube]
fn obs_key(w: f32, d: f32) -> u32 {
    // Scores are non-negative, so their bits order them; the tie rule is applied separately.
    u32::reinterpret((w * w) / (d * d))
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn obs_block_kernel(
    w: &mut Array<f32>,
    ub: &Array<f32>,
    mask: &mut Array<u32>,
    err: &mut Array<f32>,
    dg: &Array<f32>,
    loss: &mut Array<f32>,
    sel: &mut Array<Atomic<u32>>,
    rows: u32,
    cols: u32,
    wpr: u32,
    i1: u32,
    cnt: u32,
    loss_off: u32,
    sel_at: (u32, u32, u32, u32),
    #[comptime] lanes: u32,
    #[comptime] slots: u32,
    #[comptime] bmax: u32,
    #[comptime] chunk: u32,
    #[comptime] words: u32,
    #[comptime] nm: bool,
    #[comptime] n: u32,
    #[comptime] m: u32,
    #[comptime] plane: bool,
    #[comptime] plane_rows: bool,
    #[comptime] decide: bool,
) {
    let rp = comptime![CUBE / lanes];
    let t = UNIT_POS;
    let rl = t / lanes;
    let lane = t % lanes;
    let r = CUBE_POS_X * rp + rl;
    let valid = r < rows;
    let wbase = i1 / 32;
    let nw = (i1 + cnt + 31) / 32 - wbase;

    let mut uch = SharedMemory::<f32>::new(comptime![(chunk * bmax) as usize]);
    let mut dsh = SharedMemory::<f32>::new(comptime![bmax as usize]);
    let mut errs = SharedMemory::<f32>::new(comptime![rp as usize]);
    let mut pm = SharedMemory::<u32>::new(comptime![(rp * words) as usize]);
    let mut cur = SharedMemory::<f32>::new(comptime![if nm { (rp * m) as usize } else { 1usize }]);

    let mut q = t;
    while q < cnt {
        dsh[q as usize] = dg[q as usize];
        q += CUBE;
    }
    if comptime![decide] {
        end_selection(w, dg, mask, sel, rows, cols, wpr, i1, cnt, sel_at, rp);
    }
    // The block's mask words of this row: fixed decisions (given or chosen before the loop),
    // or empty for N:M, which decides as it goes.
    let mut qw = lane;
    while qw < nw {
        let mut v = 0u32;
        if valid && !nm {
            v = mask[(r * wpr + wbase + qw) as usize];
        }
        pm[(rl * words + qw) as usize] = v;
        qw += lanes;
    }
    let mut wr = Array::<f32>::new(comptime![slots as usize]);
    #[unroll]
    for s in 0..slots {
        let c = lane + s * lanes;
        let mut v = 0.0f32;
        if valid && c < cnt {
            v = w[(r * cols + i1 + c) as usize];
        }
        wr[s as usize] = v;
    }
    let mut lacc = 0.0f32;
    let mut base = 0u32;
    sync_cube();

    for i in 0..cnt {
        if i % chunk == 0 {
            if comptime![plane_rows] {
                // No step ends on a barrier: the lanes may still read the previous chunk.
                sync_cube();
            }
            base = i;
            let total = chunk * bmax;
            let mut q = t;
            while q < total {
                let rr = q / bmax;
                let c = q % bmax;
                let mut v = 0.0f32;
                if i + rr < cnt && c < cnt {
                    v = ub[((i + rr) * cols + i1 + c) as usize];
                }
                uch[q as usize] = v;
                q += CUBE;
            }
            sync_cube();
        }
        if comptime![nm] {
            if i % m == 0 {
                #[unroll]
                for s in 0..slots {
                    let c = lane + s * lanes;
                    if c >= i && c < i + m {
                        cur[(rl * m + c - i) as usize] = wr[s as usize];
                    }
                }
                sync_cube();
                if lane == 0 && valid {
                    for j in 0..m {
                        let kj = obs_key(cur[(rl * m + j) as usize], dsh[(i + j) as usize]);
                        let mut rank: u32 = 0u32;
                        for o in 0..m {
                            let ko = obs_key(cur[(rl * m + o) as usize], dsh[(i + o) as usize]);
                            let before = ko < kj || (ko == kj && o < j);
                            if before {
                                rank += 1u32;
                            }
                        }
                        if rank < n {
                            let gc = i1 + i + j;
                            let pi = (rl * words + gc / 32 - wbase) as usize;
                            pm[pi] = pm[pi] | (1u32 << (gc % 32));
                        }
                    }
                }
                sync_cube();
            }
        }
        let mut mine = 0.0f32;
        if lane == i % lanes {
            let oslot = i / lanes;
            let mut wi = 0.0f32;
            #[unroll]
            for s in 0..slots {
                if s == oslot {
                    wi = wr[s as usize];
                }
            }
            let gc = i1 + i;
            let bit = (pm[(rl * words + gc / 32 - wbase) as usize] >> (gc % 32)) & 1;
            let mut qv = wi;
            if bit == 1 {
                qv = 0.0;
            }
            let d = dsh[i as usize];
            let e = (wi - qv) / d;
            mine = e;
            if !comptime![plane_rows] {
                errs[rl as usize] = e;
            }
            if valid {
                err[(r * bmax + i) as usize] = e;
                lacc += (wi - qv) * (wi - qv) / (d * d) / 2.0;
            }
            #[unroll]
            for s in 0..slots {
                if s == oslot {
                    wr[s as usize] = qv;
                }
            }
        }
        let e = if comptime![plane_rows] {
            plane_shuffle(mine, i % lanes)
        } else {
            sync_cube();
            errs[rl as usize]
        };
        let urow = (i - base) * bmax;
        #[unroll]
        for s in 0..slots {
            let c = lane + s * lanes;
            if c > i && c < cnt {
                wr[s as usize] -= e * uch[(urow + c) as usize];
            }
        }
        if !comptime![plane_rows] {
            sync_cube();
        }
    }

    #[unroll]
    for s in 0..slots {
        let c = lane + s * lanes;
        if valid && c < cnt {
            w[(r * cols + i1 + c) as usize] = wr[s as usize];
        }
    }
    if comptime![nm] {
        let mut qw = lane;
        while qw < nw {
            if valid {
                let word = wbase + qw;
                let mut lo = word * 32;
                if lo < i1 {
                    lo = i1;
                }
                let mut hi = word * 32 + 32;
                if hi > i1 + cnt {
                    hi = i1 + cnt;
                }
                let mut inside = 0xFFFF_FFFFu32;
                if hi - lo < 32 {
                    inside = ((1u32 << (hi - lo)) - 1) << (lo - word * 32);
                }
                let mi = (r * wpr + word) as usize;
                mask[mi] = (mask[mi] & !inside) | pm[(rl * words + qw) as usize];
            }
            qw += lanes;
        }
    }
    let total = cube_sum(lacc, plane);
    if t == 0 {
        loss[(loss_off + CUBE_POS_X) as usize] = total;
    }
}

/// The end of the block's selection for this cube's rows (`sel_at`: the block's half of the
/// selection buffer, the other half, whether this launch clears it for the next block, the
/// slab's first row in W): the threshold and quota from the candidates, then row by row the
/// mask words of the block, ties taken while the quota lasts in linear order. The words are
/// read back by the cube below.
#[cube]
#[allow(clippy::too_many_arguments)]
fn end_selection(
    w: &mut Array<f32>,
    dg: &Array<f32>,
    mask: &mut Array<u32>,
    sel: &mut Array<Atomic<u32>>,
    rows: u32,
    cols: u32,
    wpr: u32,
    i1: u32,
    cnt: u32,
    sel_at: (u32, u32, u32, u32),
    #[comptime] rp: u32,
) {
    let (base, other, lead, row0) = sel_at;
    let r0 = CUBE_POS_X * rp;
    let (v, quota, earlier) = end_block_selection(sel, base, (row0 + r0) * cnt);
    let mut r1 = r0 + rp;
    if r1 > rows {
        r1 = rows;
    }
    let mut scan = SharedMemory::<u32>::new(CUBE as usize);
    write_rows_mask(
        w,
        dg,
        dg,
        mask,
        &mut scan,
        (r0, r1),
        cols,
        wpr,
        i1,
        cnt,
        v,
        quota,
        earlier,
        SRC_OBS,
        false,
        true,
    );
    if lead == 1 {
        // The other half's histograms, for the next block (no one reads them in this launch).
        let mut i = CUBE_POS_X * CUBE + UNIT_POS;
        while i < comptime![block::CLEARED as u32] {
            sel[(other + i) as usize].store(0u32);
            i += CUBE_COUNT_X * CUBE;
        }
    }
    sync_storage();
    sync_cube();
}

/// One OBS prune on CubeCL ([`compose::ObsSteps`]): a block is one in-block launch (its
/// width in registers, up to [`MAX_BLOCK`]), its rows of U gathered first; launches queue on
/// the client's stream and the loss partials are summed at the end.
pub struct ObsRun<'a, R: Runtime> {
    b: &'a CubeBackend<R>,
    w: &'a CubeTensor,
    factor: &'a HinvFactor<CubeTensor>,
    /// The block width the launches are compiled for, and their layout.
    block: usize,
    lay: Layout,
    state: Option<ObsState>,
}

/// What [`ObsRun::begin`] allocates.
struct ObsState {
    mask: CubeMask,
    /// Cubes per slab of W, the loss partials (a slot per cube and block) and the next one.
    cubes: Vec<usize>,
    loss: Handle,
    loss_len: usize,
    loss_off: usize,
    /// The block's rows of U, its diagonal, and the errors of each slab of W.
    ub: Handle,
    dg: Handle,
    errs: Vec<Handle>,
    /// SparseGPT's block selection (two launches, ended in the in-block kernel), or none:
    /// then `sel` is a word the kernel never reads.
    block_sel: Option<BlockSel>,
    sel: Handle,
}

/// The selection buffer of two halves (plan::select::block), which half the next selecting
/// block takes, and whether the next in-block launch ends a selection.
struct BlockSel {
    half_words: usize,
    selected: usize,
    pending: Option<usize>,
}

impl<'a, R: Runtime> ObsRun<'a, R> {
    pub fn new(
        b: &'a CubeBackend<R>,
        w: &'a CubeTensor,
        factor: &'a HinvFactor<CubeTensor>,
    ) -> Self {
        Self {
            b,
            w,
            factor,
            block: 1,
            lay: Layout::new(1),
            state: None,
        }
    }

    fn state(&mut self) -> &mut ObsState {
        self.state.as_mut().expect("the OBS run has begun")
    }

    /// The loss partials, the staged block and the error rows: none for an empty W.
    fn scratch(&self, mask: CubeMask) -> Result<ObsState> {
        let (b, w, block) = (self.b, self.w, self.block);
        let (rows, cols) = w.shape();
        let rp = self.lay.rows_per_cube as usize;
        let cubes: Vec<usize> = (0..w.handles.len())
            .map(|s| w.slabs.range(s).1.div_ceil(rp))
            .collect();
        let loss_len = if rows == 0 || cols == 0 {
            1
        } else {
            cols.div_ceil(block) * cubes.iter().sum::<usize>()
        };
        Ok(ObsState {
            mask,
            loss: b.scratch(loss_len)?,
            loss_len,
            loss_off: 0,
            ub: b.scratch(block * cols.max(1))?,
            dg: b.scratch(block)?,
            errs: (0..w.handles.len())
                .map(|s| b.scratch(w.slabs.range(s).1.max(1) * block))
                .collect::<Result<_>>()?,
            cubes,
            block_sel: None,
            sel: b.scratch(1)?,
        })
    }
}

impl<R: Runtime> compose::ObsSteps for ObsRun<'_, R> {
    type Mask = CubeMask;

    fn shapes(&self) -> ((usize, usize), (usize, usize)) {
        (self.w.shape(), self.factor.u.shape())
    }

    fn dead(&self) -> &[usize] {
        &self.factor.dead
    }

    fn mask_shape(m: &CubeMask) -> (usize, usize) {
        (m.rows, m.cols)
    }

    /// The whole block in one launch, refused where the kernel's registers, staging or shared
    /// memory cannot hold it.
    fn sub_block(&mut self, block: usize, sel: &ObsSelection<'_, CubeMask>) -> Result<usize> {
        let block = block.min(self.w.cols.max(1));
        if block > MAX_BLOCK {
            return Err(KernelError::Unsupported(format!(
                "OBS block size {block} is above this backend's {MAX_BLOCK}"
            )));
        }
        let lay = Layout::new(block);
        let rp = lay.rows_per_cube as usize;
        let m = match *sel {
            ObsSelection::NM { m, .. } => Some(m),
            _ => None,
        };
        if let Some(m) = m.filter(|&m| rp * m > NM_STAGE) {
            return Err(KernelError::Unsupported(format!(
                "N:M with M = {m} and OBS block {block} stages more than {NM_STAGE} weights per cube"
            )));
        }
        // What the in-block kernel keeps in shared memory (U chunk, diag, errors, mask words,
        // staged N:M weights, the loss reduction, the end of an unstructured selection):
        // refuse rather than exceed the device's limit.
        let ends_selection = matches!(sel, ObsSelection::Unstructured(_));
        let shared = 4
            * (lay.chunk as usize * block
                + block
                + rp
                + rp * lay.words as usize
                + m.map_or(1, |m| rp * m)
                + CUBE as usize)
            + if ends_selection {
                END_SELECTION_SHARED
            } else {
                0
            };
        if shared > self.b.max_shared {
            return Err(KernelError::Unsupported(format!(
                "the OBS block kernel for block {block} needs {shared} bytes of shared memory, the \
                 device has {}",
                self.b.max_shared
            )));
        }
        (self.block, self.lay) = (block, lay);
        Ok(block)
    }

    fn begin(&mut self, sel: &ObsSelection<'_, CubeMask>) -> Result<()> {
        let (b, w) = (self.b, self.w);
        let mask = match *sel {
            ObsSelection::Given(given) => {
                same_slabs("given mask vs W", &given.slabs, &w.slabs)?;
                let out = b.alloc_mask(w.rows, w.cols)?;
                for s in 0..given.handles.len() {
                    copy_u32(b, &given.handles[s], &out.handles[s], given.slab_len(s));
                }
                out
            }
            _ => b.empty_mask(w.rows, w.cols)?,
        };
        zero_columns(b, w, &self.factor.dead)?;
        let mut st = self.scratch(mask)?;
        if let ObsSelection::Unstructured(_) = sel {
            // Two launches per block where the buffer fits one binding; otherwise the five of
            // the whole-group selection.
            let half_words = block::half_words(w.rows * self.block);
            if let Ok(h) = b.scratch(2 * half_words) {
                fill_u32(b, &h, 2 * half_words, 0);
                st.sel = h;
                st.block_sel = Some(BlockSel {
                    half_words,
                    selected: 0,
                    pending: None,
                });
            }
        }
        self.state = Some(st);
        Ok(())
    }

    /// U[i1:i2, :] gathered into one buffer (U may be split into slabs; a block may straddle
    /// two), and diag(U1) out of it: stride cols + 1 from column i1.
    fn block(&mut self, i1: usize, i2: usize) -> Result<()> {
        let (b, u, block) = (self.b, &self.factor.u, self.block);
        let cols = u.cols;
        let st = self.state.as_ref().expect("the OBS run has begun");
        gather_rows(b, u, i1, i2, &st.ub);
        copy2d(
            b,
            Rect {
                h: &st.ub,
                len: block * cols,
                off: i1,
                ld: cols + 1,
            },
            Rect {
                h: &st.dg,
                len: block,
                off: 0,
                ld: 1,
            },
            i2 - i1,
            1,
        );
        Ok(())
    }

    fn select(&mut self, i1: usize, i2: usize, k: usize) -> Result<()> {
        let (b, w, block) = (self.b, self.w, self.block);
        let st = self.state.as_mut().expect("the OBS run has begun");
        if let Some(bs) = st.block_sel.as_mut() {
            // k = 0 prunes nothing: the block's bits stay as cleared.
            if k > 0 {
                let half = (bs.selected % 2) * bs.half_words;
                let sel = (&st.sel, 2 * bs.half_words);
                select_block(b, w, (&st.dg, block), (i1, i2 - i1), k, sel, half);
                bs.selected += 1;
                bs.pending = Some(half);
            }
            return Ok(());
        }
        let dg = Some((&st.dg, block));
        select_global(
            b,
            w,
            dg,
            None,
            (i1, i2 - i1),
            k,
            SRC_OBS,
            &st.mask,
            true,
            false,
        )
    }

    fn columns(
        &mut self,
        i1: usize,
        (j1, j2): (usize, usize),
        nm: Option<(usize, usize)>,
    ) -> Result<()> {
        debug_assert_eq!(i1, j1, "a CubeCL block is one sub-block");
        let (b, w, block, lay) = (self.b, self.w, self.block, self.lay);
        let (cols, cnt) = (w.cols, j2 - j1);
        let (n, m) = nm.unwrap_or((0, 1));
        let st = self.state();
        let wpr = st.mask.words_per_row();
        let (sel_len, ending) = match st.block_sel.as_mut() {
            Some(bs) => (
                2 * bs.half_words,
                bs.pending.take().map(|h| (h, bs.half_words)),
            ),
            None => (1, None),
        };
        for s in 0..w.handles.len() {
            let (row0, srows) = w.slabs.range(s);
            if srows == 0 {
                continue;
            }
            // SAFETY: each cube owns rows [x·rp, x·rp + rp) of the slab (checked against
            // srows) and columns [j1, j2) of W, its mask words and its error rows; U1 comes
            // from the gathered block rows; the loss slot loss_off + x is this cube's own.
            unsafe {
                obs_block_kernel::launch_unchecked::<R>(
                    &b.client,
                    CubeCount::Static(st.cubes[s] as u32, 1, 1),
                    CubeDim::new_1d(CUBE),
                    arg(&w.handles[s], w.slab_len(s)),
                    arg(&st.ub, block * cols),
                    arg(&st.mask.handles[s], st.mask.slab_len(s)),
                    arg(&st.errs[s], srows * block),
                    arg(&st.dg, block),
                    arg(&st.loss, st.loss_len),
                    arg(&st.sel, sel_len),
                    srows as u32,
                    cols as u32,
                    wpr as u32,
                    j1 as u32,
                    cnt as u32,
                    st.loss_off as u32,
                    ending.map_or((0, 0, 0, 0), |(half, hw)| {
                        (
                            half as u32,
                            (hw - half) as u32,
                            (s == 0) as u32,
                            row0 as u32,
                        )
                    }),
                    lay.lanes,
                    lay.slots,
                    block as u32,
                    lay.chunk,
                    lay.words,
                    nm.is_some(),
                    n as u32,
                    m as u32,
                    b.plane,
                    b.plane_lanes == Some(lay.lanes),
                    ending.is_some(),
                );
            }
            st.loss_off += st.cubes[s];
            if j2 < cols {
                gemm(
                    b,
                    &Gemm {
                        alpha: -1.0,
                        beta: Some(1.0),
                        ..Gemm::store(
                            srows,
                            cols - j2,
                            cnt,
                            View::rows(&st.errs[s], srows * block, 0, block),
                            View::rows(&st.ub, block * cols, j2, cols),
                            View::rows(&w.handles[s], w.slab_len(s), j2, cols),
                        )
                    },
                );
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<ObsOutcome<CubeMask>> {
        let st = self.state.take().expect("the OBS run has begun");
        let loss = if st.loss_off == 0 {
            0.0
        } else {
            sum(self.b, &st.loss, st.loss_off)?
        };
        Ok(ObsOutcome {
            mask: st.mask,
            loss,
        })
    }
}
