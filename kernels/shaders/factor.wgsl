// The damped inverse-Hessian factor (ALGORITHMS.md §6) on the device, by the direct route:
// with J the index reversal, the lower Cholesky factor L of A = J (H + λI) J gives
// H + λI = R Rᵀ with R = J L J upper, so (H + λI)⁻¹ = R⁻ᵀ R⁻¹ and the upper Cholesky factor
// of the inverse is U = R⁻¹ = J L⁻¹ J (Cholesky factors with a positive diagonal are unique,
// so this is the U of the three-step recipe, at half its flops). Steps, all in one buffer
// (their order and pieces are planned once for both backends, plan/factor.rs):
//   diag_extract/nonfinite_scan/damp_stats: dead columns, λ = percdamp·mean(diag);
//   copy_in: A = J (H + λI) J from H's lower triangle (a transposing tile copy);
//   per 128-column block (64 where the matrix's bindings are cut at odd multiples of 64):
//   chol_diag (the block factored and inverted by one workgroup), then on gemm.wgsl the panel
//   L21 = A21·L_kk⁻ᵀ and the SYRKs (at the block's depth inside an outer block of 256
//   columns, depth 256 on the trailing matrix);
//   the inverse L⁻¹ by doubling on gemm.wgsl: log2(n/128) levels of two batched products;
//   reverse_out: U = J L⁻¹ J, an in-place swap of mirrored entries.
// A non-positive or non-finite pivot stops the factorisation and is reported through `stat`
// (the host turns it into an error), so no NaN ever leaves.

struct Params {
    n: u32,
    rows: u32,        // rows of the window this dispatch covers
    row0: u32,        // first (global) row of that window
    a_base: u32,      // logical origin of A in the a binding (index of A(0,0))
    a2_base: u32,
    h_base: u32,
    k0: u32,          // chol_diag: block start
    nb: u32,          // block width (<= 128)
    lo: u32,          // copy_in: A rows [lo, hi) x columns [clo, chi); reverse_out: rows [lo, hi)
    hi: u32,
    clo: u32,
    chi: u32,
    percdamp: f32,
    keep_dead: u32,   // 1: zero diagonal entries stay (a plain damped solve), 0: they become 1
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> a2: array<f32>;
@group(0) @binding(3) var<storage, read> h: array<f32>;
@group(0) @binding(4) var<storage, read_write> small: array<f32>;  // 128 x 128 block
@group(0) @binding(5) var<storage, read_write> dvec: array<f32>;   // H's diagonal, n
// [0] failed pivot column + 1, [1] first non-finite linear index of H (or 0xffffffff),
// [2] λ as f32 bits, [3] mean(diag) as f32 bits, [4..4+n) dead-column flags.
@group(0) @binding(6) var<storage, read_write> stat: array<atomic<u32>>;

const NB: u32 = 64u;
// `small`'s row stride: it holds a diagonal block of up to 128 columns.
const SMALL: u32 = 128u;

fn finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(256, 1, 1)
fn diag_extract(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= P.rows) { return; }
    let g = P.row0 + r;
    dvec[g] = h[P.h_base + g * P.n + g];
}

// The whole window, 16 entries per thread: the lowest linear index of a NaN or Inf.
@compute @workgroup_size(256, 1, 1)
fn nonfinite_scan(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let total = P.rows * P.n;
    let first = (wid.y * nwg.x + wid.x) * 4096u;
    for (var i = 0u; i < 16u; i++) {
        let e = first + i * 256u + lid.x;
        if (e < total && !finite(h[P.h_base + P.row0 * P.n + e])) {
            atomicMin(&stat[1], P.row0 * P.n + e);
        }
    }
}

var<workgroup> red: array<f32, 256>;

// Dead columns (H_jj == 0 -> 1, unless keep_dead) and λ = percdamp · mean(diag), one
// workgroup.
@compute @workgroup_size(256, 1, 1)
fn damp_stats(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    var s = 0.0;
    for (var j = t; j < P.n; j += 256u) {
        var d = dvec[j];
        if (d == 0.0 && P.keep_dead == 0u) {
            atomicStore(&stat[4u + j], 1u);
            d = 1.0;
            dvec[j] = d;
        }
        s += d;
    }
    red[t] = s;
    workgroupBarrier();
    for (var off = 128u; off > 0u; off = off / 2u) {
        if (t < off) { red[t] = red[t] + red[t + off]; }
        workgroupBarrier();
    }
    if (t == 0u) {
        let mean = red[0] / f32(P.n);
        atomicStore(&stat[2], bitcast<u32>(P.percdamp * mean));
        atomicStore(&stat[3], bitcast<u32>(mean));
    }
}

var<workgroup> tile: array<f32, 1056>; // 32 x 33

