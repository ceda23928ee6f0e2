// Compressing a pruned weight (ALGORITHMS.md §13) into the layouts of formats.rs: the mask
// decides what is kept (bit set = pruned), kept values round to the nearest f16.
//
// * pack_dense: one thread per output word (two columns).
// * pack_two_four: one thread per group of 4 columns (one value word); the 8 codes of a code
//   word are gathered in workgroup memory.
// * bitmap: bitmap_bits writes the kept-bits and each row's kept count (a workgroup per row),
//   bitmap_scan turns the counts into row offsets (one workgroup), bitmap_scatter writes each
//   row's values (a workgroup per row, a thread per bit word; a value word may straddle two
//   threads, so words are or-ed into the cleared buffer).
// Every kept value is checked against the f16 range and every 2:4 group's kept count; the
// lowest row-major index of each kind of failure goes to `flags` (atomicMin) for the host.
// f32 -> f16 rounding is done on the bits (ties to even, subnormals exact): pack2x16float may
// round either way and flush subnormals, and the words must equal the reference's.

struct Params {
    rows: u32,        // rows in this window
    cols: u32,
    row0: u32,        // global row of the window's first row
    w_base: u32,      // W (f32) at the window's first row
    m_base: u32,      // the mask at the window's first row
    mwpr: u32,        // mask words per row
    v_base: u32,      // values at the window's first row (dense, 2:4) or at value 0 (bitmap)
    vpr: u32,         // value words per row (dense, 2:4)
    c_base: u32,      // codes / kept-bits at the window's first row
    cpr: u32,         // code / bit words per row
    nrows: u32,       // bitmap_scan: rows of the whole weight
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> vals: array<u32>;
@group(0) @binding(4) var<storage, read_write> avals: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> codes: array<u32>;
@group(0) @binding(6) var<storage, read_write> offs: array<u32>;  // counts, then offsets
@group(0) @binding(7) var<storage, read_write> flags: array<atomic<u32>>; // [value, group]

// bits(65520.0): the first |v| that does not round to a finite f16.
const F16_LIMIT_BITS: u32 = 0x477ff000u;

var<workgroup> nib: array<u32, 256>;
var<workgroup> scan: array<u32, 256>;
var<workgroup> carry: u32;

// Nearest f16 (ties to even) of a value known to be below the limit.
fn f16_rne(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let s = (x >> 16u) & 0x8000u;
    let a = x & 0x7fffffffu;
    if (a >= 0x38800000u) {
        // Normal: rebias the exponent, round off 13 mantissa bits (a carry bumps it).
        return s | ((a - 0x38000000u + 0xfffu + ((a >> 13u) & 1u)) >> 13u);
    }
    let e = a >> 23u;
    if (e < 102u) { return s; } // below 2^-25: rounds to zero
    // Subnormal: the value in units of 2^-24 is m >> (126 - e), rounded to even.
    let m = (a & 0x7fffffu) | 0x800000u;
    let sh = 126u - e;
    var q = m >> sh;
    let rem = m & ((1u << sh) - 1u);
    let hb = 1u << (sh - 1u);
    if (rem > hb || (rem == hb && (q & 1u) == 1u)) { q += 1u; }
    return s | q;
}

fn kept(r: u32, c: u32) -> bool {
    return ((mask[P.m_base + r * P.mwpr + c / 32u] >> (c % 32u)) & 1u) == 0u;
}

// The f16 bits of a kept entry, noting it if f16 cannot hold it (NaN included: the test is
// on the bits, which no fast-math assumption can drop).
fn kept_half(r: u32, c: u32) -> u32 {
    let v = w[P.w_base + r * P.cols + c];
    if ((bitcast<u32>(v) & 0x7fffffffu) >= F16_LIMIT_BITS) {
        atomicMin(&flags[0], (P.row0 + r) * P.cols + c);
    }
    return f16_rne(v);
}

@compute @workgroup_size(256, 1, 1)
fn pack_dense(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = wid.x * 256u + lid.x;
    let r = wid.y;
    if (i >= P.vpr || r >= P.rows) { return; }
    var word = 0u;
    for (var h = 0u; h < 2u; h++) {
        let c = 2u * i + h;
        if (c < P.cols && kept(r, c)) { word |= kept_half(r, c) << (16u * h); }
    }
    vals[P.v_base + r * P.vpr + i] = word;
}

@compute @workgroup_size(256, 1, 1)
fn pack_two_four(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wid.x * 256u + lid.x;   // group in the row, padding groups included
    let r = wid.y;
    let live = g < P.vpr && r < P.rows;
    var code = 0u;
    if (live) {
        var word = 0u;
        let c = 4u * g;
        if (c < P.cols) {
            // A group never straddles mask words (4 divides 32).
            let pruned = (mask[P.m_base + r * P.mwpr + c / 32u] >> (c % 32u)) & 0xfu;
            var h: array<u32, 4>;
            for (var i = 0u; i < 4u; i++) {
                if (((pruned >> i) & 1u) == 0u) { h[i] = kept_half(r, c + i); }
            }
            if (countOneBits(pruned) < 2u) {
                atomicMin(&flags[1], (P.row0 + r) * (P.cols / 4u) + g);
            }
            // PyTorch's indices from the kept flags (formats::two_four_indices).
            let m0 = (pruned & 1u) == 0u;
            let m1 = (pruned & 2u) == 0u;
            let m2 = (pruned & 4u) == 0u;
            let bit0 = !m0 && m1;
            let bit1 = !m0 && !m1;
            let bit2 = bit1 || !m2;
            let bit3 = bit0 || !m1 || m2;
            let i0 = u32(bit0) | (u32(bit1) << 1u);
            let i1 = u32(bit2) | (u32(bit3) << 1u);
            // A pruned slot's h is 0: the kept zero PyTorch stores.
            word = h[i0] | (h[i1] << 16u);
            code = i0 | (i1 << 2u);
        }
        vals[P.v_base + r * P.vpr + g] = word;
    }
    nib[lid.x] = code << (4u * (lid.x % 8u));
    workgroupBarrier();
    if (live && lid.x % 8u == 0u) {
        var cw = 0u;
        for (var i = 0u; i < 8u; i++) { cw |= nib[lid.x + i]; }
        codes[P.c_base + r * P.cpr + g / 8u] = cw;
    }
}

fn row_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// The bits of columns [c, c + 32) that lie inside the row.
fn in_row(c: u32) -> u32 {
    let n = P.cols - c;
    if (n >= 32u) { return 0xffffffffu; }
    return (1u << n) - 1u;
}

var<workgroup> count: atomic<u32>;

@compute @workgroup_size(256, 1, 1)
fn bitmap_bits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = row_of(wid, nwg);
    if (r >= P.rows) { return; }
    if (lid.x == 0u) { atomicStore(&count, 0u); }
    workgroupBarrier();
    var s = 0u;
    for (var j = lid.x; j < P.cpr; j += 256u) {
        let bits = ~mask[P.m_base + r * P.mwpr + j] & in_row(32u * j);
        codes[P.c_base + r * P.cpr + j] = bits;
        s += countOneBits(bits);
    }
    atomicAdd(&count, s);
    workgroupBarrier();
    if (lid.x == 0u) { offs[P.row0 + r] = atomicLoad(&count); }
}

