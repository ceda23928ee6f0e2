// The GEMM family: C(i,j) <- epilogue(alpha * sum_k A(i,k) B(k,j)) for every GEMM-shaped step
// of the op set (fused gradient, Hessian SYRK, Cholesky trailing update, triangular inverse,
// OBS lazy update, reconstruction traces).
//
// A 64x64 output tile per workgroup of 16x16 threads, each thread a 4x4 register tile; A and
// B pass through workgroup memory in K steps of 16. Operands are addressed in "logical"
// coordinates: element (i,k) of A is a[a_base + i*lda + k] (or k*lda + i when transposed),
// where a_base is the logical origin's index relative to the bound window (u32 wrap-around
// arithmetic makes origins before the window start work), so one kernel serves sub-matrices
// and buffers split across several bindings.

struct Params {
    m_lo: u32, m_hi: u32,      // logical rows of C this dispatch covers
    n_lo: u32, n_hi: u32,      // logical columns
    k_lo: u32, k_hi: u32,      // the reduction range
    a_base: u32, lda: u32, a_trans: u32,
    b_base: u32, ldb: u32, b_trans: u32,
    c_base: u32, ldc: u32, c2_base: u32,
    p_base: u32,               // second A operand: A = a - a2 (same layout) when F_A_MINUS_P
    flags: u32,
    alpha: f32, beta: f32,
    part_off: u32,             // recon: first slot of this dispatch's partial sums
    count: u32,                // reduce_parts: number of partials
}

const F_LOWER: u32 = 1u;       // only C(i,j) with i >= j (SYRK); tiles above the diagonal exit
const F_MIRROR: u32 = 2u;      // also write C(j,i) into c2 (a second window of the same buffer)
const F_B_LOWER: u32 = 4u;     // B(k,j) == 0 for k < j (lower triangular B): skip those k
const F_A_MINUS_P: u32 = 8u;
const F_L1: u32 = 16u;         // gradient epilogue: |g| instead of g^2

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> a2: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read_write> c2: array<f32>;
@group(0) @binding(6) var<storage, read_write> part: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// [k][m] and [k][n] as vec4s, so the inner loop reads a thread's 4 rows (4 columns) at once.
var<workgroup> As: array<vec4<f32>, 256>;
var<workgroup> Bs: array<vec4<f32>, 256>;

fn a_at(i: u32, k: u32) -> f32 {
    var off: u32;
    if (P.a_trans != 0u) { off = k * P.lda + i; } else { off = i * P.lda + k; }
    var v = a[P.a_base + off];
    if ((P.flags & F_A_MINUS_P) != 0u) { v = v - a2[P.p_base + off]; }
    return v;
}

fn b_at(k: u32, j: u32) -> f32 {
    if (P.b_trans != 0u) { return b[P.b_base + j * P.ldb + k]; }
    return b[P.b_base + k * P.ldb + j];
}

fn tile_origin(wid: vec3<u32>) -> vec2<u32> {
    return vec2<u32>(P.m_lo + wid.y * TM, P.n_lo + wid.x * TN);
}

fn above_diagonal(o: vec2<u32>) -> bool {
    return (P.flags & F_LOWER) != 0u && o.x + TM - 1u < o.y;
}

fn mainloop(o: vec2<u32>, lid: vec3<u32>) -> array<f32, 16> {
    var acc: array<f32, 16>;
    let t = lid.y * 16u + lid.x;
    var k0 = P.k_lo;
    if ((P.flags & F_B_LOWER) != 0u) { k0 = max(k0, o.y); }
    for (var kt = k0; kt < P.k_hi; kt += TK) {
        for (var l = 0u; l < 4u; l++) {
            let e = t + l * 256u;
            var mi: u32; var kk: u32;
            // Consecutive threads read consecutive addresses in either layout.
            if (P.a_trans != 0u) { kk = e / TM; mi = e % TM; } else { mi = e / TK; kk = e % TK; }
            let gi = o.x + mi;
            let gk = kt + kk;
            var v = 0.0;
            if (gi < P.m_hi && gk < P.k_hi) { v = a_at(gi, gk); }
            As[(kk * TM + mi) / 4u][mi % 4u] = v;
            var nj: u32;
            if (P.b_trans != 0u) { nj = e / TK; kk = e % TK; } else { kk = e / TN; nj = e % TN; }
            let gj = o.y + nj;
            let gk2 = kt + kk;
            var w = 0.0;
            if (gj < P.n_hi && gk2 < P.k_hi) { w = b_at(gk2, gj); }
            Bs[(kk * TN + nj) / 4u][nj % 4u] = w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let av = As[kk * (TM / 4u) + lid.y];
            let bv = Bs[kk * (TN / 4u) + lid.x];
            for (var r = 0u; r < 4u; r++) {
                acc[r * 4u] = fma(av[r], bv.x, acc[r * 4u]);
                acc[r * 4u + 1u] = fma(av[r], bv.y, acc[r * 4u + 1u]);
                acc[r * 4u + 2u] = fma(av[r], bv.z, acc[r * 4u + 2u]);
                acc[r * 4u + 3u] = fma(av[r], bv.w, acc[r * 4u + 3u]);
            }
        }
        workgroupBarrier();
    }
    return acc;
}

