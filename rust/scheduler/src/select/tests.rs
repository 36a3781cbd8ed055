use super::*;
use crate::SchedulerError;
use proptest::prelude::*;

fn row(csr: &Csr, r: usize) -> &[i32] {
    &csr.indices[csr.indptr[r] as usize..csr.indptr[r + 1] as usize]
}

#[test]
fn hand_example() {
    // L = 40, S = 16, b = 4: nseg 3, nrep 4, num_blocks 8; own_end = 4, 8, 10 (the last block is half full).
    let g = Geometry::new(40, 16, 4).unwrap();
    let nb = 8;
    let mut scores = vec![0.0f32; 3 * nb];
    // Segment 1 sees blocks 0..4.
    scores[nb..nb + 4].copy_from_slice(&[0.3, 0.1, 0.3, 0.2]);
    // Segment 2 sees blocks 0..8; three-way tie at 0.5 goes to the lower indices.
    scores[2 * nb..3 * nb].copy_from_slice(&[0.1, 0.5, 0.5, 0.2, 0.9, 0.0, 0.5, -0.0]);
    let keep = [0, 2, 3];
    let csr = select_blocks(&scores, &keep, &[true, true, true], 1, &g).unwrap();
    assert_eq!(csr.indptr, vec![0, 4, 4 + 2 + 4, 4 + 6 + 3 + 2]);
    assert_eq!(row(&csr, 0), &[0, 1, 2, 3]); // keep 0: dense, its own blocks only
    assert_eq!(row(&csr, 1), &[0, 2, 4, 5, 6, 7]); // tie 0.3/0.3 -> both; then own 4..8
    assert_eq!(row(&csr, 2), &[1, 2, 4, 8, 9]);
}

#[test]
fn dense_segments_and_zero_keep() {
    let g = Geometry::new(40, 16, 4).unwrap();
    let scores = vec![1.0f32; 3 * 8];
    let csr = select_blocks(&scores, &[0, 1, 0], &[true, false, true], 1, &g).unwrap();
    assert_eq!(row(&csr, 0), &[0, 1, 2, 3]);
    assert_eq!(row(&csr, 1), &[0, 1, 2, 3, 4, 5, 6, 7]); // not sparse: every block up to own_end
    assert_eq!(row(&csr, 2), &(0..10).collect::<Vec<_>>()[..]); // keep 0: dense
}

#[test]
fn keep_everything_visible() {
    let g = Geometry::new(40, 16, 4).unwrap();
    let mut scores = vec![0.0f32; 3 * 8];
    scores[16..24].copy_from_slice(&[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]);
    let csr = select_blocks(&scores, &[0, 4, 8], &[true; 3], 1, &g).unwrap();
    assert_eq!(row(&csr, 2), &(0..10).collect::<Vec<_>>()[..]);
}

#[test]
fn signed_zeros_tie() {
    // -0.0 == +0.0, so the lower index wins (a total_cmp order would pick block 1).
    let g = Geometry::new(40, 16, 4).unwrap();
    let mut scores = vec![0.0f32; 3 * 8];
    scores[8..12].copy_from_slice(&[-0.0, 0.0, -1.0, -1.0]);
    let csr = select_blocks(&scores, &[0, 1, 0], &[true; 3], 1, &g).unwrap();
    assert_eq!(row(&csr, 1), &[0, 4, 5, 6, 7]);
    scores[8..12].copy_from_slice(&[-1.0, 0.0, -0.0, f32::NEG_INFINITY]);
    let csr = select_blocks(&scores, &[0, 2, 0], &[true; 3], 1, &g).unwrap();
    assert_eq!(row(&csr, 1), &[1, 2, 4, 5, 6, 7]);
}

