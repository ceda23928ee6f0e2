// Ceiling probes, not part of the pruning math: a vec4 copy (the bandwidth every memory-bound
// op is scored against) and independent FMA chains (the arithmetic rate). Buffers are padded
// to whole vec4s.

struct Params {
    n4: u32,        // vec4s in this window
    dst_base: u32,  // in vec4s
    src_base: u32,
    iters: u32,     // FMA steps per element
    row_len: u32,   // threads per grid row (the dispatch's x extent times 256)
    mul: f32,
    add: f32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> src: array<vec4<f32>>;

@compute @workgroup_size(256, 1, 1)
fn copy4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_len + gid.x;
    if (i >= P.n4) { return; }
    dst[P.dst_base + i] = src[P.src_base + i];
}

// v <- v*mul + add, iters times, four independent chains per thread.
@compute @workgroup_size(256, 1, 1)
fn fma_chains(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_len + gid.x;
    if (i >= P.n4) { return; }
    var v = dst[P.dst_base + i];
    let m = vec4<f32>(P.mul);
    let a = vec4<f32>(P.add);
    for (var k = 0u; k < P.iters; k = k + 1u) {
        v = fma(v, m, a);
    }
    dst[P.dst_base + i] = v;
}
