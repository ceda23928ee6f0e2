//! The command line: argument definitions and dispatch to one module per subcommand.

mod backends;
mod bench;
#[cfg(feature = "cuda")]
mod compile;
mod devices;
mod gradients;
mod inputs;
mod layer_input;
mod model_input;
mod numbers;
mod perplexity;
mod progress;
mod prune;
mod prune_model;
mod report;
mod synthetic_model;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use prunebench_models::output::{self, Inputs};

#[derive(Parser, Debug)]
#[command(name = "prunebench", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Prune one LLaMA decoder layer (synthetic by default) and report time, sparsity and
    /// reconstruction error per linear.
    Prune(PruneArgs),
    /// Prune a whole checkpoint layer by layer, each layer calibrated on what the pruned
    /// layers before it compute; perplexity before and after; the pruned model as a Hugging
    /// Face folder.
    PruneModel(PruneModelArgs),
    /// GBLM-Pruner's gradient statistic of a dense checkpoint from the suite's own backward
    /// pass, one window at a time, written as the file `prune-model --gradients` reads.
    Gradients(gradients::GradientsArgs),
    /// Write a seeded synthetic LLaMA as a Hugging Face folder, with token ids to run
    /// prune-model and perplexity on.
    SyntheticModel(SyntheticModelArgs),
    /// A checkpoint's perplexity on a text (non-overlapping windows, as the seeds' eval_ppl).
    Perplexity(PerplexityArgs),
    /// Run every op, then whole layers, on a backend and on the CPU reference, and compare.
    Verify(VerifyArgs),
    /// Measure the device's ceilings, time every op and whole layers, verify them against
    /// the CPU reference, and write one results JSON.
    Bench(BenchArgs),
    /// Render results JSON files (several devices and backends) as Markdown and HTML.
    Report(ReportArgs),
    /// List the backends and adapters prunebench can see.
    Devices,
    /// Generate every CubeCL kernel as CUDA C++ and compile it with NVRTC for each
    /// architecture, without a GPU: registers, shared memory, spills, occupancy.
    #[cfg(feature = "cuda")]
    Compile(compile::CompileArgs),
}

/// Which layer, from where, with what calibration.
#[derive(Args, Debug, Clone)]
pub struct LayerArgs {
    /// Model shape: tiny, llama-7b, llama-13b, llama-30b, llama-65b, llama2-7b, llama2-13b,
    /// llama2-70b, llama3-8b. With --checkpoint, defaults to the checkpoint's config.json.
    #[arg(long)]
    pub model: Option<String>,
    /// Decoder layer index.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = numbers::count(0, numbers::MAX_LAYERS - 1))]
    pub layer: usize,
    /// A Hugging Face model folder (config.json and safetensors, single or sharded); without
    /// it a seeded synthetic layer is used.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// A calibration safetensors file (see docs/FORMATS.md); without it synthetic LLaMA-like
    /// activations and gradients are generated.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Synthetic calibration samples (the papers use 128).
    #[arg(long, default_value_t = 16, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_WINDOWS))]
    pub samples: usize,
    /// Tokens per synthetic calibration sample (the papers use 2048).
    #[arg(long, default_value_t = 256, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_SEQLEN))]
    pub tokens: usize,
    /// Seed of the synthetic layer and calibration.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = numbers::seed)]
    pub seed: u64,
    /// Linears to prune: all, or a list such as q_proj,k_proj,v_proj.
    #[arg(long, default_value = "all")]
    pub linears: String,
}

