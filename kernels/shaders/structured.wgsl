// The structured-pruning ops of ALGORITHMS.md §11 that are not GEMMs (those run in gemm.wgsl):
//   gather: sub-matrices picked by sorted index lists or ranges (Hinv[S,S], Hinv[S,:], W[:,S],
//     compaction);
//   zero_cols / zero_rows: the exact zeros the structured update leaves in W[:,S] and Hinv;
//   taylor_part + seg_reduce: segmented sums of the Taylor terms (per-workgroup partials, then
//     one workgroup per segment adds them up: WGSL has no f32 atomics);
//   group_factor + group_sumsq + seg_reduce: the OBS saliency of many narrow groups at once
//     (width <= 64): per group the lower Cholesky factor of Hinv[S,S] and its inverse in
//     workgroup memory, then per row of W ½·‖W[r,S]·L⁻ᵀ‖² summed over the rows.
// Bases are window-relative indices of a matrix's logical origin (u32 wrap-around arithmetic,
// as in gemm.wgsl), so one dispatch serves a slab of rows of a matrix split across bindings.

struct Params {
    rows: u32,       // rows (or index-list entries) this dispatch covers
    cols: u32,       // columns of the output (gather), of the matrix (zero_*), or group width
    row0: u32,       // first logical row (or index-list entry) of this dispatch
    src_base: u32,
    src_ld: u32,
    dst_base: u32,
    dst_ld: u32,
    ridx_on: u32,    // gather: source rows from ridx (else r_off + i)
    cidx_on: u32,    // gather: source columns from cidx (else c_off + j)
    r_off: u32,
    c_off: u32,
    aux1_base: u32,
    aux2_base: u32,
    kind: u32,       // taylor: 0 = taylor1, 1 = taylor2, 2 = taylor_mix
    axis: u32,       // taylor: 0 = rows, 1 = columns
    width: u32,      // taylor: segment width
    seg_lo: u32,     // first segment of this dispatch
    nseg: u32,       // segments in this dispatch
    chunks: u32,     // workgroups per segment
    part_off: u32,   // this dispatch's first partial in each segment's row of partials
    part_ld: u32,    // stride between segments' rows of partials
    has_g: u32,
    has_f: u32,
    gscale: f32,
    fscale: f32,
    scale: f32,      // seg_reduce: the factor on each sum
    count: u32,      // seg_reduce: partials per segment
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> ridx: array<u32>;
@group(0) @binding(4) var<storage, read> cidx: array<u32>;
@group(0) @binding(5) var<storage, read> aux1: array<f32>;
@group(0) @binding(6) var<storage, read> aux2: array<f32>;
@group(0) @binding(7) var<storage, read_write> part: array<f32>;
// group_factor: the lowest (list position · width + column) whose pivot failed, or 0xffffffff.
@group(0) @binding(8) var<storage, read_write> stat: array<atomic<u32>>;

// dst(i, j) = src(row(i), col(j)) for logical output rows i in [row0, row0 + rows), j < cols.
@compute @workgroup_size(64, 4, 1)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= P.cols || gid.y >= P.rows) { return; }
    let i = P.row0 + gid.y;
    var r = P.r_off + i;
    if (P.ridx_on != 0u) { r = ridx[i]; }
    var c = P.c_off + j;
    if (P.cidx_on != 0u) { c = cidx[j]; }
    dst[P.dst_base + i * P.dst_ld + j] = src[P.src_base + r * P.src_ld + c];
}

// M(r, cidx[j]) = 0 for rows r in [row0, row0 + rows), j < cols (the list length).
@compute @workgroup_size(64, 4, 1)
fn zero_cols(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= P.cols || gid.y >= P.rows) { return; }
    let r = P.row0 + gid.y;
    dst[P.dst_base + r * P.dst_ld + cidx[gid.x]] = 0.0;
}

// M(ridx[i], c) = 0 for list entries i in [row0, row0 + rows), c < cols.
@compute @workgroup_size(64, 4, 1)
fn zero_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= P.cols || gid.y >= P.rows) { return; }
    let r = ridx[P.row0 + gid.y];
    dst[P.dst_base + r * P.dst_ld + gid.x] = 0.0;
}

