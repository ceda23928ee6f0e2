//! Pruned checkpoint folders: the input's files and sharding kept, unchanged tensors byte for
//! byte, replaced ones (a new shape included) round-tripping in their dtype, and every refusal
//! made before anything is written, leaving nothing behind.

use std::collections::HashMap;
use std::path::Path;

use prunebench_kernels::Matrix;
use prunebench_models::checkpoint::{write_checkpoint, Checkpoint};
use prunebench_models::config::{lookup, ModelConfig};
use prunebench_models::hf_out::{check_output_folder, write_pruned_checkpoint};
use prunebench_models::output::Inputs;
use prunebench_models::synthetic::synthetic_layer;
use prunebench_models::{DType, LlamaConfig, ModelError};
use safetensors::SafeTensors;

fn two_layer_tiny() -> ModelConfig {
    let mut cfg = lookup("tiny").unwrap();
    cfg.num_layers = 2;
    cfg
}

/// A tiny checkpoint at `dir` with the files a Hugging Face folder has besides the weights.
fn make_input(dir: &Path, dtype: DType, shards: usize) {
    let cfg = two_layer_tiny();
    let layers: Vec<_> = (0..2)
        .map(|i| synthetic_layer(&cfg, i, &cfg.linears(), 5))
        .collect();
    write_checkpoint(dir, &cfg, &layers, dtype, shards).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{\"version\": \"1.0\"}").unwrap();
    std::fs::write(dir.join("generation_config.json"), "{\"bos_token_id\": 1}").unwrap();
    std::fs::write(dir.join("tokenizer.model"), [0u8, 1, 2, 3]).unwrap();
    // Not copied: a sub-folder, and the dense weights in another format.
    std::fs::create_dir(dir.join("original")).unwrap();
    std::fs::write(dir.join("original/params.json"), "{}").unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), [9u8; 16]).unwrap();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn values(rows: usize, cols: usize, seed: f32) -> Matrix {
    Matrix::from_fn(rows, cols, |r, c| {
        ((r * 31 + c * 7) as f32 * 0.013 + seed).sin() * 0.05
    })
}

/// (dtype, shape, bytes) of every tensor of a safetensors file.
fn tensors(path: &Path) -> HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
        .collect()
}

fn shard_files(dir: &Path) -> Vec<String> {
    files_in(dir)
        .into_iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect()
}

#[test]
fn a_pruned_checkpoint_keeps_the_layout_and_round_trips() {
    for (dtype, shards, new_config) in [
        (DType::F16, 1, false),
        (DType::BF16, 1, true),
        (DType::F16, 3, true),
        (DType::BF16, 3, false),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("llama");
        make_input(&input, dtype, shards);
        let ck = Checkpoint::open(&input).unwrap();

        let q = "model.layers.0.self_attn.q_proj.weight";
        let gate = "model.layers.1.mlp.gate_proj.weight";
        let norm = "model.layers.0.input_layernorm.weight";
        let replaced = HashMap::from([
            (q.to_string(), values(256, 256, 1.0)),
            // Structured pruning: half the channels.
            (gate.to_string(), values(344, 256, 2.0)),
            (norm.to_string(), values(1, 256, 3.0)),
        ]);
        let original: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(input.join("config.json")).unwrap())
                .unwrap();
        let config = LlamaConfig::updated_json(&original, 344, 8, 4);
        let out = tmp.path().join("pruned");
        let mut inputs = Inputs::new();
        inputs.folder(&input, "the checkpoint folder");
        write_pruned_checkpoint(&ck, &out, &replaced, new_config.then_some(&config), &inputs)
            .unwrap();

        // The same files, less the sub-folder and the other-format weights.
        let mut want: Vec<String> = files_in(&input)
            .into_iter()
            .filter(|f| f != "original" && f != "pytorch_model.bin")
            .collect();
        want.sort();
        assert_eq!(files_in(&out), want, "{dtype:?} {shards}");
        assert_eq!(
            files_in(tmp.path()),
            ["llama", "pruned"],
            "no temporary left"
        );
        for f in [
            "tokenizer.json",
            "generation_config.json",
            "tokenizer.model",
        ] {
            assert_eq!(
                std::fs::read(input.join(f)).unwrap(),
                std::fs::read(out.join(f)).unwrap()
            );
        }
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(written, if new_config { config } else { original });

        // Shard by shard: the same names, dtypes; unchanged bytes identical.
        assert_eq!(shard_files(&out), shard_files(&input));
        let mut total = 0;
        for f in shard_files(&input) {
            let (a, b) = (tensors(&input.join(&f)), tensors(&out.join(&f)));
            let mut names_a: Vec<_> = a.keys().collect();
            let mut names_b: Vec<_> = b.keys().collect();
            names_a.sort();
            names_b.sort();
            assert_eq!(names_a, names_b, "{f}");
            for (name, (d, shape, bytes)) in &a {
                let (d2, shape2, bytes2) = &b[name];
                assert_eq!(d, d2, "{name}");
                total += bytes2.len();
                if !replaced.contains_key(name) {
                    assert_eq!((shape, bytes), (shape2, bytes2), "{name}");
                }
            }
            let raw = std::fs::read(out.join(&f)).unwrap();
            let (_, meta) = SafeTensors::read_metadata(&raw).unwrap();
            assert_eq!(
                meta.metadata().as_ref().unwrap().get("format").unwrap(),
                "pt"
            );
        }

        // Read back through the checkpoint reader: new shapes, values as the dtype stores them.
        let back = Checkpoint::open(&out).unwrap();
        assert_eq!(back.tensor_names(), ck.tensor_names());
        for (name, m) in &replaced {
            let (got, d) = back.read_tensor(name).unwrap();
            assert_eq!(d, dtype);
            assert_eq!((got.rows, got.cols), (m.rows, m.cols), "{name}");
            let mut want = m.data.clone();
            dtype.round_trip(&mut want);
            assert_eq!(got.data, want, "{name}");
        }
        assert_eq!(back.tensor_info(gate).unwrap(), (dtype, vec![344, 256]));
        assert_eq!(back.tensor_info(norm).unwrap(), (dtype, vec![256]));

        if shards > 1 {
            let index = |dir: &Path| -> serde_json::Value {
                serde_json::from_str(
                    &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
                )
                .unwrap()
            };
            let (a, b) = (index(&input), index(&out));
            assert_eq!(a["weight_map"], b["weight_map"]);
            assert_eq!(b["metadata"]["total_size"], total);
            // Half of one 688 x 256 matrix gone.
            assert_eq!(
                a["metadata"]["total_size"].as_u64().unwrap() - total as u64,
                344 * 256 * 2
            );
        }
    }
}

