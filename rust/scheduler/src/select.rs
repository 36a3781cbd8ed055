//! Spec §3 (`select_blocks`): which key blocks each (head, segment) row attends to, as CSR.
//!
//! This is the hot path of planning: a 128k-token prompt with the paper's S = 512, b = 8 has 256 segments of
//! 64 blocks, so a sparse row ranks up to 16 320 visible blocks to keep a few hundred of them, for 8 heads and
//! 32 layers. Each row therefore does a partial selection (a sampled threshold, one vectorised pass that
//! gathers the few candidates, `select_nth_unstable` on their packed integer keys) instead of sorting the row,
//! and emits the kept indices already in order. Rows are independent, so large inputs are split over a few
//! scoped threads (no thread pool dependency); the output does not depend on the thread count.

use crate::error::{non_finite, param, shape, Result};
use crate::geometry::Geometry;
use crate::order::{desc_key, find_nan};

/// Compressed sparse rows: row `r = h * nseg + s` is `indices[indptr[r] .. indptr[r + 1]]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Csr {
    /// `[H * nseg + 1]`, non-decreasing, starts at 0, ends at `indices.len()`.
    pub indptr: Vec<i32>,
    /// Key block indices, strictly increasing within each row.
    pub indices: Vec<i32>,
}

/// Spec §3. `block_scores` is `[H, nseg, num_blocks]`, `keep` is `[H, nseg]` (from [`crate::keep_blocks`]),
/// `sparse_segments` is `[nseg]`; all row-major.
///
/// A dense row (segment not sparse, or keep 0) lists every block `0 .. own_end`. A sparse row lists the `keep`
/// highest-scoring visible blocks (`j < s * nrep`; ties to the lower index), ascending, then the segment's own
/// blocks `s * nrep .. own_end`, inside which the kernel applies the causal mask.
///
/// Scores of blocks a segment cannot see (`j >= s * nrep`, e.g. all of segment 0's row) do not affect the
/// result, but a NaN anywhere in `block_scores` is an error, as the spec lists "NaN scores" without exception
/// (and as the torch planner checks the whole tensor).
pub fn select_blocks(
    block_scores: &[f32],
    keep: &[i32],
    sparse_segments: &[bool],
    num_heads: usize,
    geometry: &Geometry,
) -> Result<Csr> {
    select_blocks_with_threads(block_scores, keep, sparse_segments, num_heads, geometry, 0)
}

/// Work (about two units per visible score, one per hidden score) below which [`select_blocks`] stays on the
/// calling thread: spawning costs tens of microseconds, this much work a few milliseconds.
const PARALLEL_MIN_WORK: usize = 1 << 21;
/// Upper bound on the threads [`select_blocks`] picks by itself.
const AUTO_MAX_THREADS: usize = 8;

