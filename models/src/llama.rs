//! What the whole-model forward (ALGORITHMS.md §14) needs from a LLaMA `config.json` beyond
//! the layer shapes: the vocabulary, the RMSNorm epsilon, the RoPE frequencies (the default
//! ones and LLaMA-3.1's `llama3` scaling, as transformers computes them), the context length
//! and whether lm_head is the embedding matrix.
//!
//! Two spellings of the RoPE keys are read: the classic `rope_theta` plus `rope_scaling`
//! (`{"rope_type" or "type": "llama3", ...}` or null), and transformers 5's
//! `rope_parameters` (`{"rope_theta": .., "rope_type": "default" | "llama3", ...}`). Any other
//! RoPE type is refused by name rather than computed wrongly.

use std::path::Path;

use prunebench_kernels::Matrix;
use serde::Serialize;
use serde_json::Value;

use crate::config::{read_config_json, ModelConfig, MAX_SIZE};
use crate::error::{ModelError, Result};

/// transformers' defaults for keys a LLaMA config may leave out (`LlamaConfig`).
const DEFAULT_EPS: f64 = 1e-6;
const DEFAULT_THETA: f64 = 10_000.0;
const DEFAULT_MAX_POSITIONS: usize = 2048;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlamaConfig {
    /// The shapes (`ModelConfig::from_hf_config`).
    pub model: ModelConfig,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// None for the default RoPE.
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    /// lm_head is `embed_tokens` (and the checkpoint may then have no `lm_head.weight`).
    pub tie_word_embeddings: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum RopeScaling {
    /// LLaMA-3.1's frequency-dependent interpolation (transformers' `_compute_llama3_parameters`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

impl LlamaConfig {
    /// Reads a Hugging Face `config.json`: the shapes as `ModelConfig::from_hf_config` reads
    /// them, and the keys above with transformers' defaults for those absent.
    pub fn from_hf_config(path: &Path) -> Result<LlamaConfig> {
        Self::from_hf_value(&read_config_json(path)?, path)
    }

    /// The same from a parsed `config.json` (`path` names it in errors).
    pub fn from_hf_value(v: &Value, path: &Path) -> Result<LlamaConfig> {
        let model = ModelConfig::from_hf_value(v, path)?;
        let bad = |detail: String| ModelError::BadConfig {
            path: path.to_path_buf(),
            detail,
        };
        // RoPE rotates the pairs (i, i + head_dim/2): an odd width has no such halves.
        if model.head_dim % 2 != 0 {
            return Err(bad(format!(
                "head_dim {} is odd: RoPE rotates the two halves of each head",
                model.head_dim
            )));
        }
        refuse_unsupported_layers(v).map_err(bad)?;
        let vocab_size = positive_int(v, "vocab_size")
            .map_err(&bad)?
            .ok_or_else(|| bad("vocab_size is missing".into()))?;
        // The largest LLaMA-family vocabularies have 128256 (LLaMA 3) to 262144 entries;
        // token ids are u32, and the limit keeps the embedding rows x hidden in range.
        if vocab_size > MAX_SIZE {
            return Err(bad(format!(
                "vocab_size {vocab_size} is larger than the limit {MAX_SIZE}"
            )));
        }
        let rms_norm_eps = match number(v, "rms_norm_eps").map_err(&bad)? {
            Some(e) if e >= 0.0 => e,
            Some(e) => return Err(bad(format!("rms_norm_eps {e} is negative"))),
            None => DEFAULT_EPS,
        };
        let max_position_embeddings = positive_int(v, "max_position_embeddings")
            .map_err(&bad)?
            .unwrap_or(DEFAULT_MAX_POSITIONS);
        let tie_word_embeddings = match present(v, "tie_word_embeddings") {
            None => false,
            Some(x) => x
                .as_bool()
                .ok_or_else(|| bad("tie_word_embeddings is not true or false".into()))?,
        };
        let (rope_theta, rope_scaling) = rope(v).map_err(bad)?;
        Ok(LlamaConfig {
            model,
            vocab_size,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings,
        })
    }

    /// The forward pass's sizes for the suite's forward op cases: the layer's, the vocabulary
    /// and the RoPE base (the cases' tables are the default frequencies: a `llama3` scaling
    /// changes the values, not the work).
    pub fn forward_dims(&self) -> prunebench_kernels::suite::ForwardDims {
        prunebench_kernels::suite::ForwardDims {
            layer: self.model.layer_dims(),
            vocab: self.vocab_size,
            rope_theta: self.rope_theta,
        }
    }

    /// θ_i for i in 0..head_dim/2 in f64, as transformers computes them: the default
    /// θ_i = 1 / rope_theta^(2i / head_dim), then for `llama3` each wavelength λ = 2π/θ_i
    /// shorter than original_max_position_embeddings / high_freq_factor is kept, one longer
    /// than original_max_position_embeddings / low_freq_factor is divided by `factor`, and
    /// one between is interpolated with s = (original / λ − low) / (high − low) as
    /// (1 − s)·θ_i/factor + s·θ_i. transformers itself computes in f32, so its values differ
    /// from these in the 7th or 8th significant digit.
    pub fn inv_freq(&self) -> Vec<f64> {
        let dim = self.model.head_dim as f64;
        (0..self.model.head_dim / 2)
            .map(|i| {
                let theta = 1.0 / self.rope_theta.powf((2 * i) as f64 / dim);
                match self.rope_scaling {
                    None => theta,
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor: low,
                        high_freq_factor: high,
                        original_max_position_embeddings: orig,
                    }) => {
                        let orig = orig as f64;
                        let wavelen = 2.0 * std::f64::consts::PI / theta;
                        if wavelen < orig / high {
                            theta
                        } else if wavelen > orig / low {
                            theta / factor
                        } else {
                            let s = (orig / wavelen - low) / (high - low);
                            (1.0 - s) * theta / factor + s * theta
                        }
                    }
                }
            })
            .collect()
    }

    /// The cos and sin tables [seq, head_dim/2] the kernels' RoPE takes: entry (p, i) is
    /// cos(p·θ_i) (sin(p·θ_i)) for positions p = 0..seq−1, computed in f64 and rounded to f32
    /// once. (transformers computes θ_i and p·θ_i in f32: its tables differ from these by up
    /// to about 1.4e-4 at p < 2048 and 6e-4 at p < 8192, for LLaMA-2 and LLaMA-3.1 alike;
    /// these are the exact values rounded once.)
    pub fn rope_tables(&self, seq: usize) -> (Matrix, Matrix) {
        let inv = self.inv_freq();
        let half = inv.len();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in 0..seq {
            for &t in &inv {
                let (s, c) = (p as f64 * t).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        (
            Matrix {
                rows: seq,
                cols: half,
                data: cos,
            },
            Matrix {
                rows: seq,
                cols: half,
                data: sin,
            },
        )
    }

    /// `original` (a config.json) with intermediate_size, num_attention_heads and
    /// num_key_value_heads replaced, for a structurally pruned checkpoint; every other key is
    /// kept as it was. `head_dim` is also written out when absent (kept when present): readers
    /// derive a missing one as hidden_size / num_attention_heads, which after removing heads
    /// no longer is the width of a head.
    pub fn updated_json(
        original: &Value,
        intermediate: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Value {
        let mut v = original.clone();
        let Some(map) = v.as_object_mut() else {
            return v;
        };
        let int = |k: &str| map.get(k).and_then(Value::as_u64);
        if int("head_dim").is_none() {
            if let (Some(h), Some(n)) = (int("hidden_size"), int("num_attention_heads")) {
                if n > 0 && h % n == 0 {
                    map.insert("head_dim".into(), Value::from(h / n));
                }
            }
        }
        map.insert("intermediate_size".into(), Value::from(intermediate));
        map.insert("num_attention_heads".into(), Value::from(heads));
        map.insert("num_key_value_heads".into(), Value::from(kv_heads));
        v
    }
}

/// `key` when present and not null (transformers treats null as absent).
fn present<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn number(v: &Value, key: &str) -> std::result::Result<Option<f64>, String> {
    match present(v, key) {
        None => Ok(None),
        Some(x) => x
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| format!("{key} is not a finite number")),
    }
}

fn positive_int(v: &Value, key: &str) -> std::result::Result<Option<usize>, String> {
    match present(v, key) {
        None => Ok(None),
        Some(x) => x
            .as_u64()
            .filter(|&n| n > 0)
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("{key} is not a positive integer")),
    }
}

/// Refuses the LLaMA variants the forward does not compute: biases in the attention or MLP
/// linears (it has none), another MLP activation than SiLU. Reading them as a plain LLaMA
/// would give wrong logits without a word.
fn refuse_unsupported_layers(v: &Value) -> std::result::Result<(), String> {
    if let Some(act) = present(v, "hidden_act") {
        if act.as_str() != Some("silu") {
            return Err(format!(
                "hidden_act {act} is not supported (the LLaMA MLP is silu(gate) * up)"
            ));
        }
    }
    for key in ["attention_bias", "mlp_bias"] {
        match present(v, key) {
            None => {}
            Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => {
                return Err(format!(
                    "{key} is true: linears with biases are not supported"
                ))
            }
            Some(_) => return Err(format!("{key} is not true or false")),
        }
    }
    Ok(())
}

/// rope_theta and the scaling, following transformers' `standardize_rope_params`: the RoPE
/// dict is `rope_scaling` when it is a non-empty object, else `rope_parameters`; its
/// `rope_theta` wins over the top-level one; its type is `rope_type`, else `type`, else
/// default; and for llama3 a top-level `original_max_position_embeddings` wins over the dict's.
fn rope(v: &Value) -> std::result::Result<(f64, Option<RopeScaling>), String> {
    let scaling =
        present(v, "rope_scaling").filter(|x| x.as_object().is_none_or(|m| !m.is_empty()));
    let (key, dict) = match (scaling, present(v, "rope_parameters")) {
        (Some(d), _) => ("rope_scaling", Some(d)),
        (None, Some(d)) => ("rope_parameters", Some(d)),
        (None, None) => ("rope_scaling", None),
    };
    if let Some(d) = dict {
        if !d.is_object() {
            return Err(format!("{key} is not an object"));
        }
    }
    let field = |name: &str| dict.and_then(|d| present(d, name));
    let dict_number = |name: &str| -> std::result::Result<Option<f64>, String> {
        match field(name) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .filter(|f| f.is_finite())
                .map(Some)
                .ok_or_else(|| format!("{key}.{name} is not a finite number")),
        }
    };
    let theta = match dict_number("rope_theta")? {
        Some(t) => t,
        None => number(v, "rope_theta")?.unwrap_or(DEFAULT_THETA),
    };
    if theta <= 0.0 {
        return Err(format!("rope_theta {theta} is not positive"));
    }
    // A partial rotary factor rotates only part of each head: not a LLaMA, and not computed.
    for p in [
        dict_number("partial_rotary_factor")?,
        number(v, "partial_rotary_factor")?,
    ]
    .into_iter()
    .flatten()
    {
        if p != 1.0 {
            return Err(format!(
                "partial_rotary_factor {p} is not supported (prunebench rotates whole heads)"
            ));
        }
    }
    let kind = match field("rope_type").or_else(|| field("type")) {
        None => "default",
        Some(t) => t
            .as_str()
            .ok_or_else(|| format!("{key} type {t} is not a string"))?,
    };
    let scaling = match kind {
        "default" => None,
        "llama3" => {
            let need = |name: &str| -> std::result::Result<f64, String> {
                dict_number(name)?.ok_or_else(|| {
                    format!(
                        "{key}.{name} is missing (llama3 RoPE needs factor, low_freq_factor, \
                         high_freq_factor and original_max_position_embeddings)"
                    )
                })
            };
            let factor = need("factor")?;
            let low = need("low_freq_factor")?;
            let high = need("high_freq_factor")?;
            let orig = match positive_int(v, "original_max_position_embeddings")? {
                Some(n) => n,
                None => match field("original_max_position_embeddings") {
                    None => {
                        return Err(format!(
                            "{key}.original_max_position_embeddings is missing (llama3 RoPE \
                             needs factor, low_freq_factor, high_freq_factor and \
                             original_max_position_embeddings)"
                        ))
                    }
                    Some(x) => x
                        .as_u64()
                        .filter(|&n| n > 0)
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| {
                            format!(
                                "{key}.original_max_position_embeddings is not a positive integer"
                            )
                        })?,
                },
            };
            // Each is a divisor in the adjustment: zero or a reversed band gives Inf or NaN.
            if factor <= 0.0 {
                return Err(format!("{key}.factor {factor} is not positive"));
            }
            if low <= 0.0 {
                return Err(format!("{key}.low_freq_factor {low} is not positive"));
            }
            if high <= low {
                return Err(format!(
                    "{key}.high_freq_factor {high} is not above low_freq_factor {low}"
                ));
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: orig,
            })
        }
        other => {
            return Err(format!(
                "unknown {key} type \"{other}\" (prunebench supports default and llama3)"
            ))
        }
    };
    Ok((theta, scaling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_from(json: &str) -> Result<LlamaConfig> {
        let dir = tempfile::tempdir().unwrap();
        // The model is named after its folder: the same name for every config compared.
        let model = dir.path().join("llama");
        std::fs::create_dir(&model).unwrap();
        let path = model.join("config.json");
        std::fs::write(&path, json).unwrap();
        LlamaConfig::from_hf_config(&path)
    }

    /// LLaMA-3.1-8B's config.json, its RoPE keys spelled `rope` (classic or transformers 5).
    fn llama31(rope: &str) -> String {
        format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
                "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-05,
                "max_position_embeddings": 131072, "hidden_act": "silu",
                "attention_bias": false, "mlp_bias": false, "tie_word_embeddings": false,
                {rope}}}"#
        )
    }

    const CLASSIC: &str = r#""rope_theta": 500000.0, "rope_scaling": {"factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"}"#;

    /// (i, θ_i) for LLaMA-3.1-8B as transformers 5.24 computes them (in f32), from
    ///   python -c "from transformers import LlamaConfig;
    ///     from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding as R;
    ///     c = LlamaConfig.from_dict({'hidden_size': 4096, 'num_attention_heads': 32,
    ///       'max_position_embeddings': 131072, 'rope_theta': 500000.0,
    ///       'rope_scaling': {'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
    ///       'original_max_position_embeddings': 8192, 'rope_type': 'llama3'}});
    ///     print([(i, R(c).inv_freq[i].item()) for i in [0,1,10,24,25,28,30,33,34,35,40,63]])"
    /// Indices 0-24 are the kept high frequencies, 25-34 the interpolated band, 35-63 divided
    /// by the factor.
    const HF_LLAMA31: [(usize, f64); 12] = [
        (0, 1.0),
        (1, 0.8146172165870667),
        (10, 0.12868738174438477),
        (24, 0.00729266507551074),
        (25, 0.005940730683505535),
        (28, 0.0032114461064338684),
        (30, 0.0013718936825171113),
        (33, 0.0003126936499029398),
        (34, 0.0001785077911335975),
        (35, 9.556212171446532e-05),
        (40, 3.428102354519069e-05),
        (63, 3.068925877869333e-07),
    ];

    /// The same formula evaluated in f64 in Python (`math`, no torch), which these must match
    /// to rounding: t = 1/500000**(2i/128), w = 2π/t, t if w < 2048, t/8 if w > 8192, else
    /// (1-s)·t/8 + s·t with s = (8192/w - 1)/3.
    const F64_LLAMA31: [(usize, f64); 12] = [
        (0, 1.0),
        (1, 0.8146172338565447),
        (10, 0.12868737343265052),
        (24, 0.0072926647372171085),
        (25, 0.005940730375674967),
        (28, 0.0032114459947525913),
        (30, 0.0013718935677611381),
        (33, 0.00031269375038406517),
        (34, 0.00017850781276799638),
        (35, 9.556212353964683e-05),
        (40, 3.428102195952591e-05),
        (63, 3.068925988914511e-07),
    ];

    fn close(got: &[f64], want: &[(usize, f64)], rel: f64) {
        for &(i, w) in want {
            let r = (got[i] - w).abs() / w;
            assert!(r <= rel, "θ_{i}: {} vs {w} (relative {r:e})", got[i]);
        }
    }

    #[test]
    fn llama31_frequencies_match_transformers() {
        let c = config_from(&llama31(CLASSIC)).unwrap();
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            })
        );
        assert_eq!(
            (
                c.vocab_size,
                c.rms_norm_eps,
                c.rope_theta,
                c.max_position_embeddings
            ),
            (128256, 1e-5, 500000.0, 131072)
        );
        assert!(!c.tie_word_embeddings);
        let inv = c.inv_freq();
        assert_eq!(inv.len(), 64);
        // transformers' f32 arithmetic: a few f32 ulps (2^-24 ≈ 6e-8) apart.
        close(&inv, &HF_LLAMA31, 5e-7);
        close(&inv, &F64_LLAMA31, 1e-14);
    }

    #[test]
    fn every_spelling_of_the_rope_keys_reads_the_same() {
        let want = config_from(&llama31(CLASSIC)).unwrap();
        for rope in [
            // The older key name `type`.
            r#""rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
               "type": "llama3"}"#,
            // transformers 5: everything in rope_parameters, no top-level rope_theta.
            r#""rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3",
               "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}"#,
            // rope_scaling wins over rope_parameters, the dict's theta over the top level.
            r#""rope_theta": 10000.0, "rope_parameters": {"rope_type": "default"},
               "rope_scaling": {"rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1,
               "high_freq_factor": 4, "original_max_position_embeddings": 8192,
               "rope_type": "llama3"}"#,
        ] {
            assert_eq!(config_from(&llama31(rope)).unwrap(), want, "{rope}");
        }
    }

    #[test]
    fn a_top_level_original_length_wins_as_in_transformers() {
        // transformers moves a top-level original_max_position_embeddings into the RoPE
        // parameters over the dict's; its θ_i for 4096 (same command, the key added).
        let c = config_from(&llama31(&format!(
            "{CLASSIC}, \"original_max_position_embeddings\": 4096"
        )))
        .unwrap();
        close(
            &c.inv_freq(),
            &[
                (24, 0.00729266507551074),
                (25, 0.005720249842852354),
                (28, 0.0014257163275033236),
                (30, 0.0005083535215817392),
                (34, 0.00011730923142749816),
                (35, 9.556212171446532e-05),
            ],
            5e-7,
        );
    }

    #[test]
    fn llama1_and_2_configs_get_the_defaults() {
        // LLaMA-1 configs have none of the RoPE keys; rope_scaling: null is LLaMA-2's.
        for extra in ["", r#", "rope_scaling": null, "rope_theta": 10000.0"#] {
            let c = config_from(&format!(
                r#"{{"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "vocab_size": 32000{extra}}}"#
            ))
            .unwrap();
            assert_eq!(c.rope_scaling, None);
            assert_eq!(
                (c.rms_norm_eps, c.rope_theta, c.max_position_embeddings),
                (1e-6, 10000.0, 2048)
            );
            assert!(!c.tie_word_embeddings);
            // transformers' default θ_i for head_dim 128 (f32), then the f64 values.
            let inv = c.inv_freq();
            close(
                &inv,
                &[
                    (1, 0.8659643530845642),
                    (10, 0.23713736236095428),
                    (33, 0.00865964312106371),
                    (63, 0.00011547819303814322),
                ],
                5e-7,
            );
            close(
                &inv,
                &[
                    (1, 0.8659643233600653),
                    (10, 0.23713737056616555),
                    (33, 0.008659643233600653),
                    (63, 0.00011547819846894582),
                ],
                1e-14,
            );
        }
    }

    #[test]
    fn rope_tables_hold_cos_and_sin_per_position() {
        let c = config_from(&llama31(CLASSIC)).unwrap();
        let inv = c.inv_freq();
        let (cos, sin) = c.rope_tables(5);
        assert_eq!((cos.rows, cos.cols, sin.rows, sin.cols), (5, 64, 5, 64));
        assert!(cos.data[..64].iter().all(|&v| v == 1.0));
        assert!(sin.data[..64].iter().all(|&v| v == 0.0));
        for (p, i) in [(1, 0), (4, 3), (4, 63)] {
            let a = p as f64 * inv[i];
            assert_eq!(cos.data[p * 64 + i], a.cos() as f32);
            assert_eq!(sin.data[p * 64 + i], a.sin() as f32);
        }
        assert_eq!(c.rope_tables(0).0.data.len(), 0);
    }

    #[test]
    fn unsupported_or_broken_configs_are_named() {
        for (rope, needle) in [
            (
                r#""rope_scaling": {"type": "yarn", "factor": 4.0}"#,
                r#"unknown rope_scaling type "yarn" (prunebench supports default and llama3)"#,
            ),
            (
                r#""rope_scaling": {"rope_type": "linear", "factor": 2.0}"#,
                r#"unknown rope_scaling type "linear""#,
            ),
            (
                r#""rope_parameters": {"rope_type": "dynamic", "factor": 2.0}"#,
                r#"unknown rope_parameters type "dynamic""#,
            ),
            (
                r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192}"#,
                "rope_scaling.high_freq_factor is missing",
            ),
            (
                r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0}"#,
                "rope_scaling.original_max_position_embeddings is missing",
            ),
            (
                r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#,
                "high_freq_factor 4 is not above low_freq_factor 4",
            ),
            (
                r#""rope_scaling": "llama3""#,
                "rope_scaling is not an object",
            ),
            (r#""rope_theta": -1"#, "rope_theta -1 is not positive"),
            (
                r#""partial_rotary_factor": 0.5"#,
                "partial_rotary_factor 0.5",
            ),
            (
                r#""hidden_act": "gelu""#,
                r#"hidden_act "gelu" is not supported"#,
            ),
            (r#""attention_bias": true"#, "attention_bias is true"),
            (
                r#""rms_norm_eps": -1e-6"#,
                "rms_norm_eps -0.000001 is negative",
            ),
            (
                r#""tie_word_embeddings": 1"#,
                "tie_word_embeddings is not true or false",
            ),
        ] {
            let json = format!(
                r#"{{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "vocab_size": 100, {rope}}}"#
            );
            let e = config_from(&json).unwrap_err();
            assert!(matches!(e, ModelError::BadConfig { .. }), "{e}");
            let e = e.to_string();
            assert!(
                e.contains(needle) && e.contains("config.json"),
                "{e}\nshould say {needle}"
            );
        }
        let e = config_from(
            r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "head_dim": 15, "vocab_size": 100}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("head_dim 15 is odd"), "{e}");
        let e = config_from(
            r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("vocab_size is missing"), "{e}");
    }

    #[test]
    fn updated_json_replaces_the_pruned_sizes_only() {
        let original: Value = serde_json::from_str(
            r#"{"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
                "num_hidden_layers": 32, "torch_dtype": "float16", "rope_scaling": null,
                "architectures": ["LlamaForCausalLM"]}"#,
        )
        .unwrap();
        let v = LlamaConfig::updated_json(&original, 8192, 16, 16);
        let want: Value = serde_json::from_str(
            r#"{"hidden_size": 4096, "intermediate_size": 8192, "num_attention_heads": 16,
                "num_key_value_heads": 16, "head_dim": 128, "num_hidden_layers": 32,
                "torch_dtype": "float16", "rope_scaling": null,
                "architectures": ["LlamaForCausalLM"]}"#,
        )
        .unwrap();
        assert_eq!(v, want);
        // A head_dim given is kept.
        let mut with_dim = original.clone();
        with_dim["head_dim"] = Value::from(64);
        assert_eq!(
            LlamaConfig::updated_json(&with_dim, 8192, 16, 4)["head_dim"],
            64
        );
    }
}
