// The product Y = X·Wᵀ from a compressed weight (ALGORITHMS.md §13, layouts of formats.rs) at
// many tokens: load as sparse, compute as dense.
//
// sparse_matmul.wgsl's kernels give a workgroup a block of at most 8 tokens and 16 rows, so
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

struct Params {
    rows: u32,        // weight rows in this window
    cols: u32,
    ntok: u32,        // tokens in this window
    x_base: u32,      // X at the window's first token
    y_base: u32,      // Y at the window's first token and weight row
    ldy: u32,         // row length of Y (the weight's rows)
    v_base: u32,      // values at the window's first row (dense, 2:4) or at value 0 (bitmap)
    vpr: u32,         // value words per row (dense, 2:4)
    c_base: u32,      // codes / kept-bits at the window's first row
    cpr: u32,         // code / bit words per row
    row0: u32,        // global row of the window's first row (bitmap offsets)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> vals4: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> vals: array<u32>;
@group(0) @binding(4) var<storage, read> codes: array<u32>;
@group(0) @binding(5) var<storage, read> offs: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

const TR: u32 = 32u;   // weight rows per tile
const TT: u32 = 64u;   // tokens per tile
const KC: u32 = 32u;   // columns per chunk: one bitmap word, one 2:4 code word

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

fn tile_of(wid: vec3<u32>, tid: u32) -> Tile {
    return Tile(wid.x * TR, wid.y * TT, tid % 32u, tid / 32u, tid % 8u, tid / 8u);
}

// xt <- X[tok0 .. tok0 + TT, c0 .. c0 + KC), zero outside X.
fn stage_x(t: Tile, c0: u32) {
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

// acc[j] (rows 4·tr + 0..3 of token 4·tt + j) += the chunk's W tile times its X tile.
fn accumulate(t: Tile, acc: ptr<function, array<vec4<f32>, 4>>) {
    for (var k = 0u; k < KC; k++) {
        let w = wt[k * 8u + slot(k, t.tr)];
        let xv = xt[k * 16u + slot(k, t.tt)];
        for (var j = 0u; j < 4u; j++) { (*acc)[j] = fma(w, vec4<f32>(xv[j]), (*acc)[j]); }
    }
}

// Writes the tile's rows and tokens that exist.
fn store(t: Tile, acc: array<vec4<f32>, 4>) {
    for (var j = 0u; j < 4u; j++) {
        let tok = t.tok0 + 4u * t.tt + j;
        if (tok >= P.ntok) { continue; }
        for (var i = 0u; i < 4u; i++) {
            let row = t.row0 + 4u * t.tr + i;
            if (row < P.rows) { y[P.y_base + tok * P.ldy + row] = acc[j][i]; }
        }
    }
}

fn half_at(k: u32) -> f32 {
    return unpack2x16float(vals[P.v_base + k / 2u])[k & 1u];
}

@compute @workgroup_size(128, 1, 1)
fn tiled_dense(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(local_invocation_index) tid: u32) {
    let t = tile_of(wid, tid);
    var acc: array<vec4<f32>, 4>;
    for (var c0 = 0u; c0 < P.cols; c0 += KC) {
        stage_x(t, c0);
        let col = c0 + t.lane;
        for (var i = 0u; i < 2u; i++) {
            let q = t.wave + 4u * i;
            var v = vec4<f32>();
            for (var j = 0u; j < 4u; j++) {
                let row = t.row0 + 4u * q + j;
                // Row r's values start at word r·vpr, two to a word.
                if (row < P.rows && col < P.cols) { v[j] = half_at(2u * row * P.vpr + col); }
            }
            wt[t.lane * 8u + slot(t.lane, q)] = v;
        }
        workgroupBarrier();
        accumulate(t, &acc);
        workgroupBarrier();
    }
    store(t, acc);
}

@compute @workgroup_size(128, 1, 1)
fn tiled_two_four(@builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(local_invocation_index) tid: u32) {
    let t = tile_of(wid, tid);
    var acc: array<vec4<f32>, 4>;
    for (var c0 = 0u; c0 < P.cols; c0 += KC) {
        stage_x(t, c0);
        let col = c0 + t.lane;
        let e = col % 4u;
        for (var i = 0u; i < 2u; i++) {
            let q = t.wave + 4u * i;
            var v = vec4<f32>();
            for (var j = 0u; j < 4u; j++) {
                let row = t.row0 + 4u * q + j;
                if (row < P.rows && col < P.cols) {
                    // The group's word (its two kept values) and its 4-bit code.
                    let h = unpack2x16float(vals[P.v_base + row * P.vpr + col / 4u]);
                    let code = (codes[P.c_base + row * P.cpr + col / 32u] >> (4u * ((col / 4u) % 8u))) & 0xfu;
                    // The second index wins if both name the same column, as in the reference.
                    if (e == code >> 2u) { v[j] = h.y; } else if (e == (code & 3u)) { v[j] = h.x; }
                }
            }
            wt[t.lane * 8u + slot(t.lane, q)] = v;
        }
        workgroupBarrier();
        accumulate(t, &acc);
        workgroupBarrier();
    }
    store(t, acc);
}

// The bits of columns [c, c + 32) that lie inside the row (a malformed upload's padding
// bits must not count).
fn in_row(c: u32) -> u32 {
    let n = P.cols - c;
    if (n >= 32u) { return 0xffffffffu; }
    return (1u << n) - 1u;
}

@compute @workgroup_size(128, 1, 1)
fn tiled_bitmap(@builtin(workgroup_id) wid: vec3<u32>,
                @builtin(local_invocation_index) tid: u32) {
    let t = tile_of(wid, tid);
    var acc: array<vec4<f32>, 4>;
    let below = (1u << t.lane) - 1u;
    // next[4i + j]: the first value not yet decoded of row 4·(wave + 4i) + j, the same in
    // all 32 lanes.
    var next: array<u32, 8>;
    for (var i = 0u; i < 2u; i++) {
        for (var j = 0u; j < 4u; j++) {
            let row = t.row0 + 4u * (t.wave + 4u * i) + j;
            if (row < P.rows) { next[4u * i + j] = offs[P.row0 + row]; }
        }
    }
    for (var c0 = 0u; c0 < P.cols; c0 += KC) {
        stage_x(t, c0);
        for (var i = 0u; i < 2u; i++) {
            let q = t.wave + 4u * i;
            var v = vec4<f32>();
            for (var j = 0u; j < 4u; j++) {
                let row = t.row0 + 4u * q + j;
                var bits = 0u;
                if (row < P.rows) { bits = codes[P.c_base + row * P.cpr + c0 / 32u] & in_row(c0); }
                if (((bits >> t.lane) & 1u) == 1u) {
                    v[j] = half_at(next[4u * i + j] + countOneBits(bits & below));
                }
                next[4u * i + j] += countOneBits(bits);
            }
            wt[t.lane * 8u + slot(t.lane, q)] = v;
        }
        workgroupBarrier();
        accumulate(t, &acc);
        workgroupBarrier();
    }
    store(t, acc);
}
