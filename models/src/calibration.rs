//! The calibration file: one safetensors file holding, for one layer, calibration inputs per
//! input group, output gradients per linear, and optionally ready statistics that replace
//! accumulating them. The format is specified in docs/FORMATS.md.
//!
//! | tensor                   | shape                   | meaning                          |
//! |--------------------------|-------------------------|----------------------------------|
//! | `x.<group>`              | [samples, tokens, cols] | inputs of attn_in, attn_out, mlp_in, mlp_act |
//! | `dy.<linear>`            | [samples, tokens, rows] | output gradients (GBLM-Pruner)   |
//! | `stat.act.<group>`       | [cols]                  | Wanda's a (ALGORITHMS.md §1)     |
//! | `stat.hessian.<group>`   | [cols, cols]            | SparseGPT's H (§3)               |
//! | `stat.grad.<linear>`     | [rows, cols]            | GBLM's final G (§2, after sqrt)  |
//!
//! Metadata `prunebench.calibration` = `1` marks the format version. f32, f16 or bf16.

use std::collections::HashMap;
use std::path::Path;

use prunebench_kernels::Matrix;

use crate::config::{InputGroup, LinearSpec, ModelConfig};
use crate::dtype::DType;
use crate::error::{ModelError, Result};
use crate::mapped::{write_matrices, write_streamed, MappedFile, TensorHeader};
use crate::synthetic::CalibrationSource;

pub const FORMAT_KEY: &str = "prunebench.calibration";
pub const FORMAT_VERSION: &str = "1";

pub struct CalibrationFile {
    file: MappedFile,
    cfg: ModelConfig,
    samples: usize,
    tokens: usize,
    has_grads: bool,
}

impl std::fmt::Debug for CalibrationFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalibrationFile")
            .field("path", &self.file.path)
            .field("samples", &self.samples)
            .field("tokens", &self.tokens)
            .field("has_grads", &self.has_grads)
            .finish()
    }
}

impl CalibrationFile {
    /// Opens a calibration file and checks every tensor's name and shape against `cfg`, and
    /// that all inputs and gradients agree on samples and tokens; values are read (and checked
    /// for NaN/Inf) only when a sample or statistic is asked for.
    pub fn open(path: &Path, cfg: &ModelConfig) -> Result<CalibrationFile> {
        let file = MappedFile::open(path, "a calibration safetensors file")?;
        let bad = |detail: String| ModelError::BadConfig {
            path: path.to_path_buf(),
            detail,
        };
        match file.metadata().and_then(|m| m.get(FORMAT_KEY)) {
            Some(v) if v == FORMAT_VERSION => {}
            Some(v) => {
                return Err(bad(format!(
                    "calibration format version {v}, this build reads {FORMAT_VERSION}"
                )))
            }
            None => {
                return Err(bad(format!(
                    "not a prunebench calibration file (metadata {FORMAT_KEY} missing)"
                )))
            }
        }
        let mut dims: Option<(usize, usize, String)> = None;
        let mut has_grads = false;
        let mut names = file.names();
        names.sort();
        for name in &names {
            let (kind, rest) = name.split_once('.').unwrap_or((name.as_str(), ""));
            let width = match kind {
                "x" => cfg.group_cols(parse_group(rest).ok_or_else(|| {
                    bad(format!(
                        "{name}: unknown input group '{rest}' (expected attn_in, attn_out, mlp_in or mlp_act)"
                    ))
                })?),
                "dy" => {
                    has_grads = true;
                    known_linear(cfg, rest)
                        .ok_or_else(|| bad(format!("{name}: {}", unknown_linear(rest))))?
                        .rows
                }
                "stat" => {
                    check_stat(&file, cfg, name, rest)?;
                    continue;
                }
                _ => {
                    return Err(bad(format!(
                        "unexpected tensor {name} (calibration tensors are x.*, dy.* and stat.*)"
                    )))
                }
            };
            let t = file.require(name)?;
            if t.shape.len() != 3 {
                return Err(bad(format!(
                    "{name} has shape {:?}; expected [samples, tokens, {width}]",
                    t.shape
                )));
            }
            if t.shape[2] != width {
                return Err(ModelError::WrongShape {
                    name: name.clone(),
                    path: path.to_path_buf(),
                    expected: vec![t.shape[0], t.shape[1], width],
                    actual: t.shape.clone(),
                });
            }
            match &dims {
                None => dims = Some((t.shape[0], t.shape[1], name.clone())),
                Some((s, tk, first)) if (*s, *tk) != (t.shape[0], t.shape[1]) => {
                    return Err(bad(format!(
                        "{name} has {} samples x {} tokens, {first} has {s} samples x {tk} tokens: \
                         all x.* and dy.* tensors must agree",
                        t.shape[0], t.shape[1]
                    )))
                }
                _ => {}
            }
        }
        let (samples, tokens) = dims.map_or((0, 0), |(s, t, _)| (s, t));
        Ok(CalibrationFile {
            file,
            cfg: cfg.clone(),
            samples,
            tokens,
            has_grads,
        })
    }

