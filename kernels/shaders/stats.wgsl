// Wanda's activation statistic (ALGORITHMS.md §1): a <- a*n/(n+b) + ||X[:,j]||^2/(n+b).
//
// A tiled column reduction in two steps: `colsq_partial` gives each workgroup 64 columns of
// one chunk of rows (4 threads per column walk the chunk's rows, coalesced along a row), and
// writes one partial sum per (chunk, column); `act_finish` adds a column's partials and folds
// them into the running mean. X may arrive in several row windows: the first applies the
// n/(n+b) rescale, later ones only add.

struct Params {
    rows: u32,        // rows of X in this window
    cols: u32,
    x_base: u32,      // index of X's first row of the window within the binding
    chunk_rows: u32,
    nchunks: u32,
    scale: f32,       // n/(n+b) for the first window, 1 afterwards
    total: f32,       // n+b
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<f32>;
@group(0) @binding(3) var<storage, read_write> act: array<f32>;
// X and the partials as vec4s, for colsq_partial4 (cols and x_base multiples of 4).
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> part4: array<vec4<f32>>;

var<workgroup> red: array<f32, 256>;
var<workgroup> red4: array<vec4<f32>, 256>;

@compute @workgroup_size(64, 4, 1)
fn colsq_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * 64u + lid.x;
    let chunk = wid.y;
    let r0 = chunk * P.chunk_rows;
    let r1 = min(r0 + P.chunk_rows, P.rows);
    var s = 0.0;
    if (c < P.cols) {
        for (var r = r0 + lid.y; r < r1; r += 4u) {
            let v = x[P.x_base + r * P.cols + c];
            s = fma(v, v, s);
        }
    }
    red[lid.y * 64u + lid.x] = s;
    workgroupBarrier();
    if (lid.y == 0u && c < P.cols) {
        part[chunk * P.cols + c] = (red[lid.x] + red[64u + lid.x]) + (red[128u + lid.x] + red[192u + lid.x]);
    }
}

// colsq_partial with four columns per thread (16-byte loads): 256 columns per workgroup.
@compute @workgroup_size(64, 4, 1)
fn colsq_partial4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * 64u + lid.x;
    let cols = P.cols / 4u;
    let chunk = wid.y;
    let r0 = chunk * P.chunk_rows;
    let r1 = min(r0 + P.chunk_rows, P.rows);
    var s = vec4<f32>(0.0);
    if (c < cols) {
        for (var r = r0 + lid.y; r < r1; r += 4u) {
            let v = x4[P.x_base / 4u + r * cols + c];
            s = fma(v, v, s);
        }
    }
    red4[lid.y * 64u + lid.x] = s;
    workgroupBarrier();
    if (lid.y == 0u && c < cols) {
        part4[chunk * cols + c] = (red4[lid.x] + red4[64u + lid.x]) + (red4[128u + lid.x] + red4[192u + lid.x]);
    }
}

@compute @workgroup_size(256, 1, 1)
fn act_finish(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.cols) { return; }
    var s = 0.0;
    for (var ch = 0u; ch < P.nchunks; ch++) { s += part[ch * P.cols + c]; }
    act[c] = act[c] * P.scale + s / P.total;
}