/// [`select_blocks`] with an explicit worker count: `threads = 1` runs on the calling thread, `0` picks
/// `min(available_parallelism, 8)` for inputs of about 1M visible scores or more and 1 below. The result is the
/// same for every thread count.
pub fn select_blocks_with_threads(
    block_scores: &[f32],
    keep: &[i32],
    sparse_segments: &[bool],
    num_heads: usize,
    geometry: &Geometry,
    threads: usize,
) -> Result<Csr> {
    let nseg = geometry.num_segments;
    let num_blocks = geometry.num_blocks;
    if sparse_segments.len() != nseg {
        return Err(shape(format!("sparse_segments has {} entries, expected nseg = {nseg}", sparse_segments.len())));
    }
    let rows = num_heads * nseg;
    if keep.len() != rows {
        return Err(shape(format!("keep has {} values, expected H * nseg = {num_heads} * {nseg}", keep.len())));
    }
    if rows.checked_mul(num_blocks) != Some(block_scores.len()) {
        return Err(shape(format!(
            "block_scores has {} values, expected H * nseg * num_blocks = {num_heads} * {nseg} * {num_blocks}",
            block_scores.len()
        )));
    }

    // Row lengths first: validates keep and gives the exact output size, so indices is allocated once.
    let mut indptr = Vec::with_capacity(rows + 1);
    indptr.push(0i32);
    let mut nnz: usize = 0;
    for (r, &k) in keep.iter().enumerate() {
        let s = r % nseg;
        let visible = geometry.visible_blocks(s);
        if k < 0 {
            return Err(param(format!("keep[{}, {s}] = {k} is negative", r / nseg)));
        }
        if k as usize > visible {
            return Err(param(format!(
                "keep[{}, {s}] = {k} exceeds the {visible} blocks visible to segment {s}",
                r / nseg
            )));
        }
        nnz += row_len(geometry, s, k as usize, sparse_segments[s]);
        if nnz > i32::MAX as usize {
            return Err(shape("the selection has more than 2^31 - 1 entries"));
        }
        indptr.push(nnz as i32);
    }

    // Then the rows, split into contiguous ranges of about equal work (rows are head-major, so a row range is
    // an index range). The NaN check rides along with the ranking pass, so each visible score is read from
    // memory once; hidden scores are only scanned for NaN, at about half the cost per score.
    let row_work = |r: usize| 2 * geometry.visible_blocks(r % nseg) + num_blocks + 1;
    let work: usize = (0..rows).map(row_work).sum();
    let threads = match threads {
        0 if work < PARALLEL_MIN_WORK => 1,
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(AUTO_MAX_THREADS),
        t => t,
    }
    .min(rows);
    let mut indices = vec![0i32; nnz];
    let job = Job { block_scores, keep, sparse_segments, geometry, indptr: &indptr };
    let first_nan = if threads <= 1 {
        job.run(0..rows, &mut indices)
    } else {
        let mut bounds = vec![0usize];
        let mut acc = 0;
        for r in 0..rows {
            acc += row_work(r);
            if acc * threads >= work * bounds.len() && bounds.len() < threads {
                bounds.push(r + 1);
            }
        }
        bounds.push(rows);
        bounds.dedup();
        std::thread::scope(|scope| {
            let mut rest: &mut [i32] = &mut indices;
            let mut handles = Vec::with_capacity(threads);
            for w in bounds.windows(2) {
                let (lo, hi) = (w[0], w[1]);
                let (mine, tail) = rest.split_at_mut((indptr[hi] - indptr[lo]) as usize);
                rest = tail;
                let job = &job;
                handles.push(scope.spawn(move || job.run(lo..hi, mine)));
            }
            // Earliest failing row, whichever worker found it, so the error does not depend on timing.
            handles.into_iter().filter_map(|h| h.join().expect("select_blocks worker panicked")).min()
        })
    };
    if let Some(r) = first_nan {
        let s = r % nseg;
        let j = find_nan(&block_scores[r * num_blocks..(r + 1) * num_blocks]).unwrap_or(0);
        return Err(non_finite(format!("block_scores[{}, {s}, {j}] is NaN", r / nseg)));
    }
    Ok(Csr { indptr, indices })
}

/// The validated inputs of one `select_blocks` call, shared by its workers.
struct Job<'a> {
    block_scores: &'a [f32],
    keep: &'a [i32],
    sparse_segments: &'a [bool],
    geometry: &'a Geometry,
    indptr: &'a [i32],
}

impl Job<'_> {
    /// Fills rows `rows` into `out`, which starts at `indptr[rows.start]`. Returns the first row whose scores
    /// hold a NaN, if any (and stops there).
    fn run(&self, rows: std::ops::Range<usize>, out: &mut [i32]) -> Option<usize> {
        let g = self.geometry;
        let (nseg, num_blocks) = (g.num_segments, g.num_blocks);
        let base = self.indptr[rows.start] as usize;
        let mut scratch = Scratch::default();
        let end = rows.end;
        for r in rows {
            let s = r % nseg;
            if r + 1 < end {
                self.prefetch_sample(r + 1);
            }
            let row_out = &mut out[self.indptr[r] as usize - base..self.indptr[r + 1] as usize - base];
            let (visible, hidden) =
                self.block_scores[r * num_blocks..(r + 1) * num_blocks].split_at(g.visible_blocks(s));
            let keep = self.keep[r] as usize;
            // Scores the segment cannot see do not affect the row, but a NaN anywhere is an error (spec §3).
            if fill_row(g, s, keep, self.sparse_segments[s], visible, row_out, &mut scratch)
                || find_nan(hidden).is_some()
            {
                return Some(r);
            }
        }
        None
    }

    /// Asks for the cache lines that row `r`'s threshold sample will read. That sample is the first look at
    /// the row, scattered over it, so without this it waits on memory 64 times; the sequential passes that
    /// follow are covered by the hardware prefetcher.
    fn prefetch_sample(&self, r: usize) {
        let g = self.geometry;
        let s = r % g.num_segments;
        let (keep, visible) = (self.keep[r] as usize, g.visible_blocks(s));
        if !self.sparse_segments[s] || keep == 0 || keep == visible {
            return; // no ranking, no sample
        }
        let row = &self.block_scores[r * g.num_blocks..r * g.num_blocks + visible];
        for j in sample_positions(visible).step_by(8) {
            prefetch(&row[j]);
        }
    }
}

/// Hint that `x` will be read soon (a no-op where there is no stable prefetch instruction).
#[inline(always)]
fn prefetch(x: &f32) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    // SAFETY: SSE is statically enabled (x86-64 baseline); prefetching a valid address has no side effect.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((x as *const f32).cast::<i8>());
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = x;
}

#[inline]
fn row_len(g: &Geometry, s: usize, keep: usize, sparse: bool) -> usize {
    if sparse && keep > 0 {
        keep + (g.own_end(s) - g.visible_blocks(s))
    } else {
        g.own_end(s)
    }
}

