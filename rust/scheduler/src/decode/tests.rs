use super::*;
use crate::SchedulerError;
use proptest::prelude::*;

#[test]
fn adaptive_hand_example() {
    // H = 2, T = 4.
    let scores = [0.9, 0.8, 0.1, 0.0, 0.85, 0.1, 0.1, 0.1];
    // floor 0: the top 4 of all 8 are 0.9, 0.85, 0.8 and a 0.1, which goes to the lower head.
    assert_eq!(adaptive_budgets(&scores, 2, 4, 2, 0.0).unwrap(), vec![3, 1]);
    // floor 1: each head first keeps its best; the two remaining picks are 0.8 (head 0) and 0.1 (head 0).
    assert_eq!(adaptive_budgets(&scores, 2, 4, 2, 0.5).unwrap(), vec![3, 1]);
    // floor = B': uniform (SnapKV).
    assert_eq!(adaptive_budgets(&scores, 2, 4, 2, 1.0).unwrap(), vec![2, 2]);
    // Budget above T: everything is kept.
    assert_eq!(adaptive_budgets(&scores, 2, 4, 10, 0.3).unwrap(), vec![4, 4]);
    assert_eq!(adaptive_budgets(&scores, 2, 4, 0, 0.3).unwrap(), vec![0, 0]);
}

#[test]
fn adaptive_floor_is_float64_floor() {
    // 0.29 * 100 = 28.999999999999996 in float64 -> floor 28, not 29.
    let mut scores = vec![0.0f32; 2 * 200];
    scores[..200].fill(1.0); // head 0 wins every pooled pick
    let b = adaptive_budgets(&scores, 2, 200, 100, 0.29).unwrap();
    assert_eq!(b, vec![172, 28]);
}

#[test]
fn adaptive_empty_cache() {
    assert_eq!(adaptive_budgets(&[], 3, 0, 10, 0.5).unwrap(), vec![0, 0, 0]);
}

#[test]
fn adaptive_errors() {
    let s = [0.0f32; 4];
    assert!(matches!(adaptive_budgets(&s, 2, 3, 1, 0.5), Err(SchedulerError::InvalidShape(_))));
    assert!(matches!(adaptive_budgets(&s, 0, 4, 1, 0.5), Err(SchedulerError::InvalidShape(_))));
    assert_eq!(adaptive_budgets(&[], 0, 4, 1, 0.5).unwrap(), Vec::<i32>::new());
    assert!(matches!(adaptive_budgets(&s, 2, 2, 1, 1.5), Err(SchedulerError::InvalidParameter(_))));
    assert!(matches!(adaptive_budgets(&s, 2, 2, 1, -0.1), Err(SchedulerError::InvalidParameter(_))));
    assert!(matches!(adaptive_budgets(&s, 2, 2, 1, f64::NAN), Err(SchedulerError::InvalidParameter(_))));
    assert!(matches!(
        adaptive_budgets(&[0.0, f32::NAN, 0.0, 0.0], 2, 2, 1, 0.5),
        Err(SchedulerError::NonFiniteInput(_))
    ));
}

#[test]
fn eviction_hand_example() {
    // T = 8, sink 2, local window 2: positions 2..6 are ranked, 0, 1, 6, 7 are protected.
    let scores = [9.0, 9.0, 0.5, 0.1, 0.5, 0.3, -9.0, -9.0];
    let order = eviction_order(&scores, 1, 8, 2, 2).unwrap();
    // 0.1 (3), 0.3 (5), then the 0.5 tie: the higher position (4) is evicted first.
    assert_eq!(order, vec![3, 5, 4, 2, 0, 1, 6, 7]);
}

#[test]
fn eviction_protection_covers_everything() {
    let scores = [3.0, 2.0, 1.0, 0.0];
    assert_eq!(eviction_order(&scores, 1, 4, 3, 3).unwrap(), vec![0, 1, 2, 3]);
    assert_eq!(eviction_order(&scores, 1, 4, 10, 0).unwrap(), vec![0, 1, 2, 3]);
    assert_eq!(eviction_order(&scores, 1, 4, 0, 10).unwrap(), vec![0, 1, 2, 3]);
    assert_eq!(eviction_order(&scores, 1, 4, 0, 0).unwrap(), vec![3, 2, 1, 0]);
    assert_eq!(eviction_order(&[], 2, 0, 4, 4).unwrap(), Vec::<i32>::new());
}

#[test]
fn eviction_signed_zero_tie() {
    // -0.0 == 0.0: the tie goes to position, the higher one evicted first.
    assert_eq!(eviction_order(&[0.0, -0.0], 1, 2, 0, 0).unwrap(), vec![1, 0]);
    assert_eq!(eviction_order(&[-0.0, 0.0], 1, 2, 0, 0).unwrap(), vec![1, 0]);
}

