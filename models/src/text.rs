//! Text as the whole-model runs see it: token ids from a checkpoint's `tokenizer.json` or from a
//! file of ids, cut into the calibration windows (seeded random offsets) and the evaluation
//! windows (consecutive, as the seeds' `eval_ppl`). docs/FORMATS.md documents the file formats and
//! the window rules, so that another implementation draws the same windows.

use std::io::Read;
use std::path::Path;

/// Re-exported, so that users of these functions need no dependency of their own.
pub use tokenizers::Tokenizer;

use crate::error::{io, ModelError, Result};
use crate::input::{input_present, open_input_file, read_input_text};
use crate::llama::LlamaConfig;

/// The tokenizer of a checkpoint folder, `dir/tokenizer.json`, with any truncation or padding
/// it was saved with turned off: transformers' `tokenizer(text)` turns them off too, and a
/// text truncated to the tokenizer's saved max_length would be a silently shorter evaluation.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !input_present(&path)? {
        return Err(ModelError::NoTokenizer {
            dir: dir.to_path_buf(),
        });
    }
    let text = read_input_text(&path, "a tokenizer.json file")?;
    let mut tok: Tokenizer = text.parse().map_err(|e| ModelError::BadTokens {
        path: path.clone(),
        detail: format!("not a tokenizer the tokenizers library loads: {e}"),
    })?;
    tok.with_truncation(None)
        .map_err(|e| ModelError::BadTokens {
            path: path.clone(),
            detail: format!("cannot turn truncation off: {e}"),
        })?
        .with_padding(None);
    Ok(tok)
}

/// The ids of `text` with the tokenizer's special tokens added (add_special_tokens = true, as
/// the seeds' `tokenizer(text)`): LLaMA's BOS once at the start, no EOS.
pub fn encode_text(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let encode = |t: &Tokenizer| {
        t.encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Text(format!("cannot tokenize the text: {e}")))
    };
    if tok.get_truncation().is_none() && tok.get_padding().is_none() {
        return encode(tok);
    }
    // One not made by `load_tokenizer`: the whole text, unpadded, as there.
    let mut whole = tok.clone();
    whole
        .with_truncation(None)
        .map_err(|e| ModelError::Text(format!("cannot turn truncation off: {e}")))?
        .with_padding(None);
    encode(&whole)
}

/// Token ids from `path`: a `.json` file holds a JSON list of non-negative integers; a file
/// with any other extension is raw little-endian u32, 4 bytes an id. An empty list is an
/// error (no window can be cut from it). Ids are checked against a model by [`check_ids`].
pub fn read_token_ids(path: &Path) -> Result<Vec<u32>> {
    let bad = |detail: String| ModelError::BadTokens {
        path: path.to_path_buf(),
        detail,
    };
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let ids = if is_json {
        let text = read_input_text(path, "a JSON list of token ids")?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let list = v
            .as_array()
            .ok_or_else(|| bad("not a JSON list of token ids".into()))?;
        list.iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "entry {i} is {x}, not a token id (an integer from 0 to {})",
                            u32::MAX
                        ))
                    })
            })
            .collect::<Result<Vec<u32>>>()?
    } else {
        let mut bytes = Vec::new();
        open_input_file(path, "a file of token ids (little-endian u32)")?
            .read_to_end(&mut bytes)
            .map_err(io(path))?;
        if bytes.len() % 4 != 0 {
            return Err(bad(format!(
                "{} bytes is not a whole number of token ids: a file other than .json holds \
                 little-endian u32 ids, 4 bytes each",
                bytes.len()
            )));
        }
        bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    if ids.is_empty() {
        return Err(bad("holds no token ids".into()));
    }
    Ok(ids)
}

/// Fails on the first id not below `vocab` (the model's vocab_size), naming its position in
/// `path`: the embedding gather would otherwise read past the table.
pub fn check_ids(ids: &[u32], vocab: usize, path: &Path) -> Result<()> {
    match ids.iter().position(|&id| id as usize >= vocab) {
        None => Ok(()),
        Some(i) => Err(ModelError::BadTokens {
            path: path.to_path_buf(),
            detail: format!(
                "token id {} at position {i} is not below the model's vocab_size {vocab}",
                ids[i]
            ),
        }),
    }
}