// C = alpha*AB + beta*C (C is not read when beta == 0, so it may hold anything), optionally
// lower triangle only and mirrored into C(j,i).
@compute @workgroup_size(16, 16, 1)
fn gemm_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = tile_origin(wid);
    if (above_diagonal(o)) { return; }
    let acc = mainloop(o, lid);
    for (var r = 0u; r < 4u; r++) {
        let i = o.x + lid.y * 4u + r;
        for (var q = 0u; q < 4u; q++) {
            let j = o.y + lid.x * 4u + q;
            if (i >= P.m_hi || j >= P.n_hi) { continue; }
            if ((P.flags & F_LOWER) != 0u && i < j) { continue; }
            let ci = P.c_base + i * P.ldc + j;
            var v = P.alpha * acc[r * 4u + q];
            if (P.beta != 0.0) { v = P.beta * c[ci] + v; }
            c[ci] = v;
            if ((P.flags & F_MIRROR) != 0u && i > j) { c2[P.c2_base + j * P.ldc + i] = v; }
        }
    }
}

// GBLM-Pruner's accumulator: C += (alpha*g)^2 (or |alpha*g|) with g = AB never stored.
@compute @workgroup_size(16, 16, 1)
fn gemm_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = tile_origin(wid);
    let acc = mainloop(o, lid);
    for (var r = 0u; r < 4u; r++) {
        let i = o.x + lid.y * 4u + r;
        for (var q = 0u; q < 4u; q++) {
            let j = o.y + lid.x * 4u + q;
            if (i >= P.m_hi || j >= P.n_hi) { continue; }
            let ci = P.c_base + i * P.ldc + j;
            let g = P.alpha * acc[r * 4u + q];
            var add = g * g;
            if ((P.flags & F_L1) != 0u) { add = abs(g); }
            c[ci] = c[ci] + add;
        }
    }
}

var<workgroup> red: array<f32, 256>;

// Reconstruction traces: sum_ij (D H)_ij * D_ij with D = A (or a - a2) for the output
// columns; one partial sum per workgroup, added up by reduce_parts.
@compute @workgroup_size(16, 16, 1)
fn gemm_recon(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = tile_origin(wid);
    let acc = mainloop(o, lid);
    var s = 0.0;
    for (var r = 0u; r < 4u; r++) {
        let i = o.x + lid.y * 4u + r;
        for (var q = 0u; q < 4u; q++) {
            let j = o.y + lid.x * 4u + q;
            if (i >= P.m_hi || j >= P.n_hi) { continue; }
            s = fma(acc[r * 4u + q], a_at(i, j), s);
        }
    }
    let t = lid.y * 16u + lid.x;
    red[t] = s;
    workgroupBarrier();
    for (var off = 128u; off > 0u; off = off / 2u) {
        if (t < off) { red[t] = red[t] + red[t + off]; }
        workgroupBarrier();
    }
    if (t == 0u) { part[P.part_off + wid.y * nwg.x + wid.x] = red[0]; }
}

// c[c_base] = sum of part[0..count), one workgroup.
@compute @workgroup_size(256, 1, 1)
fn reduce_parts(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    var s = 0.0;
    for (var i = t; i < P.count; i += 256u) { s += part[i]; }
    red[t] = s;
    workgroupBarrier();
    for (var off = 128u; off > 0u; off = off / 2u) {
        if (t < off) { red[t] = red[t] + red[t + off]; }
        workgroupBarrier();
    }
    if (t == 0u) { c[P.c_base] = red[0]; }
}
