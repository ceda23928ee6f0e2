// The backward of causal GQA attention (ALGORITHMS.md §15), FlashAttention-2's: the
// probabilities are recomputed from the forward's log-sum-exp L tile by tile, never stored as
// a seq x seq matrix, and every gradient is owned by one workgroup (no atomics, so the sums
// run in a fixed order and the result is deterministic):
//   attn_delta: D = rowsum(dO ⊙ O) per (row, head), an invocation each;
//   attn_dkdv: a workgroup per (window, KV head, block of 16·rt keys) owns those rows of dK
//     and dV, summing over the group's query heads and the query blocks at or after its keys;
//   attn_dq: a workgroup per (window, query head, block of 16·rt queries) owns those rows of
//     dQ, summing over the key blocks up to the diagonal.
// Blocks are 32 or 16 (rt = 2 or 1, plan::attention_backward_block), query and key blocks
// alike. Both tile kernels share `p_ds`, which leaves a block x block tile of
// P = exp(S − L) and dS = P ⊙ (dO·Vᵀ − D) in workgroup memory, with S = Q·Kᵀ/√e and dO·Vᵀ
// as register tiles over depth steps of DC staged as the forward's attention stages Q and K.
// Bases are window-relative indices of a matrix's logical origin (u32 wrap-around arithmetic,
// as in forward.wgsl), so one dispatch serves a slab of rows bound as a window.

