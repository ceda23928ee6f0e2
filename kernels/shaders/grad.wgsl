// GBLM-Pruner's gradient accumulator, elementwise parts (ALGORITHMS.md §2a and the final
// sqrt): memory-bound, so each thread moves one vec4 (16-byte loads and stores). Buffers are
// padded to whole vec4s; the lanes past the last element are padding nobody reads.

struct Params {
    n4: u32,          // vec4s in this window
    dst_base: u32,    // in vec4s
    src_base: u32,
    scale: f32,       // c = 100
    l1: u32,
    row_len: u32,     // threads per grid row (the dispatch's x extent times 256)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> src: array<vec4<f32>>;

// dst += (c*src)^2 (l2) or |c*src| (l1)
@compute @workgroup_size(256, 1, 1)
fn grad_acc(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_len + gid.x;
    if (i >= P.n4) { return; }
    let v = P.scale * src[P.src_base + i];
    var add = v * v;
    if (P.l1 != 0u) { add = abs(v); }
    dst[P.dst_base + i] = dst[P.dst_base + i] + add;
}

// dst = sqrt(src)
@compute @workgroup_size(256, 1, 1)
fn grad_sqrt(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_len + gid.x;
    if (i >= P.n4) { return; }
    dst[P.dst_base + i] = sqrt(src[P.src_base + i]);
}
