// The LLaMA forward ops of ALGORITHMS.md §14 that are not GEMMs (the linear X·Wᵀ and the LM
// head's logits run in gemm.wgsl):
//   rms_norm: one workgroup per row, a tree reduction of the sum of squares;
//   rope: one invocation per (row, head, i < e/2) pair, in place;
//   attention: causal GQA with an online softmax, a tile of BQ query rows of one head per
//     workgroup, tiles of K and V rows of its KV head in workgroup memory;
//   silu_mul, add_assign: elementwise over flat chunks;
//   embed: rows of the table gathered by token id, one window of the table's rows at a time;
//   lm_fold: one workgroup per row folding a chunk of logits into the running (m, s, z).
// Bases are window-relative indices of a matrix's logical origin (u32 wrap-around arithmetic,
// as in gemm.wgsl), so one dispatch serves a slab of rows of a matrix split across bindings.

struct Params {
    rows: u32,       // rows this dispatch covers (elements for the elementwise kernels,
                     // workgroups for attention)
    cols: u32,       // columns of the rows
    row0: u32,       // first logical row
    a_base: u32,
    a_ld: u32,
    b_base: u32,
    b_ld: u32,
    c_base: u32,
    d_base: u32,
    d_ld: u32,
    idx_base: u32,
    seq: u32,        // rope, attention: rows per window
    heads: u32,      // attention: query heads
    group: u32,      // attention: query heads per KV head
    e: u32,          // rope, attention: head_dim
    bk: u32,         // attention: keys per tile
    lo: u32,         // embed: the table rows bound, [lo, hi); lm_fold: the chunk's vocabulary rows
    hi: u32,
    fresh: u32,      // lm_fold: the first chunk (offset 0) starts the state afresh
    row_len: u32,    // elementwise: threads per grid row (the dispatch's x extent times 256)
    scale: f32,      // attention: 1/sqrt(e)
    eps: f32,        // rms_norm
    q_start: u32,    // attention: the query positions [q_start, q_stop) of each window covered
    q_stop: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read> in2: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
// Token ids (embed) or next-token targets (lm_fold).
@group(0) @binding(5) var<storage, read> ids: array<u32>;

const NO_TARGET: u32 = 0xffffffffu;
const LOWEST: f32 = -3.40282347e38;

var<workgroup> red: array<f32, 256>;

// The sum of v over the workgroup's 256 threads, in every thread. Uniform control flow.
fn wg_sum(t: u32, v: f32) -> f32 {
    workgroupBarrier();
    red[t] = v;
    workgroupBarrier();
    for (var off = 128u; off > 0u; off = off / 2u) {
        if (t < off) { red[t] = red[t] + red[t + off]; }
        workgroupBarrier();
    }
    return red[0];
}

// The largest v over the workgroup's 256 threads, in every thread. Uniform control flow.
fn wg_max(t: u32, v: f32) -> f32 {
    workgroupBarrier();
    red[t] = v;
    workgroupBarrier();
    for (var off = 128u; off > 0u; off = off / 2u) {
        if (t < off) { red[t] = max(red[t], red[t + off]); }
        workgroupBarrier();
    }
    return red[0];
}

// dst(r, :) = x(r, :) / sqrt(mean(x(r, :)²) + eps) · γ for rows r in [row0, row0 + rows):
// x in in0, γ (1 x cols) in in1, rows of cols values in both x and dst.
@compute @workgroup_size(256, 1, 1)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= P.rows) { return; }
    let t = lid.x;
    let r = P.row0 + wg;
    let xa = P.a_base + r * P.cols;
    var s = 0.0;
    for (var j = t; j < P.cols; j += 256u) {
        let v = in0[xa + j];
        s = fma(v, v, s);
    }
    let ss = wg_sum(t, s);
    let inv = 1.0 / sqrt(ss / f32(P.cols) + P.eps);
    let da = P.d_base + r * P.cols;
    for (var j = t; j < P.cols; j += 256u) {
        dst[da + j] = in0[xa + j] * (inv * in1[P.b_base + j]);
    }
}

