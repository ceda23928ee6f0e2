//! What a whole-model run checks before its first layer: every tensor it will read is in the
//! checkpoint with the shape config.json implies (from the safetensors headers alone, no
//! weights read), so a checkpoint with fewer layers than its config, a missing final norm or
//! an embedding of the wrong width is refused at once, naming the tensor, rather than after
//! hours of pruning.

use std::collections::HashMap;

use prunebench_models::checkpoint::Checkpoint;
use prunebench_models::llama::LlamaConfig;
use prunebench_models::{InputGroup, ModelError, NormWeight};

use super::forward::{Weights, EMBED, FINAL_NORM, LM_HEAD};
use crate::error::{HarnessError, Result};

/// One tensor the run reads: its name, the shape it must have, and where that shape comes from.
struct Expected {
    name: String,
    shape: Vec<usize>,
    from: &'static str,
    layer: Option<usize>,
}

fn expected(cfg: &LlamaConfig, head: &str) -> Vec<Expected> {
    let m = &cfg.model;
    let (vocab, d) = (cfg.vocab_size, m.hidden);
    let table = "[vocab_size, hidden_size]";
    let mut out = vec![
        Expected {
            name: EMBED.into(),
            shape: vec![vocab, d],
            from: table,
            layer: None,
        },
        Expected {
            name: FINAL_NORM.into(),
            shape: vec![d],
            from: "[hidden_size]",
            layer: None,
        },
    ];
    if head == LM_HEAD {
        out.push(Expected {
            name: LM_HEAD.into(),
            shape: vec![vocab, d],
            from: table,
            layer: None,
        });
    }
    for layer in 0..m.num_layers {
        for spec in m.linears() {
            out.push(Expected {
                name: spec.hf_tensor_name(layer),
                shape: vec![spec.rows, spec.cols],
                from: "the sizes and heads",
                layer: Some(layer),
            });
        }
        for group in [InputGroup::AttnIn, InputGroup::MlpIn] {
            if let Some(name) = NormWeight::hf_tensor_name(group, layer) {
                out.push(Expected {
                    name,
                    shape: vec![d],
                    from: "[hidden_size]",
                    layer: Some(layer),
                });
            }
        }
    }
    out
}

/// Refuses, before any work, a checkpoint that lacks a tensor the forward reads, holds one in
/// an unsupported dtype, or holds one whose shape is not the one config.json implies.
pub fn check_tensors(ckpt: &Checkpoint, cfg: &LlamaConfig) -> Result<()> {
    let none = HashMap::new();
    let head = Weights {
        ckpt,
        replaced: &none,
    }
    .head_name(cfg)?;
    let layers = cfg.model.num_layers;
    for t in expected(cfg, head) {
        let (_, actual) = ckpt.tensor_info(&t.name).map_err(|e| match (&e, t.layer) {
            (ModelError::MissingTensor { .. }, Some(_)) => HarnessError::Config(format!(
                "{e}: config.json has num_hidden_layers = {layers}, so layers 0-{} must be \
                 there",
                layers - 1
            )),
            _ => e.into(),
        })?;
        if actual != t.shape {
            return Err(HarnessError::Config(format!(
                "{}: tensor {} has shape {actual:?}, expected {:?} ({} in config.json)",
                ckpt.dir().display(),
                t.name,
                t.shape,
                t.from
            )));
        }
    }
    Ok(())
}