// A(x, y) = H(n-1-y, n-1-x) for x > y (H's lower triangle), the damped diagonal for x == y,
// 0 above. Tiles of 32x32 through workgroup memory so that both sides are read and written
// along rows.
@compute @workgroup_size(32, 8, 1)
fn copy_in(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let x0 = P.lo + wid.y * 32u;   // A rows
    let y0 = P.clo + wid.x * 32u;  // A columns
    let damp = bitcast<f32>(atomicLoad(&stat[2]));
    // Read: H row n-1-y (y = y0 + ty..), columns n-1-x (x = x0 + tx).
    for (var q = lid.y; q < 32u; q += 8u) {
        let x = x0 + lid.x;
        let y = y0 + q;
        var v = 0.0;
        if (x < P.hi && y < P.chi && x > y) {
            v = h[P.h_base + (P.n - 1u - y) * P.n + (P.n - 1u - x)];
        }
        tile[q * 33u + lid.x] = v;
    }
    workgroupBarrier();
    for (var q = lid.y; q < 32u; q += 8u) {
        let x = x0 + q;
        let y = y0 + lid.x;
        if (x < P.hi && y < P.chi) {
            var v = tile[lid.x * 33u + q];
            if (x == y) { v = dvec[P.n - 1u - x] + damp; }
            a[P.a_base + x * P.n + y] = v;
        }
    }
}

var<workgroup> L: array<f32, 4096>; // 64 x 64
var<workgroup> failed: u32;
var<workgroup> skip: u32;

// A(i, j) in the diagonal block's window (global row and column indices).
fn at(i: u32, j: u32) -> u32 {
    return P.a_base + i * P.n + j;
}

// The lower triangle of the w x w block of A at (r0, r0) into L, zero above it and past w;
// thread t of 256 takes every 256th entry.
fn load_block(t: u32, r0: u32, w: u32) {
    for (var e = t; e < NB * NB; e += 256u) {
        let i = e / NB;
        let j = e % NB;
        var v = 0.0;
        if (i < w && j <= i) { v = a[at(r0 + i, r0 + j)]; }
        L[e] = v;
    }
}

// The w x w block in L (lower, zero elsewhere) factored (right-looking, a column at a time),
// then inverted in place (a row at a time), leaving X = L⁻¹ with zeros above its diagonal.
// `col0` is the block's first column of A, named if a pivot fails: the function then sets
// `failed` and returns, and the caller returns on `failed` too.
fn factor_invert(t: u32, w: u32, col0: u32) {
    for (var j = 0u; j < w; j++) {
        if (t == 0u) {
            let d = L[j * NB + j];
            if (!(d > 0.0) || !finite(d)) {
                failed = 1u;
                // A's column col0+j is H's column n-1-(col0+j).
                atomicStore(&stat[0], P.n - (col0 + j));
            } else {
                L[j * NB + j] = sqrt(d);
            }
        }
        if (workgroupUniformLoad(&failed) != 0u) { return; }
        let piv = L[j * NB + j];
        for (var i = j + 1u + t; i < w; i += 256u) { L[i * NB + j] = L[i * NB + j] / piv; }
        workgroupBarrier();
        let m = w - j - 1u;
        for (var e = t; e < m * m; e += 256u) {
            let i = j + 1u + e / m;
            let l = j + 1u + e % m;
            if (l <= i) { L[i * NB + l] = L[i * NB + l] - L[i * NB + j] * L[l * NB + j]; }
        }
        workgroupBarrier();
    }
    // X = L⁻¹ in place, row by row: X_jj = 1/L_jj first, then for i < j
    // X_ji = −X_jj Σ_{i<=k<j} L_jk X_ki, the sums parked in the free upper triangle at (i, j).
    if (t < w) { L[t * NB + t] = 1.0 / L[t * NB + t]; }
    workgroupBarrier();
    for (var j = 1u; j < w; j++) {
        if (t < j) {
            var s = 0.0;
            for (var k = t; k < j; k++) { s = fma(L[j * NB + k], L[k * NB + t], s); }
            L[t * NB + j] = s;
        }
        workgroupBarrier();
        if (t < j) { L[j * NB + t] = -L[j * NB + j] * L[t * NB + j]; }
        workgroupBarrier();
    }
    for (var e = t; e < NB * NB; e += 256u) {
        if (e % NB > e / NB) { L[e] = 0.0; }
    }
    workgroupBarrier();
}

// X (in L, w x w) to A's block at (r0, r0) and to `small` (stride SMALL) at (s0, s0).
fn store_block(t: u32, r0: u32, s0: u32, w: u32) {
    for (var e = t; e < NB * NB; e += 256u) {
        let i = e / NB;
        let j = e % NB;
        if (i < w && j < w) {
            a[at(r0 + i, r0 + j)] = L[e];
            small[(s0 + i) * SMALL + s0 + j] = L[e];
        }
    }
}

