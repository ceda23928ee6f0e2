//! What a whole-model command reads: the checkpoint with its LlamaConfig, and token windows
//! from a text (through the checkpoint's tokenizer.json) or from a file of ready ids.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

use prunebench_models::checkpoint::Checkpoint;
use prunebench_models::llama::LlamaConfig;
use prunebench_models::text;

/// A text or its ids, for calibration or evaluation.
pub enum Tokens {
    Text(PathBuf),
    Ids(PathBuf),
}

impl Tokens {
    pub fn pick(
        text: &Option<PathBuf>,
        ids: &Option<PathBuf>,
        what: &str,
    ) -> Result<Option<Tokens>> {
        Ok(match (text, ids) {
            (Some(_), Some(_)) => bail!("give the {what} as a text or as token ids, not both"),
            (Some(t), None) => Some(Tokens::Text(t.clone())),
            (None, Some(i)) => Some(Tokens::Ids(i.clone())),
            (None, None) => None,
        })
    }

    /// The calibration text or its ids, which a whole-model command that calibrates needs.
    pub fn calibration(text: &Option<PathBuf>, ids: &Option<PathBuf>) -> Result<Tokens> {
        Tokens::pick(text, ids, "calibration")?.ok_or_else(|| {
            anyhow::anyhow!(
                "give the calibration text with --calibration-text FILE or its ids with \
                 --calibration-ids FILE"
            )
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            Tokens::Text(p) | Tokens::Ids(p) => p,
        }
    }

    /// The token ids, checked against the vocabulary.
    pub fn load(&self, ckpt_dir: &Path, cfg: &LlamaConfig, ids_flag: &str) -> Result<Vec<u32>> {
        let ids = match self {
            Tokens::Text(path) => {
                let tok = text::load_tokenizer(ckpt_dir)
                    .map_err(|e| anyhow::anyhow!("{e} (or give the ids with {ids_flag} FILE)"))?;
                let s = prunebench_models::input::read_input_text(path, "a text file")?;
                text::encode_text(&tok, &s)?
            }
            Tokens::Ids(path) => text::read_token_ids(path)?,
        };
        text::check_ids(&ids, cfg.vocab_size, self.path())?;
        Ok(ids)
    }
}

/// The window length: --seqlen, else min(2048, max_position_embeddings), as the seeds.
pub fn seqlen(arg: Option<usize>, cfg: &LlamaConfig) -> Result<usize> {
    let t = arg.unwrap_or_else(|| cfg.max_position_embeddings.min(2048));
    text::check_seqlen(t, cfg)?;
    Ok(t)
}

/// Opens the checkpoint and its full config, refusing an unknown rope scaling, a missing or
/// misshapen tensor and the like before any work.
pub fn open(dir: &Path) -> Result<(Checkpoint, LlamaConfig)> {
    let ckpt = Checkpoint::open(dir)?;
    let cfg = ckpt.llama()?;
    prunebench_harness::model::check_tensors(&ckpt, &cfg)?;
    Ok((ckpt, cfg))
}

/// Refuses, before any work, what would need more host memory than the system reports
/// available (unknown off Linux: not checked): `what` needs `need` bytes, `advice` says how to
/// need less.
pub fn check_host_memory(need: u64, what: &str, advice: &str) -> Result<()> {
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    match prunebench_kernels::host::available_memory() {
        Some(available) if need > available => bail!(
            "{what} needs about {} of memory, and {} is available: {advice}",
            gib(need),
            gib(available)
        ),
        _ => Ok(()),
    }
}

/// Options shared by the whole-model commands.
#[derive(Args, Debug, Clone)]
pub struct DeviceLimitArgs {
    /// Plan for a device with at most this much memory, in MiB (a smaller GPU than this
    /// one); the run is refused before any work if one layer does not fit.
    // Held in bytes: the parser scales the MiB with checked arithmetic.
    #[arg(long, value_name = "MIB", allow_negative_numbers = true, value_parser = super::numbers::mebibytes)]
    pub max_device_memory: Option<u64>,
}
