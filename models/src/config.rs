//! The LLaMA family as data: hidden and intermediate sizes, heads, and from them the seven
//! linear shapes of a decoder layer and which linears share an input (ALGORITHMS.md §8).

use std::path::Path;

use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::input::read_input_text;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelConfig {
    pub name: String,
    pub hidden: usize,
    pub intermediate: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// The input a linear sees; linears with the same input share its statistics (a, H).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum InputGroup {
    /// The post-attention-norm hidden state h: q, k, v.
    AttnIn,
    /// The attention output: o_proj.
    AttnOut,
    /// The post-MLP-norm hidden state: gate, up.
    MlpIn,
    /// silu(gate)·up: down_proj.
    MlpAct,
}

impl InputGroup {
    pub const ALL: [InputGroup; 4] = [
        InputGroup::AttnIn,
        InputGroup::AttnOut,
        InputGroup::MlpIn,
        InputGroup::MlpAct,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            InputGroup::AttnIn => "attn_in",
            InputGroup::AttnOut => "attn_out",
            InputGroup::MlpIn => "mlp_in",
            InputGroup::MlpAct => "mlp_act",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == s)
    }
}

/// One linear: `rows x cols` = out_features x in_features, the HF/PyTorch layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinearSpec {
    pub name: &'static str,
    pub rows: usize,
    pub cols: usize,
    pub input: InputGroup,
}

impl LinearSpec {
    pub fn hf_tensor_name(&self, layer: usize) -> String {
        let block = match self.input {
            InputGroup::AttnIn | InputGroup::AttnOut => "self_attn",
            InputGroup::MlpIn | InputGroup::MlpAct => "mlp",
        };
        format!("model.layers.{layer}.{block}.{}.weight", self.name)
    }
}

pub const LINEAR_NAMES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

fn llama(
    name: &str,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv: usize,
) -> ModelConfig {
    ModelConfig {
        name: name.into(),
        hidden,
        intermediate,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: hidden / heads,
    }
}

/// Every built-in model. `tiny` is LLaMA-shaped (GQA included) and small enough for tests
/// and the default run on a CPU.
pub fn known_models() -> Vec<ModelConfig> {
    vec![
        ModelConfig {
            name: "tiny".into(),
            hidden: 256,
            intermediate: 688,
            num_layers: 4,
            num_heads: 8,
            num_kv_heads: 4,
            head_dim: 32,
        },
        llama("llama-7b", 4096, 11008, 32, 32, 32),
        llama("llama-13b", 5120, 13824, 40, 40, 40),
        llama("llama-30b", 6656, 17920, 60, 52, 52),
        llama("llama-65b", 8192, 22016, 80, 64, 64),
        llama("llama2-7b", 4096, 11008, 32, 32, 32),
        llama("llama2-13b", 5120, 13824, 40, 40, 40),
        llama("llama2-70b", 8192, 28672, 80, 64, 8),
        llama("llama3-8b", 4096, 14336, 32, 32, 8),
    ]
}