struct Params {
    rows: u32,      // workgroups of the dispatch (attn_delta: rows)
    row0: u32,      // first row of the dispatch's first window
    q_base: u32,    // Q (attn_delta: O) in qb
    k_base: u32,
    v_base: u32,
    g_base: u32,    // dO
    l_base: u32,    // L [rows, heads]
    d_base: u32,    // D [rows, heads]
    o0_base: u32,   // dK (attn_dkdv) or dQ (attn_dq)
    o1_base: u32,   // dV (attn_dkdv)
    qld: u32,       // heads·e: columns of Q, O, dO and dQ
    kld: u32,       // kv_heads·e: columns of K, V, dK and dV
    seq: u32,       // rows per window
    heads: u32,
    group: u32,     // query heads per KV head
    e: u32,         // head_dim
    blocks: u32,    // key (attn_dkdv) or query (attn_dq) blocks per window
    scale: f32,     // 1/sqrt(e)
    rt: u32,        // rows (and keys) per invocation of the tiles: blocks of 16·rt
    parts: u32,     // attn_dkdv: parts each group of query heads is split over
                    // (plan::attention_group_parts), the workgroups' outermost index
    per_part: u32,  // attn_dkdv: query heads per part (the last part takes the rest)
    part_len: u32,  // attn_dkdv: elements from one part's dK (and dV) partial to the next
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> qb: array<f32>;
@group(0) @binding(2) var<storage, read> kb: array<f32>;
@group(0) @binding(3) var<storage, read> vb: array<f32>;
@group(0) @binding(4) var<storage, read> gb: array<f32>;
@group(0) @binding(5) var<storage, read> lb: array<f32>;
// D: written by attn_delta, read by the tile kernels of the same batch.
@group(0) @binding(6) var<storage, read_write> deltab: array<f32>;
@group(0) @binding(7) var<storage, read_write> out0: array<f32>;
@group(0) @binding(8) var<storage, read_write> out1: array<f32>;

// D[row, h] = Σ_c dO[row, h·e + c]·O[row, h·e + c] over the dispatch's rows, O in qb.
@compute @workgroup_size(256, 1, 1)
fn attn_delta(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (i >= P.rows * P.heads) { return; }
    let row = P.row0 + i / P.heads;
    let h = i % P.heads;
    let at = row * P.qld + h * P.e;
    var acc = 0.0;
    for (var c = 0u; c < P.e; c++) {
        acc = fma(gb[P.g_base + at + c], qb[P.q_base + at + c], acc);
    }
    deltab[P.d_base + row * P.heads + h] = acc;
}

const BQ: u32 = 32u;        // query rows per tile at most (rt = 2)
const BK: u32 = 32u;        // keys per tile at most (= BQ: a key block's first query block
                            // starts with it)
const DC: u32 = 16u;        // depth of one step of the S and dO·Vᵀ tiles
const EMAX: u32 = 256u;     // the largest head_dim of this variant (the host picks 64, 128, 256)
const OC: u32 = EMAX / 16u; // accumulator columns per invocation: tx, tx + 16, …
const RC: u32 = 1024u;      // floats of one staging array of full rows
const RR: u32 = RC / EMAX;  // full rows per staging step (divides every block: 16 or less)

// Rows padded by one value, so the 16 lanes that read one column of different rows hit
// different banks.
var<workgroup> qs: array<f32, BQ * (DC + 1u)>;
var<workgroup> gs: array<f32, BQ * (DC + 1u)>;
var<workgroup> ks: array<f32, BK * (DC + 1u)>;
var<workgroup> vs: array<f32, BK * (DC + 1u)>;
var<workgroup> ps: array<f32, BQ * (BK + 1u)>;
var<workgroup> dss: array<f32, BQ * (BK + 1u)>;
var<workgroup> ra: array<f32, RC>;
var<workgroup> rb: array<f32, RC>;
var<workgroup> row_l: array<f32, BQ>;
var<workgroup> row_d: array<f32, BQ>;

// Leaves P and dS of query rows [q0, q0 + BQ) (live below q_end) of head h against keys
// [k0, k0 + nk) of the KV head at kv_col in ps and dss, zero where masked (after the query,
// past the keys, a padding row). Window w0. Each invocation holds an rt x rt tile of S and of
// dO·Vᵀ: rows ty·rt + i, keys tx·rt + j (the private arrays sized for 2 x 2, the rest skipped
// by a uniform continue so every loop keeps a constant trip count). Call in uniform control
// flow.
fn p_ds(w0: u32, q0: u32, q_end: u32, k0: u32, nk: u32, h: u32, kv_col: u32, t: u32) {
    let rt = P.rt;
    let blk = 16u * rt;
    let ty = t / 16u;
    let tx = t % 16u;
    let e = P.e;
    let q_col = h * e;
    workgroupBarrier();
    if (t < blk) {
        var l = 0.0;
        var d = 0.0;
        if (q0 + t < q_end) {
            let at = (w0 + q0 + t) * P.heads + h;
            l = lb[P.l_base + at];
            d = deltab[P.d_base + at];
        }
        row_l[t] = l;
        row_d[t] = d;
    }
    var s: array<f32, 4>;
    var dp: array<f32, 4>;
    for (var i = 0u; i < 4u; i++) {
        s[i] = 0.0;
        dp[i] = 0.0;
    }
    for (var d0 = 0u; d0 < e; d0 += DC) {
        workgroupBarrier();
        for (var i = t; i < blk * DC; i += 256u) {
            let r = i / DC;
            let d = d0 + i % DC;
            var a = 0.0;
            var g = 0.0;
            if (q0 + r < q_end && d < e) {
                let at = (w0 + q0 + r) * P.qld + q_col + d;
                a = qb[P.q_base + at];
                g = gb[P.g_base + at];
            }
            qs[r * (DC + 1u) + i % DC] = a;
            gs[r * (DC + 1u) + i % DC] = g;
        }
        for (var i = t; i < blk * DC; i += 256u) {
            let r = i / DC;
            let d = d0 + i % DC;
            var a = 0.0;
            var b = 0.0;
            if (r < nk && d < e) {
                let at = (w0 + k0 + r) * P.kld + kv_col + d;
                a = kb[P.k_base + at];
                b = vb[P.v_base + at];
            }
            ks[r * (DC + 1u) + i % DC] = a;
            vs[r * (DC + 1u) + i % DC] = b;
        }
        workgroupBarrier();
        for (var d = 0u; d < DC; d++) {
            for (var i = 0u; i < 2u; i++) {
                if (i >= rt) { continue; }
                let a = qs[(ty * rt + i) * (DC + 1u) + d];
                let g = gs[(ty * rt + i) * (DC + 1u) + d];
                for (var j = 0u; j < 2u; j++) {
                    if (j >= rt) { continue; }
                    let c = (tx * rt + j) * (DC + 1u) + d;
                    s[i * 2u + j] = fma(a, ks[c], s[i * 2u + j]);
                    dp[i * 2u + j] = fma(g, vs[c], dp[i * 2u + j]);
                }
            }
        }
    }
    for (var i = 0u; i < 2u; i++) {
        if (i >= rt) { continue; }
        for (var j = 0u; j < 2u; j++) {
            if (j >= rt) { continue; }
            let r = ty * rt + i;
            let c = tx * rt + j;
            let live = c < nk && k0 + c <= q0 + r && q0 + r < q_end;
            var p = 0.0;
            if (live) { p = exp(s[i * 2u + j] * P.scale - row_l[r]); }
            ps[r * (BK + 1u) + c] = p;
            dss[r * (BK + 1u) + c] = p * (dp[i * 2u + j] - row_d[r]);
        }
    }
    workgroupBarrier();
}

// dK and dV of keys [k0, k0 + blk) of one KV head in one window, over part z of its group's
// query heads (the whole group where parts = 1): for each query head of the part in order,
// for each query block from the key block's own to the window's end, P and dS from `p_ds`,
// then dV += Pᵀ·dO and dK += dSᵀ·Q over steps of RR full rows of dO and Q staged in workgroup
// memory. Each invocation accumulates keys ty·rt + i at columns
// tx + 16·j in registers (constant-bound loops only); dK is scaled by 1/√e once at the end.
@compute @workgroup_size(256, 1, 1)
fn attn_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg_all = wid.y * nwg.x + wid.x;
    if (wg_all >= P.rows) { return; }
    // Part z of the group's query heads, its sums into partial z of dK and dV.
    let per_z = P.rows / P.parts;
    let z = wg_all / per_z;
    let wg = wg_all % per_z;
    let kv_heads = P.heads / P.group;
    let g = wg % kv_heads;
    let rest = wg / kv_heads;
    let w0 = P.row0 + (rest / P.blocks) * P.seq;
    let rt = P.rt;
    let blk = 16u * rt;
    let k0 = (rest % P.blocks) * blk;
    let nk = min(blk, P.seq - k0);
    let e = P.e;
    let kv_col = g * e;
    let t = lid.x;
    let ty = t / 16u;
    let tx = t % 16u;

