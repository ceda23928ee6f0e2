//! Mask selection by the reference: the k lowest scores of a group, ties to the lower index.
//! A partial selection (select_nth_unstable) on the total order (score, index) gives exactly
//! the set a stable ascending sort would, in linear time.

use std::cmp::Ordering;

use rayon::prelude::*;

use crate::ops::{unstructured_k, MaskGroup, MaskPattern};
use crate::tensor::Mask;

fn by_score_then_index(scores: &[f64]) -> impl Fn(&u32, &u32) -> Ordering + '_ {
    move |&a, &b| {
        scores[a as usize]
            .total_cmp(&scores[b as usize])
            .then(a.cmp(&b))
    }
}

/// Indices (into `scores`) of the `k` lowest scores, ties to the lower index.
pub fn lowest_k(scores: &[f64], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    if k == 0 {
        return Vec::new();
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, by_score_then_index(scores));
    }
    idx.truncate(k);
    idx
}

/// The mask of a `rows x cols` score matrix under a pattern (§5).
pub fn select(scores: &[f64], rows: usize, cols: usize, pattern: MaskPattern) -> Mask {
    let mut mask = Mask::empty(rows, cols);
    let wpr = Mask::words_per_row(cols);
    match pattern {
        MaskPattern::Unstructured {
            sparsity,
            group: MaskGroup::Matrix,
        } => {
            for i in lowest_k(scores, unstructured_k(sparsity, rows * cols)) {
                let i = i as usize;
                mask.set(i / cols, i % cols, true);
            }
        }
        MaskPattern::Unstructured {
            sparsity,
            group: MaskGroup::PerRow,
        } => {
            let k = unstructured_k(sparsity, cols);
            mask.bits
                .par_chunks_mut(wpr.max(1))
                .zip(scores.par_chunks(cols.max(1)))
                .for_each(|(words, row)| {
                    for c in lowest_k(row, k) {
                        words[c as usize / 32] |= 1 << (c % 32);
                    }
                });
        }
        MaskPattern::NM { n, m } => {
            mask.bits
                .par_chunks_mut(wpr.max(1))
                .zip(scores.par_chunks(cols.max(1)))
                .for_each(|(words, row)| {
                    for g in (0..cols).step_by(m) {
                        for c in lowest_k(&row[g..g + m], n) {
                            let c = g + c as usize;
                            words[c / 32] |= 1 << (c % 32);
                        }
                    }
                });
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lower_index() {
        assert_eq!(lowest_k(&[1.0, 0.5, 0.5, 0.5, 2.0], 2), vec![1, 2]);
        let mut got = lowest_k(&[3.0, 1.0, 1.0, 0.0], 3);
        got.sort();
        assert_eq!(got, vec![1, 2, 3]);
        assert!(lowest_k(&[1.0], 0).is_empty());
        assert_eq!(lowest_k(&[1.0, 0.0], 2).len(), 2);
    }

    #[test]
    fn hand_checked_masks() {
        // 2 x 4 scores.
        let s = [4.0, 1.0, 3.0, 2.0, 0.0, 0.0, 5.0, 0.0];
        let per_row = select(
            &s,
            2,
            4,
            MaskPattern::Unstructured {
                sparsity: 0.5,
                group: MaskGroup::PerRow,
            },
        );
        let bits = |m: &Mask| -> Vec<bool> {
            (0..2)
                .flat_map(|r| (0..4).map(move |c| (r, c)))
                .map(|(r, c)| m.get(r, c))
                .collect()
        };
        assert_eq!(
            bits(&per_row),
            [false, true, false, true, true, true, false, false]
        );
        let whole = select(
            &s,
            2,
            4,
            MaskPattern::Unstructured {
                sparsity: 0.5,
                group: MaskGroup::Matrix,
            },
        );
        // The four lowest: three zeros (indices 4, 5, 7) and the 1.0 at index 1.
        assert_eq!(
            bits(&whole),
            [false, true, false, false, true, true, false, true]
        );
        let nm = select(&s, 2, 4, MaskPattern::NM { n: 1, m: 2 });
        assert_eq!(
            bits(&nm),
            [false, true, false, true, true, false, false, true]
        );
    }
}