/// Reusable buffers of one worker.
#[derive(Default)]
struct Scratch {
    /// Indices of the scores that reach the provisional threshold, in index order.
    picked: Vec<u32>,
    /// Row keys of the picked indices, same order.
    keys: Vec<u64>,
    /// Work area for `select_nth_unstable` (it permutes its input).
    ranked: Vec<u64>,
}

/// Writes one row into `out` (exactly [`row_len`] slots) from the row's visible scores. Returns true when the
/// visible scores contain a NaN (then `out` is garbage and the caller reports the error).
fn fill_row(
    g: &Geometry,
    s: usize,
    keep: usize,
    sparse: bool,
    visible_scores: &[f32],
    out: &mut [i32],
    scratch: &mut Scratch,
) -> bool {
    let visible = visible_scores.len();
    let own_end = g.own_end(s);
    if !sparse || keep == 0 || keep == visible {
        // No ranking: a dense row, or a sparse row keeping every visible block, both list 0 .. own_end.
        for (slot, j) in out.iter_mut().zip(0..own_end) {
            *slot = j as i32;
        }
        return find_nan(visible_scores).is_some();
    }
    let (chosen, own) = out.split_at_mut(keep);
    if top_k_in_order(visible_scores, keep, chosen, scratch) {
        return true;
    }
    for (slot, j) in own.iter_mut().zip(visible..own_end) {
        *slot = j as i32;
    }
    false
}

/// The spec's total order `(score desc, index asc)` as one ascending `u64`.
#[inline(always)]
fn row_key(x: f32, j: usize) -> u64 {
    (u64::from(desc_key(x)) << 32) | j as u64
}

/// Writes into `chosen` (length `k`, `1 <= k < scores.len()`) the indices of the `k` best scores, ascending.
/// Returns true, leaving `chosen` unspecified, when a score is NaN.
///
/// A sample of the row gives a provisional score threshold that a little more than `k` scores reach;
/// one branch-free pass gathers their indices (and checks for NaN); `select_nth_unstable` on the few candidates'
/// keys finds the exact `k`-th key; the candidates, still in index order, are filtered by it. If the sample was
/// unlucky and fewer than `k` scores reach the threshold, every score becomes a candidate. The result never
/// depends on the sample, only the time does: one pass over the row plus work proportional to `k`.
fn top_k_in_order(scores: &[f32], k: usize, chosen: &mut [i32], scratch: &mut Scratch) -> bool {
    let n = scores.len();
    debug_assert!(k >= 1 && k < n && chosen.len() == k);
    let Scratch { picked, keys, ranked } = scratch;

    let threshold = sample_threshold(scores, k, ranked);
    let (mut len, nan) = gather_at_least(scores, threshold, picked);
    if nan {
        return true;
    }
    if len < k {
        len = gather_at_least(scores, f32::NEG_INFINITY, picked).0; // every (non-NaN) score
    }
    // Candidate keys in index order, and a copy for `select_nth_unstable` to permute.
    keys.clear();
    keys.extend(picked[..len].iter().map(|&j| row_key(scores[j as usize], j as usize)));
    ranked.clear();
    ranked.extend_from_slice(keys);
    let kth = *ranked.select_nth_unstable(k - 1).1;
    // Keep the candidates up to the k-th key, in index order. About half of them pass, so this is branch-free
    // too: compact in place in `picked` (the write position never overtakes the read position), copy out.
    let mut filled = 0;
    for &key in keys.iter() {
        picked[filled] = key as u32;
        filled += usize::from(key <= kth);
    }
    for (slot, &j) in chosen.iter_mut().zip(picked.iter()) {
        *slot = j as i32;
    }
    debug_assert_eq!(filled, k);
    false
}

/// Positions of the threshold sample of a row of `n` scores: about 512 of them, as 64 runs of 8 neighbours
/// spread evenly over the row. Runs touch 64 cache lines instead of 512, because this first look at the row
/// pays its memory latency; the gathering pass that follows streams the whole row, which the hardware
/// prefetcher handles well. Short rows are sampled with a plain stride.
fn sample_positions(n: usize) -> impl Iterator<Item = usize> {
    const RUNS: usize = 64;
    const RUN: usize = 8;
    const SAMPLE: usize = RUNS * RUN;
    let long = n >= 2 * SAMPLE;
    // Long rows: run r covers r * (n / RUNS) .. + RUN. Short rows: min(n, 512) single positions i * n / m.
    let (count, run) = if long { (RUNS, RUN) } else { (n.min(SAMPLE), 1) };
    (0..count).flat_map(move |r| {
        let start = if long { r * (n / RUNS) } else { r * n / count };
        start..start + run
    })
}

