// Reading a compressed weight (ALGORITHMS.md §13, layouts of formats.rs): the product
// Y = X·Wᵀ in each format, and decompression back to dense f32.
//
// Product: a workgroup of 128 lanes computes RPW = 16 weight rows for a block of TB tokens;
// 8 lanes share a row. The block's X passes through workgroup memory in column chunks of
// 2048 / TB columns (8 KiB whatever TB), zero past the last token and column, so padding and
// absent tokens contribute nothing. Within a chunk the lanes of a row take:
// * dense: every 8th vec4 of values (8 columns each), so the row's loads are contiguous;
// * 2:4: every 8th vec4 of values (4 groups, 16 columns) and the code word holding them;
// * bitmap: every 32-column unit (one bit word, read by all 8 lanes), lane j taking columns
//   j, j + 8, j + 16, j + 24; a kept column's value index is the row's count so far plus the
//   popcount of the word's bits below it (a ballot prefix without subgroup operations), so
//   consecutive lanes read consecutive kept values, no lane runs longer than another, and
//   the lanes need not exchange counts.
// Weights are decoded in registers (unpack2x16float), products accumulate in f32 per lane,
// and the 8 partial sums of a row are added in workgroup memory. Where the workgroups fall
// short of the device's fill, the columns are split into parts of whole chunks
// (plan::column_parts, workgroup_id.z), each writing a partial output that gemm.wgsl's
// sum_depth_parts adds into Y in part order. TB (tokens per block) is
// substituted by the host per pipeline (1, 2, 4 or 8), so a single token does not pay for 8.
//
// Decompression decodes f16 on the bits (exact for subnormals and signed zeros, which must
// come back bit for bit).

