// The elementwise and small reduction steps of the re-fit ops (ALGORITHMS.md §12): AdamW, the
// row scales from their partial dot products and their application, and the column sums of
// the norm system's right-hand side. The GEMM-shaped steps (and the partials they leave) are
// in gemm.wgsl.

struct Params {
    n: u32,           // vec4s (adamw), rows (rowscale_solve), elements (row_apply), columns (colsum)
    dst_base: u32,    // adamw: in vec4s; otherwise in f32s
    src_base: u32,
    src2_base: u32,
    m_base: u32,
    v_base: u32,
    row_len: u32,     // threads per grid row (the dispatch's x extent times 256)
    cols: u32,        // row_apply: the matrix's columns
    parts: u32,       // partial rows to add up ...
    pld: u32,         // ... and their stride
    row0: u32,        // first (global) row of the window
    accumulate: u32,  // colsum: add to what dst holds
    lr: f32,
    beta1: f32,
    beta2: f32,
    omb1: f32,        // 1 - beta1 and 1 - beta2, rounded once on the host
    omb2: f32,
    eps: f32,
    bc1: f32,         // bias corrections 1 - beta^t
    bc2: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> p4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> g4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> m4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> v4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> dst: array<f32>;
@group(0) @binding(6) var<storage, read> src: array<f32>;
@group(0) @binding(7) var<storage, read> src2: array<f32>;

// PyTorch's AdamW without weight decay, a vec4 per thread (buffers are padded to whole vec4s;
// the padding lanes stay finite and nobody reads them).
@compute @workgroup_size(256, 1, 1)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_len + gid.x;
    if (i >= P.n) { return; }
    let g = g4[P.src_base + i];
    let m = P.beta1 * m4[P.m_base + i] + P.omb1 * g;
    let v = P.beta2 * v4[P.v_base + i] + P.omb2 * (g * g);
    m4[P.m_base + i] = m;
    v4[P.v_base + i] = v;
    let denom = sqrt(v / P.bc2) + P.eps;
    p4[P.dst_base + i] = p4[P.dst_base + i] - P.lr * (m / P.bc1) / denom;
}

// s_i = num_i / den_i (1 where den_i == 0) for the n rows of a window from row0: numerators
// in src, denominators in src2, `parts` partial rows of stride pld each; into dst[row0 + r].
@compute @workgroup_size(256, 1, 1)
fn rowscale_solve(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= P.n) { return; }
    var num = 0.0;
    var den = 0.0;
    for (var p = 0u; p < P.parts; p++) {
        num += src[P.src_base + p * P.pld + r];
        den += src2[P.src2_base + p * P.pld + r];
    }
    var s = 1.0;
    if (den != 0.0) { s = num / den; }
    dst[P.dst_base + P.row0 + r] = s;
}

// Ŵ(i, :) *= s_i over a window of whole rows from row0 (n elements), s in src.
@compute @workgroup_size(256, 1, 1)
fn row_apply(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.y * P.row_len + gid.x;
    if (e >= P.n) { return; }
    let i = P.row0 + e / P.cols;
    dst[P.dst_base + e] = dst[P.dst_base + e] * src[P.src_base + i];
}

// dst[j] (+)= the sum over `parts` partial rows of stride pld in src, for j < n.
@compute @workgroup_size(256, 1, 1)
fn colsum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= P.n) { return; }
    var s = 0.0;
    for (var p = 0u; p < P.parts; p++) { s += src[P.src_base + p * P.pld + j]; }
    if (P.accumulate != 0u) { s += dst[P.dst_base + j]; }
    dst[P.dst_base + j] = s;
}
