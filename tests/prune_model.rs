//! `prune-model` and `perplexity` as a user runs them, on the committed fixture checkpoints
//! (tests/fixtures/forward): every method at 0.5 and 2:4 on the CPU reference and on wgpu,
//! the written folder loaded back, the perplexity of the written model equal to the one the
//! run reported, and the bad inputs refused before any work, with nothing left behind.

mod common;

use std::path::Path;

use common::{fixture, json, prunebench, s};
use prunebench_models::checkpoint::Checkpoint;
use serde_json::Value;

/// A small run: 4 calibration windows of 32 tokens, 4 evaluation windows.
fn prune_model(model: &str, backend: &str, extra: &[&str], out: Option<&Path>) -> Value {
    let ckpt = fixture(model);
    let text = fixture("text.txt");
    let mut args = vec![
        "prune-model",
        "--checkpoint",
        s(&ckpt),
        "--calibration-text",
        s(&text),
        "--eval-text",
        s(&text),
        "--nsamples",
        "4",
        "--seqlen",
        "32",
        "--eval-windows",
        "4",
        "--backend",
        backend,
        "--json",
    ];
    args.extend_from_slice(extra);
    if let Some(o) = out {
        args.extend_from_slice(&["--out", s(o)]);
    }
    json(&prunebench(&args))
}

fn ppl(v: &Value, which: &str) -> f64 {
    v["perplexity"][which]["ppl"].as_f64().unwrap()
}

/// The written folder holds every tensor of the input at its name, shape and dtype; pruned
/// linears have the zeros the report counts (2:4: at least 2 in every 4); the rest unchanged.
fn check_written(model: &str, out: &Path, report: &Value, nm: bool) {
    let input = Checkpoint::open(&fixture(model)).unwrap();
    let written = Checkpoint::open(out).unwrap();
    assert_eq!(input.tensor_names(), written.tensor_names());
    for name in input.tensor_names() {
        assert_eq!(
            input.tensor_info(&name).unwrap(),
            written.tensor_info(&name).unwrap(),
            "{name}"
        );
    }
    for layer in report["layers"].as_array().unwrap() {
        let l = layer["layer"].as_u64().unwrap();
        for lin in layer["linears"].as_array().unwrap() {
            let name = lin["name"].as_str().unwrap();
            let part = if ["q_proj", "k_proj", "v_proj", "o_proj"].contains(&name) {
                "self_attn"
            } else {
                "mlp"
            };
            let t = format!("model.layers.{l}.{part}.{name}.weight");
            let (m, _) = written.read_tensor(&t).unwrap();
            let zeros = m.data.iter().filter(|&&v| v == 0.0).count();
            let pruned = lin["pruned"].as_u64().unwrap() as usize;
            assert!(zeros >= pruned, "{t}: {zeros} zeros, {pruned} pruned");
            if nm {
                for c in m.data.chunks(4) {
                    assert!(
                        c.iter().filter(|&&v| v == 0.0).count() >= 2,
                        "{t} is not 2:4"
                    );
                }
            }
        }
    }
    for name in ["model.embed_tokens.weight", "model.norm.weight"] {
        assert_eq!(
            input.read_tensor(name).unwrap().0,
            written.read_tensor(name).unwrap().0
        );
    }
    for f in ["tokenizer.json", "generation_config.json", "config.json"] {
        assert_eq!(
            std::fs::read(fixture(model).join(f)).unwrap(),
            std::fs::read(out.join(f)).unwrap(),
            "{f}"
        );
    }
}

fn perplexity_of(dir: &Path, backend: &str) -> f64 {
    let text = fixture("text.txt");
    let v = json(&prunebench(&[
        "perplexity",
        "--checkpoint",
        s(dir),
        "--text",
        s(&text),
        "--seqlen",
        "32",
        "--windows",
        "4",
        "--backend",
        backend,
        "--json",
    ]));
    v["perplexity"]["ppl"].as_f64().unwrap()
}

