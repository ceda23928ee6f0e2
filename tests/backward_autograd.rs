//! The §15 backward ops of the CPU reference against PyTorch autograd in float64 on
//! transformers' own forward functions (tests/fixtures/backward/ops.safetensors, made by
//! baselines/make_backward_fixtures.py): the same gradients up to the order of f64 sums.

use prunebench_kernels::cpu::{CpuBackend, CpuTensor};
use prunebench_kernels::{Backend, NO_TARGET};
use safetensors::{Dtype, SafeTensors};

/// Float64 against float64 with different summation orders: a relative RMS far below this;
/// a wrong term in any formula moves it to O(1).
const AUTOGRAD_REL_RMS: f64 = 1e-12;

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn open() -> Self {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/backward/ops.safetensors"
        );
        Self {
            bytes: std::fs::read(path).unwrap(),
        }
    }

    /// A tensor as rows x cols (a vector as one row), f64 or int64.
    fn get(&self, name: &str) -> CpuTensor {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let data: Vec<f64> = match t.dtype() {
            Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        let (rows, cols) = match *t.shape() {
            [n] => (1, n),
            [r, c] => (r, c),
            ref s => panic!("{name}: shape {s:?}"),
        };
        CpuTensor { rows, cols, data }
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        self.get(name).data.iter().map(|&v| v as u32).collect()
    }

    fn meta(&self, key: &str) -> f64 {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()["prunebench.fixture"]).unwrap();
        json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing"))
    }
}

fn same(what: &str, got: &CpuTensor, want: &CpuTensor) {
    assert_eq!(
        (got.rows, got.cols),
        (want.rows, want.cols),
        "{what}: shape"
    );
    let num: f64 = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).powi(2))
        .sum();
    let den: f64 = want.data.iter().map(|b| b * b).sum();
    let rel = (num / den).sqrt();
    assert!(
        rel < AUTOGRAD_REL_RMS,
        "{what}: relative RMS {rel:e} from autograd"
    );
}

#[test]
fn linear_rms_norm_silu_and_embedding_match_autograd() {
    let (f, b) = (Fixture::open(), CpuBackend::new());
    let (dx, dw) = b
        .linear_backward(&f.get("linear.x"), &f.get("linear.w"), &f.get("linear.dy"))
        .unwrap();
    same("linear dX", &dx, &f.get("linear.dx"));
    same("linear dW", &dw, &f.get("linear.dw"));

    let eps = f.meta("rms_norm.eps");
    let (x, gamma, dy) = (
        f.get("rms_norm.x"),
        f.get("rms_norm.gamma"),
        f.get("rms_norm.dy"),
    );
    let (dx, dgamma) = b.rms_norm_backward(&x, &gamma, &dy, eps).unwrap();
    same("RMSNorm dx", &dx, &f.get("rms_norm.dx"));
    same("RMSNorm dγ", &dgamma, &f.get("rms_norm.dgamma"));

    let (g, u, da) = (
        f.get("silu_mul.gate"),
        f.get("silu_mul.up"),
        f.get("silu_mul.da"),
    );
    let (dg, du) = b.silu_mul_backward(&g, &u, &da).unwrap();
    same("SiLU-gate dg", &dg, &f.get("silu_mul.dgate"));
    same("SiLU-gate du", &du, &f.get("silu_mul.dup"));

    let vocab = f.meta("embed.vocab") as usize;
    let de = b
        .embed_backward(&f.get("embed.dh"), &f.ids("embed.ids"), vocab)
        .unwrap();
    same("embedding dE", &de, &f.get("embed.dtable"));
}

#[test]
fn rope_matches_autograd_through_apply_rotary_pos_emb() {
    let (f, b) = (Fixture::open(), CpuBackend::new());
    let mut dx = f.get("rope.dy");
    b.rope_backward(&mut dx, &f.get("rope.cos"), &f.get("rope.sin"))
        .unwrap();
    same("RoPE dx", &dx, &f.get("rope.dx"));
}

#[test]
fn lm_head_matches_the_causal_lm_loss_gradient() {
    let (f, b) = (Fixture::open(), CpuBackend::new());
    let (h, w) = (f.get("lm_head.h"), f.get("lm_head.w"));
    // HF's labels = input_ids: row t predicts ids[t + 1], the last row nothing.
    let ids = f.ids("lm_head.ids");
    let mut targets: Vec<u32> = ids[1..].to_vec();
    targets.push(NO_TARGET);
    let lse = f.get("lm_head.lse");
    let lse = prunebench_kernels::cpu::CpuTensor {
        rows: lse.cols.max(lse.rows),
        cols: 1,
        data: lse.data,
    };
    let scale = 1.0 / (ids.len() - 1) as f64;
    let mut dh = CpuTensor::zeros(h.rows, h.cols);
    let dw = b
        .lm_head_backward_chunk(&mut dh, &h, &w, 0, &targets, &lse, scale)
        .unwrap();
    same("LM head dh", &dh, &f.get("lm_head.dh"));
    same("LM head dW", &dw, &f.get("lm_head.dw"));
}

#[test]
fn attention_matches_autograd_with_three_kv_groups() {
    let (f, b) = (Fixture::open(), CpuBackend::new());
    let (heads, kv_heads, seq) = (
        f.meta("attention.heads") as usize,
        f.meta("attention.kv_heads") as usize,
        f.meta("attention.seq") as usize,
    );
    let (q, k, v) = (
        f.get("attention.q"),
        f.get("attention.k"),
        f.get("attention.v"),
    );
    let (o, lse) = b
        .attention_with_lse(&q, &k, &v, heads, kv_heads, seq)
        .unwrap();
    same("attention O", &o, &f.get("attention.o"));
    same("attention L", &lse, &f.get("attention.lse"));
    let d_o = f.get("attention.do");
    let (dq, dk, dv) = b
        .attention_backward(&q, &k, &v, &o, &lse, &d_o, heads, kv_heads, seq)
        .unwrap();
    same("attention dQ", &dq, &f.get("attention.dq"));
    same("attention dK", &dk, &f.get("attention.dk"));
    same("attention dV", &dv, &f.get("attention.dv"));
}
