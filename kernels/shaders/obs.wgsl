// SparseGPT's blocked OBS prune (ALGORITHMS.md §7), the in-block part: the sequential loop
// over the columns of one block runs with rows in parallel. A workgroup owns 8 rows (so a
// 4096-row weight makes 512 workgroups, about four waves of an H100); their block of W
// (8 x 128) stays in workgroup memory for the whole loop, the rows of U1 arrive 8 at a time
// as the loop reaches them (so B = 128 needs 8 KiB, not U1's 64 KiB), and each step is a
// rank-1 update spread over the LANES threads of a row, each owning the columns c with
// c % LANES == lane. The lazy update of the columns to the right of the block is a GEMM
// (gemm.wgsl). Decisions come from the mask (given, or chosen for the block: select.wgsl's
// block_hist and block_candidates, ended here by end_selection in the block's first
// dispatch) or, for N:M, are made in the loop on the current weights.
//
// Column i's error is made by its owner and shared with the row's other lanes in one of two
// ways. Without subgroups (this file as it is): through workgroup memory, two barriers per
// step. With them (the host's subgroup variant sets SUBGROUPS, LANES to the device's subgroup
// size and binds each row to one subgroup): a shuffle from the owner lane, no barrier but the
// one per chunk of U's rows and per N:M group, since a lane only ever touches its own
// columns of w1.