    fn matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        sample: Option<usize>,
    ) -> Result<Option<Matrix>> {
        let Some(t) = self.file.get(name)? else {
            return Ok(None);
        };
        let start = sample.map_or(0, |s| s * rows * cols);
        let data = t
            .read_f32(&self.file.path, start, rows * cols, cols)
            .map_err(|e| match (e, sample) {
                // Report a position within the sample rather than the flattened row.
                (
                    ModelError::NonFinite {
                        name,
                        path,
                        row,
                        col,
                    },
                    Some(s),
                ) => ModelError::NonFiniteInput {
                    name,
                    path,
                    sample: s,
                    token: row - s * rows,
                    col,
                },
                (e, _) => e,
            })?;
        Ok(Some(Matrix { rows, cols, data }))
    }

    /// Wanda's a, checked to be non-negative (it is a sum of squares).
    fn ready_act_stat_inner(&self, group: InputGroup) -> Result<Option<Matrix>> {
        let cols = self.cfg.group_cols(group);
        let name = format!("stat.act.{}", group.name());
        let m = self.matrix(&name, 1, cols, None)?;
        self.checked(&name, "activation statistic", m, stats::non_negative)
    }

    /// SparseGPT's H, checked to be symmetric with a non-negative diagonal.
    fn ready_hessian_inner(&self, group: InputGroup) -> Result<Option<Matrix>> {
        let cols = self.cfg.group_cols(group);
        let name = format!("stat.hessian.{}", group.name());
        let m = self.matrix(&name, cols, cols, None)?;
        self.checked(&name, "Hessian", m, stats::hessian)
    }

    /// GBLM's G, checked to be non-negative (it is a norm of gradients).
    fn ready_grad_inner(&self, linear: &LinearSpec) -> Result<Option<Matrix>> {
        let l = self.own_linear(linear)?;
        let name = format!("stat.grad.{}", l.name);
        let m = self.matrix(&name, l.rows, l.cols, None)?;
        self.checked(&name, "gradient statistic", m, stats::non_negative)
    }

    /// Applies `check` to a statistic read (and so already found finite): a value no
    /// accumulation can give (a negative sum of squares) would otherwise flow into the
    /// scores as NaN and give a mask without meaning.
    fn checked(
        &self,
        name: &str,
        statistic: &'static str,
        m: Option<Matrix>,
        check: fn(&Matrix) -> std::result::Result<(), String>,
    ) -> Result<Option<Matrix>> {
        if let Some(m) = &m {
            check(m).map_err(|detail| ModelError::InvalidStatistic {
                name: name.to_string(),
                path: self.file.path.clone(),
                statistic,
                detail,
            })?;
        }
        Ok(m)
    }

    /// The file was checked against this model's shapes; a linear of another shape asked for
    /// is a caller mixing models, reported as such rather than as a misread tensor.
    fn own_linear(&self, linear: &LinearSpec) -> Result<LinearSpec> {
        match known_linear(&self.cfg, linear.name) {
            Some(own) if own == *linear => Ok(own),
            Some(own) => Err(ModelError::Calibration(format!(
                "{}: {} asked for as {}x{}, but the file was opened for model {}, where it is {}x{}",
                self.file.path.display(),
                linear.name,
                linear.rows,
                linear.cols,
                self.cfg.name,
                own.rows,
                own.cols
            ))),
            None => Err(ModelError::UnknownLinear {
                name: linear.name.to_string(),
            }),
        }
    }

    fn sample_check(&self, sample: usize) -> Result<()> {
        if sample >= self.samples {
            return Err(ModelError::Calibration(format!(
                "{}: sample {sample} requested, but the file holds {} samples",
                self.file.path.display(),
                self.samples
            )));
        }
        Ok(())
    }
}

