//! The device context every op runs through: shader modules and pipelines (built on first
//! use and cached, since compiling all of them up front costs seconds on a software adapter),
//! and `Batch`, which records an op's dispatches into one compute pass with a uniform
//! parameter block per dispatch carved out of a shared arena buffer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{KernelError, Result};

use super::timing::Timing;

/// The shader families, one .wgsl file each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Module {
    Gemm,
    /// gemm.wgsl with A and B bound read-write: for products whose operands and output are
    /// disjoint blocks of one buffer (the triangular inverse), which WebGPU does not let one
    /// dispatch bind both read-only and read-write.
    GemmInPlace,
    /// gemm.wgsl with A and B bound as vec4 arrays, so that aligned operands load four words
    /// as one vector (the GEMM's F_A_QUAD and F_B_QUAD); scalar reads pick a component.
    GemmVec4,
    /// [`Module::GemmInPlace`] with A and B bound as vec4 arrays.
    GemmInPlaceVec4,
    Stats,
    Grad,
    Score,
    Select,
    Factor,
    Obs,
    /// obs.wgsl's in-block step with a row per subgroup of this many lanes, the pivot's error
    /// shared by a shuffle rather than through workgroup memory and barriers (the device's
    /// subgroups are all this wide: see [`Ctx::subgroup`]).
    ObsSubgroup(u32),
    /// select.wgsl with the row selection's and N:M's flags packed into mask words by one
    /// subgroup ballot per subgroup of this many lanes, where the workgroup-memory packing
    /// reads 32 flags per word (see [`Ctx::subgroup`]).
    SelectSubgroup(u32),
    Probe,
    SparsePack,
    /// The re-fit ops' elementwise steps and small reductions (§12).
    Refit,
    /// The structured-pruning gathers, zeros and segmented sums (§11).
    Structured,
    /// The product's kernels for blocks of this many tokens (1, 2, 4 or 8), the tiled ones for
    /// many tokens and decompression (the same in every variant).
    SparseMatmul(u32),
    /// The forward kernels of §14, attention's per-invocation arrays sized for heads of up to
    /// this many values (64, 128 or 256); the other kernels are the same in every variant.
    Forward(u32),
    /// The backward kernels of §15 that are neither GEMMs nor RoPE (which is the forward's).
    Backward,
    /// attention's backward (§15), its per-invocation accumulators sized for heads of up to
    /// this many values (64, 128 or 256) as [`Module::Forward`]'s.
    AttentionBackward(u32),
}

/// The token-block sizes sparse_matmul.wgsl is built for.
pub(crate) const TOKEN_BLOCKS: [u32; 4] = [1, 2, 4, 8];

/// The head sizes forward.wgsl's attention is built for (the largest is the limit).
pub(crate) const HEAD_DIMS: [u32; 3] = [64, 128, 256];

/// The subgroup sizes the subgroup variants are built for: obs.wgsl's rows of 128 columns over
/// at most 32 lanes, and at least the 4 lanes that load a row's 4 mask words; select.wgsl's
/// ballots in one word (at most 32 lanes) and at most 64 of them per 256 invocations.
pub(crate) const SUBGROUP_SIZES: [u32; 4] = [4, 8, 16, 32];