var<workgroup> red: array<f32, 256>;

// The sum of v over the workgroup's 256 threads, valid in thread 0. Uniform control flow.
fn wg_sum(t: u32, v: f32) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var off = 128u; off > 0u; off = off / 2u) {
        if (t < off) { red[t] = red[t] + red[t + off]; }
        workgroupBarrier();
    }
    return red[0];
}

const CHUNK: u32 = 4096u; // elements per workgroup of taylor_part

fn taylor_term(w: f32, gbar: f32, fisher: f32) -> f32 {
    if (P.kind == 0u) { return abs(w * gbar); }
    if (P.kind == 1u) { return abs(w * fisher * w); }
    return abs(w * gbar - 0.5 * w * fisher * w);
}

// One partial of a segment's Taylor sum over the rows [row0, row0 + rows) of W held in this
// dispatch's windows (src = W, aux1 = Σg, aux2 = the l2 accumulator, all with src_ld columns
// and the same bases): workgroup (segment, chunk) sums up to CHUNK of the segment's entries.
@compute @workgroup_size(256, 1, 1)
fn taylor_part(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= P.nseg * P.chunks) { return; }
    let seg = P.seg_lo + wg / P.chunks;
    let chunk = wg % P.chunks;
    let cols = P.src_ld;
    let r_end = P.row0 + P.rows;
    // The segment's entries inside this window: rows [rlo, rhi) x columns [clo, clo + nc).
    var rlo = P.row0;
    var rhi = r_end;
    var clo = 0u;
    var nc = cols;
    if (P.axis == 0u) {
        rlo = max(seg * P.width, P.row0);
        rhi = min((seg + 1u) * P.width, r_end);
    } else {
        clo = seg * P.width;
        nc = P.width;
    }
    var count = 0u;
    if (rhi > rlo) { count = (rhi - rlo) * nc; }
    var s = 0.0;
    let e0 = chunk * CHUNK;
    for (var q = lid.x; q < CHUNK; q += 256u) {
        let e = e0 + q;
        if (e >= count) { break; }
        let r = rlo + e / nc;
        let c = clo + e % nc;
        let o = r * cols + c;
        var gbar = 0.0;
        var fisher = 0.0;
        if (P.has_g != 0u) { gbar = P.gscale * aux1[P.aux1_base + o]; }
        if (P.has_f != 0u) { fisher = P.fscale * aux2[P.aux2_base + o]; }
        s += taylor_term(src[P.src_base + o], gbar, fisher);
    }
    let total = wg_sum(lid.x, s);
    if (lid.x == 0u) { part[seg * P.part_ld + P.part_off + chunk] = total; }
}

// dst[dst_base + s] = scale · Σ_{c < count} part[part_off + s · part_ld + c] for segments s in
// [seg_lo, seg_lo + nseg), one workgroup per segment.
@compute @workgroup_size(256, 1, 1)
fn seg_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= P.nseg) { return; }
    let seg = P.seg_lo + wg;
    var s = 0.0;
    for (var c = lid.x; c < P.count; c += 256u) { s += part[P.part_off + seg * P.part_ld + c]; }
    let total = wg_sum(lid.x, s);
    if (lid.x == 0u) { dst[P.dst_base + seg] = P.scale * total; }
}

const NB: u32 = 64u;

var<workgroup> L: array<f32, 4096>; // 64 x 64
var<workgroup> failed: u32;

