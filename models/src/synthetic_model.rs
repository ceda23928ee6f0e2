//! A whole seeded synthetic LLaMA as a Hugging Face folder, for running `prune-model` and
//! `perplexity` where no checkpoint can be downloaded: the layers of [`synthetic_layer`] (the
//! same weights `prune` draws for a layer), embeddings and an LM head of the same scale,
//! `model.norm` like the layers' norms, a config.json with every key the forward reads, and
//! seeded token ids to calibrate and evaluate on (`token_ids.json`; no tokenizer).

use std::collections::HashMap;
use std::path::Path;

use prunebench_kernels::rng::Rng;

use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::error::{io, Result};
use crate::mapped::{write_matrices, TensorHeader};
use crate::output::write_file;
use crate::synthetic::synthetic_layer;
use crate::NormWeight;

/// The token-id file written beside the weights.
pub const TOKEN_IDS: &str = "token_ids.json";

pub struct SyntheticModel {
    pub cfg: ModelConfig,
    pub vocab: usize,
    pub seed: u64,
    /// Token ids written to `token_ids.json`.
    pub tokens: usize,
}

fn normal_matrix(rows: usize, cols: usize, std: f64, rng: &mut Rng) -> Vec<f32> {
    (0..rows * cols)
        .map(|_| (std * rng.normal()) as f32)
        .collect()
}

/// Token ids with a heavy-tailed (Zipf-like) frequency, as text has: id ∝ u^3 over the vocabulary.
fn token_ids(n: usize, vocab: usize, rng: &mut Rng) -> Vec<u32> {
    (0..n)
        .map(|_| ((rng.uniform().powi(3) * vocab as f64) as usize).min(vocab - 1) as u32)
        .collect()
}

impl SyntheticModel {
    /// Host bytes `write` holds at its peak: every weight in f32 (the layers are drawn before
    /// the file is streamed out), the token ids and their JSON text (at most 8 bytes an id).
    /// Saturates rather than wraps for sizes no machine has.
    pub fn host_bytes(&self) -> u64 {
        let c = &self.cfg;
        let per_layer: u64 = c
            .linears()
            .iter()
            .map(|l| (l.rows as u64).saturating_mul(l.cols as u64))
            .fold(2 * c.hidden as u64, u64::saturating_add);
        let weights = (c.num_layers as u64)
            .saturating_mul(per_layer)
            .saturating_add((2 * self.vocab as u64 + 1).saturating_mul(c.hidden as u64));
        weights
            .saturating_mul(4)
            .saturating_add((self.tokens as u64).saturating_mul(12))
    }

    /// Writes the folder `dir` (which must not exist yet or be empty) in `dtype`.
    pub fn write(&self, dir: &Path, dtype: DType) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cfg = &self.cfg;
        let d = cfg.hidden;
        let mut rng = Rng::derive(self.seed, &[0x6d6f64656c]);
        let embed = normal_matrix(self.vocab, d, 0.02, &mut rng);
        let head = normal_matrix(self.vocab, d, 0.02, &mut rng);
        let final_norm: Vec<f32> = (0..d).map(|_| (0.3 * rng.normal()).exp() as f32).collect();
        let layers: Vec<_> = (0..cfg.num_layers)
            .map(|l| synthetic_layer(cfg, l, &cfg.linears(), self.seed))
            .collect();
        let mut all: Vec<(TensorHeader, &[f32])> = vec![
            (
                TensorHeader::new(
                    "model.embed_tokens.weight".into(),
                    dtype,
                    vec![self.vocab, d],
                ),
                &embed,
            ),
            (
                TensorHeader::new("model.norm.weight".into(), dtype, vec![d]),
                &final_norm,
            ),
            (
                TensorHeader::new("lm_head.weight".into(), dtype, vec![self.vocab, d]),
                &head,
            ),
        ];
        for lw in &layers {
            for (l, m) in &lw.linears {
                all.push((
                    TensorHeader::new(l.hf_tensor_name(lw.layer), dtype, vec![m.rows, m.cols]),
                    &m.data,
                ));
            }
            for n in &lw.norms {
                let name = NormWeight::hf_tensor_name(n.group, lw.layer).expect("normed group");
                all.push((TensorHeader::new(name, dtype, vec![d]), &n.data));
            }
        }
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        write_matrices(&dir.join("model.safetensors"), all, meta)?;
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": cfg.hidden,
            "intermediate_size": cfg.intermediate,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": self.vocab,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "rope_scaling": null,
            "tie_word_embeddings": false,
            "hidden_act": "silu",
            "torch_dtype": match dtype {
                DType::F32 => "float32",
                DType::F16 => "float16",
                DType::BF16 => "bfloat16",
            },
            "prunebench_synthetic_seed": self.seed,
        });
        let text = serde_json::to_string_pretty(&config).expect("json");
        write_file(&dir.join("config.json"), text.as_bytes())?;
        let ids = token_ids(self.tokens, self.vocab, &mut rng);
        let text = serde_json::to_string(&ids).expect("json");
        write_file(&dir.join(TOKEN_IDS), text.as_bytes())
    }
}