/// Where to run.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// auto (a GPU if present, else the CPU reference), cpu, wgpu, cubecl-wgpu, cubecl-cuda.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Pick the adapter whose name contains this (wgpu backends), e.g. llvmpipe or h200.
    #[arg(long)]
    pub adapter: Option<String>,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub layer: LayerArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub method: MethodArgs,
    /// Write the pruned linears to this safetensors file (each in the dtype it came in), with
    /// the re-fitted norm weights when `--refit norm` ran. Structured pruning writes the
    /// compacted linears, and the layer's new sizes to FILE.config.json beside it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The method and its options, shared by `prune` and `prune-model`.
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// magnitude, wanda, gblm, sparsegpt or structured.
    #[arg(long, default_value = "sparsegpt")]
    pub method: String,
    /// A fraction in [0, 1) (unstructured) or N:M such as 2:4. For structured: the fraction
    /// of the layer's linear parameters to remove.
    // Hyphen values, not only negative numbers: "-0:4" must reach the sparsity's own check
    // rather than be taken for an unknown flag.
    #[arg(long, default_value = "0.5", allow_hyphen_values = true)]
    pub sparsity: String,
    /// Unstructured comparison group: row or matrix (default: matrix for magnitude, row for
    /// wanda and gblm, as in their papers' code).
    #[arg(long)]
    pub group: Option<String>,
    /// GBLM gradient norm: l2 or l1.
    #[arg(long, default_value = "l2")]
    pub grad_norm: String,
    /// Re-fit after pruning (PERP), in order: a list of norm, rowscale, masklora:R,
    /// scalelora:R (e.g. norm,masklora:16), or none.
    #[arg(long, default_value = "none")]
    pub refit: String,
    /// AdamW steps of each LoRA re-fit.
    #[arg(long, default_value_t = prunebench_harness::refit::DEFAULT_STEPS, allow_negative_numbers = true, value_parser = numbers::count(0, numbers::MAX_REPEATS))]
    pub refit_steps: usize,
    /// Peak learning rate of the LoRA re-fits (linear warm-up over 10% of the steps, then
    /// linear decay to 0).
    #[arg(long, default_value_t = prunebench_harness::refit::DEFAULT_LR, allow_negative_numbers = true)]
    pub refit_lr: f64,
    /// Seed of MaskLoRA's initial A.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = numbers::seed)]
    pub refit_seed: u64,
    #[command(flatten)]
    pub structured: StructuredArgs,
}

/// `--method structured`'s options (ALGORITHMS.md §11).
#[derive(Args, Debug, Clone)]
pub struct StructuredArgs {
    /// Prune each kind by its own fraction instead of one --sparsity budget, e.g.
    /// ffn=0.5,attn=0.25.
    #[arg(long)]
    pub structure: Option<String>,
    /// The attention group removed whole: kv_group (a KV head and its query heads) or
    /// query_head (the same number from every KV group).
    #[arg(long, default_value = "kv_group")]
    pub attn_unit: String,
    /// How groups are ranked: obs, taylor1, taylor2 or taylor_mix (the Taylor scores need
    /// output gradients).
    #[arg(long, default_value = "obs")]
    pub saliency: String,
    /// The consumer's update for the removed columns: obs or none.
    #[arg(long, default_value = "obs")]
    pub compensate: String,
    /// Greedy rounds; each re-scores the remaining groups after the last update.
    #[arg(long, default_value_t = prunebench_harness::structured::DEFAULT_ROUNDS, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_REPEATS))]
    pub rounds: usize,
    /// The kept FFN width is rounded to a multiple of this (1 disables).
    #[arg(long, default_value_t = prunebench_harness::structured::DEFAULT_ROUND_TO, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_SIZE))]
    pub round_to: usize,
}

/// Which op cases and which whole-layer runs (`verify` and `bench`).
#[derive(Args, Debug, Clone)]
pub struct SelectionArgs {
    /// Only ops whose canonical name contains this, any case (e.g. PRUNE_WANDA, MASK(pattern=2:4).
    #[arg(long)]
    pub op: Option<String>,
    /// Methods run on whole layers: all, none, or a list such as wanda,sparsegpt.
    #[arg(long, default_value = "all")]
    pub methods: String,
    /// Sparsity patterns of the whole-layer runs.
    #[arg(long, default_value = "0.5,2:4", allow_hyphen_values = true)]
    pub sparsities: String,
    /// A re-fit after every whole-layer run, as `prune --refit` (e.g. norm,masklora:16), with
    /// its default steps and learning rate; none by default.
    #[arg(long, default_value = "none")]
    pub refit: String,
}

impl SelectionArgs {
    pub fn methods(&self) -> anyhow::Result<Vec<prunebench_harness::Method>> {
        match self.methods.trim() {
            "all" => Ok(prunebench_harness::Method::EVERY.to_vec()),
            "none" => Ok(vec![]),
            list => list
                .split(',')
                .map(|m| prune::parse_method(m.trim()))
                .collect(),
        }
    }

    /// The whole-layer runs' configuration for `method` at `sparsity`, re-fit included.
    pub fn layer_config(
        &self,
        method: prunebench_harness::Method,
        sparsity: prunebench_kernels::Sparsity,
    ) -> anyhow::Result<prunebench_harness::PruneConfig> {
        let mut cfg = prunebench_harness::PruneConfig::new(method, sparsity);
        cfg.refit.items = prunebench_harness::RefitConfig::parse_items(&self.refit)?;
        Ok(cfg)
    }