pub fn lookup(name: &str) -> Result<ModelConfig> {
    let models = known_models();
    models
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name.trim()))
        .cloned()
        .ok_or_else(|| ModelError::UnknownModel {
            name: name.to_string(),
            known: models
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The largest size (hidden_size, intermediate_size, a head count, head_dim, and the widths
/// heads x head_dim) read from a config.json. The largest LLaMA-family models are 16384 wide
/// with a 53248 intermediate size and 128 heads (LLaMA 3.1 405B): 2^20 leaves 20x room, while
/// a matrix of two such sizes (2^40 values, 2^42 bytes in f32) is still far from overflowing
/// a 64-bit size, so the shape arithmetic downstream cannot wrap. A larger value is a typo or
/// a corrupt file, refused here rather than reported later as a nonsense shape.
pub const MAX_SIZE: usize = 1 << 20;

/// The most decoder layers read from a config.json: the largest LLaMA has 126; 2^16 is as
/// generous, and keeps layer indices printable and tensor names short.
pub const MAX_LAYERS: usize = 1 << 16;

/// `num_attention_heads x head_dim` is q_proj's output width: it must stay within
/// `MAX_SIZE`, and is computed without overflow.
fn width_within_limit(heads: usize, head_dim: usize) -> std::result::Result<(), String> {
    match heads.checked_mul(head_dim) {
        Some(w) if w <= MAX_SIZE => Ok(()),
        w => Err(format!(
            "num_attention_heads x head_dim = {heads} x {head_dim} = {} is larger than the limit {MAX_SIZE}",
            w.map_or_else(|| "more than a usize holds".to_string(), |w| w.to_string())
        )),
    }
}

/// A `config.json` parsed, not yet interpreted.
pub(crate) fn read_config_json(path: &Path) -> Result<serde_json::Value> {
    let text = read_input_text(path, "a JSON model config")?;
    serde_json::from_str(&text).map_err(|e| ModelError::BadConfig {
        path: path.to_path_buf(),
        detail: format!("not valid JSON: {e}"),
    })
}

impl ModelConfig {
    /// Reads a Hugging Face `config.json`; the model is named after its folder.
    pub fn from_hf_config(path: &Path) -> Result<ModelConfig> {
        Self::from_hf_value(&read_config_json(path)?, path)
    }

    /// The shape keys of a parsed `config.json` read from `path` (named in errors, and the
    /// model named after its folder).
    pub fn from_hf_value(v: &serde_json::Value, path: &Path) -> Result<ModelConfig> {
        let bad = |detail: String| ModelError::BadConfig {
            path: path.to_path_buf(),
            detail,
        };
        let get = |key: &str| -> Result<Option<usize>> {
            let Some(x) = v.get(key).filter(|x| !x.is_null()) else {
                return Ok(None);
            };
            let n = x
                .as_u64()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("{key} is not a positive integer")))?;
            let max = if key == "num_hidden_layers" {
                MAX_LAYERS
            } else {
                MAX_SIZE
            };
            match usize::try_from(n) {
                Ok(n) if n <= max => Ok(Some(n)),
                _ => Err(bad(format!("{key} {n} is larger than the limit {max}"))),
            }
        };
        let need = |key: &str| get(key)?.ok_or_else(|| bad(format!("{key} is missing")));
        let hidden = need("hidden_size")?;
        let heads = need("num_attention_heads")?;
        let kv_heads = get("num_key_value_heads")?.unwrap_or(heads);
        if heads % kv_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        let head_dim = match get("head_dim")? {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(bad(format!(
                    "head_dim is missing and hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
                )))
            }
        };
        // A relative "config.json" has an empty parent: name the model after the folder it
        // resolves to.
        let name = path
            .parent()
            .map(|p| p.canonicalize().unwrap_or_else(|_| p.to_path_buf()))
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "checkpoint".into());
        // num_key_value_heads divides num_attention_heads, so its product is no larger.
        width_within_limit(heads, head_dim).map_err(bad)?;
        Ok(ModelConfig {
            name,
            hidden,
            intermediate: need("intermediate_size")?,
            num_layers: need("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
        })
    }

    /// The seven linears in HF order.
    pub fn linears(&self) -> Vec<LinearSpec> {
        let (h, i) = (self.hidden, self.intermediate);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let l = |name, rows, cols, input| LinearSpec {
            name,
            rows,
            cols,
            input,
        };
        vec![
            l("q_proj", q, h, InputGroup::AttnIn),
            l("k_proj", kv, h, InputGroup::AttnIn),
            l("v_proj", kv, h, InputGroup::AttnIn),
            l("o_proj", h, q, InputGroup::AttnOut),
            l("gate_proj", i, h, InputGroup::MlpIn),
            l("up_proj", i, h, InputGroup::MlpIn),
            l("down_proj", h, i, InputGroup::MlpAct),
        ]
    }

    /// The sizes §11's structured groups are cut from, for the suite's structured op cases.
    pub fn layer_dims(&self) -> prunebench_kernels::suite::LayerDims {
        prunebench_kernels::suite::LayerDims {
            hidden: self.hidden,
            intermediate: self.intermediate,
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// The sizes of the whole forward pass (§14), for the suite's forward op cases: the layer's,
    /// the vocabulary and the RoPE base. The shapes do not carry the last two (a checkpoint's
    /// `LlamaConfig::forward_dims` reads them from its config.json), so here they come from the
    /// family: LLaMA 3's 128256 tokens at θ = 500000 for a name with `llama3` or `llama-3` in
    /// it, the training script's 4096 tokens for `tiny`, LLaMA 1 and 2's 32000 at θ = 10000
    /// otherwise.
    pub fn forward_dims(&self) -> prunebench_kernels::suite::ForwardDims {
        let name = self.name.to_ascii_lowercase();
        let (vocab, rope_theta) = if name.contains("llama3") || name.contains("llama-3") {
            (128_256, 500_000.0)
        } else if name == "tiny" {
            (4096, 10_000.0)
        } else {
            (32_000, 10_000.0)
        };
        prunebench_kernels::suite::ForwardDims {
            layer: self.layer_dims(),
            vocab,
            rope_theta,
        }
    }

    pub fn linear(&self, name: &str) -> Result<LinearSpec> {
        self.linears()
            .into_iter()
            .find(|l| l.name == name.trim())
            .ok_or_else(|| ModelError::UnknownLinear { name: name.into() })
    }

    /// Each distinct input and its width.
    pub fn input_groups(&self) -> Vec<(InputGroup, usize)> {
        let mut out: Vec<(InputGroup, usize)> = Vec::new();
        for l in self.linears() {
            if !out.iter().any(|(g, _)| *g == l.input) {
                out.push((l.input, l.cols));
            }
        }
        out
    }

    pub fn group_cols(&self, group: InputGroup) -> usize {
        self.input_groups()
            .into_iter()
            .find(|(g, _)| *g == group)
            .map_or(0, |(_, c)| c)
    }

    pub fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.num_layers {
            return Err(ModelError::LayerOutOfRange {
                layer,
                model: self.name.clone(),
                layers: self.num_layers,
            });
        }
        Ok(())
    }
}

/// `all`, or a comma-separated list of linear names, in the order given.
pub fn parse_linears(cfg: &ModelConfig, list: &str) -> Result<Vec<LinearSpec>> {
    if list.trim() == "all" {
        return Ok(cfg.linears());
    }
    let mut out: Vec<LinearSpec> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let l = cfg.linear(name)?;
        if !out.contains(&l) {
            out.push(l);
        }
    }
    if out.is_empty() {
        return Err(ModelError::UnknownLinear { name: list.into() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(name: &str) -> Vec<(&'static str, usize, usize)> {
        lookup(name)
            .unwrap()
            .linears()
            .into_iter()
            .map(|l| (l.name, l.rows, l.cols))
            .collect()
    }

    #[test]
    fn forward_dims_by_family() {
        let f = |name: &str| {
            let d = lookup(name).unwrap().forward_dims();
            (d.vocab, d.rope_theta, d.layer.kv_heads)
        };
        assert_eq!(f("llama-7b"), (32_000, 10_000.0, 32));
        assert_eq!(f("llama2-70b"), (32_000, 10_000.0, 8));
        assert_eq!(f("llama3-8b"), (128_256, 500_000.0, 8));
        assert_eq!(f("tiny"), (4096, 10_000.0, 4));
    }

    #[test]
    fn llama_shapes_match_the_papers() {
        assert_eq!(
            shapes("llama-7b"),
            vec![
                ("q_proj", 4096, 4096),
                ("k_proj", 4096, 4096),
                ("v_proj", 4096, 4096),
                ("o_proj", 4096, 4096),
                ("gate_proj", 11008, 4096),
                ("up_proj", 11008, 4096),
                ("down_proj", 4096, 11008)
            ]
        );
        assert_eq!(
            shapes("llama2-70b"),
            vec![
                ("q_proj", 8192, 8192),
                ("k_proj", 1024, 8192),
                ("v_proj", 1024, 8192),
                ("o_proj", 8192, 8192),
                ("gate_proj", 28672, 8192),
                ("up_proj", 28672, 8192),
                ("down_proj", 8192, 28672)
            ]
        );
        assert_eq!(
            shapes("llama3-8b"),
            vec![
                ("q_proj", 4096, 4096),
                ("k_proj", 1024, 4096),
                ("v_proj", 1024, 4096),
                ("o_proj", 4096, 4096),
                ("gate_proj", 14336, 4096),
                ("up_proj", 14336, 4096),
                ("down_proj", 4096, 14336)
            ]
        );
        assert_eq!(
            shapes("tiny"),
            vec![
                ("q_proj", 256, 256),
                ("k_proj", 128, 256),
                ("v_proj", 128, 256),
                ("o_proj", 256, 256),
                ("gate_proj", 688, 256),
                ("up_proj", 688, 256),
                ("down_proj", 256, 688)
            ]
        );
        // The other sizes of ALGORITHMS.md §8: (hidden, intermediate, layers).
        for (name, h, i, n) in [
            ("llama-13b", 5120, 13824, 40),
            ("llama-30b", 6656, 17920, 60),
            ("llama-65b", 8192, 22016, 80),
            ("llama2-7b", 4096, 11008, 32),
            ("llama2-13b", 5120, 13824, 40),
            ("llama2-70b", 8192, 28672, 80),
            ("llama3-8b", 4096, 14336, 32),
        ] {
            let c = lookup(name).unwrap();
            assert_eq!(
                (c.hidden, c.intermediate, c.num_layers),
                (h, i, n),
                "{name}"
            );
            assert_eq!(c.num_heads * c.head_dim, h, "{name}");
        }
        assert_eq!(known_models().len(), 9);
    }

    #[test]
    fn names_and_groups() {
        let cfg = lookup("llama-7b").unwrap();
        assert_eq!(
            cfg.linear("gate_proj").unwrap().hf_tensor_name(3),
            "model.layers.3.mlp.gate_proj.weight"
        );
        assert_eq!(
            cfg.linear("o_proj").unwrap().hf_tensor_name(0),
            "model.layers.0.self_attn.o_proj.weight"
        );
        assert_eq!(
            cfg.input_groups(),
            vec![
                (InputGroup::AttnIn, 4096),
                (InputGroup::AttnOut, 4096),
                (InputGroup::MlpIn, 4096),
                (InputGroup::MlpAct, 11008)
            ]
        );
        let inputs: Vec<&str> = cfg.linears().iter().map(|l| l.input.name()).collect();
        assert_eq!(
            inputs,
            ["attn_in", "attn_in", "attn_in", "attn_out", "mlp_in", "mlp_in", "mlp_act"]
        );
        for g in InputGroup::ALL {
            assert_eq!(InputGroup::parse(g.name()), Some(g));
        }
        assert_eq!(InputGroup::parse("mlp"), None);
        let sel = parse_linears(&cfg, "q_proj, k_proj,q_proj").unwrap();
        let names: Vec<&str> = sel.iter().map(|l| l.name).collect();
        assert_eq!(names, ["q_proj", "k_proj"]);
        assert_eq!(parse_linears(&cfg, "all").unwrap(), cfg.linears());
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let e = lookup("gpt-2").unwrap_err();
        assert!(matches!(e, ModelError::UnknownModel { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("gpt-2") && e.contains("llama-7b") && e.contains("tiny"),
            "{e}"
        );
        let cfg = lookup("tiny").unwrap();
        let e = parse_linears(&cfg, "q_proj,x_proj").unwrap_err();
        assert!(matches!(e, ModelError::UnknownLinear { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("x_proj") && e.contains("down_proj"), "{e}");
        assert!(matches!(
            cfg.linear("lm_head"),
            Err(ModelError::UnknownLinear { .. })
        ));
        assert!(parse_linears(&cfg, " , ").is_err());
        let e = cfg.check_layer(4).unwrap_err();
        assert!(matches!(e, ModelError::LayerOutOfRange { .. }));
        assert!(e.to_string().contains("0-3"), "{e}");
        assert!(cfg.check_layer(3).is_ok());
    }

    fn config_from(json: &str) -> Result<ModelConfig> {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("my-llama");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), json).unwrap();
        ModelConfig::from_hf_config(&model.join("config.json"))
    }

    #[test]
    fn hf_configs_are_read_with_their_defaults() {
        // LLaMA-1 configs have neither num_key_value_heads nor head_dim.
        let c = config_from(
            r#"{"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                "num_attention_heads": 32, "torch_dtype": "float16"}"#,
        )
        .unwrap();
        let mut want = lookup("llama-7b").unwrap();
        want.name = "my-llama".into();
        assert_eq!(c, want);
        let c = config_from(
            r#"{"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128}"#,
        )
        .unwrap();
        assert_eq!(c.linear("k_proj").unwrap().rows, 1024);

        for (json, needle) in [
            (r#"{"hidden_size": 64}"#, "num_attention_heads is missing"),
            (
                r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": -4}"#,
                "num_attention_heads is not a positive integer",
            ),
            (
                r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 6}"#,
                "head_dim is missing",
            ),
            (
                r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 3}"#,
                "not a multiple of num_key_value_heads 3",
            ),
            ("{not json", "not valid JSON"),
        ] {
            let e = config_from(json).unwrap_err();
            assert!(matches!(e, ModelError::BadConfig { .. }), "{e}");
            let e = e.to_string();
            assert!(e.contains(needle) && e.contains("config.json"), "{e}");
        }
    }

    #[test]
    fn sizes_are_bounded_at_the_limit() {
        let json = |hidden: usize, heads: usize, head_dim: usize| {
            format!(
                r#"{{"hidden_size": {hidden}, "intermediate_size": 64, "num_hidden_layers": 1,
                    "num_attention_heads": {heads}, "head_dim": {head_dim}}}"#
            )
        };
        assert_eq!(
            config_from(&json(MAX_SIZE, 1, MAX_SIZE)).unwrap().hidden,
            MAX_SIZE
        );
        let e = config_from(&json(MAX_SIZE + 1, 1, 64))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hidden_size 1048577 is larger than the limit 1048576"),
            "{e}"
        );
        let e = config_from(&json(64, 2, MAX_SIZE)).unwrap_err().to_string();
        assert!(
            e.contains("num_attention_heads x head_dim = 2 x 1048576"),
            "{e}"
        );
        assert!(width_within_limit(usize::MAX, 2)
            .unwrap_err()
            .contains("more than a usize holds"));
    }
}