// RoPE in place on dst (rows of cols = heads·e values), HF's rotate_half: for the pair
// (head, i < e/2) of row r at position p = r mod seq, (x_i, x_{i+e/2}) ←
// (x_i·c − x_{i+e/2}·s, x_{i+e/2}·c + x_i·s) with c, s entry (p, i) of the tables in in1, in2.
@compute @workgroup_size(64, 4, 1)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = P.e / 2u;
    if (gid.x >= P.cols / 2u || gid.y >= P.rows) { return; }
    let r = P.row0 + gid.y;
    let head = gid.x / half;
    let i = gid.x % half;
    let ti = (r % P.seq) * half + i;
    let c = in1[P.b_base + ti];
    let s = in2[P.c_base + ti];
    let xa = P.d_base + r * P.cols + head * P.e + i;
    let x0 = dst[xa];
    let x1 = dst[xa + half];
    dst[xa] = x0 * c - x1 * s;
    dst[xa + half] = x1 * c + x0 * s;
}

// ---- attention ----

const BQ: u32 = 64u;        // query rows per workgroup, one invocation each
const EMAX: u32 = 256u;     // the largest head_dim of this variant (the host picks 64, 128, 256)
const KV_FLOATS: u32 = 2048u; // the K (and V) tile: bk rows of e values, bk <= KV_FLOATS / e
const BKMAX: u32 = 64u;     // bk <= BKMAX

var<workgroup> ks: array<f32, KV_FLOATS>;
var<workgroup> vs: array<f32, KV_FLOATS>;

// Causal GQA over stacked windows of seq rows, for the query positions [q_start, q_stop) of
// the windows starting at row0: q in in0 (a_ld = heads·e columns), k and v in in1 and in2
// (b_ld = kv_heads·e columns, the same bases), the output in dst (d_ld = heads·e). With
// T = ⌈(q_stop − q_start)/BQ⌉ tiles per window, workgroup wg (of rows) takes query head
// h = wg mod heads, tile (wg / heads) mod T of window (wg / heads) / T; its invocation i is
// the query at position q_start + BQ·tile + i of the window, with q·scale and its accumulator
// in private arrays. Tiles of bk keys of KV head h / group pass through workgroup
// memory, up to the tile's last query (later keys are never loaded); per tile each query forms
// its scores, then rescales its running max m, sum l and accumulator (the online softmax).
@compute @workgroup_size(64, 1, 1)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= P.rows) { return; }
    let tiles = (P.q_stop - P.q_start + BQ - 1u) / BQ;
    let h = wg % P.heads;
    let rest = wg / P.heads;
    let w0 = P.row0 + (rest / tiles) * P.seq;
    let q0 = P.q_start + (rest % tiles) * BQ;
    let q_end = min(q0 + BQ, P.q_stop);
    let e = P.e;
    let kv_col = (h / P.group) * e;
    let tq = q0 + lid.x;
    let live = tq < q_end;

    var q: array<f32, EMAX>;
    var acc: array<f32, EMAX>;
    var sc: array<f32, BKMAX>;
    if (live) {
        let qa = P.a_base + (w0 + tq) * P.a_ld + h * e;
        for (var d = 0u; d < e; d++) { q[d] = in0[qa + d] * P.scale; }
    }
    var m = 0.0;
    var l = 0.0;
    var started = false;
    for (var k0 = 0u; k0 < q_end; k0 += P.bk) {
        let nk = min(P.bk, q_end - k0);
        workgroupBarrier();
        for (var i = lid.x; i < nk * e; i += BQ) {
            let ka = (w0 + k0 + i / e) * P.b_ld + kv_col + i % e;
            ks[i] = in1[P.b_base + ka];
            vs[i] = in2[P.c_base + ka];
        }
        workgroupBarrier();
        if (live && k0 <= tq) {
            let c = min(nk, tq - k0 + 1u);
            var tmax = LOWEST;
            for (var j = 0u; j < c; j++) {
                var s = 0.0;
                for (var d = 0u; d < e; d++) { s = fma(q[d], ks[j * e + d], s); }
                sc[j] = s;
                tmax = max(tmax, s);
            }
            var m_new = tmax;
            if (started) {
                m_new = max(m, tmax);
                let corr = exp(m - m_new);
                l = l * corr;
                for (var d = 0u; d < e; d++) { acc[d] = acc[d] * corr; }
            }
            started = true;
            m = m_new;
            for (var j = 0u; j < c; j++) {
                let p = exp(sc[j] - m);
                l += p;
                for (var d = 0u; d < e; d++) { acc[d] = fma(p, vs[j * e + d], acc[d]); }
            }
        }
    }
    if (live) {
        let oa = P.d_base + (w0 + tq) * P.d_ld + h * e;
        for (var d = 0u; d < e; d++) { dst[oa + d] = acc[d] / l; }
    }
}

