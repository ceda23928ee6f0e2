// The backward ops of ALGORITHMS.md §15 that are not GEMMs (the linear's dX and dW run in
// gemm.wgsl, RoPE's transposed rotation is forward.wgsl's `rope`):
//   rms_norm_backward: one workgroup per row (or per part of a row, where rows are few), both
//     row sums in one tree, dx and the row's r;
//   rms_gamma_partials, rms_gamma_sum: dγ as a two-pass column sum, blocks of RB rows then the
//     blocks in order, so its bits depend on the shape only (no atomics);
//   silu_mul_backward: elementwise over flat chunks, two outputs;
//   embed_backward: a thread per (vocabulary row, column) summing the rows of dh that the
//     host's counting sort lists for the id, in token order.
// Bases are window-relative indices of a matrix's logical origin (u32 wrap-around arithmetic,
// as in forward.wgsl), so one dispatch serves a window of rows of a matrix split across
// bindings.

struct Params {
    rows: u32,       // rows this dispatch covers (elements for silu_mul_backward)
    cols: u32,       // columns of the rows
    row0: u32,       // first logical row
    a_base: u32,
    b_base: u32,
    c_base: u32,
    d_base: u32,
    e_base: u32,
    idx_base: u32,   // embed_backward: the id lists' offsets
    tok_base: u32,   // embed_backward: the lists' token positions
    lo: u32,         // embed_backward: the rows of dh bound, [lo, hi)
    hi: u32,
    fresh: u32,      // the first of several dispatches summing into one output: start from 0
    row_len: u32,    // threads per grid row (the dispatch's x extent times the group width)
    eps: f32,
    parts: u32,      // rms_norm_backward: workgroups per row (plan::row_parts), each writing a run
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read> in2: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
@group(0) @binding(5) var<storage, read_write> aux: array<f32>;
// The same as vec4s, for silu_mul_backward.
@group(0) @binding(1) var<storage, read> in0_4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> in1_4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> in2_4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dst4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> aux4: array<vec4<f32>>;
// The embedding's id lists: offsets (vocabulary + 1) and token positions.
@group(0) @binding(6) var<storage, read> ids: array<u32>;

// The run [x, y) of `len` values part `part` of P.parts writes (plan::row_part): runs of a
// multiple of `quad` values, the last shorter.
fn row_part(part: u32, len: u32, quad: u32) -> vec2<u32> {
    let run = ((len + P.parts - 1u) / P.parts + quad - 1u) / quad * quad;
    return vec2<u32>(min(part * run, len), min((part + 1u) * run, len));
}

// Rows per block of dγ's first pass (the host's RB).
const RB: u32 = 64u;

var<workgroup> red: array<vec2<f32>, 256>;

// The sum of v over the workgroup's 256 threads, in every thread. Uniform control flow.
fn wg_sum2(t: u32, v: vec2<f32>) -> vec2<f32> {
    workgroupBarrier();
    red[t] = v;
    workgroupBarrier();
    for (var off = 128u; off > 0u; off = off / 2u) {
        if (t < off) { red[t] = red[t] + red[t + off]; }
        workgroupBarrier();
    }
    return red[0];
}

// For rows r in [row0, row0 + rows): x in in0, γ (1 x cols) in in1, dy in in2. With
// r = (mean(x²) + eps)^(−1/2) and g = γ ⊙ dy: dx = r·g − (r³/cols)·x·Σ g·x into dst, and r
// into aux (a column), for dγ's first pass. P.parts workgroups per row: each sums the whole
// row (in the same order, so the same r) and writes its run of dx; the first writes r.
@compute @workgroup_size(256, 1, 1)
fn rms_norm_backward(@builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= P.rows * P.parts) { return; }
    let t = lid.x;
    let r = P.row0 + wg / P.parts;
    let xa = P.a_base + r * P.cols;
    let ya = P.c_base + r * P.cols;
    var s = vec2<f32>(0.0, 0.0);
    for (var j = t; j < P.cols; j += 256u) {
        let v = in0[xa + j];
        s += vec2<f32>(v * v, in1[P.b_base + j] * in2[ya + j] * v);
    }
    let tot = wg_sum2(t, s);
    let inv = 1.0 / sqrt(tot.x / f32(P.cols) + P.eps);
    let k = inv * inv * inv / f32(P.cols) * tot.y;
    let da = P.d_base + r * P.cols;
    let run = row_part(wg % P.parts, P.cols, 4u);
    for (var j = run.x + t; j < run.y; j += 256u) {
        dst[da + j] = inv * in1[P.b_base + j] * in2[ya + j] - k * in0[xa + j];
    }
    if (t == 0u && wg % P.parts == 0u) { aux[P.e_base + r] = inv; }
}

