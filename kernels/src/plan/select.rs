//! Whole-group selection's row chunks. The group (a matrix, or SparseGPT's column block) is
//! selected by three histogram passes, a pass counting each chunk's keys equal to the
//! threshold and a write pass, every one a grid of workgroups: the tie and write passes give
//! each workgroup a chunk of whole rows, so a mask word is written by one workgroup and the
//! ties before a chunk are a sum of the counts of the chunks before it.

/// Chunks a group's rows are cut into at most: two waves of an H100's 132 SMs and more,
/// while the write pass's sum over earlier chunks stays at two loads per invocation.
pub const MAX_CHUNKS: usize = 512;

/// Rows per chunk of a group of `rows` rows: the fewest that make at most [`MAX_CHUNKS`].
pub fn chunk_rows(rows: usize) -> usize {
    rows.div_ceil(MAX_CHUNKS).max(1)
}

/// The chunks of one window of the group's rows, [r0, r1): its first chunk's index over the
/// whole group and how many it has, chunks of `per` rows counted from the window's first row
/// (windows are cut in order, so the indices of successive windows follow on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowChunks {
    pub r0: usize,
    pub r1: usize,
    pub first: usize,
    pub count: usize,
}

/// Every window's chunks, in row order, for windows given as row ranges in order.
pub fn window_chunks(windows: &[(usize, usize)], per: usize) -> Vec<WindowChunks> {
    let mut first = 0;
    windows
        .iter()
        .map(|&(r0, r1)| {
            let count = (r1 - r0).div_ceil(per.max(1));
            let w = WindowChunks {
                r0,
                r1,
                first,
                count,
            };
            first += count;
            w
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_once_and_number_on_across_windows() {
        for rows in [1, 7, 511, 512, 513, 4096, 28672] {
            let per = chunk_rows(rows);
            assert!(rows.div_ceil(per) <= MAX_CHUNKS, "{rows}");
            // The fewest rows per chunk: one fewer would make too many.
            assert!(per == 1 || rows.div_ceil(per - 1) > MAX_CHUNKS, "{rows}");
        }
        let wins = [(0, 10), (10, 25), (25, 26)];
        let ch = window_chunks(&wins, 4);
        assert_eq!(
            ch.iter().map(|c| (c.first, c.count)).collect::<Vec<_>>(),
            [(0, 3), (3, 4), (7, 1)]
        );
        // Rows covered: each chunk's rows lie inside its window.
        let covered: usize = ch
            .iter()
            .map(|c| {
                (0..c.count)
                    .map(|i| 4.min(c.r1 - c.r0 - 4 * i))
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(covered, 26);
    }
}
