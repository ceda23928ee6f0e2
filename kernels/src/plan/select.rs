//! Whole-group selection's row chunks. The group (a matrix, or SparseGPT's column block) is
//! selected by three histogram passes, a pass counting each chunk's keys equal to the
//! threshold and a write pass, every one a grid of workgroups: the tie and write passes give
//! each workgroup a chunk of whole rows, so a mask word is written by one workgroup and the
//! ties before a chunk are a sum of the counts of the chunks before it.

/// Workgroups (of 256 invocations) a histogram pass aims for where the device does not say
/// how many fill it: two waves of a GPU with 128 compute units.
pub const HIST_FILL: usize = 256;

/// Workgroups a histogram pass has at most (8 per compute unit of a large GPU), each taking
/// every so many chunks: every workgroup of the later passes first decides the previous digit
/// from the global histogram (8 KB), which stays small beside the pass this way (at 4096 x
/// 11008, 8 MB of reads from L2 against 180 MB of W, where a workgroup per 4096 keys read
/// 88 MB).
pub const MAX_HIST_GROUPS: usize = 1024;

/// Workgroups of 256 invocations for a histogram pass over `entries` keys on a device that
/// `fill` workgroups fill twice: 16 keys per invocation, more workgroups where that leaves
/// fewer than `fill` while each keeps 4 keys per invocation (each clears and merges a
/// histogram, which fewer keys would not pay for), at most [`MAX_HIST_GROUPS`]. A 4096 x 128
/// OBS block is `fill` workgroups, not 128.
pub fn hist_groups(entries: usize, fill: usize) -> usize {
    entries
        .div_ceil(256 * 16)
        .max(fill.min(entries.div_ceil(256 * 4)))
        .clamp(1, MAX_HIST_GROUPS)
}

/// Chunks a group's rows are cut into at most: the write pass's sum over earlier chunks stays
/// at two loads per invocation.
pub const MAX_CHUNKS: usize = 512;

/// Chunks the rows are cut into at least where they allow: two waves of a GPU with 128
/// compute units (an H100's two waves, 264, are within a chunk of it).
pub const FILL_CHUNKS: usize = 256;

/// Entries a chunk should hold at least: every workgroup of the tie pass first reads the
/// 2048-bin histogram (8 KB), which a chunk of fewer keys would not pay for.
pub const CHUNK_ENTRIES: usize = 2048;

/// Rows per chunk of a group of `rows` rows of `width` columns: [`CHUNK_ENTRIES`] or more
/// per chunk where that leaves [`FILL_CHUNKS`] chunks, fewer rows where it would not, and
/// never more than [`MAX_CHUNKS`] chunks. SparseGPT's 4096 x 128 block: 256 chunks of 16
/// rows; a 4096 x 11008 matrix: 512 chunks of 8 rows.
pub fn chunk_rows(rows: usize, width: usize) -> usize {
    let fewest = rows.div_ceil(MAX_CHUNKS).max(1);
    let want = CHUNK_ENTRIES.div_ceil(width.max(1));
    let filling = (rows / FILL_CHUNKS).max(1);
    fewest.max(want.min(filling))
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

/// SparseGPT's block selection in two dispatches (a histogram of the keys' top 16 bits, then
/// the candidates: the keys of the bin holding the k-th lowest), ended inside the in-block
/// kernel. The layout of one block's half of the selection buffer, in words, the same on
/// both backends; two halves alternate between the blocks that select, each in-block launch
/// clearing the other's histograms for the next.
pub mod block {
    /// Histogram of the keys' top 8 bits.
    pub const COARSE: usize = 0;
    /// Histogram of the keys' top 16 bits (65536 bins).
    pub const FINE: usize = 256;
    /// How many candidates were appended.
    pub const COUNT: usize = FINE + 65536;
    /// The decided 16-bit digit D.
    pub const DIGIT: usize = COUNT + 1;
    /// The rank left within D (1-based).
    pub const RANK: usize = COUNT + 2;
    /// Words the in-block kernel clears for the next block: the histograms and the count.
    pub const CLEARED: usize = COUNT + 4;
    /// The candidates: the low 16 bits of each key of D and its linear index in the block.
    pub const CAND: usize = COUNT + 4;

    /// Words of one half for a block of `entries` keys (room for all of them as candidates:
    /// a block of equal keys is one bin).
    pub fn half_words(entries: usize) -> usize {
        CAND + 2 * entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_passes_make_two_waves_where_the_entries_allow() {
        for fill in [HIST_FILL, 264, 216] {
            for entries in [
                1,
                255,
                256,
                4097,
                65536,
                128 * 4096,
                4096 * 11008,
                28672 * 8192,
            ] {
                let groups = hist_groups(entries, fill);
                assert!((1..=MAX_HIST_GROUPS).contains(&groups));
                // At most 16 keys per invocation but under the cap, at least 4 where that
                // still makes `fill` groups.
                assert!(
                    groups * 4096 >= entries || groups == MAX_HIST_GROUPS,
                    "{entries}"
                );
                assert!(groups >= fill.min(entries.div_ceil(1024)), "{entries}");
            }
        }
        assert_eq!(hist_groups(4096 * 128, HIST_FILL), 256);
        assert_eq!(hist_groups(4096 * 11008, 264), MAX_HIST_GROUPS);
    }

    #[test]
    fn chunks_cover_every_row_once_and_number_on_across_windows() {
        for rows in [1, 7, 511, 512, 513, 4096, 28672] {
            for width in [1, 37, 128, 4096, 11008] {
                let per = chunk_rows(rows, width);
                let chunks = rows.div_ceil(per);
                assert!(chunks <= MAX_CHUNKS, "{rows} x {width}");
                // Two waves where the rows allow, or chunks of the entries wanted.
                assert!(
                    chunks >= FILL_CHUNKS.min(rows) || per * width >= CHUNK_ENTRIES,
                    "{rows} x {width}"
                );
            }
        }
        assert_eq!(chunk_rows(4096, 128), 16);
        assert_eq!(chunk_rows(4096, 11008), 8);
        assert_eq!(chunk_rows(28672, 8192), 56);
        assert_eq!(chunk_rows(13, 300), 1);
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
