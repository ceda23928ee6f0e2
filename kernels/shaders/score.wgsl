// Importance scores (ALGORITHMS.md §4) and applying a mask (§5), elementwise: one thread per
// entry, a workgroup covers 256 consecutive columns of one row (grid: column chunks x rows);
// where rows are whole vec4s (cols and the bases multiples of 4) the `4` entries take four
// consecutive columns per thread through vec4 views of the same bindings (16-byte loads).
// The score expressions are the same as select.wgsl's fused keys, so the fused prune and the
// three separate ops agree.

struct Params {
    rows: u32,
    cols: u32,
    kind: u32,        // 0 magnitude, 1 wanda, 2 gblm
    w_base: u32,
    g_base: u32,
    o_base: u32,
    m_base: u32,
    wpr: u32,         // mask words per row
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read> act: array<f32>;
@group(0) @binding(3) var<storage, read> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> mask: array<u32>;
// The same bindings as vec4s, for the `4` entries (bases and columns in vec4s there).
@group(0) @binding(1) var<storage, read_write> w4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> act4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out4: array<vec4<f32>>;

@compute @workgroup_size(256, 1, 1)
fn score(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * 256u + lid.x;
    let r = wid.y;
    if (c >= P.cols || r >= P.rows) { return; }
    let a = abs(w[P.w_base + r * P.cols + c]);
    var s = a;
    if (P.kind == 1u) {
        s = a * sqrt(act[c]);
    } else if (P.kind == 2u) {
        s = a * sqrt(act[c]) + a * grad[P.g_base + r * P.cols + c];
    }
    out[P.o_base + r * P.cols + c] = s;
}

@compute @workgroup_size(256, 1, 1)
fn apply_mask(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * 256u + lid.x;
    let r = wid.y;
    if (c >= P.cols || r >= P.rows) { return; }
    if (((mask[P.m_base + r * P.wpr + c / 32u] >> (c % 32u)) & 1u) != 0u) {
        w[P.w_base + r * P.cols + c] = 0.0;
    }
}

@compute @workgroup_size(256, 1, 1)
fn score4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * 256u + lid.x;
    let r = wid.y;
    let cols = P.cols / 4u;
    if (c >= cols || r >= P.rows) { return; }
    let a = abs(w4[P.w_base / 4u + r * cols + c]);
    var s = a;
    if (P.kind == 1u) {
        s = a * sqrt(act4[c]);
    } else if (P.kind == 2u) {
        s = a * sqrt(act4[c]) + a * grad4[P.g_base / 4u + r * cols + c];
    }
    out4[P.o_base / 4u + r * cols + c] = s;
}

@compute @workgroup_size(256, 1, 1)
fn apply_mask4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * 256u + lid.x;
    let r = wid.y;
    if (c * 4u >= P.cols || r >= P.rows) { return; }
    // Four columns from a multiple of 4: four bits of one mask word.
    let bits = (mask[P.m_base + r * P.wpr + c / 8u] >> ((c % 8u) * 4u)) & 15u;
    if (bits == 0u) { return; }
    let at = P.w_base / 4u + r * (P.cols / 4u) + c;
    let keep = vec4<u32>(bits, bits >> 1u, bits >> 2u, bits >> 3u) & vec4<u32>(1u);
    w4[at] = select(w4[at], vec4<f32>(0.0), keep == vec4<u32>(1u));
}
