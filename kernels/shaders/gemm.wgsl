// The GEMM family: C(i,j) <- epilogue(alpha * sum_k A(i,k) B(k,j)) for every GEMM-shaped step
// of the op set (fused gradient, Hessian SYRK, Cholesky trailing update, triangular inverse,
// OBS lazy update, reconstruction traces, the re-fit products of §12).
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
    ld2: u32,                  // leading dimension of a2 where an epilogue reads it directly
    aux_base: u32, aux_ld: u32, // the aux operand (mask words, W_p or H values as bits)
    rank: u32,                 // LoRA rank r
    s: f32,                    // LoRA scale s
    gscale: f32,               // LoRA gradient scale s * norm
    pld: u32,                  // row/column partials: stride between partial rows
    za: u32, zb: u32, zc: u32, // gemm_update: element strides between the products of a batch
}

const F_LOWER: u32 = 1u;       // only C(i,j) with i >= j (SYRK); tiles above the diagonal exit
const F_MIRROR: u32 = 2u;      // also write C(j,i) into c2 (a second window of the same buffer)
const F_B_LOWER: u32 = 4u;     // B(k,j) == 0 for k < j (lower triangular B): skip those k
const F_A_MINUS_P: u32 = 8u;
const F_L1: u32 = 16u;         // gradient epilogue: |g| instead of g^2
const F_DELTA: u32 = 32u;      // gemm_delta: also write alpha * A(i,j) into c2
const F_FINAL: u32 = 64u;      // the last dispatch of a split reduction applies the epilogue
const F_P_MASK: u32 = 128u;    // aux holds mask words (P = kept flag), else W_p's values
const F_A_LOWER: u32 = 1024u;  // A(i,k) == 0 for k > i (lower triangular A): stop at the tile's rows
const F_C_TRANS: u32 = 2048u;  // gemm_update: C(i,j) is stored at c_base + j*ldc + i
// mainloop's operands read four words at a time along their stored rows (the host sets these
// where the operand's origin, leading dimension, batch stride and first tile coordinate along
// the row are multiples of 4, so every quad is one aligned vec4 inside the window):
const F_A_QUAD: u32 = 4096u;
const F_B_QUAD: u32 = 8192u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> a2: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read_write> c2: array<f32>;
@group(0) @binding(6) var<storage, read_write> part: array<f32>;
// Mask words, or f32 values as bits, read by the re-fit epilogues (§12).
@group(0) @binding(7) var<storage, read> aux: array<u32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// [k][m] and [k][n] as vec4s, so the inner loop reads a thread's 4 rows (4 columns) at once.
// Each k row is padded by one vec4 (AW = TM/4 + 1): the 16 invocations that store one row of
// A (or a transposed B) at consecutive k then hit at most 2 threads per bank, not 16.
const AW: u32 = TM / 4u + 1u;
const BW: u32 = TN / 4u + 1u;
var<workgroup> As: array<vec4<f32>, 272>;
var<workgroup> Bs: array<vec4<f32>, 272>;

// The A and B bindings' words, one or four at a time (`i` a multiple of 4 for a quad). In the
// vec4 variant of this file (Module::GemmVec4, made by substituting these four functions and
// the two declarations) a and b are vec4 arrays and a quad is one vector load; here it is four.
fn a_word(i: u32) -> f32 { return a[i]; }
fn b_word(i: u32) -> f32 { return b[i]; }
fn a_quad(i: u32) -> vec4<f32> { return vec4<f32>(a[i], a[i + 1u], a[i + 2u], a[i + 3u]); }
fn b_quad(i: u32) -> vec4<f32> { return vec4<f32>(b[i], b[i + 1u], b[i + 2u], b[i + 3u]); }

// The batch member's offsets (element strides times workgroup_id.z): set by gemm_update and
// gemm_sumsq, zero in every other entry.
var<private> zoff: vec3<u32>;

// Where A(i, k) and B(k, j) lie relative to their operand's origin.
fn a_off(i: u32, k: u32) -> u32 {
    if (P.a_trans != 0u) { return k * P.lda + i; }
    return i * P.lda + k;
}

