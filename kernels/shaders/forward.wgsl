// The LLaMA forward ops of ALGORITHMS.md §14 that are not GEMMs (the linear X·Wᵀ and the LM
// head's logits run in gemm.wgsl):
//   rms_norm: one workgroup per row (or per part of a row, where rows are few), a tree
//     reduction of the sum of squares;
//   rope: one invocation per (row, head, i < e/2) pair, in place;
//   attention: causal GQA as FlashAttention-2's forward, a tile of 16·rpu query rows of one
//     head per workgroup, register tiles of S and O, tiles of K and V in workgroup memory;
//   silu_mul, residual_add: elementwise over flat chunks;
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
    lo: u32,         // embed: the table rows bound, [lo, hi); lm_fold: the chunk's vocabulary rows
    hi: u32,
    fresh: u32,      // lm_fold: the first chunk (offset 0) starts the state afresh
    row_len: u32,    // elementwise: threads per grid row (the dispatch's x extent times 256)
    scale: f32,      // attention: 1/sqrt(e)
    eps: f32,        // rms_norm
    q_start: u32,    // attention: the query positions [q_start, q_stop) of each window covered
    q_stop: u32,
    transpose: u32,  // rope: the transposed rotation (the backward pass), sin negated
    l_base: u32,     // attention: the log-sum-exp output's base (L [rows, heads] in lse_out)
    l_on: u32,       // attention: 1 to write L = m + ln(l) per (row, head), 0 to skip it
    parts: u32,      // rms_norm: workgroups per row (plan::row_parts), each writing a run
    rpu: u32,        // attention: query rows per invocation, 4, 2 or 1: tiles of 16·rpu rows
                     // (plan::attention_query_rows)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read> in2: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
// in0, in1, in2 and dst as vec4s, for the elementwise kernels and the `4` entries. Their
// indices are formed in elements and divided by 4 last: a base may be a wrapped (logically
// negative) origin, and only the whole sum is an element's index.
@group(0) @binding(1) var<storage, read> in0_4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> in1_4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> in2_4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dst4: array<vec4<f32>>;
// Token ids (embed) or next-token targets (lm_fold).
@group(0) @binding(5) var<storage, read> ids: array<u32>;
// attention's optional log-sum-exp per (row, head), which its backward recomputes P from.
@group(0) @binding(6) var<storage, read_write> lse_out: array<f32>;

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

// The run [x, y) of `len` values part `part` of P.parts writes (plan::row_part): runs of a
// multiple of `quad` values, the last shorter.
fn row_part(part: u32, len: u32, quad: u32) -> vec2<u32> {
    let run = ((len + P.parts - 1u) / P.parts + quad - 1u) / quad * quad;
    return vec2<u32>(min(part * run, len), min((part + 1u) * run, len));
}

// dst(r, :) = x(r, :) / sqrt(mean(x(r, :)²) + eps) · γ for rows r in [row0, row0 + rows):
// x in in0, γ (1 x cols) in in1, rows of cols values in both x and dst. P.parts workgroups
// per row: each sums the whole row (in the same order, so the same factor) and writes its
// run of columns.
@compute @workgroup_size(256, 1, 1)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= P.rows * P.parts) { return; }
    let t = lid.x;
    let r = P.row0 + wg / P.parts;
    let xa = P.a_base + r * P.cols;
    var s = 0.0;
    for (var j = t; j < P.cols; j += 256u) {
        let v = in0[xa + j];
        s = fma(v, v, s);
    }
    let ss = wg_sum(t, s);
    let inv = 1.0 / sqrt(ss / f32(P.cols) + P.eps);
    let da = P.d_base + r * P.cols;
    let run = row_part(wg % P.parts, P.cols, 4u);
    for (var j = run.x + t; j < run.y; j += 256u) {
        dst[da + j] = in0[xa + j] * (inv * in1[P.b_base + j]);
    }
}

