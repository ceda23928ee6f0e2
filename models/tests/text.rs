//! Tokenizers: both kinds of LLaMA tokenizer.json (byte-level BPE with LLaMA-3's regex
//! pre-tokenizer, SentencePiece-style BPE with byte fallback as LLaMA-1/2's) give the ids the
//! Python `tokenizers` library gives for the same file, BOS once at the start.
//!
//! The files and the expected ids come from `data/make_tokenizers.py` (Python tokenizers
//! 0.23.3): `python3 models/tests/data/make_tokenizers.py models/tests/data`.

use std::path::Path;

use prunebench_models::text::{encode_text, load_tokenizer};

/// The texts of `make_tokenizers.py`, in its order.
const TEXTS: [&str; 4] = [
    "The quick brown fox.",
    "In 2024, LLaMA-3 8B: we'll prune 50% (don't panic) -- 12345 tokens.",
    " = Valkyria Chronicles III = \n\n Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 ) \n",
    "emoji 🦙 and  double  spaces\tand tabs",
];

const LLAMA3_STYLE_IDS: [&[u32]; 4] = [
    &[0, 312, 380, 335, 374, 346, 79, 290, 347, 15],
    &[
        0, 306, 222, 301, 21, 13, 371, 319, 14, 20, 222, 25, 35, 27, 264, 70, 8, 77, 77, 222, 81,
        83, 86, 79, 70, 222, 302, 6, 222, 9, 69, 269, 298, 222, 81, 263, 74, 68, 10, 222, 14, 14,
        222, 300, 20, 21, 22, 384, 84, 15,
    ],
    &[
        0, 222, 30, 222, 55, 66, 77, 76, 90, 83, 74, 66, 222, 36, 73, 83, 269, 74, 68, 77, 259,
        222, 42, 42, 42, 222, 30, 222, 363, 222, 52, 325, 75, 131, 237, 291, 80, 222, 55, 66, 77,
        76, 90, 83, 74, 66, 222, 20, 222, 27, 222, 54, 79, 271, 322, 69, 70, 69, 222, 36, 73, 83,
        269, 74, 68, 77, 259, 222, 9, 222, 43, 66, 81, 263, 259, 70, 222, 27, 222, 164, 232, 101,
        163, 256, 114, 161, 225, 108, 161, 227, 114, 161, 226, 96, 161, 227, 106, 161, 226, 257,
        161, 227, 100, 161, 227, 105, 161, 226, 97, 20, 222, 10, 222, 200,
    ],
    &[
        0, 70, 78, 80, 75, 74, 222, 174, 255, 101, 249, 222, 276, 222, 289, 80, 86, 67, 77, 70,
        222, 398, 259, 362, 382, 84,
    ],
];
const LLAMA2_STYLE_IDS: [&[u32]; 4] = [
    &[1, 468, 445, 422, 470, 439, 490, 310, 266],
    &[
        1, 464, 368, 55, 334, 381, 287, 281, 275, 265, 270, 314, 59, 276, 61, 322, 291, 263, 298,
        298, 314, 302, 304, 307, 300, 315, 271, 267, 262, 314, 43, 338, 436, 302, 321, 295, 289,
        44, 314, 265, 265, 314, 268, 269, 270, 55, 271, 316, 440, 305, 266,
    ],
    &[
        1, 351, 374, 89, 287, 298, 297, 311, 304, 295, 287, 314, 70, 294, 304, 301, 300, 295, 289,
        298, 317, 314, 279, 279, 279, 314, 374, 360, 314, 284, 404, 296, 200, 144, 314, 300, 301,
        314, 89, 287, 298, 297, 311, 304, 295, 287, 314, 270, 314, 61, 314, 88, 300, 329, 400, 290,
        408, 70, 294, 304, 301, 300, 295, 289, 298, 317, 314, 43, 314, 77, 287, 302, 321, 317, 315,
        61, 314, 233, 139, 169, 232, 163, 183, 230, 132, 177, 230, 134, 183, 230, 133, 164, 230,
        134, 174, 230, 133, 176, 230, 134, 168, 230, 134, 173, 230, 133, 165, 270, 314, 44, 314,
        260,
    ],
    &[
        1, 314, 291, 428, 296, 295, 314, 243, 162, 169, 156, 314, 333, 351, 338, 307, 288, 298,
        315, 331, 442, 477, 475, 305,
    ],
];

/// A checkpoint-like folder holding fixture `name` as its tokenizer.json.
fn folder_with(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(dir.path().join("tokenizer.json"), v.to_string()).unwrap();
    dir
}

fn check(name: &str, want: &[&[u32]], bos: u32) {
    let dir = folder_with(name, |_| {});
    let tok = load_tokenizer(dir.path()).unwrap();
    for (text, want) in TEXTS.iter().zip(want) {
        let ids = encode_text(&tok, text).unwrap();
        assert_eq!(&ids[..], *want, "{name}: {text:?}");
        assert_eq!(ids.iter().filter(|&&i| i == bos).count(), 1, "{text:?}");
        assert_eq!(ids[0], bos);
    }
}

#[test]
fn byte_level_bpe_with_the_llama3_regex_matches_python() {
    check("llama3_style.json", &LLAMA3_STYLE_IDS, 0);
}

#[test]
fn sentencepiece_style_bpe_with_byte_fallback_matches_python() {
    check("llama2_style.json", &LLAMA2_STYLE_IDS, 1);
}

#[test]
fn a_saved_truncation_or_padding_does_not_shorten_the_text() {
    // A tokenizer.json saved with truncation to 8 tokens and padding: transformers'
    // `tokenizer(text)` ignores both, and so must the evaluation.
    let dir = folder_with("llama2_style.json", |v| {
        v["truncation"] = serde_json::json!({"direction": "Right", "max_length": 8,
            "strategy": "LongestFirst", "stride": 0});
        v["padding"] = serde_json::json!({"strategy": {"Fixed": 512}, "direction": "Right",
            "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<unk>"});
    });
    let tok = load_tokenizer(dir.path()).unwrap();
    assert_eq!(encode_text(&tok, TEXTS[1]).unwrap(), LLAMA2_STYLE_IDS[1]);
    // One loaded some other way and truncated is encoded whole all the same.
    let mut other = tok.clone();
    other
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: 4,
            ..Default::default()
        }))
        .unwrap();
    assert_eq!(encode_text(&other, TEXTS[1]).unwrap(), LLAMA2_STYLE_IDS[1]);
}