    var dk: array<f32, 2u * OC>;
    var dv: array<f32, 2u * OC>;
    for (var i = 0u; i < 2u * OC; i++) {
        dk[i] = 0.0;
        dv[i] = 0.0;
    }
    let h_first = z * P.per_part;
    let h_end = min(h_first + P.per_part, P.group);
    for (var hh = h_first; hh < h_end; hh++) {
        let h = g * P.group + hh;
        for (var q0 = k0; q0 < P.seq; q0 += blk) {
            p_ds(w0, q0, P.seq, k0, nk, h, kv_col, t);
            let nq = min(blk, P.seq - q0);
            for (var r0 = 0u; r0 < nq; r0 += RR) {
                workgroupBarrier();
                for (var i = t; i < RR * EMAX; i += 256u) {
                    let r = i / EMAX;
                    let c = i % EMAX;
                    var a = 0.0;
                    var b = 0.0;
                    if (r0 + r < nq && c < e) {
                        let at = (w0 + q0 + r0 + r) * P.qld + h * e + c;
                        a = gb[P.g_base + at];
                        b = qb[P.q_base + at];
                    }
                    ra[i] = a;
                    rb[i] = b;
                }
                workgroupBarrier();
                for (var rr = 0u; rr < RR; rr++) {
                    for (var i = 0u; i < 2u; i++) {
                        if (i >= rt) { continue; }
                        let at = (r0 + rr) * (BK + 1u) + ty * rt + i;
                        let p = ps[at];
                        let ds = dss[at];
                        for (var j = 0u; j < OC; j++) {
                            let c = rr * EMAX + tx + 16u * j;
                            dv[i * OC + j] = fma(p, ra[c], dv[i * OC + j]);
                            dk[i * OC + j] = fma(ds, rb[c], dk[i * OC + j]);
                        }
                    }
                }
            }
        }
    }
    for (var i = 0u; i < 2u; i++) {
        if (i >= rt) { continue; }
        let r = ty * rt + i;
        if (r < nk) {
            let at = z * P.part_len + (w0 + k0 + r) * P.kld + kv_col;
            for (var j = 0u; j < OC; j++) {
                let col = tx + 16u * j;
                if (col < e) {
                    out0[P.o0_base + at + col] = dk[i * OC + j] * P.scale;
                    out1[P.o1_base + at + col] = dv[i * OC + j];
                }
            }
        }
    }
}