struct Params {
    rows: u32,        // weight rows in this window
    cols: u32,
    ntok: u32,        // tokens in this window
    x_base: u32,      // X at the window's first token
    y_base: u32,      // Y (or the dense output) at the window's first token and weight row
    ldy: u32,         // row length of Y (the weight's rows; decompression: cols)
    v_base: u32,      // values at the window's first row (dense, 2:4) or at value 0 (bitmap)
    vpr: u32,         // value words per row (dense, 2:4)
    c_base: u32,      // codes / kept-bits at the window's first row
    cpr: u32,         // code / bit words per row
    row0: u32,        // global row of the window's first row (bitmap offsets)
    per_part: u32,    // product: chunks per part of a column split (plan::column_parts)
    part_len: u32,    // product: values between the parts' partial outputs in y
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> vals4: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> vals: array<u32>;
@group(0) @binding(4) var<storage, read> codes: array<u32>;
@group(0) @binding(5) var<storage, read> offs: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

const TB: u32 = 8u;
const LANES: u32 = 8u;
const RPW: u32 = 16u;
const WG: u32 = 128u;
const CHUNK: u32 = 2048u / TB;
const UPL: u32 = CHUNK / 256u;  // 32-column units per lane and chunk

var<workgroup> xs: array<vec4<f32>, 512>;  // [TB][CHUNK]
var<workgroup> red: array<f32, WG * TB>;   // [TB][WG]

struct Lane {
    tid: u32,
    lane: u32,
    row: u32,     // in the window
    live: bool,   // the row exists
    tok0: u32,
    y0: u32,      // y at the window's first token and row, in this part's partial output
    c0: u32,      // the part's columns [c0, c1): whole chunks
    c1: u32,
}

// The columns [x, y) of part z of a column split in chunks of `chunk` columns: P.per_part
// whole chunks (plan::column_parts; one part, all of them, where the product is not split).
fn part_columns(z: u32, chunk: u32) -> vec2<u32> {
    let c0 = min(z * P.per_part * chunk, P.cols);
    return vec2<u32>(c0, min(c0 + P.per_part * chunk, P.cols));
}

// How many values a bitmap row keeps before column c (a multiple of 32): the popcount of its
// bit words from `word0` on. A later part of a column split starts its value index there
// (whole words: the padding is in the last).
fn kept_before(word0: u32, c: u32) -> u32 {
    var k = 0u;
    for (var u = 0u; u < c / 32u; u++) { k += countOneBits(codes[word0 + u]); }
    return k;
}

// Workgroup (x, y, z): a block of RPW rows, of TB tokens, and a part of the columns.
fn lane_of(wid: vec3<u32>, tid: u32) -> Lane {
    let row = wid.x * RPW + tid / LANES;
    let cols = part_columns(wid.z, CHUNK);
    return Lane(tid, tid % LANES, row, row < P.rows, wid.y * TB, P.y_base + wid.z * P.part_len,
                cols.x, cols.y);
}

// xs <- X[tok0 .. tok0 + TB, c0 .. c0 + CHUNK).
fn stage(c0: u32, tok0: u32, tid: u32) {
    for (var e = tid; e < TB * CHUNK; e += WG) {
        let t = e / CHUNK;
        let c = c0 + e % CHUNK;
        var v = 0.0;
        if (tok0 + t < P.ntok && c < P.cols) { v = x[P.x_base + (tok0 + t) * P.cols + c]; }
        xs[e / 4u][e % 4u] = v;
    }
}

// X[tok0 + t, c0 + c] from the staged chunk.
fn xv(t: u32, c: u32) -> f32 {
    let i = t * CHUNK + c;
    return xs[i / 4u][i % 4u];
}

// Adds the row's 8 partial sums per token and writes the tokens that exist.
fn finish(l: Lane, acc: array<f32, TB>) {
    for (var t = 0u; t < TB; t++) { red[t * WG + l.tid] = acc[t]; }
    workgroupBarrier();
    let first = l.tid - l.lane;
    for (var t = l.lane; t < TB; t += LANES) {
        var s = 0.0;
        for (var j = 0u; j < LANES; j++) { s += red[t * WG + first + j]; }
        let tok = l.tok0 + t;
        if (l.live && tok < P.ntok) { y[l.y0 + tok * P.ldy + l.row] = s; }
    }
}

@compute @workgroup_size(128, 1, 1)
fn matmul_dense(@builtin(workgroup_id) wid: vec3<u32>,
                @builtin(local_invocation_index) tid: u32) {
    let l = lane_of(wid, tid);
    var acc: array<f32, TB>;
    let vrow = P.v_base / 4u + l.row * (P.vpr / 4u);
    for (var c0 = l.c0; c0 < l.c1; c0 += CHUNK) {
        stage(c0, l.tok0, tid);
        workgroupBarrier();
        if (l.live) {
            for (var k = 0u; k < 4u * UPL; k++) {
                let q = l.lane + LANES * k;  // the chunk's q-th 8 columns
                let col = c0 + 8u * q;
                // Rows are padded to 8 columns only: a vec4 past the end is the next row's.
                if (col < P.cols) {
                    let wv = vals4[vrow + col / 8u];
                    let w0 = unpack2x16float(wv.x);
                    let w1 = unpack2x16float(wv.y);
                    let w2 = unpack2x16float(wv.z);
                    let w3 = unpack2x16float(wv.w);
                    for (var t = 0u; t < TB; t++) {
                        let xa = xs[t * (CHUNK / 4u) + 2u * q];
                        let xb = xs[t * (CHUNK / 4u) + 2u * q + 1u];
                        var s = acc[t];
                        s = fma(w0.x, xa.x, s);
                        s = fma(w0.y, xa.y, s);
                        s = fma(w1.x, xa.z, s);
                        s = fma(w1.y, xa.w, s);
                        s = fma(w2.x, xb.x, s);
                        s = fma(w2.y, xb.y, s);
                        s = fma(w3.x, xb.z, s);
                        s = fma(w3.y, xb.w, s);
                        acc[t] = s;
                    }
                }
            }
        }
        workgroupBarrier();
    }
    finish(l, acc);
}

@compute @workgroup_size(128, 1, 1)
fn matmul_two_four(@builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(local_invocation_index) tid: u32) {
    let l = lane_of(wid, tid);
    var acc: array<f32, TB>;
    let vrow = P.v_base / 4u + l.row * (P.vpr / 4u);
    let crow = P.c_base + l.row * P.cpr;
    for (var c0 = l.c0; c0 < l.c1; c0 += CHUNK) {
        stage(c0, l.tok0, tid);
        workgroupBarrier();
        if (l.live) {
            for (var k = 0u; k < 2u * UPL; k++) {
                let q = l.lane + LANES * k;  // the chunk's q-th 4 groups
                let col = c0 + 16u * q;
                if (col < P.cols) {
                    let wv = vals4[vrow + col / 16u];
                    // The 4 groups' codes: half of a code word.
                    let cw = codes[crow + col / 32u] >> (4u * ((col / 4u) % 8u));
                    for (var j = 0u; j < 4u; j++) {
                        let code = (cw >> (4u * j)) & 0xfu;
                        let h = unpack2x16float(wv[j]);
                        let a = 16u * q + 4u * j + (code & 3u);
                        let b = 16u * q + 4u * j + (code >> 2u);
                        for (var t = 0u; t < TB; t++) {
                            acc[t] = fma(h.y, xv(t, b), fma(h.x, xv(t, a), acc[t]));
                        }
                    }
                }
            }
        }
        workgroupBarrier();
    }
    finish(l, acc);
}

// The bits of columns [c, c + 32) that lie inside the row (a malformed upload's padding
// bits must not count).
fn in_row(c: u32) -> u32 {
    let n = P.cols - c;
    if (n >= 32u) { return 0xffffffffu; }
    return (1u << n) - 1u;
}

@compute @workgroup_size(128, 1, 1)
fn matmul_bitmap(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(local_invocation_index) tid: u32) {
    let l = lane_of(wid, tid);
    var acc: array<f32, TB>;
    let brow = P.c_base + l.row * P.cpr;
    var k = 0u;  // the row's first value in the current unit: the same in all 8 lanes
    if (l.live) { k = offs[P.row0 + l.row] + kept_before(brow, l.c0); }
    for (var c0 = l.c0; c0 < l.c1; c0 += CHUNK) {
        stage(c0, l.tok0, tid);
        workgroupBarrier();
        if (l.live) {
            for (var u = 0u; u < CHUNK / 32u; u++) {
                let col = c0 + 32u * u;
                if (col >= P.cols) { break; }
                let bits = codes[brow + col / 32u] & in_row(col);
                // Lane j takes columns j, j + 8, ... of the unit, so consecutive lanes read
                // consecutive kept values and every lane takes the same four steps.
                for (var s = 0u; s < 32u; s += LANES) {
                    let b = s + l.lane;
                    if (((bits >> b) & 1u) == 1u) {
                        let i = k + countOneBits(bits & ((1u << b) - 1u));
                        let wk = unpack2x16float(vals[P.v_base + i / 2u])[i & 1u];
                        for (var t = 0u; t < TB; t++) { acc[t] = fma(wk, xv(t, 32u * u + b), acc[t]); }
                    }
                }
                k += countOneBits(bits);
            }
        }
        workgroupBarrier();
    }
    finish(l, acc);
}

// The exact f32 value of f16 bits.
fn f16_value(h: u32) -> f32 {
    let s = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) { return bitcast<f32>(s | bitcast<u32>(f32(m) * 5.9604644775390625e-8)); }
    if (e == 31u) { return bitcast<f32>(s | 0x7f800000u | (m << 13u)); }
    return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}