/// Tensor names are exact: `InputGroup::parse` and `ModelConfig::linear` also accept
/// surrounding spaces, which a name in a file must not have.
fn parse_group(s: &str) -> Option<InputGroup> {
    InputGroup::parse(s).filter(|g| g.name() == s)
}

fn known_linear(cfg: &ModelConfig, name: &str) -> Option<LinearSpec> {
    cfg.linears().into_iter().find(|l| l.name == name)
}

fn unknown_linear(name: &str) -> String {
    format!(
        "unknown linear '{name}' (expected one of {})",
        crate::config::LINEAR_NAMES.join(", ")
    )
}

fn check_stat(file: &MappedFile, cfg: &ModelConfig, name: &str, rest: &str) -> Result<()> {
    let bad = |detail: String| ModelError::BadConfig {
        path: file.path.clone(),
        detail,
    };
    let (which, target) = rest
        .split_once('.')
        .ok_or_else(|| bad(format!("{name}: expected stat.<act|hessian|grad>.<name>")))?;
    let expected = match which {
        "act" | "hessian" => {
            let g = parse_group(target)
                .ok_or_else(|| bad(format!("{name}: unknown input group '{target}'")))?;
            let c = cfg.group_cols(g);
            if which == "act" {
                vec![c]
            } else {
                vec![c, c]
            }
        }
        "grad" => {
            let l = known_linear(cfg, target)
                .ok_or_else(|| bad(format!("{name}: {}", unknown_linear(target))))?;
            vec![l.rows, l.cols]
        }
        _ => return Err(bad(format!("{name}: unknown statistic '{which}'"))),
    };
    file.require(name)?.expect_shape(&file.path, &expected)
}

impl CalibrationSource for CalibrationFile {
    fn samples(&self) -> usize {
        self.samples
    }

    fn tokens(&self) -> usize {
        self.tokens
    }

    fn input(&self, group: InputGroup, sample: usize) -> Result<Matrix> {
        self.sample_check(sample)?;
        let name = format!("x.{}", group.name());
        self.matrix(&name, self.tokens, self.cfg.group_cols(group), Some(sample))?
            .ok_or_else(|| ModelError::MissingTensor {
                name,
                path: self.file.path.clone(),
            })
    }

    fn output_grad(&self, linear: &LinearSpec, sample: usize) -> Result<Matrix> {
        self.sample_check(sample)?;
        let l = self.own_linear(linear)?;
        let name = format!("dy.{}", l.name);
        self.matrix(&name, self.tokens, l.rows, Some(sample))?
            .ok_or_else(|| ModelError::MissingTensor {
                name,
                path: self.file.path.clone(),
            })
    }

    fn has_output_grads(&self) -> bool {
        self.has_grads
    }

    fn describe(&self) -> String {
        format!(
            "file {} ({} samples x {} tokens)",
            self.file.path.display(),
            self.samples,
            self.tokens
        )
    }
}

/// Writes the calibration `source` gives for `linears` (their input groups, and their output
/// gradients when `with_grads`) as a calibration file in f32. See `write_calibration_as`.
pub fn write_calibration(
    path: &Path,
    source: &dyn CalibrationSource,
    cfg: &ModelConfig,
    linears: &[LinearSpec],
    with_grads: bool,
) -> Result<()> {
    write_calibration_as(path, source, cfg, linears, with_grads, DType::F32)
}

