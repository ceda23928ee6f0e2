//! Batches of per-group products (§11's OBS saliency: Q_g = W[:, S_g]·L_g⁻ᵀ for each listed
//! group of columns). One product per group leaves a GEMM of r x k output, r/64 · k/64 tiles:
//! at LLaMA-7B's 4096 rows and 128-column heads, 128 tiles, under one wave of an H100. Groups
//! whose column blocks lie a fixed step apart run as one batched launch instead, the z-th
//! product with its operands' origins moved by z times their strides.

/// Listed groups `first..first + count` of the list, their group indices `step` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBatch {
    pub first: usize,
    pub count: usize,
    pub step: usize,
}

/// Tiles a batch should at least make where the device does not say how many fill it: two
/// waves of a mid-sized GPU (and an H100's two waves, 264, are within a tile of it).
pub const DEFAULT_FILL: usize = 256;

/// The list cut into batches of groups a fixed, positive step apart, in list order, each at
/// most `max_count` long (`max_count` >= 1; what the caller's scratch holds) and no longer
/// than `ceil(fill / tiles_each)` (enough products to make `fill` tiles, at `tiles_each`
/// tiles per product): more would only take scratch memory.
pub fn group_batches(
    groups: &[usize],
    tiles_each: usize,
    fill: usize,
    max_count: usize,
) -> Vec<GroupBatch> {
    let want = fill.div_ceil(tiles_each.max(1)).clamp(1, max_count.max(1));
    let mut out = Vec::new();
    let mut i = 0;
    while i < groups.len() {
        let mut count = 1;
        let mut step = 0;
        if i + 1 < groups.len() && groups[i + 1] > groups[i] {
            step = groups[i + 1] - groups[i];
            while count < want
                && i + count < groups.len()
                && groups[i + count] > groups[i + count - 1]
                && groups[i + count] - groups[i + count - 1] == step
            {
                count += 1;
            }
        }
        out.push(GroupBatch {
            first: i,
            count,
            step: step.max(1),
        });
        i += count;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lens(b: &[GroupBatch]) -> Vec<(usize, usize, usize)> {
        b.iter().map(|b| (b.first, b.count, b.step)).collect()
    }

    #[test]
    fn consecutive_groups_batch_up_to_what_fills_the_device() {
        // 32 heads of 4096 x 128: 128 tiles each, two products make 256.
        let all: Vec<usize> = (0..32).collect();
        let b = group_batches(&all, 128, 264, 64);
        assert_eq!(b.len(), 11);
        assert!(b.iter().all(|b| b.step == 1));
        assert_eq!(b.iter().map(|b| b.count).sum::<usize>(), 32);
        assert_eq!(lens(&b)[..2], [(0, 3, 1), (3, 3, 1)]);
        // Scratch for two products only.
        assert!(group_batches(&all, 128, 264, 2)
            .iter()
            .all(|b| b.count == 2));
    }

    #[test]
    fn a_step_change_or_a_repeat_starts_a_new_batch() {
        let b = group_batches(&[0, 2, 4, 5, 6, 6, 3], 1, 1000, 100);
        assert_eq!(
            lens(&b),
            [(0, 3, 2), (3, 2, 1), (5, 1, 1), (6, 1, 1)],
            "{b:?}"
        );
        assert!(group_batches(&[], 1, 1000, 100).is_empty());
        assert_eq!(lens(&group_batches(&[7], 1, 1000, 100)), [(0, 1, 1)]);
    }
}
