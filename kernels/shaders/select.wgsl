// Mask selection (ALGORITHMS.md §5) without sorting: radix select on order-preserving u32
// keys of the scores, in three digit passes of 11, 11 and 10 bits (2048-bin histograms).
//
// * row_select: one workgroup (256 threads) per row: per pass a workgroup-memory histogram of
//   the keys that still match the prefix, then a scan finds the digit holding the k-th lowest;
//   after three passes the k-th key T is exact. A last pass prunes every key < T and, among
//   keys == T, the first ones by column (each tie ranked by popcounts of the chunk's packed
//   tie bits), as a stable sort would. Mask words are packed from per-invocation flags by
//   8 invocations (in the subgroup variant, from one ballot per subgroup): no atomics on them.
// * Whole-group selection (magnitude over the matrix, SparseGPT's adaptive block): the same
//   passes split across workgroups (hist_pass merges workgroup histograms into one global
//   histogram per digit; each workgroup of the next pass scans it to decide the digit), then
//   per chunk of rows the keys equal to the threshold (chunk_ties) and the write
//   (chunk_write), which sums the chunks' tie counts before its own, so ties go to the lower
//   linear index. Five dispatches, each a grid of workgroups.
// * SparseGPT's block selection (block_hist, block_candidates): two dispatches, the end of the
//   select in obs.wgsl's obs_block (see there).
// * nm_select: n lowest of every m consecutive columns, one thread per column.
// Keys are computed on the fly from the source (kind), so the fused prune reads W once per
// pass and never stores scores; with write_w it also zeroes the pruned weights.

