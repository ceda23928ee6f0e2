//! The calibration file: one safetensors file holding, for one layer, calibration inputs per
//! input group, output gradients per linear, and optionally ready statistics that replace
//! accumulating them. The format is documented in the README ("Calibration files").
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
use crate::mapped::{write_atomic, MappedFile, OwnedTensor};
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

impl CalibrationFile {
    pub fn open(path: &Path, cfg: &ModelConfig) -> Result<CalibrationFile> {
        let file = MappedFile::open(path)?;
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
                "x" => {
                    let g = InputGroup::parse(rest)
                        .ok_or_else(|| bad(format!("{name}: unknown input group '{rest}'")))?;
                    cfg.group_cols(g)
                }
                "dy" => {
                    has_grads = true;
                    cfg.linear(rest)?.rows
                }
                "stat" => {
                    check_stat(&file, cfg, name, rest)?;
                    continue;
                }
                _ => return Err(bad(format!("unexpected tensor {name}"))),
            };
            let t = file.require(name)?;
            if t.shape.len() != 3 || t.shape[2] != width {
                return Err(ModelError::WrongShape {
                    name: name.clone(),
                    path: path.to_path_buf(),
                    expected: vec![
                        t.shape.first().copied().unwrap_or(0),
                        t.shape.get(1).copied().unwrap_or(0),
                        width,
                    ],
                    actual: t.shape.clone(),
                });
            }
            match &dims {
                None => dims = Some((t.shape[0], t.shape[1], name.clone())),
                Some((s, tk, first)) if (*s, *tk) != (t.shape[0], t.shape[1]) => {
                    return Err(bad(format!(
                        "{name} has {} samples x {} tokens but {first} has {s} x {tk}",
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
        let data = t.read_f32(&self.file.path, start, rows * cols, cols)?;
        Ok(Some(
            Matrix::new(rows, cols, data).expect("shape checked at open"),
        ))
    }

    pub fn ready_act_stat(&self, group: InputGroup) -> Result<Option<Matrix>> {
        let cols = self.cfg.group_cols(group);
        self.matrix(&format!("stat.act.{}", group.name()), 1, cols, None)
    }

    pub fn ready_hessian(&self, group: InputGroup) -> Result<Option<Matrix>> {
        let cols = self.cfg.group_cols(group);
        self.matrix(&format!("stat.hessian.{}", group.name()), cols, cols, None)
    }

    pub fn ready_grad(&self, linear: &LinearSpec) -> Result<Option<Matrix>> {
        self.matrix(
            &format!("stat.grad.{}", linear.name),
            linear.rows,
            linear.cols,
            None,
        )
    }

    fn sample_check(&self, sample: usize) -> Result<()> {
        if sample >= self.samples {
            return Err(ModelError::Calibration(format!(
                "{}: sample {sample} requested, the file has {}",
                self.file.path.display(),
                self.samples
            )));
        }
        Ok(())
    }
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
            let g = InputGroup::parse(target)
                .ok_or_else(|| bad(format!("{name}: unknown input group '{target}'")))?;
            let c = cfg.group_cols(g);
            if which == "act" {
                vec![c]
            } else {
                vec![c, c]
            }
        }
        "grad" => {
            let l = cfg.linear(target)?;
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
        let name = format!("dy.{}", linear.name);
        self.matrix(&name, self.tokens, linear.rows, Some(sample))?
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
/// gradients when `with_grads`) as a calibration file in f32.
pub fn write_calibration(
    path: &Path,
    source: &dyn CalibrationSource,
    cfg: &ModelConfig,
    linears: &[LinearSpec],
    with_grads: bool,
) -> Result<()> {
    let (s, t) = (source.samples(), source.tokens());
    let mut tensors = Vec::new();
    let mut groups: Vec<InputGroup> = Vec::new();
    for l in linears {
        if !groups.contains(&l.input) {
            groups.push(l.input);
        }
    }
    for g in groups {
        let cols = cfg.group_cols(g);
        let mut data = Vec::with_capacity(s * t * cols);
        for i in 0..s {
            data.extend(source.input(g, i)?.data);
        }
        tensors.push(OwnedTensor::from_f32(
            format!("x.{}", g.name()),
            DType::F32,
            vec![s, t, cols],
            &data,
        ));
    }
    if with_grads {
        for l in linears {
            let mut data = Vec::with_capacity(s * t * l.rows);
            for i in 0..s {
                data.extend(source.output_grad(l, i)?.data);
            }
            tensors.push(OwnedTensor::from_f32(
                format!("dy.{}", l.name),
                DType::F32,
                vec![s, t, l.rows],
                &data,
            ));
        }
    }
    let meta = HashMap::from([(FORMAT_KEY.to_string(), FORMAT_VERSION.to_string())]);
    write_atomic(path, tensors, meta)
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
    let mut tensors = Vec::new();
    let bad = |name: String, expected: Vec<usize>, m: &Matrix| ModelError::WrongShape {
        name,
        path: path.to_path_buf(),
        expected,
        actual: vec![m.rows, m.cols],
    };
    for (g, m) in &stats.act {
        let c = cfg.group_cols(*g);
        let name = format!("stat.act.{}", g.name());
        if m.shape() != (1, c) {
            return Err(bad(name, vec![1, c], m));
        }
        tensors.push(OwnedTensor::from_f32(name, DType::F32, vec![c], &m.data));
    }
    for (g, m) in &stats.hessian {
        let c = cfg.group_cols(*g);
        let name = format!("stat.hessian.{}", g.name());
        if m.shape() != (c, c) {
            return Err(bad(name, vec![c, c], m));
        }
        tensors.push(OwnedTensor::from_f32(name, DType::F32, vec![c, c], &m.data));
    }
    for (l, m) in &stats.grad {
        let name = format!("stat.grad.{}", l.name);
        if m.shape() != (l.rows, l.cols) {
            return Err(bad(name, vec![l.rows, l.cols], m));
        }
        tensors.push(OwnedTensor::from_f32(
            name,
            DType::F32,
            vec![l.rows, l.cols],
            &m.data,
        ));
    }
    let meta = HashMap::from([(FORMAT_KEY.to_string(), FORMAT_VERSION.to_string())]);
    write_atomic(path, tensors, meta)
}