/// Like `write_calibration`, storing the values as `dtype` (f16 or bf16 halve the file).
/// Streams one sample at a time, so the file may be far larger than memory. The linears must
/// be `cfg`'s, and the source must give finite values of the shapes `cfg` implies.
pub fn write_calibration_as(
    path: &Path,
    source: &dyn CalibrationSource,
    cfg: &ModelConfig,
    linears: &[LinearSpec],
    with_grads: bool,
    dtype: DType,
) -> Result<()> {
    let fail = |detail: String| ModelError::Write {
        path: path.to_path_buf(),
        detail,
    };
    for l in linears {
        match known_linear(cfg, l.name) {
            Some(own) if own == *l => {}
            Some(own) => {
                return Err(fail(format!(
                    "{} is {}x{}, but model {} has it {}x{}",
                    l.name, l.rows, l.cols, cfg.name, own.rows, own.cols
                )))
            }
            None => return Err(fail(unknown_linear(l.name))),
        }
    }
    if with_grads && !source.has_output_grads() {
        return Err(fail(format!(
            "output gradients requested, but {} has none",
            source.describe()
        )));
    }
    let (samples, tokens) = (source.samples(), source.tokens());
    let mut groups: Vec<InputGroup> = Vec::new();
    for l in linears {
        if !groups.contains(&l.input) {
            groups.push(l.input);
        }
    }
    // What each tensor holds: an input group, or a linear's output gradient.
    enum Part<'a> {
        X(InputGroup),
        Dy(&'a LinearSpec),
    }
    let mut parts: Vec<(Part, TensorHeader)> = groups
        .iter()
        .map(|&g| {
            let name = format!("x.{}", g.name());
            let shape = vec![samples, tokens, cfg.group_cols(g)];
            (Part::X(g), TensorHeader::new(name, dtype, shape))
        })
        .collect();
    if with_grads {
        for l in linears {
            let name = format!("dy.{}", l.name);
            let shape = vec![samples, tokens, l.rows];
            parts.push((Part::Dy(l), TensorHeader::new(name, dtype, shape)));
        }
    }
    let (parts, headers): (Vec<Part>, Vec<TensorHeader>) = parts.into_iter().unzip();
    let meta = HashMap::from([(FORMAT_KEY.to_string(), FORMAT_VERSION.to_string())]);
    write_streamed(path, &headers, meta, |i, sink| {
        let name = &headers[i].name;
        let width = headers[i].shape[2];
        for s in 0..samples {
            let m = match parts[i] {
                Part::X(g) => source.input(g, s)?,
                Part::Dy(l) => source.output_grad(l, s)?,
            };
            if m.shape() != (tokens, width) || m.data.len() != tokens * width {
                return Err(fail(format!(
                    "{} gave {name} sample {s} as {}x{}, expected {tokens}x{width}",
                    source.describe(),
                    m.rows,
                    m.cols
                )));
            }
            if let Some(j) = m.data.iter().position(|v| !v.is_finite()) {
                return Err(ModelError::NonFiniteInput {
                    name: name.clone(),
                    path: path.to_path_buf(),
                    sample: s,
                    token: j / width.max(1),
                    col: j % width.max(1),
                });
            }
            sink.put(&m.data)?;
        }
        Ok(())
    })
}

/// Statistics computed elsewhere, to be stored as `stat.*` tensors.
#[derive(Default)]
pub struct ReadyStatistics {
    pub act: Vec<(InputGroup, Matrix)>,
    pub hessian: Vec<(InputGroup, Matrix)>,
    pub grad: Vec<(LinearSpec, Matrix)>,
}

/// Writes a calibration file holding only ready statistics (f32), checked against `cfg`.
pub fn write_statistics(path: &Path, cfg: &ModelConfig, stats: &ReadyStatistics) -> Result<()> {
    /// One statistic: its name, its stored shape, and the matrix shape it comes as.
    struct Entry<'a> {
        name: String,
        shape: Vec<usize>,
        rows: usize,
        cols: usize,
        m: &'a Matrix,
    }
    let mut entries: Vec<Entry> = Vec::new();
    for (g, m) in &stats.act {
        let c = cfg.group_cols(*g);
        let name = format!("stat.act.{}", g.name());
        entries.push(Entry {
            name,
            shape: vec![c],
            rows: 1,
            cols: c,
            m,
        });
    }
    for (g, m) in &stats.hessian {
        let c = cfg.group_cols(*g);
        let name = format!("stat.hessian.{}", g.name());
        entries.push(Entry {
            name,
            shape: vec![c, c],
            rows: c,
            cols: c,
            m,
        });
    }
    for (l, m) in &stats.grad {
        let own = known_linear(cfg, l.name).ok_or_else(|| ModelError::Write {
            path: path.to_path_buf(),
            detail: unknown_linear(l.name),
        })?;
        let (rows, cols) = (own.rows, own.cols);
        let name = format!("stat.grad.{}", l.name);
        entries.push(Entry {
            name,
            shape: vec![rows, cols],
            rows,
            cols,
            m,
        });
    }
    let mut tensors: Vec<(TensorHeader, &[f32])> = Vec::new();
    for e in entries {
        if e.m.shape() != (e.rows, e.cols) || e.m.data.len() != e.rows * e.cols {
            return Err(ModelError::WrongShape {
                name: e.name,
                path: path.to_path_buf(),
                expected: vec![e.rows, e.cols],
                actual: vec![e.m.rows, e.m.cols],
            });
        }
        tensors.push((
            TensorHeader::new(e.name, DType::F32, e.shape),
            &e.m.data[..],
        ));
    }
    let meta = HashMap::from([(FORMAT_KEY.to_string(), FORMAT_VERSION.to_string())]);
    write_matrices(path, tensors, meta)
}