#[test]
fn heads_are_rows_in_head_major_order() {
    let g = Geometry::new(40, 16, 4).unwrap();
    let mut scores = vec![0.0f32; 2 * 3 * 8];
    scores[8] = 1.0; // head 0, segment 1 prefers block 0
    scores[24 + 8 + 3] = 1.0; // head 1, segment 1 prefers block 3
    let csr = select_blocks(&scores, &[0, 1, 0, 0, 1, 0], &[false, true, false], 2, &g).unwrap();
    assert_eq!(csr.indptr.len(), 7);
    assert_eq!(row(&csr, 1), &[0, 4, 5, 6, 7]);
    assert_eq!(row(&csr, 4), &[3, 4, 5, 6, 7]);
}

#[test]
fn errors() {
    let g = Geometry::new(40, 16, 4).unwrap();
    let scores = vec![0.5f32; 3 * 8];
    let sparse = [true; 3];
    let e = |r: Result<Csr>| r.unwrap_err();
    assert!(matches!(e(select_blocks(&scores[1..], &[0, 1, 1], &sparse, 1, &g)), SchedulerError::InvalidShape(_)));
    assert!(matches!(e(select_blocks(&scores, &[0, 1], &sparse, 1, &g)), SchedulerError::InvalidShape(_)));
    assert!(matches!(e(select_blocks(&scores, &[0, 1, 1], &sparse[..2], 1, &g)), SchedulerError::InvalidShape(_)));
    assert!(matches!(e(select_blocks(&scores, &[0, 1, 1], &sparse, 0, &g)), SchedulerError::InvalidShape(_)));
    assert!(matches!(e(select_blocks(&scores, &[0, -1, 1], &sparse, 1, &g)), SchedulerError::InvalidParameter(_)));
    assert!(matches!(e(select_blocks(&scores, &[0, 5, 1], &sparse, 1, &g)), SchedulerError::InvalidParameter(_)));
    assert!(matches!(e(select_blocks(&scores, &[1, 1, 1], &sparse, 1, &g)), SchedulerError::InvalidParameter(_)));
    // A NaN is an error wherever it is: among visible scores, even in a dense row...
    let mut nan = scores.clone();
    nan[8 + 3] = f32::NAN;
    let r = select_blocks(&nan, &[0, 1, 1], &[true, false, true], 1, &g);
    assert!(matches!(e(r), SchedulerError::NonFiniteInput(_)));
    // ...and among scores a segment cannot see (segment 0 sees nothing; segment 1 sees blocks 0..4).
    for pos in [0, 7, 8 + 4, 15] {
        let mut invisible = scores.clone();
        invisible[pos] = f32::NAN;
        let msg = format!("block_scores[0, {}, {}] is NaN", pos / 8, pos % 8);
        let r = select_blocks(&invisible, &[0, 1, 1], &sparse, 1, &g);
        assert_eq!(e(r), SchedulerError::NonFiniteInput(msg));
    }
    // No heads: an empty selection.
    let csr = select_blocks(&[], &[], &sparse, 0, &g).unwrap();
    assert_eq!(csr, Csr { indptr: vec![0], indices: vec![] });
}

// ---------------------------------------------------------------- properties

/// Reference: rank every visible block with a full comparison sort.
fn naive_row(g: &Geometry, s: usize, keep: usize, sparse: bool, scores: &[f32]) -> Vec<i32> {
    let visible = g.visible_blocks(s);
    if !sparse || keep == 0 {
        return (0..g.own_end(s) as i32).collect();
    }
    let mut idx: Vec<usize> = (0..visible).collect();
    idx.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap().then(a.cmp(&b)));
    let mut chosen: Vec<i32> = idx[..keep].iter().map(|&j| j as i32).collect();
    chosen.sort_unstable();
    chosen.extend(visible as i32..g.own_end(s) as i32);
    chosen
}

fn score_value() -> impl Strategy<Value = f32> {
    // Few distinct values so ties are common; signed zeros and infinities included.
    prop_oneof![
        4 => (0u8..6).prop_map(|v| v as f32 / 4.0),
        1 => Just(-0.0f32),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        4 => -1.0f32..1.0,
    ]
}