impl Module {
    /// Every module as built, each token-block variant of the product included.
    pub const ALL: [Module; 33] = [
        Module::Gemm,
        Module::GemmInPlace,
        Module::GemmVec4,
        Module::GemmInPlaceVec4,
        Module::Stats,
        Module::Grad,
        Module::Score,
        Module::Select,
        Module::SelectSubgroup(4),
        Module::SelectSubgroup(8),
        Module::SelectSubgroup(16),
        Module::SelectSubgroup(32),
        Module::Factor,
        Module::Obs,
        Module::ObsSubgroup(4),
        Module::ObsSubgroup(8),
        Module::ObsSubgroup(16),
        Module::ObsSubgroup(32),
        Module::Probe,
        Module::SparsePack,
        Module::Refit,
        Module::Structured,
        Module::SparseMatmul(1),
        Module::SparseMatmul(2),
        Module::SparseMatmul(4),
        Module::SparseMatmul(8),
        Module::Forward(64),
        Module::Forward(128),
        Module::Forward(256),
        Module::Backward,
        Module::AttentionBackward(64),
        Module::AttentionBackward(128),
        Module::AttentionBackward(256),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Module::Gemm => "gemm",
            Module::GemmInPlace => "gemm_in_place",
            Module::GemmVec4 => "gemm_vec4",
            Module::GemmInPlaceVec4 => "gemm_in_place_vec4",
            Module::Stats => "stats",
            Module::Grad => "grad",
            Module::Score => "score",
            Module::Select => "select",
            Module::SelectSubgroup(_) => "select_subgroup",
            Module::Factor => "factor",
            Module::Obs => "obs",
            Module::ObsSubgroup(_) => "obs_subgroup",
            Module::Probe => "probe",
            Module::SparsePack => "sparse_pack",
            Module::Refit => "refit",
            Module::Structured => "structured",
            Module::SparseMatmul(_) => "sparse_matmul",
            Module::Forward(_) => "forward",
            Module::Backward => "backward",
            Module::AttentionBackward(_) => "attention_backward",
        }
    }

    /// The .wgsl file the module is built from (variants share their file).
    pub fn file(self) -> &'static str {
        match self {
            Module::GemmInPlace | Module::GemmVec4 | Module::GemmInPlaceVec4 => "gemm",
            Module::ObsSubgroup(_) => "obs",
            Module::SelectSubgroup(_) => "select",
            m => m.name(),
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            Module::Gemm => gemm_source(false, false),
            Module::GemmInPlace => gemm_source(true, false),
            Module::GemmVec4 => gemm_source(false, true),
            Module::GemmInPlaceVec4 => gemm_source(true, true),
            Module::Stats => include_str!("../../shaders/stats.wgsl"),
            Module::Grad => include_str!("../../shaders/grad.wgsl"),
            Module::Score => include_str!("../../shaders/score.wgsl"),
            Module::Select => include_str!("../../shaders/select.wgsl"),
            Module::SelectSubgroup(lanes) => select_subgroup_source(lanes),
            Module::Factor => include_str!("../../shaders/factor.wgsl"),
            Module::Obs => include_str!("../../shaders/obs.wgsl"),
            Module::ObsSubgroup(lanes) => obs_subgroup_source(lanes),
            Module::Probe => include_str!("../../shaders/probe.wgsl"),
            Module::SparsePack => include_str!("../../shaders/sparse_pack.wgsl"),
            Module::Refit => include_str!("../../shaders/refit.wgsl"),
            Module::Structured => include_str!("../../shaders/structured.wgsl"),
            Module::SparseMatmul(tokens) => sparse_matmul_source(tokens),
            Module::Forward(emax) => forward_source(emax),
            Module::Backward => include_str!("../../shaders/backward.wgsl"),
            Module::AttentionBackward(emax) => attention_backward_source(emax),
        }
    }

    /// Storage bindings 1.. of the module, `true` where read-only (binding 0 is the uniform
    /// parameter block). Must match the .wgsl declarations.
    pub fn storage(self) -> &'static [bool] {
        match self {
            Module::Gemm => &[true, true, true, false, false, false, true],
            Module::GemmInPlace | Module::GemmInPlaceVec4 => {
                &[false, true, false, false, false, false, true]
            }
            Module::GemmVec4 => &[true, true, true, false, false, false, true],
            Module::Stats => &[true, false, false],
            Module::Grad => &[false, true],
            Module::Score => &[false, true, true, false, true],
            Module::Select | Module::SelectSubgroup(_) => {
                &[false, true, true, false, false, false, false]
            }
            Module::Factor => &[false, false, true, false, false, false],
            Module::Obs | Module::ObsSubgroup(_) => {
                &[false, true, false, false, false, true, true, false]
            }
            Module::Probe => &[false, true],
            Module::SparsePack => &[true, true, false, false, false, false, false],
            Module::Refit => &[false, true, false, false, false, true, true],
            Module::Structured => &[true, false, true, true, true, true, false, false],
            Module::SparseMatmul(_) => &[true, true, true, true, true, false],
            Module::Forward(_) => &[true, true, true, false, true, false],
            Module::Backward => &[true, true, true, false, false, true],
            Module::AttentionBackward(_) => &[true, true, true, true, true, false, false, false],
        }
    }
}