/// The value checks of ready statistics; each error says where the offending value is.
mod stats {
    use prunebench_kernels::Matrix;

    /// How far H may be from symmetric, relative to the scale of the entry. A writer that
    /// computes both triangles (a PyTorch `X.T @ X`) gets them in different summation orders,
    /// a relative difference of about 1e-5 in f32 at the papers' 128 x 2048 tokens; stored as
    /// bf16 (8 significant bits) the two may then round to neighbouring values, 2^-8 = 0.4%
    /// apart. 1% accepts both with room, while a matrix that is not a Hessian at all (a
    /// transposed or mis-shaped tensor, random data) is off by order 1.
    pub const SYMMETRY_RTOL: f64 = 1e-2;

    /// Every value ≥ 0: a and G are sums of squares and norms, which round to non-negative
    /// numbers in any precision, so no tolerance is needed.
    pub fn non_negative(m: &Matrix) -> Result<(), String> {
        match m.data.iter().position(|&v| v < 0.0) {
            None => Ok(()),
            Some(i) => Err(format!(
                "{} at {} is negative",
                m.data[i],
                position(m, i / m.cols.max(1), i % m.cols.max(1))
            )),
        }
    }

    /// A non-negative diagonal (each entry a sum of squares, exact as above) and symmetry
    /// within `SYMMETRY_RTOL`.
    pub fn hessian(h: &Matrix) -> Result<(), String> {
        let n = h.cols;
        let at = |i: usize, j: usize| h.data[i * n + j] as f64;
        if let Some(i) = (0..n).find(|&i| at(i, i) < 0.0) {
            let d = h.data[i * n + i];
            return Err(format!(
                "diagonal value {d} at row {i}, column {i} is negative"
            ));
        }
        // Tiles, so that the transposed reads stay in cache at the 28672-wide MLP Hessians.
        const TILE: usize = 64;
        for bi in (0..n).step_by(TILE) {
            for bj in (bi..n).step_by(TILE) {
                for i in bi..(bi + TILE).min(n) {
                    for j in (i + 1).max(bj)..(bj + TILE).min(n) {
                        let (a, b) = (at(i, j), at(j, i));
                        // The rounding error of a computed dot product scales with the norms
                        // of its two columns, sqrt(H_ii H_jj), not with the (possibly
                        // cancelled) result, so small off-diagonal entries are judged by it.
                        let scale = a.abs().max(b.abs()).max((at(i, i) * at(j, j)).sqrt());
                        if (a - b).abs() > SYMMETRY_RTOL * scale {
                            return Err(format!(
                                "not symmetric: row {i}, column {j} holds {} but row {j}, \
                                 column {i} holds {} (relative tolerance {SYMMETRY_RTOL})",
                                h.data[i * n + j],
                                h.data[j * n + i]
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A vector statistic (one row) is located by its column alone.
    fn position(m: &Matrix, row: usize, col: usize) -> String {
        if m.rows == 1 {
            format!("column {col}")
        } else {
            format!("row {row}, column {col}")
        }
    }
}

impl crate::ReadyStats for CalibrationFile {
    fn ready_act_stat(&self, group: InputGroup) -> Result<Option<Matrix>> {
        self.ready_act_stat_inner(group)
    }

    fn ready_hessian(&self, group: InputGroup) -> Result<Option<Matrix>> {
        self.ready_hessian_inner(group)
    }

    fn ready_grad(&self, linear: &LinearSpec) -> Result<Option<Matrix>> {
        self.ready_grad_inner(linear)
    }
}