// The diagonal block [k0, k0+nb) factored and inverted by one workgroup: L_kk⁻¹ goes back to
// A's lower triangle (it is the diagonal block of L⁻¹) and to `small` for the panel product. Up to 64 columns this is one block in workgroup memory. Up to 128 it is a 2 x 2 of
// 64-blocks, [[A11, ·], [A21, A22]] with w2 = nb − 64 rows in the second:
//   X11 = L11⁻¹ (in workgroup memory);
//   L21 = A21·X11ᵀ, kept transposed in the block's free upper-right corner U12;
//   X22 = L22⁻¹ with L22 L22ᵀ = A22 − L21 L21ᵀ (in workgroup memory);
//   X21 = −X22·(L21·X11), the inner product parked in small's free upper-right corner.
// U12 and that corner keep the scratch: no later step reads above a diagonal block's diagonal
// (the panel's chunks stop at their last column, the inverse masks its triangles). The
// off-diagonal products go through global
// memory, which this workgroup alone touches (storageBarrier orders them), so a workgroup
// holds 16 KiB whatever the width.
@compute @workgroup_size(256, 1, 1)
fn chol_diag(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let k0 = P.k0;
    if (t == 0u) {
        skip = select(0u, 1u, atomicLoad(&stat[0]) != 0u);
        failed = 0u;
    }
    if (workgroupUniformLoad(&skip) != 0u) { return; }
    let w1 = min(P.nb, NB);
    load_block(t, k0, w1);
    workgroupBarrier();
    factor_invert(t, w1, k0);
    if (workgroupUniformLoad(&failed) != 0u) { return; }
    store_block(t, k0, 0u, w1);
    if (P.nb <= NB) { return; }

    let w2 = P.nb - NB;
    let k1 = k0 + NB;
    // L21ᵀ into U12: U12(c, r) = Σ_p A21(r, p)·X11(c, p). X11 is transposed in place first (once
    // every invocation has stored its part) so that lanes (consecutive c) read consecutive
    // words; A21(r, p) is one broadcast load.
    workgroupBarrier();
    for (var e = t; e < NB * NB; e += 256u) {
        let i = e / NB;
        let j = e % NB;
        if (j < i) {
            let v = L[e];
            L[e] = L[j * NB + i];
            L[j * NB + i] = v;
        }
    }
    workgroupBarrier();
    for (var e = t; e < NB * NB; e += 256u) {
        let r = e / NB;
        let c = e % NB;
        if (r < w2) {
            var s = 0.0;
            for (var p = 0u; p <= c; p++) { s = fma(a[at(k1 + r, k0 + p)], L[p * NB + c], s); }
            a[at(k0 + c, k1 + r)] = s;
        }
    }
    storageBarrier();
    workgroupBarrier();
    // A22 − L21 L21ᵀ, lower triangle, in workgroup memory: entry (i, j) subtracts
    // Σ_p U12(p, i)·U12(p, j).
    load_block(t, k1, w2);
    for (var e = t; e < NB * NB; e += 256u) {
        let i = e / NB;
        let j = e % NB;
        if (i < w2 && j <= i) {
            var s = 0.0;
            for (var p = 0u; p < NB; p++) { s = fma(a[at(k0 + p, k1 + i)], a[at(k0 + p, k1 + j)], s); }
            L[e] = L[e] - s;
        }
    }
    workgroupBarrier();
    factor_invert(t, w2, k1);
    if (workgroupUniformLoad(&failed) != 0u) { return; }
    store_block(t, k1, NB, w2);
    // T = L21·X11 into small's upper-right corner: T(r, c) = Σ_{p>=c} U12(p, r)·X11(p, c), X11
    // read back from A (lower, written above).
    for (var e = t; e < NB * NB; e += 256u) {
        let r = e / NB;
        let c = e % NB;
        if (r < w2) {
            var s = 0.0;
            for (var p = c; p < NB; p++) { s = fma(a[at(k0 + p, k1 + r)], a[at(k0 + p, k0 + c)], s); }
            small[r * SMALL + NB + c] = s;
        }
    }
    storageBarrier();
    // X21 = −X22·T, X22 in workgroup memory (lower).
    for (var e = t; e < NB * NB; e += 256u) {
        let r = e / NB;
        let c = e % NB;
        if (r < w2) {
            var s = 0.0;
            for (var q = 0u; q <= r; q++) { s = fma(L[r * NB + q], small[q * SMALL + NB + c], s); }
            a[at(k1 + r, k0 + c)] = -s;
            small[(NB + r) * SMALL + c] = -s;
        }
    }
}

// U = J M J with M = L⁻¹ lower: swaps A(x, y) and A(n-1-x, n-1-y) for rows x in [lo, hi)
// of the top half (their mirrors live in the a2 window), keeping the upper triangle.
@compute @workgroup_size(256, 1, 1)
fn reverse_out(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let y = wid.x * 256u + lid.x;
    let x = P.lo + wid.y;
    if (y >= P.n || x >= P.hi) { return; }
    let xm = P.n - 1u - x;
    let ym = P.n - 1u - y;
    if (x < xm) {
        let v = a[P.a_base + x * P.n + y];
        let vm = a2[P.a2_base + xm * P.n + ym];
        a[P.a_base + x * P.n + y] = select(0.0, vm, x <= y);
        a2[P.a2_base + xm * P.n + ym] = select(0.0, v, xm <= ym);
    } else if (x == xm && y < ym) {
        // The middle row of an odd n is its own mirror.
        let v = a[P.a_base + x * P.n + y];
        let vm = a[P.a_base + x * P.n + ym];
        a[P.a_base + x * P.n + y] = select(0.0, vm, x <= y);
        a[P.a_base + x * P.n + ym] = select(0.0, v, x <= ym);
    }
}