// ---- elementwise ----

// dst[i] = silu(g)·u for g = in0[i], u = in1[i], i < rows (the chunk's elements); the sigmoid
// from exp(−|g|), which never overflows.
@compute @workgroup_size(256, 1, 1)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_len + gid.x;
    if (i >= P.rows) { return; }
    let g = in0[P.a_base + i];
    let u = in1[P.b_base + i];
    let ex = exp(-abs(g));
    var sig = 1.0 / (1.0 + ex);
    if (g < 0.0) { sig = ex / (1.0 + ex); }
    dst[P.d_base + i] = g * sig * u;
}

// dst[i] += in0[i], i < rows.
@compute @workgroup_size(256, 1, 1)
fn add_assign(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_len + gid.x;
    if (i >= P.rows) { return; }
    dst[P.d_base + i] = dst[P.d_base + i] + in0[P.a_base + i];
}

// dst(i, :) = table(ids[i], :) for output rows i in [row0, row0 + rows) whose id lies in the
// table rows [lo, hi) bound in in0; rows of cols values.
@compute @workgroup_size(64, 4, 1)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= P.cols || gid.y >= P.rows) { return; }
    let i = P.row0 + gid.y;
    let id = ids[P.idx_base + i];
    if (id < P.lo || id >= P.hi) { return; }
    dst[P.d_base + i * P.cols + gid.x] = in0[P.a_base + id * P.cols + gid.x];
}

// The LM head's running state (dst, rows of 3: m, s, z) for rows r in [row0, row0 + rows),
// given the logits of vocabulary rows [lo, hi) (in0, rows of cols = hi − lo values) and the
// targets (ids): m ← max(m, max l), s ← s·exp(m_old − m) + Σ exp(l − m), z ← l[target − lo]
// when the target lies in the chunk. `fresh` ignores what the state held (and zeroes z).
@compute @workgroup_size(256, 1, 1)
fn lm_fold(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= P.rows) { return; }
    let t = lid.x;
    let r = P.row0 + wg;
    let la = P.a_base + r * P.cols;
    var mx = LOWEST;
    for (var j = t; j < P.cols; j += 256u) { mx = max(mx, in0[la + j]); }
    let cmax = wg_max(t, mx);
    let st = P.d_base + r * 3u;
    var m = cmax;
    var carried = 0.0;
    if (P.fresh == 0u) {
        let m0 = dst[st];
        m = max(m0, cmax);
        carried = dst[st + 1u] * exp(m0 - m);
    }
    var s = 0.0;
    for (var j = t; j < P.cols; j += 256u) { s += exp(in0[la + j] - m); }
    let total = wg_sum(t, s);
    // Every invocation has read the state before thread 0 writes it.
    storageBarrier();
    if (t == 0u) {
        dst[st] = m;
        dst[st + 1u] = carried + total;
        let tg = ids[P.idx_base + r];
        if (tg != NO_TARGET && tg >= P.lo && tg < P.hi) {
            dst[st + 2u] = in0[la + tg - P.lo];
        } else if (P.fresh != 0u) {
            dst[st + 2u] = 0.0;
        }
    }
}