// dQ of queries [q0, q0 + blk) of one head in one window: for each key block up to the
// block's last query, P and dS from `p_ds`, then dQ += dS·K over steps of RR full rows of K
// staged in workgroup memory. Each invocation accumulates queries ty·rt + i at columns
// tx + 16·j in registers; dQ is scaled by 1/√e once at the end.
@compute @workgroup_size(256, 1, 1)
fn attn_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= P.rows) { return; }
    let h = wg % P.heads;
    let rest = wg / P.heads;
    let w0 = P.row0 + (rest / P.blocks) * P.seq;
    let rt = P.rt;
    let blk = 16u * rt;
    let q0 = (rest % P.blocks) * blk;
    let q_end = min(q0 + blk, P.seq);
    let e = P.e;
    let kv_col = (h / P.group) * e;
    let t = lid.x;
    let ty = t / 16u;
    let tx = t % 16u;

    var dq: array<f32, 2u * OC>;
    for (var i = 0u; i < 2u * OC; i++) { dq[i] = 0.0; }
    for (var k0 = 0u; k0 < q_end; k0 += blk) {
        let nk = min(blk, q_end - k0);
        p_ds(w0, q0, q_end, k0, nk, h, kv_col, t);
        for (var c0 = 0u; c0 < nk; c0 += RR) {
            workgroupBarrier();
            for (var i = t; i < RR * EMAX; i += 256u) {
                let r = i / EMAX;
                let c = i % EMAX;
                var a = 0.0;
                if (c0 + r < nk && c < e) {
                    a = kb[P.k_base + (w0 + k0 + c0 + r) * P.kld + kv_col + c];
                }
                ra[i] = a;
            }
            workgroupBarrier();
            for (var rr = 0u; rr < RR; rr++) {
                for (var i = 0u; i < 2u; i++) {
                    if (i >= rt) { continue; }
                    let ds = dss[(ty * rt + i) * (BK + 1u) + c0 + rr];
                    for (var j = 0u; j < OC; j++) {
                        dq[i * OC + j] = fma(ds, ra[rr * EMAX + tx + 16u * j], dq[i * OC + j]);
                    }
                }
            }
        }
    }
    for (var i = 0u; i < 2u; i++) {
        if (i >= rt) { continue; }
        let r = ty * rt + i;
        if (q0 + r < q_end) {
            let at = P.o0_base + (w0 + q0 + r) * P.qld + h * e;
            for (var j = 0u; j < OC; j++) {
                let col = tx + 16u * j;
                if (col < e) { out0[at + col] = dq[i * OC + j] * P.scale; }
            }
        }
    }
}