fn half_at(k: u32) -> f32 {
    return f16_value((vals[P.v_base + k / 2u] >> (16u * (k & 1u))) & 0xffffu);
}

@compute @workgroup_size(256, 1, 1)
fn unpack_dense(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * 256u + lid.x;
    let r = wid.y;
    if (c >= P.cols || r >= P.rows) { return; }
    y[P.y_base + r * P.ldy + c] = half_at(r * 2u * P.vpr + c);
}

@compute @workgroup_size(256, 1, 1)
fn unpack_two_four(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * 256u + lid.x;
    let r = wid.y;
    if (c >= P.cols || r >= P.rows) { return; }
    let g = c / 4u;
    let code = (codes[P.c_base + r * P.cpr + g / 8u] >> (4u * (g % 8u))) & 0xfu;
    let i = c % 4u;
    var v = 0.0;
    // The second index wins if both name the same column (the reference writes it last).
    if (i == code >> 2u) {
        v = half_at(2u * (r * P.vpr + g) + 1u);
    } else if (i == (code & 3u)) {
        v = half_at(2u * (r * P.vpr + g));
    }
    y[P.y_base + r * P.ldy + c] = v;
}

@compute @workgroup_size(256, 1, 1)
fn unpack_bitmap(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= P.rows) { return; }
    let t = lid.x;
    let brow = P.c_base + r * P.cpr;
    var k = offs[P.row0 + r];
    // Chunks of 256 columns: each thread counts the chunk's (at most 8) bit words itself.
    for (var c0 = 0u; c0 < P.cols; c0 += 256u) {
        let c = c0 + t;
        var before = 0u;
        var total = 0u;
        var mine = 0u;
        for (var j = 0u; j < 8u; j++) {
            let wc = c0 + 32u * j;
            if (wc < P.cols) {
                let bits = codes[brow + wc / 32u] & in_row(wc);
                let n = countOneBits(bits);
                if (j < t / 32u) { before += n; }
                if (j == t / 32u) { mine = bits; }
                total += n;
            }
        }
        if (c < P.cols) {
            let bit = c % 32u;
            var v = 0.0;
            if (((mine >> bit) & 1u) == 1u) {
                v = half_at(k + before + countOneBits(mine & ((1u << bit) - 1u)));
            }
            y[P.y_base + r * P.ldy + c] = v;
        }
        k += total;
    }
}