    /// Every whole-layer run: each method at each sparsity, except that structured pruning
    /// takes only the fractions (an N:M pattern says nothing about whole groups).
    pub fn layer_configs(
        &self,
        methods: &[prunebench_harness::Method],
        sparsities: &[prunebench_kernels::Sparsity],
    ) -> anyhow::Result<Vec<prunebench_harness::PruneConfig>> {
        let mut out = Vec::new();
        for &method in methods {
            for &sparsity in sparsities {
                let nm = matches!(sparsity, prunebench_kernels::Sparsity::NM { .. });
                if method != prunebench_harness::Method::Structured {
                    out.push(self.layer_config(method, sparsity)?);
                    continue;
                }
                if nm {
                    continue;
                }
                // One budget, where the kinds compete (attention groups may keep everything),
                // and the same fraction of each kind, so attention removal is always covered.
                let p = sparsity.fraction();
                out.push(self.layer_config(method, sparsity)?);
                let mut per_kind = self.layer_config(method, sparsity)?;
                per_kind.structured.budget =
                    prunebench_harness::Budget::PerKind { ffn: p, attn: p };
                out.push(per_kind);
            }
        }
        Ok(out)
    }

    pub fn sparsities(&self) -> anyhow::Result<Vec<prunebench_kernels::Sparsity>> {
        Ok(self
            .sparsities
            .split(',')
            .map(|s| prunebench_kernels::Sparsity::parse(s.trim()))
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// The cases among `cases` that `--op` selects; an `--op` that selects none is refused
    /// (it is a typo, and a run of nothing would pass).
    pub fn filter(
        &self,
        cases: impl IntoIterator<Item = prunebench_kernels::suite::OpCase>,
    ) -> anyhow::Result<Vec<prunebench_kernels::suite::OpCase>> {
        let f = self.op.as_deref().map(str::to_ascii_uppercase);
        let selected: Vec<_> = cases
            .into_iter()
            .filter(|c| {
                f.as_ref()
                    .is_none_or(|f| c.name().to_ascii_uppercase().contains(f.as_str()))
            })
            .collect();
        if let (Some(op), true) = (&self.op, selected.is_empty()) {
            anyhow::bail!("no op case matches --op {op}");
        }
        Ok(selected)
    }
}

/// Fails before any work unless `out` can be written: its folder exists and is writable, it
/// is not a folder, device or FIFO, and it is none of `inputs`. The same check every output
/// goes through again when it is written.
pub fn check_out_file(out: &Path, inputs: &Inputs) -> anyhow::Result<()> {
    output::check_file(out, inputs).map_err(out_error)
}

/// Like `check_out_file`, for an output folder (`report`).
pub fn check_out_folder(out: &Path, inputs: &Inputs) -> anyhow::Result<()> {
    output::check_folder(out, inputs).map_err(out_error)
}

/// An output error as one line that says which argument it is about (the error names the path).
pub fn out_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("--out {e}")
}

#[derive(Args, Debug)]
pub struct PruneModelArgs {
    /// A Hugging Face LLaMA folder: config.json, safetensors (single or sharded), and
    /// tokenizer.json for text inputs.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub method: MethodArgs,
    /// Calibration text, tokenized with the checkpoint's tokenizer.json.
    #[arg(long)]
    pub calibration_text: Option<PathBuf>,
    /// Calibration token ids instead of a text: a JSON list, or raw little-endian u32.
    #[arg(long)]
    pub calibration_ids: Option<PathBuf>,
    /// Calibration windows, drawn at seeded random offsets of the text.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_WINDOWS))]
    pub nsamples: usize,
    /// Tokens per window, calibration and evaluation (default min(2048, max_position_embeddings)).
    #[arg(long, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_SEQLEN))]
    pub seqlen: Option<usize>,
    /// Seed of the calibration windows' offsets.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = numbers::seed)]
    pub seed: u64,
    /// Evaluation text: perplexity of the dense and of the pruned model.
    #[arg(long)]
    pub eval_text: Option<PathBuf>,
    /// Evaluation token ids instead of a text.
    #[arg(long)]
    pub eval_ids: Option<PathBuf>,
    /// Evaluate at most this many windows (default: every whole window of the text).
    #[arg(long, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_EVAL_WINDOWS))]
    pub eval_windows: Option<usize>,
    /// GBLM-Pruner's gradients of the dense model (baselines/compute_gradients.py).
    #[arg(long)]
    pub gradients: Option<PathBuf>,
    #[command(flatten)]
    pub limits: model_input::DeviceLimitArgs,
    /// Write the pruned model here as a Hugging Face folder (a new or empty folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SyntheticModelArgs {
    /// Model shape (tiny, llama-7b, ...; see prune --model).
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Decoder layers (default: the shape's own count).
    #[arg(long, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_LAYERS))]
    pub layers: Option<usize>,
    /// Vocabulary size.
    #[arg(long, default_value_t = 512, allow_negative_numbers = true, value_parser = numbers::count(2, numbers::MAX_SIZE))]
    pub vocab: usize,
    /// Seed of the weights and token ids.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = numbers::seed)]
    pub seed: u64,
    /// Token ids written to token_ids.json beside the weights.
    #[arg(long, default_value_t = 16384, allow_negative_numbers = true, value_parser = numbers::count(2, numbers::MAX_SYNTHETIC_TOKENS))]
    pub tokens: usize,
    /// Weight dtype: f32, f16 or bf16.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// The folder to write (new or empty).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    /// A Hugging Face LLaMA folder, dense or pruned.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// The text, tokenized with the checkpoint's tokenizer.json.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Token ids instead of a text: a JSON list, or raw little-endian u32.
    #[arg(long)]
    pub token_ids: Option<PathBuf>,
    /// Tokens per window (default min(2048, max_position_embeddings)).
    #[arg(long, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_SEQLEN))]
    pub seqlen: Option<usize>,
    /// Evaluate at most this many windows (default: every whole window).
    #[arg(long, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_EVAL_WINDOWS))]
    pub windows: Option<usize>,
    #[command(flatten)]
    pub limits: model_input::DeviceLimitArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub layer: LayerArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub select: SelectionArgs,
    /// Skip the per-op checks (whole layers only).
    #[arg(long)]
    pub skip_ops: bool,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub layer: LayerArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub select: SelectionArgs,
    /// Timed repetitions per op (the median is reported).
    #[arg(long, default_value_t = 10, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_REPEATS))]
    pub repeats: usize,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 2, allow_negative_numbers = true, value_parser = numbers::count(0, numbers::MAX_REPEATS))]
    pub warmup: usize,
    /// Independent input sets rotated between repetitions (defeats caches).
    #[arg(long, default_value_t = 3, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_INPUT_SETS))]
    pub input_sets: usize,
    /// Whole-layer repetitions per method and sparsity.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_REPEATS))]
    pub layer_repeats: usize,
    /// Time without comparing against the CPU reference (for sizes where it is too slow).
    #[arg(long)]
    pub no_verify: bool,
    /// Results file (default results/<backend>-<device>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Whole-model records: time GBLM's gradient pass over the --checkpoint model once, and
    /// prune it per method and sparsity through the sequential loop, on --samples windows of
    /// --tokens of this text (tokenized with the checkpoint's tokenizer.json).
    #[arg(long)]
    pub model_text: Option<PathBuf>,
    /// The same with ready token ids (a JSON list or raw little-endian u32).
    #[arg(long)]
    pub model_ids: Option<PathBuf>,
    /// GBLM-Pruner's gradients for the whole-model records (without them gblm is skipped).
    #[arg(long)]
    pub gradients: Option<PathBuf>,
    /// Run nothing: print each case's bytes, flops and arithmetic intensity, and the time the
    /// roofline predicts from --copy-gbps and --fma-tflops.
    #[arg(long)]
    pub dry_run: bool,
    /// Copy bandwidth for --dry-run predictions, GB/s.
    #[arg(long, requires = "dry_run", allow_negative_numbers = true, value_parser = numbers::positive_number)]
    pub copy_gbps: Option<f64>,
    /// f32 FMA rate for --dry-run predictions, TFLOP/s.
    #[arg(long, requires = "dry_run", allow_negative_numbers = true, value_parser = numbers::positive_number)]
    pub fma_tflops: Option<f64>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Results JSON files, from `prunebench bench` or the PyTorch baseline.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Folder for report.md, report.html and the charts.
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
}

/// The parsed command line, and the registry of every file and folder it names to be read
/// (see `inputs`), taken before any work.
pub fn parse() -> (Cli, Inputs) {
    let cmd = Cli::command();
    let matches = cmd.clone().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let inputs = inputs::registry(&cmd, &matches);
    (cli, inputs)
}

pub fn run(cli: Cli, inputs: &Inputs) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Prune(a) => prune::run(a, inputs),
        Command::PruneModel(a) => prune_model::run(a, inputs),
        Command::Gradients(a) => gradients::run(a, inputs),
        Command::Perplexity(a) => perplexity::run(a),
        Command::SyntheticModel(a) => synthetic_model::run(a, inputs),
        Command::Verify(a) => verify::run(a),
        Command::Bench(a) => bench::run(a, inputs),
        Command::Report(a) => report::run(a, inputs),
        Command::Devices => devices::run(),
        #[cfg(feature = "cuda")]
        Command::Compile(a) => compile::run(a),
    }
}