/// The window length when none is given (ALGORITHMS.md §14): min(2048, max_position_embeddings).
pub fn default_seqlen(cfg: &LlamaConfig) -> usize {
    cfg.max_position_embeddings.min(2048)
}

/// Fails on a window length of 0 or one beyond the positions the model was trained for.
pub fn check_seqlen(seqlen: usize, cfg: &LlamaConfig) -> Result<()> {
    if seqlen == 0 {
        return Err(ModelError::Text(
            "--seqlen 0: a window needs at least one token".into(),
        ));
    }
    if seqlen > cfg.max_position_embeddings {
        return Err(ModelError::Text(format!(
            "--seqlen {seqlen} is above the model's max_position_embeddings {}",
            cfg.max_position_embeddings
        )));
    }
    Ok(())
}

fn at_least_one_window(n: usize, seqlen: usize) -> Result<()> {
    if seqlen == 0 {
        return Err(ModelError::Text(
            "a window of 0 tokens: the window length must be at least 1".into(),
        ));
    }
    if n < seqlen {
        return Err(ModelError::Text(format!(
            "the text has {n} tokens, fewer than one window of {seqlen}"
        )));
    }
    Ok(())
}

/// The SplitMix64 generator (Steele, Lea and Flood 2014), as specified in docs/FORMATS.md.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `nsamples` calibration windows of `seqlen` tokens at seeded random offsets, exactly (a
/// Python script in docs/FORMATS.md reproduces it bit for bit): with n = ids.len() and T = seqlen
/// (n ≥ T, else an error), state = seed, and for each window in turn
///
/// ```text
/// state = state + 0x9E3779B97F4A7C15            (mod 2^64)
/// z = state
/// z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9      (mod 2^64)
/// z = (z ^ (z >> 27)) * 0x94D049BB133111EB      (mod 2^64)
/// z = z ^ (z >> 31)
/// offset = z % (n - T + 1)
/// window = ids[offset .. offset + T]
/// ```
///
/// Windows may overlap and repeat, as the seeds' random C4 windows may. (The modulo is
/// slightly biased towards small offsets for n − T + 1 not a power of two, by at most
/// (n − T + 1) / 2^64: nothing a text has tokens enough to show.)
pub fn calibration_windows(
    ids: &[u32],
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    at_least_one_window(ids.len(), seqlen)?;
    let starts = (ids.len() - seqlen + 1) as u64;
    let mut rng = SplitMix64(seed);
    Ok((0..nsamples)
        .map(|_| {
            let offset = (rng.next() % starts) as usize;
            ids[offset..offset + seqlen].to_vec()
        })
        .collect())
}