/// gemm.wgsl with its A and B bindings read-write (see [`Module::GemmInPlace`]) and/or bound
/// as vec4 arrays, their word accessors reading them as such (see [`Module::GemmVec4`]).
fn gemm_source(in_place: bool, vec4: bool) -> &'static str {
    const SRC: &str = include_str!("../../shaders/gemm.wgsl");
    static VARIANTS: OnceLock<[String; 3]> = OnceLock::new();
    let variant = |in_place: bool, vec4: bool| {
        let mut s = SRC.to_string();
        let mut swap = |from: String, to: String| {
            assert!(s.contains(&from), "gemm.wgsl declares `{from}`");
            s = s.replacen(&from, &to, 1);
        };
        for name in ["a", "b"] {
            let access = if in_place { "read_write" } else { "read" };
            let ty = if vec4 { "vec4<f32>" } else { "f32" };
            swap(
                format!("var<storage, read> {name}: array<f32>;"),
                format!("var<storage, {access}> {name}: array<{ty}>;"),
            );
            if vec4 {
                swap(
                    format!("fn {name}_word(i: u32) -> f32 {{ return {name}[i]; }}"),
                    format!("fn {name}_word(i: u32) -> f32 {{ return {name}[i >> 2u][i & 3u]; }}"),
                );
                swap(
                    format!(
                        "fn {name}_quad(i: u32) -> vec4<f32> {{ return vec4<f32>({name}[i], \
                         {name}[i + 1u], {name}[i + 2u], {name}[i + 3u]); }}"
                    ),
                    format!("fn {name}_quad(i: u32) -> vec4<f32> {{ return {name}[i >> 2u]; }}"),
                );
            }
        }
        s
    };
    let all = VARIANTS.get_or_init(|| {
        [
            variant(true, false),
            variant(false, true),
            variant(true, true),
        ]
    });
    match (in_place, vec4) {
        (true, false) => &all[0],
        (false, true) => &all[1],
        (true, true) => &all[2],
        (false, false) => SRC,
    }
}

/// The source built for `value`, `all[i]` for `values[i]` (`what` names it in the panic for a
/// value no variant was built for).
fn variant<'a>(all: &'a [String], values: &[u32], value: u32, what: &str) -> &'a str {
    let i = values
        .iter()
        .position(|&v| v == value)
        .unwrap_or_else(|| panic!("no variant of {what} {value}"));
    &all[i]
}

/// `src` (the file `file`) with each `from` of `subs` replaced once by its `to`.
fn substituted(src: &str, file: &str, subs: &[(&str, String)]) -> String {
    let mut s = src.to_string();
    for (from, to) in subs {
        assert!(s.contains(from), "{file}.wgsl declares `{from}`");
        s = s.replacen(from, to, 1);
    }
    s
}

/// `s` (the file `file`) with the subgroup builtins `sg_lane` and `sg_id` added to the
/// parameters of each entry point of `entries`, whose last parameter is `lid`.
fn with_subgroup_builtins(mut s: String, file: &str, entries: &[&str]) -> String {
    const LID: &str = "@builtin(local_invocation_id) lid: vec3<u32>) {";
    const LID_SUBGROUP: &str = "@builtin(local_invocation_id) lid: vec3<u32>,\n    \
                                @builtin(subgroup_invocation_id) sg_lane: u32, \
                                @builtin(subgroup_id) sg_id: u32) {";
    for entry in entries {
        let at = s
            .find(&format!("fn {entry}("))
            .unwrap_or_else(|| panic!("{file}.wgsl has no entry {entry}"));
        let end = at
            + s[at..]
                .find(LID)
                .unwrap_or_else(|| panic!("{file}.wgsl: {entry} ends its parameters with lid"));
        s.replace_range(end..end + LID.len(), LID_SUBGROUP);
    }
    s
}