fn finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// For the groups g = ridx[i] of list entries i < nseg whose rows [g·k, (g+1)·k) (k = cols)
// lie in this dispatch's window of Hinv rows [row0, row0 + rows) (src, src_ld columns): the
// lower Cholesky factor L of Hinv[S,S] (right-looking, a column at a time, as chol_diag in
// factor.wgsl) and then L⁻¹ (a column per thread), written row-major to
// dst[i·k² ..]. A pivot that is not positive stops the group and is reported in stat[0].
@compute @workgroup_size(256, 1, 1)
fn group_factor(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let gi = wid.y * nwg.x + wid.x;
    if (gi >= P.nseg) { return; }
    let k = P.cols;
    let s0 = ridx[gi] * k;
    if (s0 < P.row0 || s0 >= P.row0 + P.rows) { return; }
    let t = lid.x;
    if (t == 0u) { failed = 0u; }
    for (var e = t; e < NB * NB; e += 256u) {
        let i = e / NB;
        let j = e % NB;
        var v = 0.0;
        if (i < k && j <= i) { v = src[P.src_base + (s0 + i) * P.src_ld + s0 + j]; }
        L[e] = v;
    }
    workgroupBarrier();
    for (var j = 0u; j < k; j++) {
        if (t == 0u) {
            let d = L[j * NB + j];
            if (!(d > 0.0) || !finite(d)) {
                failed = 1u;
                atomicMin(&stat[0], gi * k + j);
            } else {
                L[j * NB + j] = sqrt(d);
            }
        }
        if (workgroupUniformLoad(&failed) != 0u) { return; }
        let piv = L[j * NB + j];
        for (var i = j + 1u + t; i < k; i += 256u) { L[i * NB + j] = L[i * NB + j] / piv; }
        workgroupBarrier();
        let w = k - j - 1u;
        for (var e = t; e < w * w; e += 256u) {
            let i = j + 1u + e / w;
            let l = j + 1u + e % w;
            if (l <= i) { L[i * NB + l] = L[i * NB + l] - L[i * NB + j] * L[l * NB + j]; }
        }
        workgroupBarrier();
    }
    // Column j of L⁻¹ by forward substitution: L x = e_j.
    let j = t;
    if (j < k) {
        var x: array<f32, 64>;
        x[j] = 1.0 / L[j * NB + j];
        for (var i = j + 1u; i < k; i++) {
            var s = 0.0;
            for (var p = j; p < i; p++) { s = fma(L[i * NB + p], x[p], s); }
            x[i] = -s / L[i * NB + i];
        }
        let out = gi * k * k;
        for (var i = 0u; i < k; i++) {
            var v = 0.0;
            if (i >= j) { v = x[i]; }
            dst[out + i * k + j] = v;
        }
    }
}

// Per (group list entry gi in [seg_lo, seg_lo + nseg), block of 256 rows of this W window):
// Σ_r ‖W[r,S]·L⁻ᵀ‖² with S = [ridx[gi]·k, (ridx[gi]+1)·k) and L⁻¹ from group_factor in aux1,
// a thread per row; into part[gi · part_ld + part_off + block]. W is src (src_ld columns),
// rows [row0, row0 + rows); `chunks` is the number of row blocks.
@compute @workgroup_size(256, 1, 1)
fn group_sumsq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= P.nseg * P.chunks) { return; }
    let gi = P.seg_lo + wg / P.chunks;
    let blk = wg % P.chunks;
    let k = P.cols;
    let t = lid.x;
    for (var e = t; e < k * k; e += 256u) { L[e] = aux1[P.aux1_base + gi * k * k + e]; }
    workgroupBarrier();
    let rl = blk * 256u + t;
    var s = 0.0;
    if (rl < P.rows) {
        let row = P.src_base + (P.row0 + rl) * P.src_ld + ridx[gi] * k;
        var x: array<f32, 64>;
        for (var i = 0u; i < k; i++) { x[i] = src[row + i]; }
        for (var j = 0u; j < k; j++) {
            var q = 0.0;
            for (var i = 0u; i <= j; i++) { q = fma(L[j * k + i], x[i], q); }
            s = fma(q, q, s);
        }
    }
    // The row sums are added up in L (its factor is no longer read), so the entry point needs
    // no more than WebGPU's default 16 KiB of workgroup memory.
    workgroupBarrier();
    L[t] = s;
    workgroupBarrier();
    for (var off = 128u; off > 0u; off = off / 2u) {
        if (t < off) { L[t] = L[t] + L[t + off]; }
        workgroupBarrier();
    }
    if (t == 0u) { part[gi * P.part_ld + P.part_off + blk] = L[0]; }
}