// ---- The product at many tokens (from plan::SPARSE_TILED_FROM): load as sparse, compute as
// dense. The kernels above give a workgroup a block of at most 8 tokens and 16 rows, so
// the weight is read N/8 times and X rows/16 times. Here a workgroup of 128 invocations owns a
// tile of TR = 32 weight rows by TT = 64 tokens (the weight read N/64 times, X rows/32 times).
// Per chunk of KC = 32 columns (one bitmap word, one 2:4 code word) it
// * stages X[64 tokens, 32 columns] k-major: invocation (k = lane, token quad q) reads its
//   column of 4 tokens, so 32 neighbouring invocations read one token's 128 contiguous bytes;
// * decodes W[32 rows, 32 columns] into a dense k-major f32 tile with zeros where pruned, the
//   same way: invocation (k = lane, row quad) decodes its column of 4 rows; a bitmap row's bit
//   word is read by all 32 lanes and a kept column's value index is the row's count so far
//   plus the popcount of the bits below it (a ballot prefix without subgroup operations), so
//   consecutive lanes read consecutive kept values;
// * accumulates a 4 x 4 register tile per invocation (rows 4·tr.., tokens 4·tt..) over the
//   chunk: one vec4 of W and one of X from workgroup memory per 16 FMAs.
// Tiles are stored as vec4 quads (4 rows, or 4 tokens, of one column k), the quad's slot
// XOR-ed with k mod 8: each invocation stores whole vec4s, eight consecutive k land in eight
// different bank groups (conflict-free stores), and a column's quads stay a permutation of
// its slots (conflict-free loads).
// The zeros of a decoded tile are multiplied too (a sparse weight saves bytes, not flops, at
// this size, as in Flash-LLM); the work model counts the dense tile's flops for these products.
// Where the tiles fall short of the device's fill, the columns are split into parts of whole
// chunks (workgroup_id.z) whose partial outputs sum_depth_parts adds, as for the kernels above.

const TR: u32 = 32u;   // weight rows per tile
const TT: u32 = 64u;   // tokens per tile
const KC: u32 = 32u;   // columns per chunk: one bitmap word, one 2:4 code word
const DENSE: u32 = 0u;
const TWO_FOUR: u32 = 1u;
const BITMAP: u32 = 2u;

var<workgroup> wt: array<vec4<f32>, 256>;  // KC x TR/4 quads of 4 rows
var<workgroup> xt: array<vec4<f32>, 512>;  // KC x TT/4 quads of 4 tokens

// The slot of quad q of column k (the XOR keeps it inside its column's slots).
fn slot(k: u32, q: u32) -> u32 {
    return q ^ (k % 8u);
}

struct Tile {
    row0: u32,   // the tile's first weight row in the window
    tok0: u32,   // its first token in the window
    lane: u32,   // the column k this invocation stages and decodes
    wave: u32,   // tid / 32: its first quad
    tr: u32,     // its register tile: rows 4·tr .. 4·tr + 3
    tt: u32,     // and tokens 4·tt .. 4·tt + 3
}

// xt <- X[tok0 .. tok0 + TT, c0 .. c0 + KC), zero outside X.
fn tile_stage_x(t: Tile, c0: u32) {
    let col = c0 + t.lane;
    for (var i = 0u; i < 4u; i++) {
        let q = t.wave + 4u * i;
        var v = vec4<f32>();
        for (var j = 0u; j < 4u; j++) {
            let tok = t.tok0 + 4u * q + j;
            if (tok < P.ntok && col < P.cols) { v[j] = x[P.x_base + tok * P.cols + col]; }
        }
        xt[t.lane * 16u + slot(t.lane, q)] = v;
    }
}