/// obs.wgsl's subgroup variant for subgroups of `lanes` (see [`Module::ObsSubgroup`]): a row
/// per subgroup, its lane and row from the subgroup builtins (so nothing assumes how the
/// device lays subgroups over the workgroup), the error shared by `subgroupShuffle` and the
/// row's loss summed by `subgroupAdd`.
fn obs_subgroup_source(lanes: u32) -> &'static str {
    const SRC: &str = include_str!("../../shaders/obs.wgsl");
    static VARIANTS: OnceLock<Vec<String>> = OnceLock::new();
    let all = VARIANTS.get_or_init(|| {
        SUBGROUP_SIZES
            .iter()
            .map(|lanes| {
                let subs = [
                    (
                        "const LANES: u32 = 32u;",
                        format!("const LANES: u32 = {lanes}u;"),
                    ),
                    (
                        "const SUBGROUPS: bool = false;",
                        "const SUBGROUPS: bool = true;".into(),
                    ),
                    (
                        "fn from_lane(v: f32, owner: u32) -> f32 { return v; }",
                        "fn from_lane(v: f32, owner: u32) -> f32 { \
                         return subgroupShuffle(v, owner); }"
                            .into(),
                    ),
                    (
                        "fn row_total(v: f32) -> f32 { return v; }",
                        "fn row_total(v: f32) -> f32 { return subgroupAdd(v); }".into(),
                    ),
                    (
                        "    let lane = t % LANES;\n    let rl = t / LANES;",
                        "    let lane = sg_lane;\n    let rl = sg_id;".into(),
                    ),
                ];
                with_subgroup_builtins(substituted(SRC, "obs", &subs), "obs", &["obs_block"])
            })
            .collect()
    });
    variant(all, &SUBGROUP_SIZES, lanes, "obs, subgroups of")
}

/// select.wgsl's subgroup variant for subgroups of `lanes` (see [`Module::SelectSubgroup`]):
/// the per-invocation flags of the row selection and N:M packed by one ballot per subgroup,
/// invocation t being subgroup t / lanes's lane t % lanes by the subgroup builtins.
fn select_subgroup_source(lanes: u32) -> &'static str {
    const SRC: &str = include_str!("../../shaders/select.wgsl");
    static VARIANTS: OnceLock<Vec<String>> = OnceLock::new();
    let all = VARIANTS.get_or_init(|| {
        SUBGROUP_SIZES
            .iter()
            .map(|lanes| {
                let t = "sg_id * SG + sg_lane";
                let subs = [
                    ("const SG: u32 = 0u;", format!("const SG: u32 = {lanes}u;")),
                    (
                        "fn ballot(f: bool) -> u32 { return 0u; }",
                        "fn ballot(f: bool) -> u32 { return subgroupBallot(f).x; }".into(),
                    ),
                    (
                        "    let t = lid.x;\n    var prefix",
                        format!("    let t = {t};\n    var prefix"),
                    ),
                    (
                        "    let t = lid.x;\n    let g = row_of(wid, nwg);\n    let r0",
                        format!("    let t = {t};\n    let g = row_of(wid, nwg);\n    let r0"),
                    ),
                    (
                        "    let t = lid.x;\n    let c = wid.x * 256u + t;",
                        format!("    let t = {t};\n    let c = wid.x * 256u + t;"),
                    ),
                ];
                let s = substituted(SRC, "select", &subs);
                with_subgroup_builtins(s, "select", &["row_select", "chunk_write", "nm_select"])
            })
            .collect()
    });
    variant(all, &SUBGROUP_SIZES, lanes, "select, subgroups of")
}

/// sparse_matmul.wgsl with its token block `TB` set to `tokens`: a constant rather than a
/// loop bound, so the accumulators stay in registers and one token does not pay for eight.
fn sparse_matmul_source(tokens: u32) -> &'static str {
    const SRC: &str = include_str!("../../shaders/sparse_matmul.wgsl");
    const LINE: &str = "const TB: u32 = 8u;";
    static VARIANTS: OnceLock<Vec<String>> = OnceLock::new();
    let all = VARIANTS.get_or_init(|| {
        TOKEN_BLOCKS
            .iter()
            .map(|t| {
                substituted(
                    SRC,
                    "sparse_matmul",
                    &[(LINE, format!("const TB: u32 = {t}u;"))],
                )
            })
            .collect()
    });
    variant(all, &TOKEN_BLOCKS, tokens, "sparse_matmul, tokens")
}