#[derive(Debug, Clone)]
struct Problem {
    g: Geometry,
    h: usize,
    scores: Vec<f32>,
    keep: Vec<i32>,
    sparse: Vec<bool>,
}

fn problem() -> impl Strategy<Value = Problem> {
    (1usize..4, 2usize..7, 1usize..5, 0u32..3, 0usize..64).prop_flat_map(|(h, n, s_mul, b_pow, tail)| {
        let b = 1usize << b_pow;
        let s = b * s_mul;
        let l = (n - 1) * s + 1 + tail % s;
        let g = Geometry::new(l, s, b).unwrap();
        let total = h * n * g.num_blocks;
        (
            proptest::collection::vec(score_value(), total),
            proptest::collection::vec(0.0f64..=1.0, h * n),
            proptest::collection::vec(any::<bool>(), n),
        )
            .prop_map(move |(scores, fracs, sparse)| {
                let keep = fracs
                    .iter()
                    .enumerate()
                    .map(|(r, f)| (f * g.visible_blocks(r % n) as f64).round() as i32)
                    .collect();
                Problem { g, h, scores, keep, sparse }
            })
    })
}

proptest! {
    #[test]
    fn csr_is_well_formed_and_matches_reference(p in problem()) {
        let g = &p.g;
        let n = g.num_segments;
        let csr = select_blocks(&p.scores, &p.keep, &p.sparse, p.h, g).unwrap();
        prop_assert_eq!(&select_blocks_with_threads(&p.scores, &p.keep, &p.sparse, p.h, g, 3).unwrap(), &csr);
        prop_assert_eq!(csr.indptr.len(), p.h * n + 1);
        prop_assert_eq!(csr.indptr[0], 0);
        prop_assert_eq!(*csr.indptr.last().unwrap() as usize, csr.indices.len());
        for r in 0..p.h * n {
            prop_assert!(csr.indptr[r] <= csr.indptr[r + 1]);
            let s = r % n;
            let got = row(&csr, r);
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "row {} not strictly increasing", r);
            let visible = g.visible_blocks(s) as i32;
            let own_end = g.own_end(s) as i32;
            prop_assert!(got.iter().all(|&j| j >= 0 && j < own_end));
            let k = p.keep[r] as usize;
            if p.sparse[s] && k > 0 {
                prop_assert_eq!(got.len(), k + (own_end - visible) as usize);
                prop_assert_eq!(got.iter().filter(|&&j| j < visible).count(), k);
                // Every selected non-own block lies strictly before the segment.
                prop_assert!(got[..k].iter().all(|&j| j < visible));
            } else {
                prop_assert_eq!(got.len(), own_end as usize);
            }
            let scores = &p.scores[r * g.num_blocks..(r + 1) * g.num_blocks];
            prop_assert_eq!(got, &naive_row(g, s, k, p.sparse[s], scores)[..]);
        }
    }
}

#[test]
fn thread_count_does_not_change_the_result() {
    // Big enough to be worth splitting: L = 64k, S = 256, b = 8 -> 256 segments of 32 blocks, 2 heads.
    let g = Geometry::new(65536, 256, 8).unwrap();
    let (h, n) = (2, g.num_segments);
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut rnd = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let scores: Vec<f32> = (0..h * n * g.num_blocks).map(|_| (rnd() * 64.0).floor()).collect();
    let keep: Vec<i32> = (0..h * n).map(|r| (g.visible_blocks(r % n) as i32).min(37 + (r % 50) as i32)).collect();
    let sparse: Vec<bool> = (0..n).map(|s| s % 7 != 3).collect();
    let one = select_blocks_with_threads(&scores, &keep, &sparse, h, &g, 1).unwrap();
    for threads in [0, 2, 3, 5, 16] {
        assert_eq!(select_blocks_with_threads(&scores, &keep, &sparse, h, &g, threads).unwrap(), one, "{threads}");
    }
    // The reported NaN is the earliest failing row whatever the split.
    let mut bad = scores.clone();
    bad[(n + 200) * g.num_blocks + 5] = f32::NAN; // head 1, segment 200
    bad[(40) * g.num_blocks + 7] = f32::NAN; // head 0, segment 40
    for threads in [1, 2, 3] {
        let err = select_blocks_with_threads(&bad, &keep, &sparse, h, &g, threads).unwrap_err();
        assert_eq!(err, SchedulerError::NonFiniteInput("block_scores[0, 40, 7] is NaN".into()));
    }
}