fn every_method(backend: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let grads = tmp.path().join("grads.safetensors");
    write_gradients(&grads, "gqa");
    let mut seen = Vec::new();
    for sparsity in ["0.5", "2:4"] {
        for method in ["magnitude", "wanda", "gblm", "sparsegpt"] {
            let out = tmp
                .path()
                .join(format!("{method}-{}", sparsity.replace(':', "-")));
            let mut extra = vec!["--method", method, "--sparsity", sparsity];
            if method == "gblm" {
                extra.extend_from_slice(&["--gradients", s(&grads)]);
            }
            let v = prune_model("gqa", backend, &extra, Some(&out));
            check_written("gqa", &out, &v, sparsity == "2:4");
            let (dense, pruned) = (ppl(&v, "dense"), ppl(&v, "pruned"));
            assert!(pruned.is_finite() && dense.is_finite());
            // The written model, evaluated again on the same windows, is the model the run
            // evaluated: the tensors were rounded to bf16 before the run's own evaluation.
            let again = perplexity_of(&out, backend);
            assert!(
                (again - pruned).abs() <= 1e-6 * pruned,
                "{method} {sparsity}: {again} vs {pruned}"
            );
            seen.push((method, sparsity, dense, pruned));
        }
    }
    eprintln!("{backend}: {seen:?}");
}

