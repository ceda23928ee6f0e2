#!/usr/bin/env bash
# The fidelity table (reports/quality-tiny-llama.md): the committed tiny LLaMA, dense and pruned
# by every method at 50% and 2:4, by prunebench on the CPU reference and on wgpu and by the
# PyTorch reference (baselines/prune_reference.py) on the same calibration windows and
# evaluation text; then structured pruning (OBS and Taylor saliencies) and PERP's re-fit
# (prunebench, CPU reference). GBLM's gradients: prunebench's columns use the suite's own
# (`prunebench gradients`), the PyTorch column baselines/compute_gradients.py's; the table
# gives the two statistics' agreement.
#
# Usage: scripts/quality-table.sh PRUNEBENCH PYTHON WORK [OUT_MD [RESULTS]]
#   PRUNEBENCH  the release binary (target/release/prunebench)
#   PYTHON      a Python with torch, transformers, tokenizers, safetensors (baselines/)
#   WORK        a folder for the runs' JSON, the gradients and the pruned checkpoints; a run
#               whose JSON is already there is not run again (delete WORK to start over)
#   OUT_MD      the table (default reports/quality-tiny-llama.md)
#   RESULTS     a folder for the runs as results files (prunebench.results/1 with quality
#               records: pytorch.json, prunebench-cpu.json, prunebench-wgpu.json), which
#               `prunebench report` renders side by side (default reports/quality-tiny-llama)
# Environment: MODEL (models/tiny-llama), NSAMPLES (64), SEQLEN (512), SEED (0),
# THREADS (2), WGPU_ADAPTER (llvmpipe; empty for the best adapter), WGPU (1; 0 skips wgpu),
# EVAL_WINDOWS (every whole window; a number evaluates only the first ones, for a smoke run).
#
# Every pruned model, whichever backend pruned it, is written with --out and evaluated by the
# CPU reference's forward on the whole evaluation text, so that the columns differ only in
# the pruning; the wgpu forward itself is checked against the CPU reference's on the dense
# model (the first CHECK_WINDOWS windows, default 16).
set -euo pipefail
bin=${1:?usage: $0 PRUNEBENCH PYTHON WORK [OUT_MD]}
py=${2:?usage: $0 PRUNEBENCH PYTHON WORK [OUT_MD]}
work=${3:?usage: $0 PRUNEBENCH PYTHON WORK [OUT_MD]}
out_md=${4:-reports/quality-tiny-llama.md}
results_dir=${5:-reports/quality-tiny-llama}
cd "$(dirname "$0")/.."
model=${MODEL:-models/tiny-llama}
nsamples=${NSAMPLES:-64}
seqlen=${SEQLEN:-512}
seed=${SEED:-0}
threads=${THREADS:-2}
adapter=${WGPU_ADAPTER-llvmpipe}
wgpu=${WGPU:-1}
check_windows=${CHECK_WINDOWS:-16}
eval_windows=()
[ -n "${EVAL_WINDOWS:-}" ] && eval_windows=(--windows "$EVAL_WINDOWS")
ref_windows=()
[ -n "${EVAL_WINDOWS:-}" ] && ref_windows=(--eval-windows "$EVAL_WINDOWS")
calib=$model/calibration.txt
evalt=$model/evaluation.txt
mkdir -p "$work/runs"
commands=$work/commands.txt
: >"$commands"