/// A score that, judging by a sample of about 512 scores, comfortably more than `k` scores reach; `-inf`
/// when the sample says that would be most of the row anyway. NaN samples are harmless (the gathering pass
/// reports them).
fn sample_threshold(scores: &[f32], k: usize, ranked: &mut Vec<u64>) -> f32 {
    let n = scores.len();
    ranked.clear();
    ranked.extend(sample_positions(n).map(|j| row_key(scores[j], j)));
    let m = ranked.len();
    // Expected sample rank of the k-th score, with a margin of 50% + 12 (several standard deviations).
    let want = (k as f64 * m as f64 / n as f64 * 1.5).ceil() as usize + 12;
    if want >= m / 2 {
        return f32::NEG_INFINITY;
    }
    let key = *ranked.select_nth_unstable(want).1;
    scores[key as u32 as usize]
}

/// `LANE_OFFSETS[m]`: positions of the set bits of the 8-bit mask `m`, in increasing order, then zeros.
static LANE_OFFSETS: [[u32; 8]; 256] = {
    let mut table = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut bit, mut n) = (0, 0);
        while bit < 8 {
            if (m >> bit) & 1 == 1 {
                table[m][n] = bit as u32;
                n += 1;
            }
            bit += 1;
        }
        m += 1;
    }
    table
};

/// `LANE_COUNTS[m]`: set bits of `m` (a table, because the x86-64 baseline has no popcount instruction).
static LANE_COUNTS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut m = 0;
    while m < 256 {
        table[m] = (m as u32).count_ones() as u8;
        m += 1;
    }
    table
};

/// Stores in `picked[..len]` the indices `j` with `scores[j] >= threshold`, ascending, and says whether any
/// score is NaN. Branch-free stream compaction: each group of 8 comparisons becomes a mask, the mask selects a
/// row of [`LANE_OFFSETS`], all 8 slots are written and the length advances by the mask's popcount.
fn gather_at_least(scores: &[f32], threshold: f32, picked: &mut Vec<u32>) -> (usize, bool) {
    let n = scores.len();
    if picked.len() < n + 8 {
        picked.resize(n + 8, 0); // grows once per worker; stale contents beyond `len` are never read
    }
    let mut len = 0usize;
    let mut nan = false;
    let mut groups = scores.chunks_exact(8);
    for (g, group) in groups.by_ref().enumerate() {
        let group: &[f32; 8] = group.try_into().unwrap();
        let (mask, bad) = group_mask(group, threshold);
        nan |= bad;
        let base = (g * 8) as u32;
        let slots: &mut [u32; 8] = (&mut picked[len..len + 8]).try_into().unwrap();
        for (slot, &off) in slots.iter_mut().zip(LANE_OFFSETS[mask].iter()) {
            *slot = base + off;
        }
        len += usize::from(LANE_COUNTS[mask]);
    }
    let rest = groups.remainder();
    for (i, &x) in rest.iter().enumerate() {
        nan |= x.is_nan();
        picked[len] = (n - rest.len() + i) as u32;
        len += usize::from(x >= threshold);
    }
    (len, nan)
}

/// Bit `l` set iff `group[l] >= threshold`; plus whether a lane is NaN. SSE2 (part of every x86-64 CPU):
/// two packed compares and `movmskps`, which LLVM does not find on its own from the scalar form.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn group_mask(group: &[f32; 8], threshold: f32) -> (usize, bool) {
    use std::arch::x86_64::{_mm_cmpge_ps, _mm_cmpunord_ps, _mm_loadu_ps, _mm_movemask_ps, _mm_or_ps, _mm_set1_ps};
    // SAFETY: SSE/SSE2 are statically enabled (x86-64 baseline, checked by the cfg), and `group` holds 8
    // initialised f32, read as lanes 0..4 and 4..8 by unaligned loads.
    let (mask, bad) = unsafe {
        let t = _mm_set1_ps(threshold);
        let (lo, hi) = (_mm_loadu_ps(group.as_ptr()), _mm_loadu_ps(group.as_ptr().add(4)));
        let mask = _mm_movemask_ps(_mm_cmpge_ps(lo, t)) | (_mm_movemask_ps(_mm_cmpge_ps(hi, t)) << 4);
        let bad = _mm_movemask_ps(_mm_or_ps(_mm_cmpunord_ps(lo, lo), _mm_cmpunord_ps(hi, hi))) != 0;
        (mask, bad)
    };
    (mask as usize, bad)
}

/// Portable form of the x86-64 `group_mask`.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
fn group_mask(group: &[f32; 8], threshold: f32) -> (usize, bool) {
    let mut mask = 0usize;
    let mut bad = false;
    for (lane, &x) in group.iter().enumerate() {
        mask |= usize::from(x >= threshold) << lane;
        bad |= x.is_nan();
    }
    (mask, bad)
}

#[cfg(test)]
mod tests;
