//! `prunebench synthetic-model`: a seeded synthetic LLaMA as a Hugging Face folder, with token
//! ids to calibrate and evaluate on, for whole-model runs where no checkpoint is at hand.

use std::process::ExitCode;

use anyhow::{bail, Result};

use prunebench_models::config::lookup;
use prunebench_models::output::{Inputs, PartialDir};
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

pub fn run(a: SyntheticModelArgs) -> Result<ExitCode> {
    let mut cfg = lookup(&a.model)?;
    if let Some(n) = a.layers {
        if n == 0 {
            bail!("--layers must be at least 1");
        }
        cfg.num_layers = n;
    }
    if a.vocab < 2 {
        bail!("--vocab must be at least 2");
    }
    if a.tokens < 2 {
        bail!("--tokens must be at least 2");
    }
    let dtype = parse_dtype(&a.dtype)?;
    if a.out.exists()
        && std::fs::read_dir(&a.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "--out {}: exists and is not an empty folder",
            a.out.display()
        );
    }
    let model = SyntheticModel {
        cfg,
        vocab: a.vocab,
        seed: a.seed,
        tokens: a.tokens,
    };
    // Written to a temporary folder and renamed: an error or a signal leaves nothing.
    let partial = PartialDir::create(&a.out).map_err(super::out_error)?;
    model.write(partial.path(), dtype)?;
    partial.commit(&Inputs::new()).map_err(super::out_error)?;
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