struct Params {
    rows: u32,        // rows in this window
    cols: u32,
    j1: u32,          // the (sub-)block's first column
    cnt: u32,         // its width (<= 128)
    w_base: u32,
    u_base: u32,      // logical origin of U (index of U(0,0)) in the u binding
    m_base: u32,
    wpr: u32,
    err_base: u32,    // Err1(r, i) = err[err_base + r*128 + i]
    row0: u32,        // global row of the window's first row (loss)
    nm: u32,          // 1: N:M selection in the loop; 0: decisions from the mask
    n: u32,
    m: u32,
    sel: u32,         // 1: this dispatch ends the block's selection (the first sub-block)
    sel_base: u32,    // the block's half of the selection buffer
    sel_clear: u32,   // the other half, cleared by the lead dispatch for the next block
    lead: u32,        // 1 in the dispatch over W's first window
    b0: u32,          // the block's columns [b0, b1) (it may be wider than this sub-block)
    b1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> err: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;
@group(0) @binding(6) var<storage, read> dg: array<f32>;      // diag(U), cols
@group(0) @binding(7) var<storage, read> dead: array<u32>;    // dead-column flags, cols
// SparseGPT's block selection (select.wgsl's block_hist and block_candidates made the
// histograms, the 16-bit digit D, the rank left in it and the candidates).
@group(0) @binding(8) var<storage, read_write> sel: array<atomic<u32>>;

const SB: u32 = 128u;
const RB: u32 = 8u;
const LANES: u32 = 32u;   // threads per row: RB x LANES invocations
const SUBGROUPS: bool = false;
const WG: u32 = RB * LANES;
const UC: u32 = 8u;

var<workgroup> w1: array<f32, 1024>;        // RB x SB
var<workgroup> uc: array<f32, 1024>;        // UC x SB rows of U1
var<workgroup> pr: array<atomic<u32>, 32>;  // RB x 4 words of pruned flags
var<workgroup> ev: array<f32, 8>;           // this step's error per row
var<workgroup> shist: array<atomic<u32>, 256>;
var<workgroup> sscan: array<u32, WG>;
var<workgroup> sflag: array<u32, WG>;
var<workgroup> spick: vec2<u32>;

// select.wgsl's layout of a block's half of the selection buffer.
const SEL_HIST_WORDS: u32 = 65796u;
const SEL_COUNT: u32 = 65792u;
const SEL_DIGIT: u32 = 65793u;
const SEL_RANK: u32 = 65794u;
const SEL_CAND: u32 = 65796u;

fn flip(bits: u32) -> u32 {
    if ((bits & 0x80000000u) != 0u) { return ~bits; }
    return bits | 0x80000000u;
}

// The selection key of W(r, c) (select.wgsl's kind 4: the same expression, so the same key).
fn obs_key(r: u32, c: u32) -> u32 {
    let v = w[P.w_base + r * P.cols + c];
    let d = dg[c];
    return flip(bitcast<u32>((v * v) / (d * d)));
}

// Inclusive sum of sscan[0..WG) in place (Hillis-Steele); every invocation calls it.
fn scan_all(t: u32) {
    for (var o = 1u; o < WG; o = o * 2u) {
        workgroupBarrier();
        var v = sscan[t];
        if (t >= o) { v += sscan[t - o]; }
        workgroupBarrier();
        sscan[t] = v;
    }
    workgroupBarrier();
}

// The bin of shist holding the kk-th lowest and the rank left within it (each invocation
// sums a run of 256 / WG bins).
fn pick_bin(t: u32, kk: u32) -> vec2<u32> {
    let per = 256u / WG;
    var h = 0u;
    for (var i = 0u; i < per; i++) { h += atomicLoad(&shist[t * per + i]); }
    sscan[t] = h;
    scan_all(t);
    var cum = sscan[t] - h;
    if (cum < kk && kk <= sscan[t]) {
        for (var i = 0u; i < per; i++) {
            let c = atomicLoad(&shist[t * per + i]);
            if (cum + c >= kk) {
                spick = vec2<u32>(t * per + i, kk - cum);
                break;
            }
            cum += c;
        }
    }
    return workgroupUniformLoad(&spick);
}

// Over the candidates (keys whose top 16 bits are D): a histogram of their bits 15..8, or of
// bits 7..0 of those whose bits 15..8 are `hi` (hi < 256).
fn cand_hist(t: u32, n: u32, hi: u32) {
    for (var i = t; i < 256u; i += WG) { atomicStore(&shist[i], 0u); }
    workgroupBarrier();
    for (var i = t; i < n; i += WG) {
        let lo = atomicLoad(&sel[P.sel_base + SEL_CAND + 2u * i]);
        if (hi == 256u) {
            atomicAdd(&shist[lo >> 8u], 1u);
        } else if ((lo >> 8u) == hi) {
            atomicAdd(&shist[lo & 255u], 1u);
        }
    }
    workgroupBarrier();
}

// Mask bits of row r over the block [b0, b1): keys below T, and keys equal to T while fewer
// than `quota` of the row's lie before them. Returns the row's keys equal to T. Runs of WG
// columns from a word boundary; a tie's rank is the scan of the tie flags before it; each
// mask word is packed by one invocation from 32 flags (no atomics on it).
fn write_row(t: u32, r: u32, T: u32, quota: u32) -> u32 {
    var running = 0u;
    for (var base = (P.b0 / 32u) * 32u; base < P.b1; base += WG) {
        let c = base + t;
        let inb = c >= P.b0 && c < P.b1;
        var kv = 0u;
        if (inb) { kv = obs_key(r, c); }
        let eq = select(0u, 1u, inb && kv == T);
        sscan[t] = eq;
        scan_all(t);
        let before = running + sscan[t] - eq;
        sflag[t] = select(0u, 1u, inb && (kv < T || (eq == 1u && before < quota)));
        running += sscan[WG - 1u];
        workgroupBarrier();
        let wcol = base + t * 32u;
        if (t < WG / 32u && wcol < P.b1) {
            var bits = 0u;
            var inr = 0u;
            for (var b = 0u; b < 32u; b++) {
                // From bit t: the packing invocations read different banks at every step.
                let i = (b + t) % 32u;
                let g = wcol + i;
                if (g >= P.b0 && g < P.b1) {
                    inr = inr | (1u << i);
                    bits = bits | (sflag[t * 32u + i] << i);
                }
            }
            let idx = P.m_base + r * P.wpr + wcol / 32u;
            mask[idx] = (mask[idx] & ~inr) | bits;
        }
        workgroupBarrier();
    }
    return running;
}

// The end of the block's selection, for this workgroup's rows: the threshold T from the
// candidates (their bits 15..8, then 7..0, radix-selected in workgroup memory), the keys
// equal to T among the candidates before the first row, then the rows' mask words in order.
// Every workgroup repeats the candidates' part: a few thousand keys where the first digit
// leaves a bin of 1/128 octave, the whole block at worst (a block of equal keys).
fn end_selection(t: u32, g: u32, groups: u32) {
    let n = atomicLoad(&sel[P.sel_base + SEL_COUNT]);
    let d = atomicLoad(&sel[P.sel_base + SEL_DIGIT]);
    let kk = atomicLoad(&sel[P.sel_base + SEL_RANK]);
    cand_hist(t, n, 256u);
    let a = pick_bin(t, kk);
    cand_hist(t, n, a.x);
    let b = pick_bin(t, a.y);
    let low = (a.x << 8u) | b.x;
    let T = (d << 16u) | low;
    let width = P.b1 - P.b0;
    let first = (P.row0 + g * RB) * width;
    var cnt = 0u;
    for (var i = t; i < n; i += WG) {
        let lo = atomicLoad(&sel[P.sel_base + SEL_CAND + 2u * i]);
        let idx = atomicLoad(&sel[P.sel_base + SEL_CAND + 2u * i + 1u]);
        if (lo == low && idx < first) { cnt += 1u; }
    }
    sscan[t] = cnt;
    scan_all(t);
    var before = sscan[WG - 1u];
    workgroupBarrier();
    for (var rl = 0u; rl < RB; rl++) {
        let r = g * RB + rl;
        if (r >= P.rows) { break; }
        var quota = 0u;
        if (b.y > before) { quota = b.y - before; }
        before += write_row(t, r, T, quota);
    }
    // The other half, for the next block's histograms (no one reads it in this dispatch).
    if (P.lead != 0u) {
        for (var i = g * WG + t; i < SEL_HIST_WORDS; i += groups * WG) {
            atomicStore(&sel[P.sel_clear + i], 0u);
        }
    }
    // The mask words just written are read back below by this workgroup.
    storageBarrier();
}

// W[:, dead] = 0 before anything else.
@compute @workgroup_size(256, 1, 1)
fn zero_dead(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * 256u + lid.x;
    let r = wid.y;
    if (c >= P.cols || r >= P.rows) { return; }
    if (dead[c] != 0u) { w[P.w_base + r * P.cols + c] = 0.0; }
}

fn is_pruned(rl: u32, c: u32) -> bool {
    return ((atomicLoad(&pr[rl * 4u + c / 32u]) >> (c % 32u)) & 1u) != 0u;
}

// The subgroup variant replaces these two with subgroupShuffle and subgroupAdd: a value of
// the row's lane `owner`, and the row's sum (the loss partials each owner lane kept).
fn from_lane(v: f32, owner: u32) -> f32 { return v; }
fn row_total(v: f32) -> f32 { return v; }

// Column i's pruning step on row rl: its error e (kept, and returned) and its loss term.
fn pivot(rl: u32, r: u32, live: bool, i: u32, ui: u32) -> vec2<f32> {
    let wi = w1[rl * SB + i];
    var q = wi;
    if (is_pruned(rl, i)) { q = 0.0; }
    let d = uc[ui + i];
    let e = (wi - q) / d;
    w1[rl * SB + i] = q;
    if (live) {
        err[P.err_base + r * SB + i] = e;
        return vec2<f32>(e, (wi - q) * (wi - q) / (d * d) / 2.0);
    }
    return vec2<f32>(e, 0.0);
}

@compute @workgroup_size(WG, 1, 1)
fn obs_block(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let lane = t % LANES;
    let rl = t / LANES;
    let r = (wid.y * nwg.x + wid.x) * RB + rl;
    let live = r < P.rows;
    let cnt = P.cnt;
    if (P.sel != 0u) { end_selection(t, wid.y * nwg.x + wid.x, nwg.x * nwg.y); }
    // The row's pruned flags for block columns 32·lane.., one word per lane (no shared
    // atomics): the given mask's bits shifted to the block's start, or none for N:M, which
    // decides in the loop.
    if (lane < 4u) {
        var bits = 0u;
        let c0 = lane * 32u;
        if (live && P.nm == 0u && c0 < cnt) {
            let g = P.j1 + c0;
            let wd = P.m_base + r * P.wpr + g / 32u;
            let sh = g % 32u;
            bits = mask[wd] >> sh;
            if (sh != 0u && g / 32u + 1u < P.wpr) { bits = bits | (mask[wd + 1u] << (32u - sh)); }
            if (cnt - c0 < 32u) { bits = bits & ((1u << (cnt - c0)) - 1u); }
        }
        atomicStore(&pr[rl * 4u + lane], bits);
    }
    for (var c = lane; c < cnt; c += LANES) {
        var v = 0.0;
        if (live) { v = w[P.w_base + r * P.cols + P.j1 + c]; }
        w1[rl * SB + c] = v;
    }
    var lsum = 0.0;
    for (var i = 0u; i < cnt; i++) {
        if (i % UC == 0u) {
            workgroupBarrier();
            for (var e = t; e < UC * SB; e += WG) {
                let q = i + e / SB;
                let c = e % SB;
                var v = 0.0;
                if (q < cnt && c < cnt) { v = u[P.u_base + (P.j1 + q) * P.cols + P.j1 + c]; }
                uc[e] = v;
            }
            if (SUBGROUPS) { workgroupBarrier(); }
        }
        if (P.nm != 0u && i % P.m == 0u) {
            workgroupBarrier();
            // N:M on the current weights of columns i..i+m: lane 0 of each row ranks them.
            if (lane == 0u && live) {
                for (var c = i; c < i + P.m; c++) {
                    let d = dg[P.j1 + c];
                    let sc = (w1[rl * SB + c] * w1[rl * SB + c]) / (d * d);
                    var rank = 0u;
                    for (var q = i; q < i + P.m; q++) {
                        let dq = dg[P.j1 + q];
                        let sq = (w1[rl * SB + q] * w1[rl * SB + q]) / (dq * dq);
                        if (sq < sc || (sq == sc && q < c)) { rank += 1u; }
                    }
                    if (rank < P.n) { atomicOr(&pr[rl * 4u + c / 32u], 1u << (c % 32u)); }
                }
            }
            if (SUBGROUPS) { workgroupBarrier(); }
        }
        let ui = (i % UC) * SB;
        // With subgroups column i's owner makes its step; otherwise lane 0 does, after a
        // barrier, and keeps the row's loss.
        let owner = select(0u, i % LANES, SUBGROUPS);
        var e = 0.0;
        if (SUBGROUPS) {
            // The owner updated column i in the previous step itself: nothing to wait for.
            var pe = vec2<f32>(0.0, 0.0);
            if (lane == owner) { pe = pivot(rl, r, live, i, ui); }
            lsum += pe.y;
            e = from_lane(pe.x, owner);
        } else {
            workgroupBarrier();
            if (lane == owner) {
                let pe = pivot(rl, r, live, i, ui);
                ev[rl] = pe.x;
                lsum += pe.y;
            }
            workgroupBarrier();
            e = ev[rl];
        }
        // This lane's columns past i: the first is i + 1 + ((lane - i - 1) mod LANES).
        let first = i + 1u + (lane + LANES - (i + 1u) % LANES) % LANES;
        for (var c = first; c < cnt; c += LANES) {
            w1[rl * SB + c] = w1[rl * SB + c] - e * uc[ui + c];
        }
    }
    lsum = row_total(lsum);
    workgroupBarrier();
    if (!live) { return; }
    for (var c = lane; c < cnt; c += LANES) {
        w[P.w_base + r * P.cols + P.j1 + c] = w1[rl * SB + c];
    }
    if (lane == 0u) { loss[P.row0 + r] = loss[P.row0 + r] + lsum; }
    if (P.nm != 0u) {
        // This block's bits into the mask words it overlaps (the words past it are kept).
        let wfirst = P.j1 / 32u;
        let wlast = (P.j1 + cnt - 1u) / 32u;
        for (var wd = wfirst + lane; wd <= wlast; wd += LANES) {
            var bits = 0u;
            var inr = 0u;
            for (var b = 0u; b < 32u; b++) {
                let g = wd * 32u + b;
                if (g >= P.j1 && g < P.j1 + cnt) {
                    inr = inr | (1u << b);
                    if (is_pruned(rl, g - P.j1)) { bits = bits | (1u << b); }
                }
            }
            let idx = P.m_base + r * P.wpr + wd;
            mask[idx] = (mask[idx] & ~inr) | bits;
        }
    }
}