fn naive_top_k(scores: &[f32], k: usize) -> Vec<i32> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap().then(a.cmp(&b)));
    let mut chosen: Vec<i32> = idx[..k].iter().map(|&j| j as i32).collect();
    chosen.sort_unstable();
    chosen
}

/// Long rows, where the sampled threshold really filters (short rows take every score as a candidate).
fn long_row() -> impl Strategy<Value = (Vec<f32>, usize)> {
    (600usize..20000, 0u8..6, any::<u64>()).prop_flat_map(|(n, shape, seed)| {
        let mut state = seed | 1;
        let scores: Vec<f32> = (0..n)
            .map(|j| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 40) as f32 / (1u64 << 24) as f32;
                match shape {
                    0 => u,                       // uniform
                    1 => (u * 3.0).floor(),       // three values: huge ties at the threshold
                    2 => j as f32,                // increasing (recent blocks matter most)
                    3 => -(j as f32),             // decreasing
                    4 => (u * 30.0 - 30.0).exp(), // heavy tail, like softmax probabilities
                    _ => {
                        if j % 97 == 0 {
                            f32::INFINITY
                        } else if u < 0.5 {
                            -0.0
                        } else {
                            0.0
                        }
                    }
                }
            })
            .collect();
        (Just(scores), 1usize..n)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn top_k_matches_a_full_sort((scores, k) in long_row()) {
        let mut chosen = vec![0i32; k];
        let mut scratch = Scratch::default();
        prop_assert!(!top_k_in_order(&scores, k, &mut chosen, &mut scratch));
        prop_assert_eq!(chosen, naive_top_k(&scores, k));
    }
}

#[test]
fn top_k_reports_nan_anywhere() {
    for pos in [0, 7, 8, 1000, 4095, 4096, 4099] {
        let mut scores: Vec<f32> = (0..4100).map(|j| (j % 13) as f32).collect();
        scores[pos] = f32::NAN;
        let mut chosen = vec![0i32; 10];
        assert!(top_k_in_order(&scores, 10, &mut chosen, &mut Scratch::default()), "{pos}");
    }
}

#[test]
fn sample_positions_cover_the_row() {
    for n in [1, 7, 511, 512, 513, 1023, 1024, 1025, 16000, 16320] {
        let pos: Vec<usize> = sample_positions(n).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{n}");
        assert!(pos.iter().all(|&j| j < n), "{n}");
        assert_eq!(pos.len(), n.min(512), "{n}");
        // Spread over the whole row, not a prefix.
        assert!(pos.last().unwrap() + n / 64 + 8 >= n, "{n}: the sample must reach the end of the row");
    }
}

#[test]
fn top_k_survives_a_misleading_sample() {
    // Only the sampled positions score high, so the sampled threshold lets through fewer than k candidates
    // and the fallback (every score a candidate) must kick in.
    let n = 16000;
    let mut scores: Vec<f32> = (0..n).map(|j| (j % 5) as f32 * 0.1).collect();
    for j in sample_positions(n) {
        scores[j] = 1.0;
    }
    for k in [1, 100, 600, 1000, 15999] {
        let mut chosen = vec![0i32; k];
        assert!(!top_k_in_order(&scores, k, &mut chosen, &mut Scratch::default()));
        assert_eq!(chosen, naive_top_k(&scores, k), "k = {k}");
    }
}