/// forward.wgsl with attention's head limit `EMAX` set to `emax`, so that a head of 64 values
/// does not carry (and, on a GPU, spill) private arrays sized for 256.
fn forward_source(emax: u32) -> &'static str {
    const SRC: &str = include_str!("../../shaders/forward.wgsl");
    const LINE: &str = "const EMAX: u32 = 256u;";
    static VARIANTS: OnceLock<Vec<String>> = OnceLock::new();
    let all = VARIANTS.get_or_init(|| {
        HEAD_DIMS
            .iter()
            .map(|e| {
                substituted(
                    SRC,
                    "forward",
                    &[(LINE, format!("const EMAX: u32 = {e}u;"))],
                )
            })
            .collect()
    });
    variant(all, &HEAD_DIMS, emax, "forward, heads of")
}

/// attention_backward.wgsl with its head limit `EMAX` set to `emax`, for the reason
/// [`forward_source`] gives.
fn attention_backward_source(emax: u32) -> &'static str {
    const SRC: &str = include_str!("../../shaders/attention_backward.wgsl");
    const LINE: &str = "const EMAX: u32 = 256u;";
    static VARIANTS: OnceLock<Vec<String>> = OnceLock::new();
    let all = VARIANTS.get_or_init(|| {
        HEAD_DIMS
            .iter()
            .map(|e| {
                let to = format!("const EMAX: u32 = {e}u;");
                substituted(SRC, "attention_backward", &[(LINE, to)])
            })
            .collect()
    });
    variant(all, &HEAD_DIMS, emax, "attention backward, heads of")
}

/// A range of a buffer bound as one storage binding: elements [start, start + len) of f32 or
/// u32. Kernels address it with bases relative to `start` (u32 wrap-around arithmetic).
#[derive(Clone, Copy)]
pub(crate) struct Win<'a> {
    pub buf: &'a wgpu::Buffer,
    pub start: u64,
    pub bytes: u64,
}

impl Win<'_> {
    /// The index, inside this window, of global element `origin` (which may lie before the
    /// window: the kernels only ever add offsets that land inside it).
    pub fn base(&self, origin: u64) -> u32 {
        (origin as u32).wrapping_sub(self.start as u32)
    }
}

/// What a storage binding of a dispatch gets.
#[derive(Clone, Copy)]
pub(crate) enum Slot<'a> {
    Win(Win<'a>),
    /// The binding is unused by this entry point.
    Unused,
}

/// A window where there is one, else a binding the entry point does not use.
impl<'a> From<Option<Win<'a>>> for Slot<'a> {
    fn from(w: Option<Win<'a>>) -> Self {
        w.map_or(Slot::Unused, Slot::Win)
    }
}

pub(crate) struct Ctx {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    /// The largest storage binding we create (the device's limit, or a smaller test limit).
    pub max_binding: u64,
    pub timestamps: bool,
    /// The subgroup width the subgroup variants are built for (the OBS in-block step's
    /// pivot, [`Module::ObsSubgroup`]; selection's ballots, [`Module::SelectSubgroup`]): where
    /// the device has subgroup operations and all its subgroups are one of
    /// [`SUBGROUP_SIZES`] wide; `None` runs their workgroup-memory paths.
    pub subgroup: Option<u32>,
    modules: Mutex<
        HashMap<
            Module,
            (
                wgpu::ShaderModule,
                wgpu::BindGroupLayout,
                wgpu::PipelineLayout,
            ),
        >,
    >,
    pipelines: Mutex<HashMap<(Module, &'static str), wgpu::ComputePipeline>>,
    dummy_ro: wgpu::Buffer,
    dummy_rw: wgpu::Buffer,
    /// The first validation or device error wgpu reported, turned into an error by `check`.
    pub errors: Arc<Mutex<Option<String>>>,
    pub timing: Mutex<Option<Timing>>,
    /// Tests: fresh outputs and scratch are filled with NaN (masks with all bits set), so an
    /// entry a kernel forgets to write shows up.
    pub poison: AtomicBool,
    /// How many ops had to split a tensor across several bindings (tests check the path ran).
    pub splits: AtomicUsize,
    /// Profile mode: every dispatch in its own timed pass (slower; for finding hot kernels).
    pub profile: AtomicBool,
    /// Seconds per kernel of the last timing scope, in profile mode.
    pub last_profile: Mutex<Vec<(String, f64)>>,
}

const PARAM_SLOT: u64 = 256;
const ARENA_SLOTS: u64 = 256;

impl Ctx {
    pub fn new(device: wgpu::Device, queue: wgpu::Queue, limits: wgpu::Limits) -> Self {
        let errors: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        let dummy = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 256,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let timestamps = device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        Self {
            dummy_ro: dummy("unused read-only binding"),
            dummy_rw: dummy("unused read-write binding"),
            max_binding: limits.max_storage_buffer_binding_size,
            timestamps,
            subgroup: None,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            errors,
            timing: Mutex::new(None),
            poison: AtomicBool::new(false),
            splits: AtomicUsize::new(0),
            profile: AtomicBool::new(false),
            last_profile: Mutex::new(Vec::new()),
            device,
            queue,
            limits,
        }
    }