#[test]
fn eviction_errors() {
    assert!(matches!(eviction_order(&[0.0; 5], 2, 3, 0, 0), Err(SchedulerError::InvalidShape(_))));
    assert!(matches!(eviction_order(&[0.0; 4], 0, 4, 0, 0), Err(SchedulerError::InvalidShape(_))));
    assert_eq!(eviction_order(&[], 0, 4, 1, 1).unwrap(), Vec::<i32>::new());
    assert!(matches!(eviction_order(&[0.0, 0.0, f32::NAN], 1, 3, 1, 1), Err(SchedulerError::NonFiniteInput(_))));
}

// ---------------------------------------------------------------- properties

fn score_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => (0u8..5).prop_map(|v| v as f32),
        1 => Just(-0.0f32),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::INFINITY),
        4 => -10.0f32..10.0,
    ]
}

fn scores() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..6, 0usize..40).prop_flat_map(|(h, t)| (Just(h), Just(t), proptest::collection::vec(score_value(), h * t)))
}

/// Reference for §4 with full sorts.
fn naive_adaptive(scores: &[f32], h: usize, t: usize, budget: usize, frac: f64) -> Vec<i32> {
    let b = budget.min(t);
    let floor = (frac * b as f64).floor() as usize;
    let cmp = |a: &(f32, usize, usize), c: &(f32, usize, usize)| {
        c.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&c.1)).then(a.2.cmp(&c.2))
    };
    let mut pool = Vec::new();
    for k in 0..h {
        let mut mine: Vec<(f32, usize, usize)> = (0..t).map(|p| (scores[k * t + p], k, p)).collect();
        mine.sort_by(cmp);
        pool.extend_from_slice(&mine[floor..]);
    }
    pool.sort_by(cmp);
    let mut out = vec![floor as i32; h];
    for &(_, k, _) in &pool[..h * (b - floor)] {
        out[k] += 1;
    }
    out
}

proptest! {
    #[test]
    fn adaptive_conserves_budget_and_respects_floor(
        (h, t, s) in scores(),
        budget in 0usize..50,
        frac in prop_oneof![Just(0.0f64), Just(1.0f64), 0.0f64..=1.0],
    ) {
        let out = adaptive_budgets(&s, h, t, budget, frac).unwrap();
        let b = budget.min(t);
        let floor = (frac * b as f64).floor() as i32;
        prop_assert_eq!(out.iter().map(|&x| x as usize).sum::<usize>(), h * b);
        prop_assert!(out.iter().all(|&x| x >= floor && x as usize <= t));
        prop_assert_eq!(out, naive_adaptive(&s, h, t, budget, frac));
    }

    #[test]
    fn eviction_is_a_permutation_with_protected_last(
        (h, t, s) in scores(),
        sink in 0usize..12,
        window in 0usize..12,
    ) {
        let order = eviction_order(&s, h, t, sink, window).unwrap();
        prop_assert_eq!(order.len(), h * t);
        let protected = |p: usize| p < sink || p + window >= t;
        let n_protected = (0..t).filter(|&p| protected(p)).count();
        for k in 0..h {
            let row: Vec<usize> = order[k * t..(k + 1) * t].iter().map(|&p| p as usize).collect();
            let mut sorted = row.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..t).collect::<Vec<_>>());
            // Protected entries last, in increasing position.
            let tail = &row[t - n_protected..];
            prop_assert!(tail.iter().all(|&p| protected(p)));
            prop_assert!(tail.windows(2).all(|w| w[0] < w[1]));
            // Unprotected: score ascending, equal scores by position descending.
            let sc = &s[k * t..(k + 1) * t];
            for w in row[..t - n_protected].windows(2) {
                let (a, b) = (w[0], w[1]);
                prop_assert!(sc[a] < sc[b] || (sc[a] == sc[b] && a > b), "{} {} before {} {}", a, sc[a], b, sc[b]);
            }
            // Keeping the last B = protected + the top (B - protected) by (score desc, position asc).
            for keep in n_protected..=t {
                let mut kept: Vec<usize> = row[t - keep..].to_vec();
                kept.sort_unstable();
                let mut cand: Vec<usize> = (0..t).filter(|&p| !protected(p)).collect();
                cand.sort_by(|&a, &b| sc[b].partial_cmp(&sc[a]).unwrap().then(a.cmp(&b)));
                let mut want: Vec<usize> = (0..t).filter(|&p| protected(p)).collect();
                want.extend_from_slice(&cand[..keep - n_protected]);
                want.sort_unstable();
                prop_assert_eq!(kept, want);
            }
        }
    }
}