// rms_norm with four columns per thread, where cols and the bases are multiples of 4.
@compute @workgroup_size(256, 1, 1)
fn rms_norm4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= P.rows * P.parts) { return; }
    let t = lid.x;
    let r = P.row0 + wg / P.parts;
    let cols = P.cols / 4u;
    let xa = (P.a_base + r * P.cols) / 4u;
    var s = 0.0;
    for (var j = t; j < cols; j += 256u) {
        let v = in0_4[xa + j];
        s += dot(v, v);
    }
    let ss = wg_sum(t, s);
    let inv = 1.0 / sqrt(ss / f32(P.cols) + P.eps);
    let da = (P.d_base + r * P.cols) / 4u;
    let ga = P.b_base / 4u;
    let run = row_part(wg % P.parts, cols, 1u);
    for (var j = run.x + t; j < run.y; j += 256u) {
        dst4[da + j] = in0_4[xa + j] * (inv * in1_4[ga + j]);
    }
}

// RoPE in place on dst (rows of cols = heads·e values), HF's rotate_half: for the pair
// (head, i < e/2) of row r at position p = r mod seq, (x_i, x_{i+e/2}) ←
// (x_i·c − x_{i+e/2}·s, x_{i+e/2}·c + x_i·s) with c, s entry (p, i) of the tables in in1, in2.
// With `transpose`, s is negated (exactly): the inverse rotation, which is RoPE's backward.
@compute @workgroup_size(64, 4, 1)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = P.e / 2u;
    if (gid.x >= P.cols / 2u || gid.y >= P.rows) { return; }
    let r = P.row0 + gid.y;
    let head = gid.x / half;
    let i = gid.x % half;
    let ti = (r % P.seq) * half + i;
    let c = in1[P.b_base + ti];
    var s = in2[P.c_base + ti];
    if (P.transpose != 0u) { s = -s; }
    let xa = P.d_base + r * P.cols + head * P.e + i;
    let x0 = dst[xa];
    let x1 = dst[xa + half];
    dst[xa] = x0 * c - x1 * s;
    dst[xa + half] = x1 * c + x0 * s;
}

// ---- attention ----

const BQ: u32 = 64u;        // query rows per workgroup at most (rpu = 4)
const BK: u32 = 32u;        // keys per tile
const DC: u32 = 16u;        // depth of one step of the S = Q·Kᵀ tile
const EMAX: u32 = 256u;     // the largest head_dim of this variant (the host picks 64, 128, 256)
const OC: u32 = EMAX / 16u; // output columns per invocation: tx, tx + 16, …
const VC_FLOATS: u32 = 2048u;
const VR: u32 = VC_FLOATS / EMAX; // V rows per step of the O += P·V update

// Rows padded by one value, so the 16 lanes that read one column of different rows hit
// different banks.
var<workgroup> qc: array<f32, BQ * (DC + 1u)>;
var<workgroup> kc: array<f32, BK * (DC + 1u)>;
var<workgroup> ps: array<f32, BQ * (BK + 1u)>;
var<workgroup> vc: array<f32, VC_FLOATS>;
var<workgroup> row_m: array<f32, BQ>;
var<workgroup> row_l: array<f32, BQ>;
var<workgroup> row_c: array<f32, BQ>;

