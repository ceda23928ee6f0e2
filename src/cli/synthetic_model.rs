//! `prunebench synthetic-model`: a seeded synthetic LLaMA as a Hugging Face folder, with token
//! ids to calibrate and evaluate on, for whole-model runs where no checkpoint is at hand.

use std::process::ExitCode;

use anyhow::{bail, Result};

use prunebench_models::config::lookup;
use prunebench_models::output::{check_new_folder, Inputs, PartialDir};
use prunebench_models::synthetic_model::{SyntheticModel, TOKEN_IDS};
use prunebench_models::DType;

use super::SyntheticModelArgs;

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => bail!("unknown --dtype '{other}': expected f32, f16 or bf16"),
    })
}

pub fn run(a: SyntheticModelArgs, inputs: &Inputs) -> Result<ExitCode> {
    // The counts are bounded by their parsers (the checkpoint reader's limits on layers and
    // vocabulary); what they add up to is checked here, before the folder is made.
    let mut cfg = lookup(&a.model)?;
    if let Some(n) = a.layers {
        cfg.num_layers = n;
    }
    let dtype = parse_dtype(&a.dtype)?;
    check_new_folder(&a.out, inputs).map_err(super::out_error)?;
    let model = SyntheticModel {
        cfg,
        vocab: a.vocab,
        seed: a.seed,
        tokens: a.tokens,
    };
    super::model_input::check_host_memory(
        model.host_bytes(),
        &format!(
            "writing a synthetic {} with {} layers and a vocabulary of {}",
            a.model, model.cfg.num_layers, a.vocab
        ),
        "give fewer --layers, a smaller --vocab or fewer --tokens",
    )?;
    // Written to a temporary folder and renamed: an error or a signal leaves nothing.
    let partial = PartialDir::create(&a.out).map_err(super::out_error)?;
    model.write(partial.path(), dtype)?;
    partial.commit_new(inputs).map_err(super::out_error)?;
    println!(
        "synthetic {} ({} layers, vocabulary {}, {}, seed {}) written to {}; token ids in {}",
        a.model,
        model.cfg.num_layers,
        a.vocab,
        dtype.name(),
        a.seed,
        a.out.display(),
        a.out.join(TOKEN_IDS).display()
    );
    Ok(ExitCode::SUCCESS)
}
