//! What only the CubeCL backend has: tensors cut into slabs of whole 64-row blocks, fixed
//! when a tensor is made (so operands of different slabs are refused, and the shared tests'
//! split cases cut where their comments say), and f16 conversions run on the device.

#![cfg(feature = "cubecl")]

use half::f16;
use prunebench_kernels::cube::{cube_wgpu, CubeWgpuBackend};
use prunebench_kernels::rng::Rng;
use prunebench_kernels::{Backend, KernelError, Mask, Matrix};

fn backend() -> CubeWgpuBackend {
    cube_wgpu(None).expect(
        "no Vulkan adapter for CubeCL: install mesa-vulkan-drivers (lavapipe) or a GPU driver",
    )
}

/// The slabs `forward_ops`' attention across bindings relies on, at 64 rows of 96 columns:
/// Q of three windows of 37 in 64-row slabs, so the second window crosses a boundary and
/// the third starts inside the second slab and 74 rows into K's only one; at two windows of
/// 100, K's slabs of 128 rows cut the second window too.
#[test]
fn attention_windows_cross_the_slabs_meant() {
    let b = backend().with_binding_limit(64 * 96 * 4);
    assert_eq!(b.slabs(111, 96).unwrap().slab_rows, 64);
    assert_eq!(b.slabs(111, 48).unwrap().count(), 1);
    assert_eq!(b.slabs(200, 48).unwrap().slab_rows, 128);
}

/// The slabs of the shared tests' split cases: at 64 rows of 300 columns W, X, H and U are
/// split in two to four, and at rank 130 LoRA's B in two; above 128 MiB, in two.
#[test]
fn split_cases_meet_the_slabs_meant() {
    let b = backend().with_binding_limit(64 * 300 * 4);
    assert!(b.slabs(150, 296).unwrap().count() >= 3);
    assert!(b.slabs(200, 200).unwrap().count() >= 3);
    assert_eq!(b.slabs(150, 130).unwrap().count(), 2);
    let b = backend().with_binding_limit(128 << 20);
    assert_eq!(b.slabs(8256, 4096).unwrap().count(), 2);
}

/// Operands split differently (made by backends with different slab limits) are refused, not
/// paired slab by slab.
#[test]
fn operands_with_different_slabs_are_refused() {
    let split = backend().with_binding_limit(64 * 300 * 4);
    let whole = backend();
    let mut w = split
        .upload(&Matrix::from_fn(150, 300, |r, c| (r * c) as f32))
        .unwrap();
    let mask = whole.upload_mask(&Mask::empty(150, 300)).unwrap();
    assert!(matches!(
        split.apply_mask(&mut w, &mask),
        Err(KernelError::InvalidArgument(_))
    ));
}

/// f32 -> f16 on the device equals `half`'s `f16::from_f32` bit for bit, and f16 -> f32 equals
/// `to_f32` on all 65536 patterns (NaN as NaN).
#[test]
fn device_f16_conversions_are_the_half_crates() {
    let b = backend();
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        -65504.0,
        65519.99,
        -65519.99,
        65520.0,
        65536.0,
        1e6,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0x7FC1_2345),
        f32::from_bits(0xFFA0_0000),
        f32::MIN_POSITIVE,
        1e-40,
        // The smallest normal f16, the smallest subnormal, half of it (a tie to 0) and just
        // above (to the smallest), 1.5 of it (a tie to 2), the largest subnormal + half an ulp
        // (a tie that carries into the exponent).
        6.103_515_6e-5,
        5.960_464_5e-8,
        2.980_232_2e-8,
        f32::from_bits(2.980_232_2e-8f32.to_bits() + 1),
        8.940_697e-8,
        6.097_555e-5 + 2.980_232_2e-8,
        // Ties to even in the normal range, down and up, and one carrying into the exponent.
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        2.0 - 1.0 / 4096.0,
        2047.5,
        2049.0,
    ];
    // Every midpoint between neighbouring f16 (a tie) and the f32 on either side of it.
    for h in 0..0x7BFFu16 {
        let lo = f16::from_bits(h).to_f64();
        let hi = f16::from_bits(h + 1).to_f64();
        let mid = ((lo + hi) / 2.0) as f32;
        for m in [
            mid,
            f32::from_bits(mid.to_bits() + 1),
            f32::from_bits(mid.to_bits() - 1),
        ] {
            v.push(m);
            v.push(-m);
        }
    }
    let mut rng = Rng::new(7);
    for _ in 0..100_000 {
        v.push(f32::from_bits(rng.next_u64() as u32));
    }
    let got = b.f16_from_f32_on_device(&v).unwrap();
    let bad: Vec<String> = v
        .iter()
        .zip(&got)
        .filter(|(x, g)| f16::from_f32(**x).to_bits() != **g)
        .take(10)
        .map(|(x, g)| {
            format!(
                "{x:e} ({:#010x}): device {g:#06x}, half {:#06x}",
                x.to_bits(),
                f16::from_f32(*x).to_bits()
            )
        })
        .collect();
    assert!(bad.is_empty(), "f32 -> f16 differs:\n{}", bad.join("\n"));

    let all: Vec<u16> = (0..=u16::MAX).collect();
    let got = b.f16_to_f32_on_device(&all).unwrap();
    for (h, g) in all.iter().zip(&got) {
        let want = f16::from_bits(*h).to_f32();
        assert!(
            (want.is_nan() && g.is_nan()) || want.to_bits() == g.to_bits(),
            "f16 {h:#06x}: device {g:e} ({:#010x}), half {want:e}",
            g.to_bits()
        );
    }
}