/// The evaluation windows, as the seeds' `eval_ppl`: ids[i·T .. (i+1)·T] for i < n / T, the
/// last n mod T tokens dropped; an error when the text holds less than one window.
pub fn eval_windows(ids: &[u32], seqlen: usize) -> Result<Vec<Vec<u32>>> {
    at_least_one_window(ids.len(), seqlen)?;
    Ok(ids.chunks_exact(seqlen).map(<[u32]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The published first outputs for seed 1234567 (Rosetta Code, "Pseudo-random
        // numbers/Splitmix64"), which docs/FORMATS.md's Python steps give too.
        let mut r = SplitMix64(1234567);
        assert_eq!(
            [r.next(), r.next(), r.next()],
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
    }

    #[test]
    fn calibration_windows_are_the_documented_ones() {
        let ids: Vec<u32> = (0..1000).collect();
        // The ids are their own positions, so each window's first id is its offset.
        let w = calibration_windows(&ids, 4, 16, 0).unwrap();
        let offsets: Vec<u32> = w.iter().map(|w| w[0]).collect();
        assert_eq!(offsets, PY_OFFSETS_SEED0);
        for w in &w {
            assert_eq!(w.len(), 16);
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
        }
        assert_eq!(
            calibration_windows(&ids, 3, 100, 42)
                .unwrap()
                .iter()
                .map(|w| w[0])
                .collect::<Vec<_>>(),
            PY_OFFSETS_SEED42
        );
        // A text of exactly one window gives it every time.
        let w = calibration_windows(&ids[..16], 3, 16, 7).unwrap();
        assert!(w.iter().all(|w| w[..] == ids[..16]));
        let e = calibration_windows(&ids[..15], 1, 16, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the text has 15 tokens, fewer than one window of 16"
        );
        assert!(calibration_windows(&ids, 1, 0, 0).is_err());
        assert!(calibration_windows(&ids, 0, 16, 0).unwrap().is_empty());
    }

    /// `[w[0] for w in calibration_windows(list(range(1000)), 4, 16, 0)]` with docs/FORMATS.md's
    /// Python, and `(..., 3, 100, 42)`.
    const PY_OFFSETS_SEED0: [u32; 4] = [295, 370, 304, 214];
    const PY_OFFSETS_SEED42: [u32; 3] = [421, 333, 550];

    #[test]
    fn eval_windows_drop_the_remainder() {
        let ids: Vec<u32> = (0..10).collect();
        assert_eq!(
            eval_windows(&ids, 4).unwrap(),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
        );
        assert_eq!(eval_windows(&ids, 10).unwrap(), vec![ids.clone()]);
        let e = eval_windows(&ids, 11).unwrap_err().to_string();
        assert_eq!(e, "the text has 10 tokens, fewer than one window of 11");
        assert!(eval_windows(&ids, 0).is_err());
    }

    #[test]
    fn token_id_files_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("ids.json");
        std::fs::write(&json, "[1, 15043, 3186, 0]").unwrap();
        assert_eq!(read_token_ids(&json).unwrap(), [1, 15043, 3186, 0]);
        let raw = dir.path().join("ids.bin");
        let bytes: Vec<u8> = [1u32, 15043, 70000, u32::MAX]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&raw, &bytes).unwrap();
        assert_eq!(read_token_ids(&raw).unwrap(), [1, 15043, 70000, u32::MAX]);
        // Upper-case extension is JSON too.
        let upper = dir.path().join("IDS.JSON");
        std::fs::write(&upper, "[7]").unwrap();
        assert_eq!(read_token_ids(&upper).unwrap(), [7]);

        for (name, content, needle) in [
            ("a.json", &b"[1, -2]"[..], "entry 1 is -2, not a token id"),
            ("b.json", b"[1, 2.5]", "entry 1 is 2.5"),
            ("c.json", b"[4294967296]", "entry 0 is 4294967296"),
            ("d.json", b"{\"ids\": [1]}", "not a JSON list"),
            ("e.json", b"[1, 2", "not valid JSON"),
            ("f.json", b"[]", "holds no token ids"),
            (
                "g.bin",
                &bytes[..7],
                "7 bytes is not a whole number of token ids",
            ),
            ("h.u32", b"", "holds no token ids"),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            let e = read_token_ids(&p).unwrap_err();
            assert!(matches!(e, ModelError::BadTokens { .. }), "{e}");
            let e = e.to_string();
            assert!(
                e.contains(needle) && e.contains(name),
                "{e}\nshould say {needle}"
            );
        }
        let missing = read_token_ids(&dir.path().join("none.json")).unwrap_err();
        assert!(missing.to_string().contains("none.json"), "{missing}");
    }

    #[test]
    fn ids_are_checked_against_the_vocabulary() {
        let p = Path::new("ids.json");
        check_ids(&[0, 5, 31999], 32000, p).unwrap();
        let e = check_ids(&[0, 5, 32000, 40000], 32000, p)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "ids.json: token id 32000 at position 2 is not below the model's vocab_size 32000"
        );
    }

    #[test]
    fn seqlen_is_checked_against_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "vocab_size": 100}"#,
        )
        .unwrap();
        let cfg = LlamaConfig::from_hf_config(&path).unwrap();
        assert_eq!(default_seqlen(&cfg), 2048);
        check_seqlen(2048, &cfg).unwrap();
        check_seqlen(1, &cfg).unwrap();
        assert_eq!(
            check_seqlen(4096, &cfg).unwrap_err().to_string(),
            "--seqlen 4096 is above the model's max_position_embeddings 2048"
        );
        assert!(check_seqlen(0, &cfg).is_err());
    }

    #[test]
    fn a_missing_tokenizer_says_what_to_give_instead() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_tokenizer(dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "no tokenizer.json in {}: give token ids with --token-ids FILE instead",
                dir.path().display()
            )
        );
        std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
        let e = load_tokenizer(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json: not a tokenizer"), "{e}");
    }
}