fn b_off(k: u32, j: u32) -> u32 {
    if (P.b_trans != 0u) { return j * P.ldb + k; }
    return k * P.ldb + j;
}

fn a_at(i: u32, k: u32) -> f32 {
    let off = a_off(i, k);
    var v = a_word(P.a_base + zoff.x + off);
    if ((P.flags & F_A_MINUS_P) != 0u) { v = v - a2[P.p_base + off]; }
    return v;
}

fn b_at(k: u32, j: u32) -> f32 {
    return b_word(P.b_base + zoff.y + b_off(k, j));
}

// Whether the loads read A(i, k) (B(k, j)): inside the ranges, and not in the other triangle
// of a triangular operand, which may hold anything (the triangular inverse keeps its products
// there) and is read as the zero it stands for.
fn a_inside(i: u32, k: u32) -> bool {
    return i < P.m_hi && k < P.k_hi && !((P.flags & F_A_LOWER) != 0u && k > i);
}

fn b_inside(k: u32, j: u32) -> bool {
    return j < P.n_hi && k < P.k_hi && !((P.flags & F_B_LOWER) != 0u && k < j);
}

fn tile_origin(wid: vec3<u32>) -> vec2<u32> {
    return vec2<u32>(P.m_lo + wid.y * TM, P.n_lo + wid.x * TN);
}

fn above_diagonal(o: vec2<u32>) -> bool {
    return (P.flags & F_LOWER) != 0u && o.x + TM - 1u < o.y;
}

// Staging: invocation t stages elements e = t + 256·l (l < 4) of each K step's A and B tiles,
// (row, k) of A and (column, k) of B chosen so that consecutive invocations read consecutive
// addresses in either layout.
fn a_stage_index(e: u32) -> vec2<u32> {
    if (P.a_trans != 0u) { return vec2<u32>(e % TM, e / TM); }
    return vec2<u32>(e / TK, e % TK);
}

fn b_stage_index(e: u32) -> vec2<u32> {
    if (P.b_trans != 0u) { return vec2<u32>(e / TK, e % TK); }
    return vec2<u32>(e % TN, e / TN);
}

fn load_a(o: vec2<u32>, kt: u32, e: u32) -> f32 {
    let at = a_stage_index(e);
    let gi = o.x + at.x;
    let gk = kt + at.y;
    if (a_inside(gi, gk)) { return a_at(gi, gk); }
    return 0.0;
}

fn load_b(o: vec2<u32>, kt: u32, e: u32) -> f32 {
    let at = b_stage_index(e);
    let gj = o.y + at.x;
    let gk = kt + at.y;
    if (b_inside(gk, gj)) { return b_at(gk, gj); }
    return 0.0;
}

// The staged element of slot l (of 4) of invocation t: t + 256·l with scalar loads, 4t + l
// with quad loads (four consecutive along the operand's stored rows, see the stage indices).
fn a_elem(t: u32, l: u32) -> u32 {
    if ((P.flags & F_A_QUAD) != 0u) { return 4u * t + l; }
    return t + 256u * l;
}

fn b_elem(t: u32, l: u32) -> u32 {
    if ((P.flags & F_B_QUAD) != 0u) { return 4u * t + l; }
    return t + 256u * l;
}

// Invocation t's four A elements 4t.. as one quad: read when its first element is inside,
// then each lane checked as load_a checks it (a quad never crosses its stored row, whose
// length is a multiple of 4).
fn load_a_quad(o: vec2<u32>, kt: u32, t: u32) -> vec4<f32> {
    let at = a_stage_index(4u * t);
    let gi = o.x + at.x;
    let gk = kt + at.y;
    var v = vec4<f32>(0.0);
    if (gi >= P.m_hi || gk >= P.k_hi) { return v; }
    let q = a_quad(P.a_base + zoff.x + a_off(gi, gk));
    for (var l = 0u; l < 4u; l++) {
        var i = gi;
        var k = gk;
        if (P.a_trans != 0u) { i += l; } else { k += l; }
        if (a_inside(i, k)) { v[l] = q[l]; }
    }
    return v;
}