// rms_norm_backward with four columns per thread, where cols and the bases are multiples of 4
// (indices formed in elements and divided last: a base may be a wrapped origin).
@compute @workgroup_size(256, 1, 1)
fn rms_norm_backward4(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= P.rows * P.parts) { return; }
    let t = lid.x;
    let r = P.row0 + wg / P.parts;
    let cols = P.cols / 4u;
    let xa = (P.a_base + r * P.cols) / 4u;
    let ya = (P.c_base + r * P.cols) / 4u;
    let ga = P.b_base / 4u;
    var s = vec2<f32>(0.0, 0.0);
    for (var j = t; j < cols; j += 256u) {
        let v = in0_4[xa + j];
        s += vec2<f32>(dot(v, v), dot(in1_4[ga + j] * in2_4[ya + j], v));
    }
    let tot = wg_sum2(t, s);
    let inv = 1.0 / sqrt(tot.x / f32(P.cols) + P.eps);
    let k = inv * inv * inv / f32(P.cols) * tot.y;
    let da = (P.d_base + r * P.cols) / 4u;
    let run = row_part(wg % P.parts, cols, 1u);
    for (var j = run.x + t; j < run.y; j += 256u) {
        dst4[da + j] = inv * in1_4[ga + j] * in2_4[ya + j] - k * in0_4[xa + j];
    }
    if (t == 0u && wg % P.parts == 0u) { aux[P.e_base + r] = inv; }
}

// dγ's first pass over the rows [row0, row0 + rows) of x (in0), r (in1) and dy (in2): per
// block b of RB rows and column j, partial(b, j) = Σ dy·x·r over the block's rows in order,
// into dst (rows of cols). A block that began in the previous window goes on from the partial
// that window left, so the sum is the same bits however the rows are split.
@compute @workgroup_size(64, 4, 1)
fn rms_gamma_partials(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = P.row0 / RB + gid.y;
    let stop = P.row0 + P.rows;
    if (gid.x >= P.cols || b * RB >= stop) { return; }
    let j = gid.x;
    let at = P.d_base + b * P.cols + j;
    var acc = 0.0;
    if (b * RB < P.row0) { acc = dst[at]; }
    for (var t = max(b * RB, P.row0); t < min(b * RB + RB, stop); t++) {
        acc += in2[P.c_base + t * P.cols + j] * in0[P.a_base + t * P.cols + j] * in1[P.b_base + t];
    }
    dst[at] = acc;
}

// dγ's second pass: dst[j] (+)= Σ in order of the partials of blocks [row0, row0 + rows)
// (in0, rows of cols), from 0 where `fresh`.
@compute @workgroup_size(256, 1, 1)
fn rms_gamma_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.y * P.row_len + gid.x;
    if (j >= P.cols) { return; }
    var acc = 0.0;
    if (P.fresh == 0u) { acc = dst[P.d_base + j]; }
    for (var b = P.row0; b < P.row0 + P.rows; b++) {
        acc += in0[P.a_base + b * P.cols + j];
    }
    dst[P.d_base + j] = acc;
}

// For a = silu(g) ⊙ u, elements i < rows of g (in0), u (in1) and da (in2): du = da·g·σ(g)
// into aux and dg = da·u·σ(g)·(1 + g·(1 − σ(g))) into dst. σ and 1 − σ both come from
// exp(−|g|) ≤ 1, so neither overflows nor cancels for gates of either sign.
// A vec4 per invocation: flat chunks start on multiples of 64 values and windows on 16 bytes,
// so every base is a whole vec4; a chunk's last vec4 may run into the buffers' padding.
@compute @workgroup_size(256, 1, 1)
fn silu_mul_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_len + gid.x;
    if (i * 4u >= P.rows) { return; }
    let g = in0_4[P.a_base / 4u + i];
    let u = in1_4[P.b_base / 4u + i];
    let a = in2_4[P.c_base / 4u + i];
    let ex = exp(-abs(g));
    let big = 1.0 / (1.0 + ex);
    let small = ex * big;
    let neg = g < vec4<f32>(0.0);
    let sig = select(big, small, neg);
    let rest = select(small, big, neg);
    aux4[P.e_base / 4u + i] = a * g * sig;
    dst4[P.d_base / 4u + i] = a * u * sig * (1.0 + g * rest);
}

// dE(v, j) for vocabulary rows v in [row0, row0 + rows) (dst, rows of cols): the sum, in
// token order, of dh(t, j) (in0) over the tokens t of v's list (ids: offsets at idx_base,
// positions at tok_base) that lie in the rows [lo, hi) of dh bound; from 0 where `fresh`, so
// ids never seen get 0 and later windows of dh add on in order.
@compute @workgroup_size(64, 4, 1)
fn embed_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= P.cols || gid.y >= P.rows) { return; }
    let v = P.row0 + gid.y;
    let j = gid.x;
    let at = P.d_base + v * P.cols + j;
    var acc = 0.0;
    if (P.fresh == 0u) { acc = dst[at]; }
    let end = ids[P.idx_base + v + 1u];
    for (var k = ids[P.idx_base + v]; k < end; k++) {
        let t = ids[P.tok_base + k];
        // A list is in token order: nothing past the window's end comes back inside it.
        if (t >= P.hi) { break; }
        if (t >= P.lo) {
            acc += in0[P.a_base + t * P.cols + j];
        }
    }
    dst[at] = acc;
}