/// A gradients file shaped as baselines/compute_gradients.py writes one, with positive
/// values (the committed fixtures carry no gradients: this checks the plumbing, the script
/// is checked by its own run).
fn write_gradients(path: &Path, model: &str) {
    let ckpt = Checkpoint::open(&fixture(model)).unwrap();
    let cfg = ckpt.config().clone();
    let mut rng = prunebench_kernels::rng::Rng::new(7);
    let mut tensors = Vec::new();
    for layer in 0..cfg.num_layers {
        for l in cfg.linears() {
            let data: Vec<u8> = (0..l.rows * l.cols)
                .flat_map(|_| (rng.uniform() as f32 + 0.01).to_le_bytes())
                .collect();
            tensors.push((l.hf_tensor_name(layer), vec![l.rows, l.cols], data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    let meta =
        std::collections::HashMap::from([("prunebench.gradients".to_string(), "1".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).unwrap();
}

#[test]
fn every_method_at_half_and_two_four_on_the_cpu_reference() {
    every_method("cpu");
}

#[cfg(feature = "wgpu")]
#[test]
fn every_method_at_half_and_two_four_on_wgpu_agrees_with_the_cpu() {
    every_method("wgpu");
    // The same run on both backends: the same perplexities within the forward's f32 error
    // and the mask decisions that rounding may flip.
    for (method, sparsity) in [("wanda", "0.5"), ("sparsegpt", "2:4")] {
        let extra = ["--method", method, "--sparsity", sparsity];
        let cpu = prune_model("mha", "cpu", &extra, None);
        let gpu = prune_model("mha", "wgpu", &extra, None);
        for which in ["dense", "pruned"] {
            let (a, b) = (ppl(&cpu, which), ppl(&gpu, which));
            assert!(
                (a - b).abs() <= 1e-3 * a,
                "{method} {sparsity} {which}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn structured_with_uniform_fractions_writes_the_new_sizes() {
    structured_writes_the_new_sizes("obs");
}

/// The Taylor saliencies on a whole model: the mean gradient and the Fisher come from the
/// suite's backward pass over the calibration windows, run first.
#[test]
fn structured_with_a_taylor_saliency_computes_the_gradients_first() {
    for saliency in ["taylor1", "taylor2"] {
        let v = structured_writes_the_new_sizes(saliency);
        let g = &v["gradients"];
        assert_eq!(g["windows"], 4, "{saliency}: {g}");
        assert!(g["mean_loss"].as_f64().unwrap() > 0.0, "{saliency}: {g}");
    }
}

fn structured_writes_the_new_sizes(saliency: &str) -> Value {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("structured");
    let v = prune_model(
        "gqa",
        "cpu",
        &[
            "--method",
            "structured",
            "--structure",
            "ffn=0.25,attn=0.34",
            "--round-to",
            "8",
            "--saliency",
            saliency,
        ],
        Some(&out),
    );
    let sizes = &v["totals"]["structured_sizes"];
    let (inter, heads, kv) = (
        sizes["intermediate_size"].as_u64().unwrap() as usize,
        sizes["num_attention_heads"].as_u64().unwrap() as usize,
        sizes["num_key_value_heads"].as_u64().unwrap() as usize,
    );
    assert!(inter < 200 && inter % 8 == 0, "{inter}");
    assert_eq!((heads, kv), (4, 2));
    let written = Checkpoint::open(&out).unwrap();
    let c = written.config();
    assert_eq!(
        (c.intermediate, c.num_heads, c.num_kv_heads),
        (inter, heads, kv)
    );
    assert_eq!(
        written
            .tensor_info("model.layers.2.mlp.down_proj.weight")
            .unwrap()
            .1,
        vec![96, inter]
    );
    let again = perplexity_of(&out, "cpu");
    let pruned = ppl(&v, "pruned");
    assert!(
        (again - pruned).abs() <= 1e-6 * pruned,
        "{again} vs {pruned}"
    );
    v
}

/// A copy of a fixture checkpoint with `edit` applied to its config.json and `drop` files
/// left out.
fn copy_fixture(model: &str, to: &Path, drop: &[&str], edit: impl Fn(&mut Value)) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixture(model)).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if drop.contains(&name.as_str()) {
            continue;
        }
        std::fs::copy(e.path(), to.join(&name)).unwrap();
    }
    let path = to.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn refused(args: &[&str], needle: &str, watch: &Path) {
    let before: Vec<_> = std::fs::read_dir(watch)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let out = prunebench(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
    let after: Vec<_> = std::fs::read_dir(watch)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "{args:?} left something behind");
}

#[test]
fn bad_whole_model_input_is_refused_before_any_work_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let text = fixture("text.txt");
    let short = t.join("short.txt");
    std::fs::write(&short, "A few words.").unwrap();
    let no_tok = t.join("no-tokenizer");
    copy_fixture("mha", &no_tok, &["tokenizer.json"], |_| {});
    let yarn = t.join("yarn");
    copy_fixture("gqa", &yarn, &[], |v| {
        v["rope_parameters"]["rope_type"] = "yarn".into();
    });
    let untied = t.join("untied");
    copy_fixture("gqa", &untied, &[], |v| {
        v["tie_word_embeddings"] = false.into();
    });
    let out = t.join("out");
    // Each case's own options replace the defaults below (clap refuses a repeated flag).
    let run = |ckpt: &Path, text: &Path, extra: &[&str], needle: &str| {
        let mut opts: Vec<(&str, String)> = vec![
            ("--nsamples", "2".into()),
            ("--seqlen", "16".into()),
            ("--backend", "cpu".into()),
            ("--out", s(&out).into()),
        ];
        for pair in extra.chunks(2) {
            match opts.iter_mut().find(|(k, _)| *k == pair[0]) {
                Some(o) => o.1 = pair[1].to_string(),
                None => opts.push((pair[0], pair[1].to_string())),
            }
        }
        let mut a: Vec<String> = [
            "prune-model",
            "--checkpoint",
            s(ckpt),
            "--calibration-text",
            s(text),
        ]
        .map(String::from)
        .to_vec();
        for (k, v) in opts {
            a.push(k.to_string());
            a.push(v);
        }
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        refused(&refs, needle, t);
    };
    let mha = fixture("mha");
    run(&no_tok, &text, &[], "no tokenizer.json");
    run(&mha, &short, &[], "fewer than one window");
    run(
        &mha,
        &text,
        &["--seqlen", "4096"],
        "max_position_embeddings",
    );
    run(&yarn, &text, &[], "yarn");
    run(
        &untied,
        &text,
        &["--eval-text", s(&text)],
        "no lm_head.weight",
    );
    run(&mha, &text, &["--max-device-memory", "1"], "device memory");
    run(&mha, &text, &["--method", "structured"], "--structure");
    // A gradients file holds GBLM's finished statistic, not the Taylor sums.
    let grads = t.join("grads.safetensors");
    write_gradients(&grads, "mha");
    let taylor = [
        "--method",
        "structured",
        "--structure",
        "ffn=0.25,attn=0.25",
        "--saliency",
        "taylor1",
    ];
    let mut with_file = taylor.to_vec();
    with_file.extend_from_slice(&["--gradients", s(&grads)]);
    run(&mha, &text, &with_file, "a gradients file does not hold");
    let mut l1 = taylor.to_vec();
    l1.extend_from_slice(&["--grad-norm", "l1"]);
    run(&mha, &text, &l1, "--grad-norm l1 does not apply");
    // --out equal to or inside the input folder.
    let inside = mha.join("pruned");
    run(&mha, &text, &["--out", s(&mha)], "input checkpoint folder");
    run(
        &mha,
        &text,
        &["--out", s(&inside)],
        "input checkpoint folder",
    );
    assert!(!inside.exists());
    let out = prunebench(&[
        "perplexity",
        "--checkpoint",
        s(&mha),
        "--text",
        s(&short),
        "--seqlen",
        "16",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fewer than one window"));
}

#[cfg(unix)]
#[test]
fn an_interrupted_run_leaves_no_output_folder() {
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let text = fixture("text.txt");
    let ckpt = fixture("gqa");
    let mut child = Command::new(env!("CARGO_BIN_EXE_prunebench"))
        .args([
            "prune-model",
            "--checkpoint",
            s(&ckpt),
            "--calibration-text",
            s(&text),
            "--nsamples",
            "64",
            "--seqlen",
            "128",
            "--eval-text",
            s(&text),
            "--backend",
            "cpu",
            "--out",
            s(&out),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    // SAFETY: kill(2) on the child's own pid.
    unsafe { libc_kill(child.id() as i32, 2) };
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[cfg(unix)]
extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// The whole path on a synthetic model, as the README shows it: write one, prune it on the
/// CPU reference and on wgpu with ready token ids, and evaluate what was written.
#[test]
fn a_synthetic_model_prunes_and_evaluates_from_token_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("syn");
    let made = prunebench(&[
        "synthetic-model",
        "--layers",
        "2",
        "--vocab",
        "300",
        "--out",
        s(&model),
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let ids = model.join("token_ids.json");
    let backends: &[&str] = if cfg!(feature = "wgpu") {
        &["cpu", "wgpu"]
    } else {
        &["cpu"]
    };
    let mut pruned = Vec::new();
    for backend in backends {
        let out = tmp.path().join(format!("out-{backend}"));
        let v = json(&prunebench(&[
            "prune-model",
            "--checkpoint",
            s(&model),
            "--calibration-ids",
            s(&ids),
            "--eval-ids",
            s(&ids),
            "--nsamples",
            "4",
            "--seqlen",
            "64",
            "--eval-windows",
            "4",
            "--method",
            "sparsegpt",
            "--sparsity",
            "2:4",
            "--backend",
            backend,
            "--out",
            s(&out),
            "--json",
        ]));
        let p = ppl(&v, "pruned");
        let again = json(&prunebench(&[
            "perplexity",
            "--checkpoint",
            s(&out),
            "--token-ids",
            s(&ids),
            "--seqlen",
            "64",
            "--windows",
            "4",
            "--backend",
            backend,
            "--json",
        ]))["perplexity"]["ppl"]
            .as_f64()
            .unwrap();
        assert!((again - p).abs() <= 1e-6 * p, "{backend}: {again} vs {p}");
        pruned.push(p);
    }
    if let [cpu, gpu] = pruned[..] {
        assert!((cpu - gpu).abs() <= 1e-2 * cpu, "cpu {cpu} vs wgpu {gpu}");
    }
}