# Runs "$@" with stdout to $out unless $out exists (it is only renamed into place when the
# command succeeds); logs the command with the run's paths
# as names ($PRUNEBENCH, $PYTHON, $WORK) for the report.
step() {
    local out=$1
    shift
    local shown="$*"
    shown=${shown//"$bin"/\$PRUNEBENCH}
    shown=${shown//"$py"/\$PYTHON}
    shown=${shown//"$work"/\$WORK}
    echo "$shown" >>"$commands"
    if [ -e "$out" ]; then
        echo "have $out" >&2
        return
    fi
    echo "+ $shown" >&2
    local t0=$SECONDS
    "$@" >"$out.partial"
    mv "$out.partial" "$out"
    echo "  $((SECONDS - t0)) s" >&2
}

adapter_args=()
[ -n "$adapter" ] && adapter_args=(--adapter "$adapter")

# GBLM-Pruner's gradients of the dense model, on the calibration windows: PyTorch's for the
# PyTorch reference, the suite's own (CPU reference) for prunebench's columns, and how far the
# two statistics are apart.
grads=$work/gradients.safetensors
step "$work/runs/gradients.log" "$py" baselines/compute_gradients.py --checkpoint "$model" \
    --text "$calib" --nsamples "$nsamples" --seqlen "$seqlen" --seed "$seed" \
    --threads "$threads" --out "$grads"
suite_grads=$work/suite-gradients.safetensors
step "$work/runs/suite-gradients.json" "$bin" gradients --checkpoint "$model" \
    --calibration-text "$calib" --nsamples "$nsamples" --seqlen "$seqlen" --seed "$seed" \
    --backend cpu --out "$suite_grads" --json
step "$work/runs/gradients-agreement.json" "$py" - "$suite_grads" "$grads" <<'PYEOF'
import json, sys
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
num = sum(float(((a[k].astype("float64") - b[k].astype("float64")) ** 2).sum()) for k in b)
den = sum(float((b[k].astype("float64") ** 2).sum()) for k in b)
worst = max(float((((a[k] - b[k]).astype("float64") ** 2).sum() / (b[k].astype("float64") ** 2).sum()) ** 0.5) for k in b)
print(json.dumps({"tensors": len(b), "rel_rms": (num / den) ** 0.5, "worst_tensor_rel_rms": worst}))
PYEOF

# The PyTorch reference: dense, and every method at 50% and 2:4.
step "$work/runs/pytorch.log" "$py" baselines/prune_reference.py --checkpoint "$model" \
    --calibration-text "$calib" --eval-text "$evalt" --nsamples "$nsamples" \
    --seqlen "$seqlen" --seed "$seed" --gradients "$grads" --threads "$threads" \
    "${ref_windows[@]}" --out "$work/pytorch.json"

# prunebench: the dense model on the CPU reference (the whole text), and the wgpu forward's
# check on a few windows.
step "$work/runs/dense.cpu.ppl.json" "$bin" perplexity --checkpoint "$model" --text "$evalt" \
    --seqlen "$seqlen" "${eval_windows[@]}" --backend cpu --json
step "$work/runs/dense-check.cpu.ppl.json" "$bin" perplexity --checkpoint "$model" \
    --text "$evalt" --seqlen "$seqlen" --windows "$check_windows" --backend cpu --json
if [ "$wgpu" = 1 ]; then
    step "$work/runs/dense-check.wgpu.ppl.json" "$bin" perplexity --checkpoint "$model" \
        --text "$evalt" --seqlen "$seqlen" --windows "$check_windows" --backend wgpu \
        "${adapter_args[@]}" --json
fi

# One pruned model: prune-model on BACKEND into WORK/ckpt, its perplexity on the CPU
# reference, the folder removed. NAME.prune.json and NAME.ppl.json hold the two reports.
prune() {
    local name=$1 backend=$2
    shift 2
    local ckpt=$work/ckpt
    local extra=()
    [ "$backend" = wgpu ] && extra=("${adapter_args[@]}")
    if [ ! -e "$work/runs/$name.ppl.json" ]; then
        rm -rf "$ckpt" "$work/runs/$name.prune.json"
    fi
    step "$work/runs/$name.prune.json" "$bin" prune-model --checkpoint "$model" \
        --calibration-text "$calib" --nsamples "$nsamples" --seqlen "$seqlen" --seed "$seed" \
        --backend "$backend" "${extra[@]}" "$@" --out "$ckpt" --json
    step "$work/runs/$name.ppl.json" "$bin" perplexity --checkpoint "$ckpt" --text "$evalt" \
        --seqlen "$seqlen" "${eval_windows[@]}" --backend cpu --json
    rm -rf "$ckpt"
}

# The CPU reference's runs first, then wgpu's (on lavapipe about ten times slower).
main_rows() {
    local backend=$1
    for m in magnitude wanda gblm sparsegpt; do
        for sp in 0.5 2:4; do
            g=()
            [ "$m" = gblm ] && g=(--gradients "$suite_grads")
            prune "$m-${sp/:/of}.$backend" "$backend" --method "$m" --sparsity "$sp" "${g[@]}"
        done
    done
}
main_rows cpu
for p in 0.2 0.3; do
    prune "structured-$p.cpu" cpu --method structured --structure "ffn=$p,attn=$p" \
        --attn-unit query_head --round-to 8
    # LLM-Pruner's first-order Taylor saliency: the mean gradient from the suite's backward
    # pass (computed first by prune-model), then the same OBS update (--compensate obs).
    prune "structured-taylor1-$p.cpu" cpu --method structured --structure "ffn=$p,attn=$p" \
        --attn-unit query_head --round-to 8 --saliency taylor1
done
for m in magnitude wanda gblm sparsegpt; do
    for sp in 0.5 2:4; do
        g=()
        [ "$m" = gblm ] && g=(--gradients "$suite_grads")
        prune "$m-${sp/:/of}-refit.cpu" cpu --method "$m" --sparsity "$sp" "${g[@]}" \
            --refit norm,masklora:16
    done
done
[ "$wgpu" = 1 ] && main_rows wgpu

mkdir -p "$results_dir"
WORK=$work NSAMPLES=$nsamples SEQLEN=$seqlen SEED=$seed MODEL=$model CHECK=$check_windows \
    RESULTS=$results_dir PB_VERSION=$("$bin" --version | awk '{print $NF}') \
    GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || true) python3 - "$out_md" <<'EOF'
import datetime, json, os, sys

work, model = os.environ["WORK"], os.environ["MODEL"]
runs = os.path.join(work, "runs")
nsamples, seqlen, seed = os.environ["NSAMPLES"], os.environ["SEQLEN"], os.environ["SEED"]


def load(name):
    p = os.path.join(runs, name)
    return json.load(open(p)) if os.path.exists(p) else None


def ppl(name):
    v = load(name + ".ppl.json")
    return v["perplexity"] if v else None


ref = json.load(open(os.path.join(work, "pytorch.json")))
refq = {(q["method"], q["params"].get("sparsity")): q for q in ref["quality"]}
dense = ppl("dense.cpu")
methods = ["magnitude", "wanda", "gblm", "sparsegpt"]
patterns = [("0.5", "50%"), ("2:4", "2:4")]


def cell(p):
    return "–" if p is None else f"{p['ppl']:.3f}"


def rel(a, b):
    return "–" if a is None or b is None else f"{100 * (a / b - 1):+.2f}%"


def wall(name):
    """The run's pruning loop, plus the gradient pass it ran first (the Taylor saliencies)."""
    v = load(name + ".prune.json")
    if not v:
        return None
    return v["totals"]["wall_seconds"] + ((v.get("gradients") or {}).get("seconds") or 0.0)


def secs(x):
    return "–" if x is None else f"{x:.0f}"


lines = []
w = lines.append
w("# Pruning quality on the committed tiny LLaMA: prunebench and the PyTorch reference")
w("")
w(f"`{model}` (models/tiny-llama/README.md): 4.87M parameters, 4 layers, hidden 256, "
  "intermediate 688, 8 heads in 2 KV groups, vocabulary 4096, bf16, trained on the Python "
  "3.11 documentation. Calibration: "
  f"{nsamples} windows of {seqlen} tokens of `calibration.txt` at SplitMix64 offsets from seed "
  f"{seed} (docs/FORMATS.md), the same windows for every run; evaluation: every whole "
  f"{seqlen}-token window of `evaluation.txt` ({dense['windows']} windows, {dense['tokens']} "
  "predicted tokens), perplexity as the seeds' `eval_ppl`. GBLM-Pruner's gradients on the same "
  "calibration windows: prunebench's columns use the suite's own backward pass "
  "(`prunebench gradients --backend cpu`), the PyTorch column `baselines/compute_gradients.py`.")
w("")
agree, sg = load("gradients-agreement.json"), load("suite-gradients.json")
if agree and sg:
    w(f"The suite's statistic against PyTorch's: {agree['rel_rms']:.1e} relative RMS over all "
      f"{agree['tensors']} linears (the worst linear {agree['worst_tensor_rel_rms']:.1e}); "
      f"mean loss {sg['summary']['mean_loss']:.4f}, {sg['summary']['seconds']:.0f} s on the CPU "
      "reference.")
    w("")
w("Columns: **prunebench cpu** = pruned by `prunebench prune-model --backend cpu` (the f64 "
  "reference); **prunebench wgpu** = pruned by `--backend wgpu` (WGSL on lavapipe, f32); both "
  "written with `--out` and evaluated by `prunebench perplexity --backend cpu`, so the two "
  "differ only in the pruning. **PyTorch** = `baselines/prune_reference.py`: the seeds' loop, "
  "masks and fasterprune in float32, evaluated by its own `eval_ppl` in PyTorch. Δ = prunebench "
  "cpu against PyTorch.")
w("")
w("| model | prunebench cpu | prunebench wgpu | PyTorch | Δ cpu vs PyTorch |")
w("|---|---|---|---|---|")
rd = refq.get(("dense", None))
w(f"| dense | {cell(dense)} | (same weights) | {cell(rd)} | "
  f"{rel(dense and dense['ppl'], rd and rd['ppl'])} |")
for m in methods:
    for sp, label in patterns:
        name = f"{m}-{sp.replace(':', 'of')}"
        c, g, r = ppl(name + ".cpu"), ppl(name + ".wgpu"), refq.get((m, sp))
        w(f"| {m} {label} | {cell(c)} | {cell(g)} | {cell(r)} | "
          f"{rel(c and c['ppl'], r and r['ppl'])} |")
w("")
chk_c, chk_g = ppl("dense-check.cpu"), ppl("dense-check.wgpu")
if chk_c and chk_g:
    w(f"The wgpu forward on the dense model, first {chk_c['windows']} windows: "
      f"{chk_g['ppl']:.4f} (wgpu) against {chk_c['ppl']:.4f} (CPU reference), "
      f"{rel(chk_g['ppl'], chk_c['ppl'])}.")
    w("")
w("## Further rows (prunebench, CPU reference)")
w("")
w("Structured: `--method structured --structure ffn=P,attn=P --attn-unit query_head "
  "--round-to 8` (OBS saliency and update, 8 rounds; the kept sizes in brackets); taylor1: "
  "the same with `--saliency taylor1`, LLM-Pruner's Σ|W·Ḡ| with the mean gradient from the "
  "suite's backward pass over the calibration windows, and the same OBS update. Re-fit: "
  "each method followed by PERP's `--refit norm,masklora:16` (100 AdamW steps per linear).")
w("")
w("| model | perplexity | without re-fit | removed |")
w("|---|---|---|---|")
structured = [(p, sal) for p in ("0.2", "0.3") for sal in ("obs", "taylor1")]


def structured_name(p, sal):
    return f"structured-{p}.cpu" if sal == "obs" else f"structured-{sal}-{p}.cpu"


for p, sal in structured:
    name = structured_name(p, sal)
    v, q = load(name + ".prune.json"), ppl(name)
    if v:
        t = v["totals"]
        s = t.get("structured_sizes") or {}
        frac = t["parameters_pruned"] / t["parameters"]
        w(f"| structured {sal} ffn={p}, attn={p} (intermediate {s.get('intermediate_size')}, "
          f"{s.get('num_attention_heads')} heads, {s.get('num_key_value_heads')} KV heads) | "
          f"{cell(q)} | – | {100 * frac:.1f}% of the linears |")
for m in methods:
    for sp, label in patterns:
        name = f"{m}-{sp.replace(':', 'of')}"
        w(f"| {m} {label} + norm,masklora:16 | {cell(ppl(name + '-refit.cpu'))} | "
          f"{cell(ppl(name + '.cpu'))} | 50% |")
w("")
w("## Time (seconds, wall clock, 2 shared CPU cores)")
w("")
w("prune = the whole `prune-model` run (calibration forwards, statistics, pruning, writing; "
  "for taylor1 also the gradient pass it runs first); PyTorch's prune is its whole loop. The "
  "suite's gradients for gblm are computed once (above) and not counted here. Evaluation of "
  "the whole text: prunebench "
  f"{dense['seconds']:.0f} s (CPU reference, f64)")
rdt = rd and rd.get("eval_seconds")
w(f"and PyTorch {rdt:.0f} s (float32)." if rdt else ".")
w("")
w("| model | prunebench cpu | prunebench wgpu | PyTorch |")
w("|---|---|---|---|")
for m in methods:
    for sp, label in patterns:
        name = f"{m}-{sp.replace(':', 'of')}"
        r = refq.get((m, sp))
        w(f"| {m} {label} | {secs(wall(name + '.cpu'))} | {secs(wall(name + '.wgpu'))} | "
          f"{secs(r and r.get('prune_seconds'))} |")
for p, sal in structured:
    w(f"| structured {sal} {p} | {secs(wall(structured_name(p, sal)))} | – | – |")
for m in methods:
    for sp, label in patterns:
        name = f"{m}-{sp.replace(':', 'of')}-refit"
        w(f"| {m} {label} + re-fit | {secs(wall(name + '.cpu'))} | – | – |")
w("")
w("## Commands")
w("")
w("Made by `scripts/quality-table.sh $PRUNEBENCH $PYTHON $WORK`, which ran, in order "
  "($PRUNEBENCH = target/release/prunebench, $PYTHON = a Python with torch, $WORK = a "
  "scratch folder; each pruned checkpoint is removed after its perplexity):")
w("")
w("```sh")
for c in open(os.path.join(work, "commands.txt")).read().splitlines():
    w(c)
w("```")
w("")
w(f"PyTorch reference: {ref['tool']['version']}, {ref['device']['device']}.")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print(f"wrote {sys.argv[1]}", file=sys.stderr)


# The runs as results files, keyed as prune-model --results and prune_reference.py key them.
def scrub(text):
    return text.replace(work, "$WORK")


def quality(name, prune_json, detail):
    q, v = ppl(name), load(prune_json)
    if q is None or v is None:
        return None
    cfg, model_name = v["config"], os.path.basename(os.path.normpath(model))
    method = v["method"]
    sparsity = v["sparsity"]
    saliency = None
    if method == "structured":
        b = cfg["structured"]["budget"]
        sparsity = "/".join(f"{k}:{b[k]:g}" for k in ("ffn", "attn"))
        sal = cfg["structured"]["saliency"]  # "obs" or {"taylor": "taylor1"}
        saliency = sal if isinstance(sal, str) else next(iter(sal.values()))
    refit = ",".join(cfg_item_names(cfg))
    key = [("model", model_name), ("method", method), ("sparsity", sparsity)]
    if saliency:
        key.append(("saliency", saliency))
    if refit:
        key.append(("refit", refit.replace(",", "+")))
    if method != "magnitude":
        key.append(("nsamples", nsamples))
    key.append(("seqlen", seqlen))
    if method != "magnitude":
        key.append(("seed", seed))
    params = dict(key)
    params.update({"refit": refit or "none", "evaluation": "evaluation.txt",
                   "eval_windows": str(q["windows"])})
    if method != "magnitude":
        params["calibration"] = "calibration.txt"
    t = v["totals"]
    return {
        "key": "PERPLEXITY(" + ",".join(f"{k}={x}" for k, x in key) + ")",
        "method": method, "params": params, "backend": v["backend"]["backend"],
        "device": v["backend"]["device"], "windows": q["windows"], "seqlen": q["seqlen"],
        "tokens": q["tokens"], "nll": q["nll"], "ppl": q["ppl"],
        "sparsity_achieved": t["parameters_pruned"] / t["parameters"],
        "prune_seconds": t["wall_seconds"], "eval_seconds": q["seconds"], "detail": detail,
    }


def cfg_item_names(cfg):
    items = (cfg.get("refit") or {}).get("items") or []
    out = []
    for it in items:
        if isinstance(it, str):
            out.append(it)
        else:
            lora = it["lora"]
            out.append(f"{lora['form']}lora:{lora['rank']}")
    return out


for backend in ("cpu", "wgpu"):
    names = [f"{m}-{sp.replace(':', 'of')}" for m in methods for sp, _ in patterns]
    if backend == "cpu":
        names += [structured_name(p, sal)[:-len(".cpu")] for p, sal in structured]
        names += [f"{m}-{sp.replace(':', 'of')}-refit" for m in methods for sp, _ in patterns]
    recs = [quality(f"{n}.{backend}", f"{n}.{backend}.prune.json",
                    f"pruned by prunebench prune-model --backend {backend}, evaluated by "
                    "prunebench perplexity --backend cpu") for n in names]
    recs = [r for r in recs if r]
    if not recs:
        continue
    first = load(f"{names[0]}.{backend}.prune.json")
    # Every column's models are evaluated by the CPU reference: the dense row is the same.
    recs.insert(0, {
        "key": f"PERPLEXITY(model={os.path.basename(os.path.normpath(model))},"
               f"method=dense,seqlen={seqlen})",
        "method": "dense",
        "params": {"model": os.path.basename(os.path.normpath(model)), "method": "dense",
                   "seqlen": seqlen, "evaluation": "evaluation.txt",
                   "eval_windows": str(dense["windows"])},
        "backend": "cpu", "device": first["backend"]["device"],
        "windows": dense["windows"], "seqlen": dense["seqlen"], "tokens": dense["tokens"],
        "nll": dense["nll"], "ppl": dense["ppl"], "sparsity_achieved": 0.0,
        "prune_seconds": None, "eval_seconds": dense["seconds"],
        "detail": "the dense checkpoint, evaluated by prunebench perplexity --backend cpu"})
    f = {
        "schema": "prunebench.results/1",
        "tool": {"name": "prunebench", "version": os.environ["PB_VERSION"],
                 "git_commit": os.environ["GIT_COMMIT"],
                 "command": "scripts/quality-table.sh $PRUNEBENCH $PYTHON $WORK"},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": first["backend"],
        "ceilings": {"copy_gbps": None, "copy_bytes": 0, "fma_tflops": None, "fma_flops": 0,
                     "notes": ["a quality run: no ceilings measured"]},
        "timing": {"warmup": 0, "repeats": 0, "input_sets": 0, "source": "wall_clock"},
        "records": [],
        "quality": recs,
    }
    path = os.path.join(os.environ["RESULTS"], f"prunebench-{backend}.json")
    open(path, "w").write(json.dumps(f, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
ref["tool"]["command"] = scrub(ref["tool"]["command"])
path = os.path.join(os.environ["RESULTS"], "pytorch.json")
open(path, "w").write(json.dumps(ref, indent=2) + "\n")
print(f"wrote {path}", file=sys.stderr)
EOF