#[test]
fn an_existing_empty_folder_is_filled() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("llama");
    make_input(&input, DType::BF16, 2);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let ck = Checkpoint::open(&input).unwrap();
    write_pruned_checkpoint(&ck, &out, &HashMap::new(), None, &Inputs::new()).unwrap();
    assert!(files_in(&out).contains(&"model.safetensors.index.json".to_string()));
    assert_eq!(files_in(tmp.path()), ["llama", "out"]);
    // Nothing replaced: every tensor as it was.
    let back = Checkpoint::open(&out).unwrap();
    for name in ck.tensor_names() {
        assert_eq!(
            back.read_tensor(&name).unwrap().0,
            ck.read_tensor(&name).unwrap().0
        );
    }
}

/// The error, after checking its message mentions each of `needles`.
fn expect_err(r: Result<(), ModelError>, needles: &[&str]) {
    let Err(e) = r else {
        panic!("expected an error mentioning {needles:?}")
    };
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "'{msg}' should mention '{n}'");
    }
}

#[test]
fn refusals_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("llama");
    make_input(&input, DType::F16, 3);
    std::fs::create_dir(tmp.path().join("full")).unwrap();
    std::fs::write(tmp.path().join("full/model.safetensors"), "old").unwrap();
    let ck = Checkpoint::open(&input).unwrap();
    let before_input = files_in(&input);
    let before = files_in(tmp.path());
    let q = "model.layers.0.self_attn.q_proj.weight".to_string();
    let ok = HashMap::from([(q.clone(), values(256, 256, 0.0))]);
    let mut big = values(256, 256, 0.0);
    big.data[256 * 3 + 5] = 70000.0;
    let mut nan = values(256, 256, 0.0);
    nan.data[7] = f32::NAN;
    let cases: Vec<(std::path::PathBuf, HashMap<String, Matrix>, Vec<&str>)> = vec![
        (
            input.clone(),
            ok.clone(),
            vec!["refusing to write into an input"],
        ),
        (
            input.join("pruned"),
            ok.clone(),
            vec!["refusing to write into an input"],
        ),
        (
            tmp.path().join("llama/../llama"),
            ok.clone(),
            vec!["refusing to write into an input"],
        ),
        (
            tmp.path().join("full"),
            ok.clone(),
            vec!["exists and is not empty"],
        ),
        (
            tmp.path().join("new"),
            HashMap::from([(
                "model.layers.9.mlp.up_proj.weight".into(),
                values(2, 2, 0.0),
            )]),
            vec!["model.layers.9.mlp.up_proj.weight is not in the checkpoint"],
        ),
        (
            tmp.path().join("new"),
            HashMap::from([(q.clone(), big)]),
            vec![&q, "70000", "row 3, column 5", "f16"],
        ),
        (
            tmp.path().join("new"),
            HashMap::from([(q.clone(), nan)]),
            vec![&q, "NaN", "row 0, column 7"],
        ),
        (
            tmp.path().join("new"),
            HashMap::from([(
                "model.layers.0.input_layernorm.weight".into(),
                values(2, 128, 0.0),
            )]),
            vec!["input_layernorm", "[1, 256]"],
        ),
        (
            tmp.path().join("no/such/folder"),
            ok.clone(),
            vec!["does not exist"],
        ),
    ];
    // The check a run makes before pruning refuses the same folders.
    for out in [input.clone(), input.join("pruned"), tmp.path().join("full")] {
        assert!(check_output_folder(&ck, &out, &Inputs::new()).is_err());
    }
    check_output_folder(&ck, &tmp.path().join("new"), &Inputs::new()).unwrap();
    for (out, replaced, needles) in cases {
        expect_err(
            write_pruned_checkpoint(&ck, &out, &replaced, None, &Inputs::new()),
            &needles,
        );
        assert_eq!(files_in(tmp.path()), before, "{}", out.display());
        assert_eq!(files_in(&input), before_input, "{}", out.display());
        assert_eq!(files_in(&tmp.path().join("full")), ["model.safetensors"]);
    }
}