    /// select.wgsl as this device runs it: its subgroup variant where [`Ctx::subgroup`] is
    /// set.
    pub fn select_module(&self) -> Module {
        self.subgroup.map_or(Module::Select, Module::SelectSubgroup)
    }

    /// obs.wgsl as this device runs it, as [`Ctx::select_module`].
    pub fn obs_module(&self) -> Module {
        self.subgroup.map_or(Module::Obs, Module::ObsSubgroup)
    }

    /// Turns an error wgpu reported since the last check into a `KernelError`.
    pub fn check(&self) -> Result<()> {
        let mut slot = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            None => Ok(()),
            Some(e) if e.to_lowercase().contains("out of memory") => {
                Err(KernelError::OutOfMemory {
                    what: format!("a device allocation ({e})"),
                    needed: 0,
                    available: 0,
                })
            }
            Some(e) => Err(KernelError::Device(e)),
        }
    }

    fn module(&self, m: Module) -> Result<()> {
        let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if mods.contains_key(&m) {
            return Ok(());
        }
        let shader = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(m.name()),
                source: wgpu::ShaderSource::Wgsl(m.source().into()),
            });
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for (i, &read_only) in m.storage().iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let bgl = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(m.name()),
                entries: &entries,
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(m.name()),
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: 0,
            });
        mods.insert(m, (shader, bgl, pl));
        Ok(())
    }

    fn pipeline(
        &self,
        m: Module,
        entry: &'static str,
    ) -> Result<(wgpu::ComputePipeline, wgpu::BindGroupLayout)> {
        self.module(m)?;
        let mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        let (shader, bgl, pl) = &mods[&m];
        let pipes = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pipes.get(&(m, entry)) {
            return Ok((p.clone(), bgl.clone()));
        }
        let p = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(pl),
                module: shader,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        drop(pipes);
        // A shader the device rejects (e.g. more workgroup memory than it has) is reported
        // here rather than at the first dispatch.
        if let Err(e) = self.check() {
            return Err(KernelError::Unsupported(format!(
                "kernel {}::{entry} does not build on this device: {e}",
                m.name()
            )));
        }
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((m, entry), p.clone());
        Ok((p, bgl.clone()))
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch {
            ctx: self,
            encoder: Some(self.device.create_command_encoder(&Default::default())),
            pass: None,
            arenas: Vec::new(),
        }
    }

    /// The device's largest workgroup count per grid dimension: the bound of every launch
    /// grid ([`grid`]) and of the row slabs of kernels that take a row per workgroup.
    pub(crate) fn max_groups(&self) -> u32 {
        self.limits.max_compute_workgroups_per_dimension
    }

    pub fn split_noted(&self, parts: usize) {
        if parts > 1 {
            self.splits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Arena {
    buf: wgpu::Buffer,
    data: Vec<u8>,
}

/// One op's recorded work: dispatches go into compute passes (timed when a timing scope is
/// open), copies and clears between them; `submit` sends it all at once.
pub(crate) struct Batch<'c> {
    ctx: &'c Ctx,
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    arenas: Vec<Arena>,
}

/// The launch grid of the shared plan: x then y, each within the device's limit.
pub(crate) use crate::plan::grid;

impl<'c> Batch<'c> {
    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        self.encoder.as_mut().expect("batch already submitted")
    }

    fn params_slot(&mut self, bytes: &[u8]) -> (usize, u64) {
        let need_new = match self.arenas.last() {
            None => true,
            Some(a) => a.data.len() as u64 >= PARAM_SLOT * ARENA_SLOTS,
        };
        if need_new {
            let slot = PARAM_SLOT.max(self.ctx.limits.min_uniform_buffer_offset_alignment as u64);
            let buf = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: slot * ARENA_SLOTS,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.arenas.push(Arena {
                buf,
                data: Vec::new(),
            });
        }
        let slot = PARAM_SLOT.max(self.ctx.limits.min_uniform_buffer_offset_alignment as u64);
        let idx = self.arenas.len() - 1;
        let a = &mut self.arenas[idx];
        let off = a.data.len() as u64;
        a.data.extend_from_slice(bytes);
        a.data.resize((off + slot) as usize, 0);
        (idx, off)
    }

    /// Records one dispatch of `entry` in module `m`.
    pub fn dispatch(
        &mut self,
        m: Module,
        entry: &'static str,
        params: &[u8],
        slots: &[Slot<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        self.dispatch_as(entry, m, entry, params, slots, groups)
    }

    /// `dispatch`, named `label` in kernel profiles (GEMM steps of different ops share one
    /// entry point).
    pub fn dispatch_as(
        &mut self,
        label: &'static str,
        m: Module,
        entry: &'static str,
        params: &[u8],
        slots: &[Slot<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        assert!(
            params.len() as u64 <= PARAM_SLOT,
            "parameter block too large"
        );
        assert_eq!(
            slots.len(),
            m.storage().len(),
            "{}::{entry}: slot count",
            m.name()
        );
        if groups.contains(&0) {
            return Ok(());
        }
        let max = self.ctx.max_groups();
        if groups.iter().any(|&g| g > max) {
            return Err(KernelError::Unsupported(format!(
                "{}::{entry} needs a grid of {groups:?} workgroups, the device allows {max} per dimension",
                m.name()
            )));
        }
        let (pipeline, bgl) = self.ctx.pipeline(m, entry)?;
        let (ai, off) = self.params_slot(params);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.arenas[ai].buf,
                offset: off,
                size: wgpu::BufferSize::new(PARAM_SLOT),
            }),
        }];
        for (i, (slot, &ro)) in slots.iter().zip(m.storage()).enumerate() {
            let (buffer, offset, size) = match slot {
                Slot::Win(w) => (w.buf, w.start * 4, w.bytes),
                Slot::Unused if ro => (&self.ctx.dummy_ro, 0, 256),
                Slot::Unused => (&self.ctx.dummy_rw, 0, 256),
            };
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset,
                    size: wgpu::BufferSize::new(size),
                }),
            });
        }
        let bg = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(entry),
                layout: &bgl,
                entries: &entries,
            });
        if self.ctx.profile.load(Ordering::Relaxed) {
            self.pass = None;
        }
        if self.pass.is_none() {
            let mut timing = self.ctx.timing.lock().unwrap_or_else(|p| p.into_inner());
            let writes = timing
                .as_mut()
                .map(|t| t.next_pass(&self.ctx.device, label));
            let enc = self.encoder.as_mut().expect("batch already submitted");
            let pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: writes
                    .as_ref()
                    .map(|(qs, i)| wgpu::ComputePassTimestampWrites {
                        query_set: qs,
                        beginning_of_pass_write_index: Some(*i),
                        end_of_pass_write_index: Some(*i + 1),
                    }),
            });
            self.pass = Some(pass.forget_lifetime());
        }
        let pass = self.pass.as_mut().expect("pass just opened");
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        Ok(())
    }

    pub fn clear(&mut self, buf: &wgpu::Buffer) {
        self.encoder().clear_buffer(buf, 0, None);
    }

    pub fn copy(&mut self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) {
        self.encoder().copy_buffer_to_buffer(src, 0, dst, 0, bytes);
    }

    /// Sends everything recorded; errors wgpu reported while recording come back here.
    pub fn submit(mut self) -> Result<()> {
        self.pass = None;
        for a in &self.arenas {
            self.ctx.queue.write_buffer(&a.buf, 0, &a.data);
        }
        let enc = self.encoder.take().expect("batch already submitted");
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.check()
    }
}
