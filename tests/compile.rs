//! `prunebench compile` end to end: bad input (an unknown architecture, no NVRTC) gives one
//! clear line and exit 2; with NVRTC (PRUNEBENCH_CUDA_PATH; required where
//! PRUNEBENCH_REQUIRE_NVRTC=1, as in CI) kernels compile, the JSON has the documented fields,
//! and a kernel NVRTC rejects is reported with its log and exit 1.
#![cfg(feature = "cuda")]

mod common;

use common::{json, prunebench};

fn cuda_path() -> Option<String> {
    let required = std::env::var("PRUNEBENCH_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    match std::env::var("PRUNEBENCH_CUDA_PATH") {
        Ok(p) => Some(p),
        Err(_) if required => {
            panic!("PRUNEBENCH_REQUIRE_NVRTC=1 but PRUNEBENCH_CUDA_PATH is unset")
        }
        Err(_) => {
            eprintln!("PRUNEBENCH_CUDA_PATH unset: NVRTC not available, nothing compiled");
            None
        }
    }
}

fn one_error_line(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    err
}

#[test]
fn an_unknown_architecture_is_refused() {
    let out = prunebench(&["compile", "--arch", "sm_90a,sm_75", "--cuda-path", "."]);
    let err = one_error_line(&out);
    assert!(err.contains("sm_75") && err.contains("sm_80"), "{err}");
}

#[test]
fn without_nvrtc_it_says_how_to_get_it() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let out = prunebench(&["compile", "--cuda-path", dir]);
    let err = one_error_line(&out);
    assert!(err.contains("scripts/cuda-toolkit.sh"), "{err}");
    assert!(err.contains(dir), "{err}");
}

#[test]
fn kernels_compile_and_the_json_has_every_field() {
    let Some(cuda) = cuda_path() else { return };
    let out = prunebench(&[
        "compile",
        "--cuda-path",
        &cuda,
        "--methods",
        "none",
        "--op",
        "ROPE",
        "--json",
    ]);
    let v = json(&out);
    let kernels = v["kernels"].as_array().unwrap();
    assert!(!kernels.is_empty());
    for arch in ["sm_90a", "sm_80"] {
        assert!(
            kernels.iter().any(|k| k["arch"] == arch),
            "no {arch} kernel"
        );
    }
    for k in kernels {
        for field in [
            "name",
            "variant",
            "arch",
            "cube_dim",
            "registers",
            "shared_bytes",
            "spill_bytes",
            "occupancy",
        ] {
            assert!(!k[field].is_null(), "{field} missing in {k}");
        }
        assert_eq!(k["status"], "ok", "{k}");
    }
    let cases = v["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for c in cases {
        assert!(c["case"].as_str().unwrap().starts_with("ROPE"), "{c}");
        assert_eq!(c["status"], "ok", "{c}");
        assert!(c["launches"].as_u64().unwrap() > 0, "{c}");
        let (min, med, max) = (&c["cubes_min"], &c["cubes_median"], &c["cubes_max"]);
        assert!(
            min.as_u64() <= med.as_u64() && med.as_u64() <= max.as_u64(),
            "{c}"
        );
        assert!(c["waves"].as_f64().unwrap() > 0.0, "{c}");
    }
}

#[test]
fn a_broken_kernel_is_reported_with_its_nvrtc_error_and_exit_1() {
    let Some(cuda) = cuda_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("broken.cu");
    std::fs::write(
        &src,
        "extern \"C\" __global__ void broken(float* out) { out[0] = undeclared_name; }\n",
    )
    .unwrap();
    let out = prunebench(&[
        "compile",
        "--cuda-path",
        &cuda,
        "--methods",
        "none",
        "--op",
        "SILU_MUL",
        "--extra-source",
        src.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("extra_source - on sm_90a: error"),
        "{stdout}"
    );
    assert!(stdout.contains("undeclared_name"), "{stdout}");
    // The op's own kernels still compiled.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("silu_mul") && l.ends_with(" ok")),
        "{stdout}"
    );
}