struct Params {
    rows: u32,        // rows in this window
    cols: u32,        // row length of the source
    c0: u32,          // the group's columns [c0, c1)
    c1: u32,
    kind: u32,        // 0 raw f32 order, 1 |w|, 2 wanda, 3 gblm, 4 w^2/d^2 (SparseGPT)
    s_base: u32,
    g_base: u32,
    m_base: u32,
    wpr: u32,
    k: u32,           // row_select: entries to prune per row; sel_init: for the group; nm: n
    m: u32,
    shift: u32,       // hist_pass/pick: the digit's lowest bit
    chunk0: u32,      // chunk_ties/chunk_write: the group's index of the window's first chunk
    full_words: u32,  // 1: write whole mask words (clears padding); 0: keep bits outside [c0, c1)
    write_w: u32,     // 1: zero the pruned source entries (fused prune)
    nelem: u32,       // hist_pass: entries in this window's part of the group
    chunk_rows: u32,  // chunk_ties/chunk_write: rows per chunk
    chunk: u32,       // hist_pass: entries per workgroup, a multiple of 256 up to 4096
    digit_pass: u32,  // hist_pass: 0, 1, 2 (the digit at bit `shift`)
    lead: u32,        // 1 in the dispatch over the group's first window: its workgroup 0
                      // leaves the decided digits in `state` for the next pass
    sel_base: u32,    // block_hist/block_candidates: the block's half of the OBS selection
                      // buffer (bound at binding 5)
    row0: u32,        // block_candidates: the group's row of this window's first row
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> src: array<f32>;
@group(0) @binding(2) var<storage, read> aux: array<f32>;
@group(0) @binding(3) var<storage, read> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> mask: array<u32>;
// The 2048-bin histogram of a digit pass: the one hist_pass fills, the last one for
// chunk_ties (each pass has its own buffer, so a binding is 8 KiB).
@group(0) @binding(5) var<storage, read_write> ghist: array<atomic<u32>>;
// Slot s = [2s, 2s + 2): the prefix decided by s digit passes and the rank left below it;
// slot 3 is the threshold T and how many keys equal to T are pruned.
@group(0) @binding(6) var<storage, read_write> state: array<u32>;
// The keys equal to T per chunk of rows (chunk_ties, chunk_write); in hist_pass, the
// previous pass's histogram (a binding shared so that no entry point has more than 7
// storage bindings, under WebGPU's default 8 per stage).
@group(0) @binding(7) var<storage, read_write> tiecnt: array<u32>;

const BINS: u32 = 2048u;

var<workgroup> hist: array<atomic<u32>, 2048>;
var<workgroup> scan: array<u32, 256>;
// One flag per invocation (a tie, then a pruned column), packed into 8 mask words by 8
// invocations: no two invocations ever update one word.
var<workgroup> flags: array<u32, 256>;
// The subgroup width of the host's subgroup variant, where each subgroup's flags are one
// ballot (0 here: flags are packed from workgroup memory). In that variant invocation t is
// subgroup t / SG's lane t % SG, from the subgroup builtins.
const SG: u32 = 0u;
// One ballot word per subgroup (256 / SG of them, at most 64).
var<workgroup> sg_bits: array<u32, 64>;
// The subgroup variant's ballot: bit l set where lane l's flag is.
fn ballot(f: bool) -> u32 { return 0u; }
var<workgroup> eq_words: array<u32, 8>;
var<workgroup> pick_digit: u32;
var<workgroup> pick_kk: u32;
var<workgroup> carry: u32;

// Orders f32 bit patterns as total_cmp does: negatives reversed below positives.
fn flip(bits: u32) -> u32 {
    if ((bits & 0x80000000u) != 0u) { return ~bits; }
    return bits | 0x80000000u;
}

fn key(r: u32, c: u32) -> u32 {
    let v = src[P.s_base + r * P.cols + c];
    switch P.kind {
        case 0u: { return flip(bitcast<u32>(v)); }
        case 1u: { return flip(bitcast<u32>(abs(v))); }
        case 2u: { let a = abs(v); return flip(bitcast<u32>(a * sqrt(aux[c]))); }
        case 3u: {
            let a = abs(v);
            return flip(bitcast<u32>(a * sqrt(aux[c]) + a * grad[P.g_base + r * P.cols + c]));
        }
        default: { let d = aux[c]; return flip(bitcast<u32>((v * v) / (d * d))); }
    }
}

fn pass_shift(p: u32) -> u32 {
    if (p == 0u) { return 21u; }
    if (p == 1u) { return 10u; }
    return 0u;
}

// Bits above the digit of a pass must equal the prefix found so far.
fn matches(kv: u32, prefix: u32, shift: u32) -> bool {
    let hi = shift + select(11u, 10u, shift == 0u);
    if (hi >= 32u) { return true; }
    return (kv >> hi) == (prefix >> hi);
}

fn digit(kv: u32, shift: u32) -> u32 {
    return (kv >> shift) & select(0x7ffu, 0x3ffu, shift == 0u);
}

// Inclusive scan of scan[0..256) in place, its entries written before a barrier; every
// thread must call it. Runs of 16: 16 invocations each total a run, one makes the runs'
// exclusive prefix, then each invocation adds its run's prefix and the entries before it in
// its run. Four barriers where a Hillis-Steele scan takes 16: a barrier costs little on a
// GPU, but every workgroup of the whole-group selection scans a histogram.
var<workgroup> runs: array<u32, 16>;
fn scan256(t: u32) {
    if (t < 16u) {
        var s = 0u;
        for (var i = 0u; i < 16u; i++) { s += scan[t * 16u + i]; }
        runs[t] = s;
    }
    workgroupBarrier();
    if (t == 0u) {
        var c = 0u;
        for (var i = 0u; i < 16u; i++) {
            let v = runs[i];
            runs[i] = c;
            c += v;
        }
    }
    workgroupBarrier();
    var v = runs[t / 16u];
    for (var i = t / 16u * 16u; i <= t; i++) { v += scan[i]; }
    workgroupBarrier();
    scan[t] = v;
    workgroupBarrier();
}

// With `hist` filled: finds the bin holding the kk-th lowest key; sets pick_digit and
// pick_kk (kk within that bin).
fn find_digit(t: u32, kk: u32) {
    var h: array<u32, 8>;
    for (var i = 0u; i < 8u; i++) { h[i] = atomicLoad(&hist[t * 8u + i]); }
    find_digit_of(t, h, kk);
}

// find_digit over the bins t·8 .. t·8 + 8 of invocation t, given in `h`.
fn find_digit_of(t: u32, h: array<u32, 8>, kk: u32) {
    var s = 0u;
    for (var i = 0u; i < 8u; i++) { s += h[i]; }
    scan[t] = s;
    workgroupBarrier();
    scan256(t);
    let incl = scan[t];
    let excl = incl - s;
    if (excl < kk && kk <= incl) {
        var cum = excl;
        for (var i = 0u; i < 8u; i++) {
            if (cum + h[i] >= kk) {
                pick_digit = t * 8u + i;
                pick_kk = kk - cum;
                break;
            }
            cum += h[i];
        }
    }
    workgroupBarrier();
}

// Word w of `flags` (its 32 flags, bit i from flags[32w + i]). Invocation w starts at flag w,
// so the 8 packing invocations read 8 different banks at every step.
fn pack_word(w: u32) -> u32 {
    var bits = 0u;
    for (var b = 0u; b < 32u; b++) {
        let i = (b + w) % 32u;
        bits = bits | (flags[w * 32u + i] << i);
    }
    return bits;
}

// Publishes invocation t's flag; every invocation calls it, in uniform control flow.
fn put_flag(t: u32, f: u32) {
    if (SG == 0u) {
        flags[t] = f;
    } else {
        let bits = ballot(f != 0u);
        if (t % max(SG, 1u) == 0u) { sg_bits[t / max(SG, 1u)] = bits; }
    }
}

// Word w of the published flags (bit i from invocation 32w + i), after a barrier.
fn flag_word(w: u32) -> u32 {
    if (SG == 0u) { return pack_word(w); }
    let per = 32u / max(SG, 1u);
    var bits = 0u;
    for (var j = 0u; j < per; j++) { bits = bits | (sg_bits[w * per + j] << (j * SG)); }
    return bits;
}

fn clear_hist(t: u32) {
    for (var i = 0u; i < 8u; i++) { atomicStore(&hist[t * 8u + i], 0u); }
}

// Prunes, in row r, every key < T and the first `ties` keys == T by column, over [c0, c1);
// returns how many keys of the row equal T.
// Chunks of 256 columns: the chunk's ties are packed into words, so each tie's rank among
// them is the popcount of the tie bits before it (no scan, no atomics), and the pruned
// columns' bits are packed the same way into the mask words.
fn write_row(r: u32, t: u32, T: u32, ties: u32) -> u32 {
    var running = 0u;
    let start = (P.c0 / 32u) * 32u;
    for (var base = start; base < P.c1; base += 256u) {
        let c = base + t;
        let inr = c >= P.c0 && c < P.c1;
        var eq = 0u;
        var lt = false;
        if (inr) {
            let kv = key(r, c);
            eq = select(0u, 1u, kv == T);
            lt = kv < T;
        }
        put_flag(t, eq);
        workgroupBarrier();
        if (t < 8u) { eq_words[t] = flag_word(t); }
        workgroupBarrier();
        let w = t / 32u;
        var before = countOneBits(eq_words[w] & ((1u << (t % 32u)) - 1u));
        var total = 0u;
        for (var i = 0u; i < 8u; i++) {
            let n = countOneBits(eq_words[i]);
            total += n;
            if (i < w) { before += n; }
        }
        let take_tie = running + before < ties;
        let prune = inr && (lt || (eq == 1u && take_tie));
        put_flag(t, select(0u, 1u, prune));
        if (prune && P.write_w != 0u) { src[P.s_base + r * P.cols + c] = 0.0; }
        workgroupBarrier();
        if (t < 8u) {
            let wcol = base + t * 32u;
            if (wcol < P.c1) {
                let idx = P.m_base + r * P.wpr + wcol / 32u;
                let bits = flag_word(t);
                if (P.full_words != 0u) {
                    mask[idx] = bits;
                } else {
                    let lo = max(P.c0, wcol) - wcol;
                    let hi = min(P.c1, wcol + 32u) - wcol;
                    var inmask = 0xffffffffu;
                    if (hi < 32u) { inmask = (1u << hi) - 1u; }
                    inmask = inmask & ~((1u << lo) - 1u);
                    mask[idx] = (mask[idx] & ~inmask) | (bits & inmask);
                }
            }
        }
        running += total;
        workgroupBarrier();
    }
    return running;
}

fn row_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

@compute @workgroup_size(256, 1, 1)
fn row_select(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = row_of(wid, nwg);
    if (r >= P.rows) { return; }
    let t = lid.x;
    var prefix = 0u;
    var kk = P.k;
    if (kk > 0u) {
        for (var ps = 0u; ps < 3u; ps++) {
            let shift = pass_shift(ps);
            clear_hist(t);
            workgroupBarrier();
            for (var c = P.c0 + t; c < P.c1; c += 256u) {
                let kv = key(r, c);
                if (matches(kv, prefix, shift)) { atomicAdd(&hist[digit(kv, shift)], 1u); }
            }
            workgroupBarrier();
            find_digit(t, kk);
            prefix = prefix | (workgroupUniformLoad(&pick_digit) << shift);
            kk = workgroupUniformLoad(&pick_kk);
        }
    }
    _ = write_row(r, t, prefix, kk);
}

// The digits decided before pass p (1..=3) and the rank left to find below them: pass p - 1
// left its prefix and rank in state slot p - 1 (slot 0 is the start: prefix 0, rank k) and
// its histogram in ghist's p - 1-th 2048 bins, which every workgroup reads and scans for
// itself (no one-workgroup pick between passes). Workgroup 0 of the group's first window
// (`lead`) leaves the result in slot p for the pass after. Every invocation calls it.
fn decided(t: u32, p: u32, lead: bool) -> vec2<u32> {
    var prefix = 0u;
    var kk = P.k;
    if (p >= 2u) {
        prefix = state[2u * (p - 1u)];
        kk = state[2u * (p - 1u) + 1u];
    }
    var h: array<u32, 8>;
    for (var i = 0u; i < 8u; i++) {
        if (p == 3u) { h[i] = atomicLoad(&ghist[t * 8u + i]); } else { h[i] = tiecnt[t * 8u + i]; }
    }
    find_digit_of(t, h, kk);
    let d = workgroupUniformLoad(&pick_digit);
    let left = workgroupUniformLoad(&pick_kk);
    prefix = prefix | (d << pass_shift(p - 1u));
    if (lead && t == 0u) {
        state[2u * p] = prefix;
        state[2u * p + 1u] = left;
    }
    return vec2<u32>(prefix, left);
}

// Digit pass `digit_pass` over this window's part of the group: chunks of `chunk` entries,
// up to 16 per thread, into the pass's histogram `ghist` (cleared by the host).
@compute @workgroup_size(256, 1, 1)
fn hist_pass(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let g = wid.y * nwg.x + wid.x;
    var prefix = 0u;
    if (P.digit_pass > 0u) {
        prefix = decided(t, P.digit_pass, P.lead != 0u && g == 0u).x;
        workgroupBarrier();
    }
    let width = P.c1 - P.c0;
    clear_hist(t);
    workgroupBarrier();
    // Chunks g, g + G, ...: at most plan::select::MAX_HIST_GROUPS workgroups, so that
    // deciding the digit (8 KB read per workgroup) stays small beside the pass.
    let groups = nwg.x * nwg.y;
    for (var first = g * P.chunk; first < P.nelem; first += groups * P.chunk) {
        for (var i = 0u; i < P.chunk / 256u; i++) {
            let e = first + i * 256u + t;
            if (e < P.nelem) {
                let kv = key(e / width, P.c0 + e % width);
                if (matches(kv, prefix, P.shift)) { atomicAdd(&hist[digit(kv, P.shift)], 1u); }
            }
        }
    }
    workgroupBarrier();
    for (var i = 0u; i < 8u; i++) {
        let h = atomicLoad(&hist[t * 8u + i]);
        if (h != 0u) { atomicAdd(&ghist[t * 8u + i], h); }
    }
}

// Per chunk of `chunk_rows` rows: how many keys equal the threshold T (the k-th lowest key,
// decided from the third histogram here; the lead leaves T and the ties to prune in slot 3).
@compute @workgroup_size(256, 1, 1)
fn chunk_ties(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let g = row_of(wid, nwg);
    let T = decided(t, 3u, P.lead != 0u && g == 0u).x;
    let r0 = g * P.chunk_rows;
    if (r0 >= P.rows) { return; }
    let width = P.c1 - P.c0;
    let n = (min(r0 + P.chunk_rows, P.rows) - r0) * width;
    var cnt = 0u;
    for (var e = t; e < n; e += 256u) {
        if (key(r0 + e / width, P.c0 + e % width) == T) { cnt += 1u; }
    }
    scan[t] = cnt;
    workgroupBarrier();
    scan256(t);
    if (t == 0u) { tiecnt[P.chunk0 + g] = scan[255]; }
}

// The group's mask bits in this chunk's rows: keys below T, and ties while fewer than the
// group's quota lie before them by linear index (those of earlier chunks summed here, then
// row by row).
@compute @workgroup_size(256, 1, 1)
fn chunk_write(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let g = row_of(wid, nwg);
    let r0 = g * P.chunk_rows;
    if (r0 >= P.rows) { return; }
    var s = 0u;
    for (var i = t; i < P.chunk0 + g; i += 256u) { s += tiecnt[i]; }
    scan[t] = s;
    workgroupBarrier();
    scan256(t);
    if (t == 0u) { carry = scan[255]; }
    var before = workgroupUniformLoad(&carry);
    let T = state[6];
    let need = state[7];
    for (var r = r0; r < min(r0 + P.chunk_rows, P.rows); r++) {
        var ties = 0u;
        if (need > before) { ties = need - before; }
        before += write_row(r, t, T, ties);
    }
}

// SparseGPT's block selection in two dispatches. Layout of the block's half of the selection
// buffer (bound at binding 5, from sel_base; the host's plan::select::obs_sel):
// [0, 256) the keys' top 8 bits, [256, 65792) their top 16 bits (both histograms, cleared
// before the block), then the candidate count, the decided 16-bit digit D, the rank left
// within it, and from SEL_CAND the candidates: the low 16 bits of each key whose top 16 bits
// are D and its linear index in the block, two words each (room for every key of the block).
const SEL_FINE: u32 = 256u;
const SEL_COUNT: u32 = 65792u;
const SEL_DIGIT: u32 = 65793u;
const SEL_RANK: u32 = 65794u;
const SEL_CAND: u32 = 65796u;

// The first digit's histograms: 16 bits in global memory (a workgroup histogram of 65536
// bins would not fit), the top 8 bits of them merged from a workgroup histogram, so that
// deciding reads 2 x 256 bins rather than 65536. Integer atomics: the counts, and so the
// result, do not depend on their order.
@compute @workgroup_size(256, 1, 1)
fn block_hist(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let g = wid.y * nwg.x + wid.x;
    let width = P.c1 - P.c0;
    atomicStore(&hist[t], 0u);
    workgroupBarrier();
    let groups = nwg.x * nwg.y;
    for (var e = g * 256u + t; e < P.nelem; e += groups * 256u) {
        let kv = key(e / width, P.c0 + e % width);
        atomicAdd(&hist[kv >> 24u], 1u);
        atomicAdd(&ghist[P.sel_base + SEL_FINE + (kv >> 16u)], 1u);
    }
    workgroupBarrier();
    let h = atomicLoad(&hist[t]);
    if (h != 0u) { atomicAdd(&ghist[P.sel_base + t], h); }
}

// The bin of 256 (`base`, one per invocation) holding the kk-th lowest key, and the rank
// left within it: find_digit_of over 8 bins on each of the first 32 invocations.
fn pick256(t: u32, base: u32, kk: u32) -> vec2<u32> {
    var h: array<u32, 8>;
    for (var i = 0u; i < 8u; i++) {
        h[i] = 0u;
        if (t < 32u) { h[i] = atomicLoad(&ghist[base + t * 8u + i]); }
    }
    find_digit_of(t, h, kk);
    return vec2<u32>(workgroupUniformLoad(&pick_digit), workgroupUniformLoad(&pick_kk));
}

// Every workgroup decides the 16-bit digit D holding the k-th lowest key (top 8 bits, then
// the next 8 within them) and appends its entries whose keys have D as their top 16 bits to
// the candidates; the lead leaves D and the rank left in the buffer for obs_block. The
// candidates' order depends on the atomics' but nothing read from them does.
@compute @workgroup_size(256, 1, 1)
fn block_candidates(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let g = wid.y * nwg.x + wid.x;
    let b = P.sel_base;
    let hi = pick256(t, b, P.k);
    let lo = pick256(t, b + SEL_FINE + hi.x * 256u, hi.y);
    let d = (hi.x << 8u) | lo.x;
    if (P.lead != 0u && g == 0u && t == 0u) {
        atomicStore(&ghist[b + SEL_DIGIT], d);
        atomicStore(&ghist[b + SEL_RANK], lo.y);
    }
    let width = P.c1 - P.c0;
    let groups = nwg.x * nwg.y;
    for (var e = g * 256u + t; e < P.nelem; e += groups * 256u) {
        let kv = key(e / width, P.c0 + e % width);
        if ((kv >> 16u) == d) {
            let slot = atomicAdd(&ghist[b + SEL_COUNT], 1u);
            atomicStore(&ghist[b + SEL_CAND + 2u * slot], kv & 0xffffu);
            atomicStore(&ghist[b + SEL_CAND + 2u * slot + 1u], P.row0 * width + e);
        }
    }
}

// N:M: thread per column; its rank in its group of m (lower key, then lower column, first).
@compute @workgroup_size(256, 1, 1)
fn nm_select(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let c = wid.x * 256u + t;
    let r = wid.y;
    let live = c < P.cols && r < P.rows;
    var prune = false;
    if (live) {
        let g0 = c - c % P.m;
        let kc = key(r, c);
        var rank = 0u;
        for (var j = g0; j < g0 + P.m; j++) {
            let kj = key(r, j);
            if (kj < kc || (kj == kc && j < c)) { rank += 1u; }
        }
        prune = rank < P.k;
    }
    put_flag(t, select(0u, 1u, prune));
    // Every thread of the group has read its neighbours' weights before any is zeroed, and
    // every flag is in place before the words are packed.
    workgroupBarrier();
    if (prune && P.write_w != 0u) { src[P.s_base + r * P.cols + c] = 0.0; }
    let wcol = wid.x * 256u + t * 32u;
    if (t < 8u && r < P.rows && wcol < P.cols) {
        mask[P.m_base + r * P.wpr + wcol / 32u] = flag_word(t);
    }
}