// Causal GQA over stacked windows of seq rows, for the query positions [q_start, q_stop) of
// the windows starting at row0: q in in0 (a_ld = heads·e columns), k and v in in1 and in2
// (b_ld = kv_heads·e columns, the same bases), the output in dst (d_ld = heads·e) and, when
// l_on, each row's and head's log-sum-exp in lse_out (heads columns from l_base). With tiles
// of bq = 16·rpu query rows and T = ⌈(q_stop − q_start)/bq⌉ tiles per window, workgroup wg
// (of rows) takes query head h = wg mod heads, tile (wg / heads) mod T of window
// (wg / heads) / T.
// FlashAttention-2's loop: per tile of BK keys of KV head h / group (up to the tile's last
// query; later keys are never loaded), S = Q·Kᵀ as a register tile of rpu x 2 per invocation
// over depth steps of DC staged in workgroup memory; the scores through workgroup memory to
// one invocation per row, which updates the row's running max m and sum l (the online
// softmax) and leaves P = exp(S − m) and the rescale factor; then every invocation rescales
// its register tile of O (rpu rows x OC columns) and adds P·V over steps of VR rows of V. Every
// private array is indexed by constant-bound loops only (rows past rpu skipped by a uniform
// continue, so the trip count stays constant), so it stays in registers; O is divided by l
// once at the end. The arrays keep room for 4 rows whatever rpu: one module serves every tile
// size, where CubeCL builds a kernel per rpu.
@compute @workgroup_size(256, 1, 1)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= P.rows) { return; }
    let rpu = P.rpu;
    let bq = 16u * rpu;
    let tiles = (P.q_stop - P.q_start + bq - 1u) / bq;
    let h = wg % P.heads;
    let rest = wg / P.heads;
    let w0 = P.row0 + (rest / tiles) * P.seq;
    let q0 = P.q_start + (rest % tiles) * bq;
    let q_end = min(q0 + bq, P.q_stop);
    let e = P.e;
    let q_col = h * e;
    let kv_col = (h / P.group) * e;
    let t = lid.x;
    let ty = t / 16u;
    let tx = t % 16u;

    var o: array<f32, 4u * OC>;
    for (var i = 0u; i < 4u * OC; i++) { o[i] = 0.0; }
    if (t < bq) {
        row_m[t] = LOWEST;
        row_l[t] = 0.0;
    }
    for (var k0 = 0u; k0 < q_end; k0 += BK) {
        let nk = min(BK, q_end - k0);
        var s: array<f32, 8>;
        for (var i = 0u; i < 8u; i++) { s[i] = 0.0; }
        for (var d0 = 0u; d0 < e; d0 += DC) {
            workgroupBarrier();
            for (var i = t; i < bq * DC; i += 256u) {
                let r = i / DC;
                let d = d0 + i % DC;
                var v = 0.0;
                if (q0 + r < q_end && d < e) { v = in0[P.a_base + (w0 + q0 + r) * P.a_ld + q_col + d]; }
                qc[r * (DC + 1u) + i % DC] = v;
            }
            for (var i = t; i < BK * DC; i += 256u) {
                let r = i / DC;
                let d = d0 + i % DC;
                var v = 0.0;
                if (r < nk && d < e) { v = in1[P.b_base + (w0 + k0 + r) * P.b_ld + kv_col + d]; }
                kc[r * (DC + 1u) + i % DC] = v;
            }
            workgroupBarrier();
            for (var d = 0u; d < DC; d++) {
                for (var i = 0u; i < 4u; i++) {
                    if (i >= rpu) { continue; }
                    let a = qc[(ty * rpu + i) * (DC + 1u) + d];
                    for (var j = 0u; j < 2u; j++) {
                        s[i * 2u + j] = fma(a, kc[(tx * 2u + j) * (DC + 1u) + d], s[i * 2u + j]);
                    }
                }
            }
        }
        // Masked scores (past the tile, after the query, or a padding row) are LOWEST.
        for (var i = 0u; i < 4u; i++) {
            if (i >= rpu) { continue; }
            for (var j = 0u; j < 2u; j++) {
                let r = ty * rpu + i;
                let c = tx * 2u + j;
                let live = c < nk && k0 + c <= q0 + r && q0 + r < q_end;
                ps[r * (BK + 1u) + c] = select(LOWEST, s[i * 2u + j] * P.scale, live);
            }
        }
        workgroupBarrier();
        if (t < bq) {
            let base = t * (BK + 1u);
            var mx = LOWEST;
            for (var c = 0u; c < BK; c++) { mx = max(mx, ps[base + c]); }
            let m_old = row_m[t];
            let m_new = max(m_old, mx);
            var sum = 0.0;
            for (var c = 0u; c < BK; c++) {
                let sc = ps[base + c];
                var p = 0.0;
                if (sc > LOWEST) { p = exp(sc - m_new); }
                ps[base + c] = p;
                sum += p;
            }
            var corr = 1.0;
            if (m_old > LOWEST) { corr = exp(m_old - m_new); }
            row_l[t] = row_l[t] * corr + sum;
            row_m[t] = m_new;
            row_c[t] = corr;
        }
        workgroupBarrier();
        for (var i = 0u; i < 4u; i++) {
            if (i >= rpu) { continue; }
            let corr = row_c[ty * rpu + i];
            for (var j = 0u; j < OC; j++) { o[i * OC + j] = o[i * OC + j] * corr; }
        }
        for (var v0 = 0u; v0 < nk; v0 += VR) {
            let nv = min(VR, nk - v0);
            workgroupBarrier();
            for (var i = t; i < VR * e; i += 256u) {
                let r = i / e;
                var v = 0.0;
                if (r < nv) { v = in2[P.c_base + (w0 + k0 + v0 + r) * P.b_ld + kv_col + i % e]; }
                vc[r * EMAX + i % e] = v;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < nv; kk++) {
                for (var i = 0u; i < 4u; i++) {
                    if (i >= rpu) { continue; }
                    let p = ps[(ty * rpu + i) * (BK + 1u) + v0 + kk];
                    for (var j = 0u; j < OC; j++) {
                        o[i * OC + j] = fma(p, vc[kk * EMAX + tx + 16u * j], o[i * OC + j]);
                    }
                }
            }
        }
    }
    workgroupBarrier();
    for (var i = 0u; i < 4u; i++) {
        if (i >= rpu) { continue; }
        let r = ty * rpu + i;
        if (q0 + r < q_end) {
            let inv = 1.0 / row_l[r];
            let oa = P.d_base + (w0 + q0 + r) * P.d_ld + q_col;
            for (var j = 0u; j < OC; j++) {
                let col = tx + 16u * j;
                if (col < e) { dst[oa + col] = o[i * OC + j] * inv; }
            }
        }
    }
    // The row's log-sum-exp of its scaled scores: m is their max, l the sum of exp(s − m).
    if (P.l_on != 0u && t < bq && q0 + t < q_end) {
        lse_out[P.l_base + (w0 + q0 + t) * P.heads + h] = row_m[t] + log(row_l[t]);
    }
}

