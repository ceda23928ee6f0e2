// SparseGPT's blocked OBS prune (ALGORITHMS.md §7), the in-block part: the sequential loop
// over the columns of one block runs with rows in parallel. A workgroup owns 8 rows (so a
// 4096-row weight makes 512 workgroups, about four waves of an H100); their block of W
// (8 x 128) stays in workgroup memory for the whole loop, the rows of U1 arrive 8 at a time
// as the loop reaches them (so B = 128 needs 8 KiB, not U1's 64 KiB), and each step is a
// rank-1 update spread over the LANES threads of a row, each owning the columns c with
// c % LANES == lane. The lazy update of the columns to the right of the block is a GEMM
// (gemm.wgsl). Decisions come from the mask (given, or chosen for the block by select.wgsl's
// whole-group selection) or, for N:M, are made in the loop on the current weights.
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
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> err: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;
@group(0) @binding(6) var<storage, read> dg: array<f32>;      // diag(U), cols
@group(0) @binding(7) var<storage, read> dead: array<u32>;    // dead-column flags, cols

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