// Dense or 2:4 row `row`'s weight at column `col` (zero where pruned or past the weight).
fn tile_weight(fmt: u32, row: u32, col: u32) -> f32 {
    if (row >= P.rows || col >= P.cols) { return 0.0; }
    if (fmt == DENSE) {
        // Row r's values start at word r·vpr, two to a word.
        return half_at(2u * row * P.vpr + col);
    }
    // 2:4: the group's word (its two kept values) and its 4-bit code; the second index wins
    // if both name the same column, as in the reference.
    let code = (codes[P.c_base + row * P.cpr + col / 32u] >> (4u * ((col / 4u) % 8u))) & 0xfu;
    let e = col % 4u;
    let k = 2u * (row * P.vpr + col / 4u);
    if (e == code >> 2u) { return half_at(k + 1u); }
    if (e == (code & 3u)) { return half_at(k); }
    return 0.0;
}

// A bitmap row's bits for columns [c0, c0 + 32), none past the weight.
fn tile_bits(row: u32, c0: u32) -> u32 {
    if (row >= P.rows) { return 0u; }
    return codes[P.c_base + row * P.cpr + c0 / 32u] & in_row(c0);
}

// The tiled product in format `fmt`: per chunk, X and the weight decoded into the shared
// tiles, then a 4 x 4 register tile (acc[j]: rows 4·tr + 0..3 of token 4·tt + j) accumulated
// from one vec4 of each per 16 FMAs; the rows and tokens that exist written at the end.
fn tiled(wid: vec3<u32>, tid: u32, fmt: u32) {
    let t = Tile(wid.x * TR, wid.y * TT, tid % 32u, tid / 32u, tid % 8u, tid / 8u);
    var acc: array<vec4<f32>, 4>;
    let below = (1u << t.lane) - 1u;
    // next[4i + j]: bitmap row 4·(wave + 4i) + j's first value not yet decoded, the same in
    // all 32 lanes.
    // The part of a column split (workgroup_id.z).
    let part = part_columns(wid.z, KC);
    var next: array<u32, 8>;
    if (fmt == BITMAP) {
        for (var n = 0u; n < 8u; n++) {
            let row = t.row0 + 4u * (t.wave + 4u * (n / 4u)) + n % 4u;
            if (row < P.rows) {
                next[n] = offs[P.row0 + row] + kept_before(P.c_base + row * P.cpr, part.x);
            }
        }
    }
    for (var c0 = part.x; c0 < part.y; c0 += KC) {
        tile_stage_x(t, c0);
        for (var i = 0u; i < 2u; i++) {
            let q = t.wave + 4u * i;
            var v = vec4<f32>();
            for (var j = 0u; j < 4u; j++) {
                let row = t.row0 + 4u * q + j;
                if (fmt == BITMAP) {
                    let bits = tile_bits(row, c0);
                    if (((bits >> t.lane) & 1u) == 1u) {
                        v[j] = half_at(next[4u * i + j] + countOneBits(bits & below));
                    }
                    next[4u * i + j] += countOneBits(bits);
                } else {
                    v[j] = tile_weight(fmt, row, c0 + t.lane);
                }
            }
            wt[t.lane * 8u + slot(t.lane, q)] = v;
        }
        workgroupBarrier();
        for (var k = 0u; k < KC; k++) {
            let w = wt[k * 8u + slot(k, t.tr)];
            let xv = xt[k * 16u + slot(k, t.tt)];
            for (var j = 0u; j < 4u; j++) { acc[j] = fma(w, vec4<f32>(xv[j]), acc[j]); }
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let tok = t.tok0 + 4u * t.tt + j;
        if (tok >= P.ntok) { continue; }
        for (var i = 0u; i < 4u; i++) {
            let row = t.row0 + 4u * t.tr + i;
            if (row < P.rows) { y[P.y_base + wid.z * P.part_len + tok * P.ldy + row] = acc[j][i]; }
        }
    }
}

@compute @workgroup_size(128, 1, 1)
fn tiled_dense(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    tiled(wid, tid, DENSE);
}

@compute @workgroup_size(128, 1, 1)
fn tiled_two_four(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    tiled(wid, tid, TWO_FOUR);
}

@compute @workgroup_size(128, 1, 1)
fn tiled_bitmap(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    tiled(wid, tid, BITMAP);
}