fn load_b_quad(o: vec2<u32>, kt: u32, t: u32) -> vec4<f32> {
    let at = b_stage_index(4u * t);
    let gj = o.y + at.x;
    let gk = kt + at.y;
    var v = vec4<f32>(0.0);
    if (gj >= P.n_hi || gk >= P.k_hi) { return v; }
    let q = b_quad(P.b_base + zoff.y + b_off(gk, gj));
    for (var l = 0u; l < 4u; l++) {
        var j = gj;
        var k = gk;
        if (P.b_trans != 0u) { k += l; } else { j += l; }
        if (b_inside(k, j)) { v[l] = q[l]; }
    }
    return v;
}

// One K step's staged values held in registers (slot l holds element a_elem(t, l)).
struct Step {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn load_step(o: vec2<u32>, kt: u32, t: u32) -> Step {
    var s: Step;
    if ((P.flags & F_A_QUAD) != 0u) {
        s.a = load_a_quad(o, kt, t);
    } else {
        s.a = vec4<f32>(load_a(o, kt, t), load_a(o, kt, t + 256u), load_a(o, kt, t + 512u),
                        load_a(o, kt, t + 768u));
    }
    if ((P.flags & F_B_QUAD) != 0u) {
        s.b = load_b_quad(o, kt, t);
    } else {
        s.b = vec4<f32>(load_b(o, kt, t), load_b(o, kt, t + 256u), load_b(o, kt, t + 512u),
                        load_b(o, kt, t + 768u));
    }
    return s;
}

fn put_a(e: u32, v: f32) {
    let at = a_stage_index(e);
    As[at.y * AW + at.x / 4u][at.x % 4u] = v;
}

fn put_b(e: u32, v: f32) {
    let at = b_stage_index(e);
    Bs[at.y * BW + at.x / 4u][at.x % 4u] = v;
}

fn store_step(s: Step, t: u32) {
    for (var l = 0u; l < 4u; l++) {
        put_a(a_elem(t, l), s.a[l]);
        put_b(b_elem(t, l), s.b[l]);
    }
}

// Double-buffered through registers: the next K step's global loads are issued before this
// step's FMAs, so their latency hides behind them, with one set of tiles in workgroup memory.
fn mainloop(o: vec2<u32>, lid: vec3<u32>) -> array<f32, 16> {
    var acc: array<f32, 16>;
    let t = lid.y * 16u + lid.x;
    var k0 = P.k_lo;
    if ((P.flags & F_B_LOWER) != 0u) { k0 = max(k0, o.y); }
    var k1 = P.k_hi;
    if ((P.flags & F_A_LOWER) != 0u) { k1 = min(k1, o.x + TM); }
    var next = load_step(o, k0, t);
    for (var kt = k0; kt < k1; kt += TK) {
        store_step(next, t);
        workgroupBarrier();
        if (kt + TK < k1) { next = load_step(o, kt + TK, t); }
        for (var kk = 0u; kk < TK; kk++) {
            let av = As[kk * AW + lid.y];
            let bv = Bs[kk * BW + lid.x];
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
// lower triangle only and mirrored into C(j,i), or stored transposed; workgroup_id.z picks
// the product of a batch (za, zb, zc apart).
@compute @workgroup_size(16, 16, 1)
fn gemm_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    zoff = wid.z * vec3<u32>(P.za, P.zb, P.zc);
    let o = tile_origin(wid);
    if (above_diagonal(o)) { return; }
    let acc = mainloop(o, lid);
    for (var r = 0u; r < 4u; r++) {
        let i = o.x + lid.y * 4u + r;
        for (var q = 0u; q < 4u; q++) {
            let j = o.y + lid.x * 4u + q;
            if (i >= P.m_hi || j >= P.n_hi) { continue; }
            if ((P.flags & F_LOWER) != 0u && i < j) { continue; }
            var ci = P.c_base + zoff.z + i * P.ldc + j;
            if ((P.flags & F_C_TRANS) != 0u) { ci = P.c_base + zoff.z + j * P.ldc + i; }
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

// The second pass of a product split over its depth (gemm_update batched over the pieces,
// piece z's partial at part[z * pld]): C(i,j) = sum over z < count of the partials (+ beta *
// C), in piece order, so the result does not depend on the order the pieces ran in. One
// invocation per element of the m_lo..m_hi x n_lo..n_hi block, the grid laid over x then y.
@compute @workgroup_size(256, 1, 1)
fn sum_depth_parts(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = P.n_hi - P.n_lo;
    let e = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (e >= (P.m_hi - P.m_lo) * w) { return; }
    var v = 0.0;
    for (var z = 0u; z < P.count; z++) { v += part[z * P.pld + e]; }
    let ci = P.c_base + (P.m_lo + e / w) * P.ldc + P.n_lo + e % w;
    if (P.beta != 0.0) { v = P.beta * c[ci] + v; }
    c[ci] = v;
}

// ---- The re-fit products of ALGORITHMS.md §12 ----

const F_MERGE_SCALE: u32 = 256u; // gemm_merge: the scale form W_p ⊙ (B·A)

// P(i,k) of the LoRA forms: the kept flag of the mask (a set bit is pruned) or W_p(i,k).
fn p_at(i: u32, k: u32) -> f32 {
    if ((P.flags & F_P_MASK) != 0u) {
        let w = aux[P.aux_base + i * P.aux_ld + k / 32u];
        return select(1.0, 0.0, ((w >> (k % 32u)) & 1u) != 0u);
    }
    return bitcast<f32>(aux[P.aux_base + i * P.aux_ld + k]);
}

// (B·A)(i,k) of the LoRA factors: B is the a operand (rows x rank, lda), A is a2 (rank x
// cols, ld2); summed in the order the loads of mainloop_lora sum it.
fn lora_ba(i: u32, k: u32) -> f32 {
    var v = 0.0;
    for (var q = 0u; q < P.rank; q++) {
        v = fma(a_word(P.a_base + i * P.lda + q), a2[P.p_base + q * P.ld2 + k], v);
    }
    return v;
}

// The sum of v over the 16 threads sharing this thread's lid.y (its four rows of the tile),
// valid where lid.x == 0. Called in uniform control flow.
fn sum_over_x(lid: vec3<u32>, v: f32) -> f32 {
    let t = lid.y * 16u + lid.x;
    workgroupBarrier();
    red[t] = v;
    workgroupBarrier();
    var s = 0.0;
    if (lid.x == 0u) {
        for (var x = 0u; x < 16u; x++) { s += red[lid.y * 16u + x]; }
    }
    return s;
}

// The same over the 16 threads sharing lid.x (four columns of the tile), valid where
// lid.y == 0.
fn sum_over_y(lid: vec3<u32>, v: f32) -> f32 {
    let t = lid.y * 16u + lid.x;
    workgroupBarrier();
    red[t] = v;
    workgroupBarrier();
    var s = 0.0;
    if (lid.y == 0u) {
        for (var y = 0u; y < 16u; y++) { s += red[y * 16u + lid.x]; }
    }
    return s;
}

// The whole workgroup's sum of v, valid in thread 0.
fn sum_tile(lid: vec3<u32>, v: f32) -> f32 {
    let t = lid.y * 16u + lid.x;
    workgroupBarrier();
    red[t] = v;
    workgroupBarrier();
    for (var off = 128u; off > 0u; off = off / 2u) {
        if (t < off) { red[t] = red[t] + red[t + off]; }
        workgroupBarrier();
    }
    return red[0];
}

const F_STORE: u32 = 512u;      // gemm_sumsq: also write C = alpha*AB

// §11's removal loss ½·‖Q‖² with Q = alpha*AB: one partial Σ Q(i,j)² per workgroup into
// part[part_off + z·pld + tile] for the batch's z-th product (za, zb, zc apart), Q itself
// into c only with F_STORE (the structured update needs it, the saliency does not), so Q need
// never reach memory just to be squared.
@compute @workgroup_size(16, 16, 1)
fn gemm_sumsq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    zoff = wid.z * vec3<u32>(P.za, P.zb, P.zc);
    let o = tile_origin(wid);
    let acc = mainloop(o, lid);
    var s = 0.0;
    for (var r = 0u; r < 4u; r++) {
        let i = o.x + lid.y * 4u + r;
        for (var q = 0u; q < 4u; q++) {
            let j = o.y + lid.x * 4u + q;
            if (i >= P.m_hi || j >= P.n_hi) { continue; }
            let v = P.alpha * acc[r * 4u + q];
            s = fma(v, v, s);
            if ((P.flags & F_STORE) != 0u) { c[P.c_base + zoff.z + i * P.ldc + j] = v; }
        }
    }
    let total = sum_tile(lid, s);
    if (lid.x == 0u && lid.y == 0u) {
        part[P.part_off + wid.z * P.pld + wid.y * nwg.x + wid.x] = total;
    }
}

// Rank chunks of the LoRA factors for one K step as vec4s along the rank: B's 64 rows of the
// tile x 16 ranks (4 vec4s a row), and A's 16 ranks x 16 columns of the step stored by column
// (a column's 16 ranks as 4 vec4s, padded to 5 so that the 16 columns' loads spread over the
// banks).
const LAW: u32 = 5u;
var<workgroup> Ls: array<vec4<f32>, 256>;
var<workgroup> Las: array<vec4<f32>, 80>;

// mainloop with the A operand D = P ⊙ (B·A) (rows x cols) formed in the loads: per K step each
// thread builds the four entries of the 64 x 16 tile it would have loaded (rows t/16 + 16l,
// column t%16) from rank chunks staged in workgroup memory; D never reaches memory. B is row
// major (not transposed).
fn mainloop_lora(o: vec2<u32>, lid: vec3<u32>) -> array<f32, 16> {
    var acc: array<f32, 16>;
    let t = lid.y * 16u + lid.x;
    let kk = t % TK;
    let mi0 = t / TK;
    for (var kt = P.k_lo; kt < P.k_hi; kt += TK) {
        var d = vec4<f32>(0.0);
        for (var q0 = 0u; q0 < P.rank; q0 += 16u) {
            for (var l = 0u; l < 4u; l++) {
                let e = t + l * 256u;
                let gi = o.x + e / 16u;
                let q = q0 + e % 16u;
                var v = 0.0;
                if (gi < P.m_hi && q < P.rank) { v = a_word(P.a_base + gi * P.lda + q); }
                Ls[e / 4u][e % 4u] = v;
            }
            let qr = t / 16u;
            let q = q0 + qr;
            let gk = kt + t % 16u;
            var w = 0.0;
            if (q < P.rank && gk < P.k_hi) { w = a2[P.p_base + q * P.ld2 + gk]; }
            Las[(t % 16u) * LAW + qr / 4u][qr % 4u] = w;
            workgroupBarrier();
            // Four ranks at a time: five vec4 loads per 16 FMAs.
            for (var qv = 0u; qv < 4u; qv++) {
                let la = Las[kk * LAW + qv];
                d.x += dot(Ls[mi0 * 4u + qv], la);
                d.y += dot(Ls[(mi0 + 16u) * 4u + qv], la);
                d.z += dot(Ls[(mi0 + 32u) * 4u + qv], la);
                d.w += dot(Ls[(mi0 + 48u) * 4u + qv], la);
            }
            workgroupBarrier();
        }
        let gk = kt + kk;
        for (var l = 0u; l < 4u; l++) {
            let mi = mi0 + l * 16u;
            let gi = o.x + mi;
            var v = 0.0;
            if (gi < P.m_hi && gk < P.k_hi) { v = p_at(gi, gk) * d[l]; }
            As[kk * AW + mi / 4u][mi % 4u] = v;
        }
        for (var l = 0u; l < 4u; l++) {
            let e = t + l * 256u;
            let kb = e / TN;
            let nj = e % TN;
            let gj = o.y + nj;
            let gk2 = kt + kb;
            var w = 0.0;
            if (gj < P.n_hi && gk2 < P.k_hi) { w = b_at(gk2, gj); }
            Bs[kb * BW + nj / 4u][nj % 4u] = w;
        }
        workgroupBarrier();
        for (var k = 0u; k < TK; k++) {
            let av = As[k * AW + lid.y];
            let bv = Bs[k * BW + lid.x];
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

// refit_base: C = alpha*AB + beta*C as gemm_update (A = a, or a - a2); with F_DELTA also
// c2(i,j) = alpha*A(i,j) at the output's coordinates (A has C's shape), so Δ comes out of the
// pass that forms Δ·H.
@compute @workgroup_size(16, 16, 1)
fn gemm_delta(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = tile_origin(wid);
    let acc = mainloop(o, lid);
    for (var r = 0u; r < 4u; r++) {
        let i = o.x + lid.y * 4u + r;
        for (var q = 0u; q < 4u; q++) {
            let j = o.y + lid.x * 4u + q;
            if (i >= P.m_hi || j >= P.n_hi) { continue; }
            let ci = P.c_base + i * P.ldc + j;
            var v = P.alpha * acc[r * 4u + q];
            if (P.beta != 0.0) { v = P.beta * c[ci] + v; }
            c[ci] = v;
            if ((P.flags & F_DELTA) != 0u) { c2[P.c2_base + i * P.ldc + j] = P.alpha * a_at(i, j); }
        }
    }
}

// One LoRA gradient (§12) for a window of H's rows (the K range): the A operand is
// D = P ⊙ (B·A), formed in the loads; c holds ΔH plus the earlier K windows' terms and c2
// holds Δ. Before the last window: c += alpha·D·H (alpha = s). The last (F_FINAL) forms
// EH = c + s·D·H and E = Δ + s·D, writes Ḡ = gscale·P ⊙ EH over c (gscale = s·norm) and one
// partial sum of E ⊙ EH per workgroup into part.
@compute @workgroup_size(16, 16, 1)
fn gemm_lora(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = tile_origin(wid);
    let acc = mainloop_lora(o, lid);
    let fin = (P.flags & F_FINAL) != 0u;
    var s = 0.0;
    for (var r = 0u; r < 4u; r++) {
        let i = o.x + lid.y * 4u + r;
        for (var q = 0u; q < 4u; q++) {
            let j = o.y + lid.x * 4u + q;
            if (i >= P.m_hi || j >= P.n_hi) { continue; }
            let ci = P.c_base + i * P.ldc + j;
            let eh = c[ci] + P.alpha * acc[r * 4u + q];
            if (!fin) {
                c[ci] = eh;
                continue;
            }
            let p = p_at(i, j);
            let e = c2[P.c2_base + i * P.ldc + j] + P.s * (p * lora_ba(i, j));
            s = fma(e, eh, s);
            c[ci] = P.gscale * p * eh;
        }
    }
    if (!fin) { return; }
    let total = sum_tile(lid, s);
    if (lid.x == 0u && lid.y == 0u) { part[P.part_off + wid.y * nwg.x + wid.x] = total; }
}

// The merged weight (§12): with AB = B·A (k = the rank), C = W_p + s·AB (mask form) or
// W_p ⊙ AB (F_MERGE_SCALE), W_p read from a2; exactly 0 wherever the mask (aux words) is set.
@compute @workgroup_size(16, 16, 1)
fn gemm_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = tile_origin(wid);
    let acc = mainloop(o, lid);
    for (var r = 0u; r < 4u; r++) {
        let i = o.x + lid.y * 4u + r;
        for (var q = 0u; q < 4u; q++) {
            let j = o.y + lid.x * 4u + q;
            if (i >= P.m_hi || j >= P.n_hi) { continue; }
            let wp = a2[P.p_base + i * P.ld2 + j];
            let ab = acc[r * 4u + q];
            var v = wp + P.s * ab;
            if ((P.flags & F_MERGE_SCALE) != 0u) { v = wp * ab; }
            let word = aux[P.aux_base + i * P.aux_ld + j / 32u];
            if (((word >> (j % 32u)) & 1u) != 0u) { v = 0.0; }
            c[P.c_base + i * P.ldc + j] = v;
        }
    }
}

// The norm system's matrix (§12): a SYRK into the lower triangle (F_LOWER) accumulated over
// the pairs and windows of rows; the last dispatch (F_FINAL) takes the Hadamard product with
// H and mirrors: C(i,j) = G(i,j)·H(i,j) with H's rows of this window in a2, and
// C(j,i) = G(i,j)·H(j,i) into c2 with H's rows of the mirror window in aux (as bits).
@compute @workgroup_size(16, 16, 1)
fn gemm_gram(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = tile_origin(wid);
    if (above_diagonal(o)) { return; }
    let acc = mainloop(o, lid);
    let fin = (P.flags & F_FINAL) != 0u;
    for (var r = 0u; r < 4u; r++) {
        let i = o.x + lid.y * 4u + r;
        for (var q = 0u; q < 4u; q++) {
            let j = o.y + lid.x * 4u + q;
            if (i >= P.m_hi || j >= P.n_hi || i < j) { continue; }
            let ci = P.c_base + i * P.ldc + j;
            var v = P.alpha * acc[r * 4u + q];
            if (P.beta != 0.0) { v = P.beta * c[ci] + v; }
            if (!fin) {
                c[ci] = v;
                continue;
            }
            c[ci] = v * a2[P.p_base + i * P.ld2 + j];
            if (i > j) {
                c2[P.c2_base + j * P.ldc + i] = v * bitcast<f32>(aux[P.aux_base + j * P.aux_ld + i]);
            }
        }
    }
}

// Row scales (§12): per row i of C = Ŵ·H (never stored), the partial dot products over this
// tile's columns with W (a2, read directly) and with Ŵ (the A operand): numerators into part,
// denominators into c, both at [wid.x * pld + i - m_lo]; beta != 0 adds to what is there
// (the later windows of H's rows).
@compute @workgroup_size(16, 16, 1)
fn gemm_rowdot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = tile_origin(wid);
    let acc = mainloop(o, lid);
    var num: array<f32, 4>;
    var den: array<f32, 4>;
    for (var r = 0u; r < 4u; r++) {
        let i = o.x + lid.y * 4u + r;
        for (var q = 0u; q < 4u; q++) {
            let j = o.y + lid.x * 4u + q;
            if (i < P.m_hi && j < P.n_hi) {
                let v = acc[r * 4u + q];
                num[r] = fma(v, a2[P.p_base + i * P.ld2 + j], num[r]);
                den[r] = fma(v, a_at(i, j), den[r]);
            }
        }
    }
    for (var r = 0u; r < 4u; r++) {
        let sn = sum_over_x(lid, num[r]);
        let sd = sum_over_x(lid, den[r]);
        let i = o.x + lid.y * 4u + r;
        if (lid.x == 0u && i < P.m_hi) {
            let pi = wid.x * P.pld + i - P.m_lo;
            var pn = sn;
            var pd = sd;
            if (P.beta != 0.0) {
                pn += part[pi];
                pd += c[P.c_base + pi];
            }
            part[pi] = pn;
            c[P.c_base + pi] = pd;
        }
    }
}

// The norm system's right-hand side (§12): per column j of C = (W − Ŵ)·H (a − a2, never
// stored), the partial sum over this tile's rows of Ŵ(i,j)·C(i,j) (Ŵ read from a2
// directly), into part[(part_off + wid.y) * pld + j]; beta != 0 adds to what is there.
@compute @workgroup_size(16, 16, 1)
fn gemm_coldot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = tile_origin(wid);
    let acc = mainloop(o, lid);
    var cs: array<f32, 4>;
    for (var r = 0u; r < 4u; r++) {
        let i = o.x + lid.y * 4u + r;
        for (var q = 0u; q < 4u; q++) {
            let j = o.y + lid.x * 4u + q;
            if (i < P.m_hi && j < P.n_hi) {
                cs[q] = fma(acc[r * 4u + q], a2[P.p_base + i * P.ld2 + j], cs[q]);
            }
        }
    }
    for (var q = 0u; q < 4u; q++) {
        let s = sum_over_y(lid, cs[q]);
        let j = o.y + lid.x * 4u + q;
        if (lid.y == 0u && j < P.n_hi) {
            let pi = (P.part_off + wid.y) * P.pld + j;
            var v = s;
            if (P.beta != 0.0) { v += part[pi]; }
            part[pi] = v;
        }
    }
}