// Inclusive scan of scan[0..256) in place; every thread must call it.
fn scan256(t: u32) {
    for (var off = 1u; off < 256u; off = off * 2u) {
        var v = 0u;
        if (t >= off) { v = scan[t - off]; }
        workgroupBarrier();
        scan[t] = scan[t] + v;
        workgroupBarrier();
    }
}

// offs[0..nrows) counts -> exclusive offsets, offs[nrows] the total: each thread scans a
// contiguous run of rows, the runs' sums are scanned across the workgroup.
@compute @workgroup_size(256, 1, 1)
fn bitmap_scan(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let per = (P.nrows + 255u) / 256u;
    let lo = min(t * per, P.nrows);
    let hi = min(lo + per, P.nrows);
    var s = 0u;
    for (var i = lo; i < hi; i++) { s += offs[i]; }
    scan[t] = s;
    workgroupBarrier();
    scan256(t);
    var run = scan[t] - s;
    for (var i = lo; i < hi; i++) {
        let v = offs[i];
        offs[i] = run;
        run += v;
    }
    if (t == 255u) { offs[P.nrows] = scan[255]; }
}

@compute @workgroup_size(256, 1, 1)
fn bitmap_scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = row_of(wid, nwg);
    if (r >= P.rows) { return; }
    let t = lid.x;
    if (t == 0u) { carry = offs[P.row0 + r]; }
    workgroupBarrier();
    for (var j0 = 0u; j0 < P.cpr; j0 += 256u) {
        let j = j0 + t;
        var bits = 0u;
        if (j < P.cpr) { bits = codes[P.c_base + r * P.cpr + j]; }
        let n = countOneBits(bits);
        scan[t] = n;
        workgroupBarrier();
        scan256(t);
        var k = carry + scan[t] - n;  // this word's first value
        var b = bits;
        var word = 0u;
        while (b != 0u) {
            let c = 32u * j + firstTrailingBit(b);
            b &= b - 1u;
            word |= kept_half(r, c) << (16u * (k & 1u));
            if ((k & 1u) == 1u) {
                atomicOr(&avals[P.v_base + k / 2u], word);
                word = 0u;
            }
            k += 1u;
        }
        // A low half left over: the next word's owner adds the high half.
        if ((k & 1u) == 1u) { atomicOr(&avals[P.v_base + k / 2u], word); }
        workgroupBarrier();
        if (t == 255u) { carry = k; }
        workgroupBarrier();
    }
}