// rope with four consecutive pairs per invocation, where e/2 and the bases are multiples of 4.
@compute @workgroup_size(64, 4, 1)
fn rope4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = P.e / 2u;
    let quads = half / 4u;
    if (gid.x >= P.cols / 8u || gid.y >= P.rows) { return; }
    let r = P.row0 + gid.y;
    let head = gid.x / quads;
    let i = (gid.x % quads) * 4u;
    let ti = (P.b_base + (r % P.seq) * half + i) / 4u;
    let c = in1_4[ti];
    var s = in2_4[(P.c_base + (r % P.seq) * half + i) / 4u];
    if (P.transpose != 0u) { s = -s; }
    let xa = (P.d_base + r * P.cols + head * P.e + i) / 4u;
    let x0 = dst4[xa];
    let x1 = dst4[xa + quads];
    dst4[xa] = x0 * c - x1 * s;
    dst4[xa + quads] = x1 * c + x0 * s;
}

// ---- elementwise ----

// The elementwise kernels take a vec4 per invocation: flat chunks start on multiples of 64
// values and windows on 16 bytes, so every base is a whole vec4, and buffers are padded to
// whole vec4s, so a chunk's last vec4 may run into the padding (computed, never read).

// dst[i] = silu(g)·u for g = in0[i], u = in1[i], i < rows (the chunk's elements); the sigmoid
// from exp(−|g|), which never overflows.
@compute @workgroup_size(256, 1, 1)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_len + gid.x;
    if (i * 4u >= P.rows) { return; }
    let g = in0_4[P.a_base / 4u + i];
    let u = in1_4[P.b_base / 4u + i];
    let ex = exp(-abs(g));
    let sig = select(1.0 / (1.0 + ex), ex / (1.0 + ex), g < vec4<f32>(0.0));
    dst4[P.d_base / 4u + i] = g * sig * u;
}

// dst[i] += in0[i], i < rows.
@compute @workgroup_size(256, 1, 1)
fn residual_add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_len + gid.x;
    if (i * 4u >= P.rows) { return; }
    dst4[P.d_base / 4u + i] = dst4[P.d_base / 4u + i] + in0_4[P.a_base / 4u + i];
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

// §15: the LM head's dlogits in place of a chunk's logits (dst, rows of cols = the chunk's
// vocabulary entries lo..lo + cols) for rows r in [row0, row0 + rows):
// scale·(exp(l − lse[r]) − [lo + v = target[r]]), zero for rows without a target (u32 max).
// in1 holds the per-row log-sum-exp over the whole vocabulary, ids the targets.
@compute @workgroup_size(64, 4, 1)
fn lm_loss_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= P.cols || gid.y >= P.rows) { return; }
    let r = P.row0 + gid.y;
    let tgt = ids[P.idx_base + r];
    let i = P.d_base + r * P.cols + gid.x;
    if (tgt == 0xFFFFFFFFu) {
        dst[i] = 0.0;
        return;
    }
    var hit = 0.0;
    if (P.lo + gid.x == tgt) { hit = 1.0; }
    dst[i] = P.scale * (exp(dst[i] - in1[P.b_base + r]) - hit);
}
