// The expected budgets are copied digit for digit from budget_recurrence.json (8 significant digits).
#![allow(clippy::excessive_precision)]

use super::*;
use crate::SchedulerError;
use proptest::prelude::*;

/// One row of `tests/data/budget_recurrence.json`: entropies -> (rigid, budgets). The JSON prints the
/// float32 results with 8 significant digits; each parses back to the same float32 (checked below).
struct Case {
    entropy: &'static [f32],
    rigid: bool,
    budget_tokens: &'static [f32],
    /// The causal ("rigid so far") output: β up to the segment where the head turned dynamic.
    causal_budget_tokens: &'static [f32],
}

const CASES: &[Case] = &[
    Case {
        entropy: &[5.0, 2.0, 2.5, 4.0, 4.0, 1.0, 1.0, 6.0],
        rigid: false,
        budget_tokens: &[2048.0, 2048.0, 2048.0, 2252.8, 2048.0, 2048.0, 2048.0, 3072.0],
        causal_budget_tokens: &[2048.0, 2048.0, 2048.0, 2252.8, 2048.0, 2048.0, 2048.0, 3072.0],
    },
    Case {
        entropy: &[5.0, 1.0, 3.0, 9.0, 27.0, 27.0],
        rigid: false,
        budget_tokens: &[2048.0, 2048.0, 3072.0, 4096.0, 5120.0, 4710.3999],
        causal_budget_tokens: &[2048.0, 2048.0, 3072.0, 4096.0, 5120.0, 4710.3999],
    },
    Case {
        entropy: &[5.0, 0.0, 0.0, 0.0],
        rigid: true,
        budget_tokens: &[2048.0, 2048.0, 2048.0, 2048.0],
        causal_budget_tokens: &[2048.0, 2048.0, 2048.0, 2048.0],
    },
    Case {
        entropy: &[0.3, 1e-08, 1e-06, 2.0, 2.0],
        rigid: false,
        budget_tokens: &[2048.0, 2048.0, 3072.0, 4096.0, 3686.3999],
        // Rigid so far through segment 2 (1e-8 and 1e-6 are below e_t), dynamic from segment 3 on.
        causal_budget_tokens: &[2048.0, 2048.0, 2048.0, 4096.0, 3686.3999],
    },
    Case {
        entropy: &[1.0, 1.0],
        rigid: false,
        budget_tokens: &[2048.0, 2048.0],
        causal_budget_tokens: &[2048.0, 2048.0],
    },
];

fn paper_params() -> BudgetParams {
    // The JSON's parameters; max = 3 * base.
    BudgetParams::PAPER
}

#[test]
fn json_literals_are_the_float32_values() {
    // 2252.8 and 4710.3999 are 8-digit prints of float32 values; the f32 literal is the nearest float32 to them.
    assert_eq!(2252.8f32.to_bits(), 2252.800048828125f32.to_bits());
    assert_eq!(4710.3999f32, 4710.4f32);
    assert_eq!(3686.3999f32, 3686.4f32);
}

#[test]
fn worked_examples_paper() {
    for (i, c) in CASES.iter().enumerate() {
        let out = head_budgets(c.entropy, 1, c.entropy.len(), &paper_params(), HeadTyping::Paper, None).unwrap();
        assert_eq!(out.rigid, vec![c.rigid], "case {i}");
        assert_eq!(out.budget_tokens, c.budget_tokens, "case {i}");
        assert!(out.state.is_none());
    }
}

#[test]
fn worked_examples_causal() {
    for (i, c) in CASES.iter().enumerate() {
        let out = head_budgets(c.entropy, 1, c.entropy.len(), &paper_params(), HeadTyping::Causal, None).unwrap();
        assert_eq!(out.rigid, vec![c.rigid], "case {i}");
        assert_eq!(out.budget_tokens, c.causal_budget_tokens, "case {i}");
        let st = out.state.unwrap();
        assert_eq!(st.segments_seen, c.entropy.len());
        assert_eq!(st.rigid_so_far, vec![c.rigid]);
        assert_eq!(st.prev_entropy, vec![*c.entropy.last().unwrap()]);
        // The carried budget is the recurrence value, which is the paper value, not the (β) output.
        assert_eq!(st.prev_budget_tokens, vec![*c.budget_tokens.last().unwrap()]);
    }
}

#[test]
fn worked_examples_all_heads_at_once() {
    // The five cases padded to a common length never interact: heads are independent.
    let nseg = 8;
    let mut entropy = Vec::new();
    for c in CASES {
        let mut row = c.entropy.to_vec();
        row.resize(nseg, *c.entropy.last().unwrap());
        entropy.extend(row);
    }
    let out = head_budgets(&entropy, CASES.len(), nseg, &paper_params(), HeadTyping::Paper, None).unwrap();
    for (h, c) in CASES.iter().enumerate() {
        let got = &out.budget_tokens[h * nseg..h * nseg + c.entropy.len()];
        assert_eq!(got, c.budget_tokens, "head {h}");
    }
}

#[test]
fn single_segment() {
    let p = paper_params();
    for typing in [HeadTyping::Paper, HeadTyping::Causal] {
        let out = head_budgets(&[7.0, 0.0], 2, 1, &p, typing, None).unwrap();
        assert_eq!(out.rigid, vec![true, true]); // nothing scored yet
        assert_eq!(out.budget_tokens, vec![2048.0, 2048.0]);
    }
}

#[test]
fn epsilon_literal_matches_torch_rounding() {
    // torch turns the Python float 1e-9 into float32 by rounding the float64; same value as the f32 literal.
    assert_eq!(GROWTH_EPS, 1e-9f64 as f32);
}

#[test]
fn parameters_round_like_the_spec() {
    let p = BudgetParams {
        rigid_entropy_threshold: 0.1,
        entropy_growth_threshold: 0.1,
        budget_growth_rate: 0.1,
        base_budget_tokens: 3.3,
        max_budget_tokens: 10.0,
    }
    .to_f32()
    .unwrap();
    assert_eq!(p.e_t, 0.1f32);
    assert_eq!(p.delta, 0.1f32);
    assert_eq!(p.one_plus_delta, (1.0f64 + 0.1) as f32);
    assert_eq!(p.alpha_beta, (0.1f64 * 3.3) as f32);
    assert_eq!(p.beta, 3.3f32);
}

#[test]
fn errors() {
    let p = paper_params();
    let e = [1.0f32; 6];
    let err = |r: Result<HeadBudgets>| r.unwrap_err();
    // Data length must match; empty inputs are fine (see `empty_inputs`).
    let shape_err = |r| matches!(err(r), SchedulerError::InvalidShape(_));
    assert!(shape_err(head_budgets(&e, 0, 6, &p, HeadTyping::Paper, None)));
    assert!(shape_err(head_budgets(&e, 2, 4, &p, HeadTyping::Paper, None)));
    let non_finite = |r| matches!(err(r), SchedulerError::NonFiniteInput(_));
    let mut bad = e;
    bad[4] = f32::NAN;
    assert!(non_finite(head_budgets(&bad, 2, 3, &p, HeadTyping::Causal, None)));
    bad[4] = f32::INFINITY;
    assert!(non_finite(head_budgets(&bad, 2, 3, &p, HeadTyping::Paper, None)));
    bad[4] = f32::NEG_INFINITY;
    assert_eq!(
        err(head_budgets(&bad, 2, 3, &p, HeadTyping::Paper, None)),
        SchedulerError::NonFiniteInput("entropy[1, 1] = -inf".into())
    );

    let with = |f: fn(&mut BudgetParams)| {
        let mut q = p;
        f(&mut q);
        head_budgets(&e, 2, 3, &q, HeadTyping::Paper, None).unwrap_err()
    };
    assert!(matches!(with(|q| q.base_budget_tokens = 0.0), SchedulerError::InvalidParameter(_)));
    assert!(matches!(with(|q| q.base_budget_tokens = -1.0), SchedulerError::InvalidParameter(_)));
    assert!(matches!(with(|q| q.max_budget_tokens = 2047.0), SchedulerError::InvalidParameter(_)));
    assert!(matches!(with(|q| q.entropy_growth_threshold = f64::NAN), SchedulerError::InvalidParameter(_)));
    assert!(matches!(with(|q| q.max_budget_tokens = 1e300), SchedulerError::InvalidParameter(_)));

    // Paper typing takes no state.
    let st = HeadState::fresh(2, &p);
    assert!(matches!(
        err(head_budgets(&e, 2, 3, &p, HeadTyping::Paper, Some(&st))),
        SchedulerError::InvalidParameter(_)
    ));
    // State of the wrong width.
    let st3 = HeadState::fresh(3, &p);
    assert!(matches!(err(head_budgets(&e, 2, 3, &p, HeadTyping::Causal, Some(&st3))), SchedulerError::InvalidShape(_)));
    let mut st_nan = HeadState::fresh(2, &p);
    st_nan.prev_entropy[1] = f32::NAN;
    assert!(matches!(
        err(head_budgets(&e, 2, 3, &p, HeadTyping::Causal, Some(&st_nan))),
        SchedulerError::NonFiniteInput(_)
    ));
}

#[test]
fn segment_zero_entropy_is_ignored_even_if_nan() {
    let p = paper_params();
    let clean = [0.0, 2.0, 2.5, 4.0];
    for first in [f32::NAN, f32::INFINITY, 123.0] {
        let mut e = clean;
        e[0] = first;
        for typing in [HeadTyping::Paper, HeadTyping::Causal] {
            let got = head_budgets(&e, 1, 4, &p, typing, None).unwrap();
            let want = head_budgets(&clean, 1, 4, &p, typing, None).unwrap();
            assert_eq!(got, want, "{first} {typing:?}");
        }
        // Chunked: segment 0 alone enters the state as entropy 0.
        let st = head_budgets(&e[..1], 1, 1, &p, HeadTyping::Causal, None).unwrap().state.unwrap();
        assert_eq!(st.prev_entropy, vec![0.0]);
        assert_eq!(st.segments_seen, 1);
    }
    // Only *global* segment 0 is exempt: the first column of a later chunk is checked.
    let st = HeadState { segments_seen: 3, ..HeadState::fresh(1, &p) };
    assert!(matches!(
        head_budgets(&[f32::NAN, 1.0], 1, 2, &p, HeadTyping::Causal, Some(&st)),
        Err(SchedulerError::NonFiniteInput(_))
    ));
}

#[test]
fn empty_inputs() {
    let p = paper_params();
    let out = head_budgets(&[], 0, 5, &p, HeadTyping::Paper, None).unwrap();
    assert!(out.rigid.is_empty() && out.budget_tokens.is_empty());
    let out = head_budgets(&[], 3, 0, &p, HeadTyping::Paper, None).unwrap();
    assert_eq!(out.rigid, vec![true; 3]);
    assert!(out.budget_tokens.is_empty());
    // A causal call without segments hands the state back unchanged.
    let mut st = HeadState::fresh(2, &p);
    st.rigid_so_far[1] = false;
    st.segments_seen = 7;
    st.prev_entropy = vec![1.5, 2.5];
    let out = head_budgets(&[], 2, 0, &p, HeadTyping::Causal, Some(&st)).unwrap();
    assert_eq!(out.rigid, vec![true, false]);
    assert_eq!(out.state, Some(st));
    let out = head_budgets(&[], 0, 0, &p, HeadTyping::Causal, None).unwrap();
    assert_eq!(out.state.unwrap().segments_seen, 0);
}

#[test]
fn max_equal_to_base_pins_everything() {
    let p = BudgetParams { max_budget_tokens: 2048.0, ..paper_params() };
    let out = head_budgets(&[1.0, 5.0, 50.0, 500.0], 1, 4, &p, HeadTyping::Paper, None).unwrap();
    assert_eq!(out.budget_tokens, vec![2048.0; 4]);
}

#[test]
fn negative_delta_does_not_panic() {
    // 1 + δ < 0 makes clamp(r, 0, 1 + δ) return 1 + δ, as torch.clamp does when min > max.
    let p = BudgetParams { entropy_growth_threshold: -1.5, ..paper_params() };
    let out = head_budgets(&[1.0, 2.0, 3.0], 1, 3, &p, HeadTyping::Paper, None).unwrap();
    // s=1: r = δ, step 0. s=2: r = 1 + δ = -0.5, step = 1024 * (-0.5 + 1.5) = 1024.
    assert_eq!(out.budget_tokens, vec![2048.0, 2048.0, 3072.0]);
}

#[test]
fn keep_blocks_hand_example() {
    // L = 1000, S = 256, b = 16: nseg 4, nrep 16, num_blocks 48, max_effective = 48 - (232 / 16 + 1) = 33.
    let g = Geometry::new(1000, 256, 16).unwrap();
    let budgets = [5000.0, 100.0, 300.0, 2000.0, 1.0, 15.99, 16.0, 527.9];
    let keep = keep_blocks(&budgets, 2, &g).unwrap();
    assert_eq!(keep, vec![0, 6, 18, 33, 0, 0, 1, 32]);
}

#[test]
fn keep_blocks_paper_defaults() {
    let g = Geometry::new(131072, 512, 8).unwrap();
    let mut budgets = vec![2048.0f32; 256];
    budgets[255] = 6144.0;
    budgets[3] = 2252.8;
    let keep = keep_blocks(&budgets, 1, &g).unwrap();
    assert_eq!(keep[0], 0);
    assert_eq!(keep[1], 64); // capped by the 64 visible blocks
    assert_eq!(keep[3], 192); // 2252.8 / 8 = 281.6 -> 281, capped by 3 * 64
    assert_eq!(keep[4], 256);
    assert_eq!(keep[100], 256);
    assert_eq!(keep[255], 768);
}

#[test]
fn keep_blocks_errors() {
    let g = Geometry::new(1000, 256, 16).unwrap();
    assert!(matches!(keep_blocks(&[1.0; 6], 2, &g), Err(SchedulerError::InvalidShape(_))));
    assert!(matches!(keep_blocks(&[1.0; 4], 0, &g), Err(SchedulerError::InvalidShape(_))));
    assert_eq!(keep_blocks(&[], 0, &g).unwrap(), Vec::<i32>::new());
    assert!(matches!(keep_blocks(&[1.0, f32::NAN, 1.0, 1.0], 1, &g), Err(SchedulerError::NonFiniteInput(_))));
    assert!(matches!(keep_blocks(&[1.0, f32::INFINITY, 1.0, 1.0], 1, &g), Err(SchedulerError::NonFiniteInput(_))));
    assert!(matches!(keep_blocks(&[1.0, -8.0, 1.0, 1.0], 1, &g), Err(SchedulerError::InvalidParameter(_))));
    // Huge but finite budgets saturate at the cap instead of overflowing the int32 cast.
    assert_eq!(keep_blocks(&[f32::MAX; 4], 1, &g).unwrap(), vec![0, 16, 32, 33]);
}

// ---------------------------------------------------------------- properties

/// Entropies that mix exact zeros, values straddling e_t and ordinary values, so that heads switch from rigid
/// to dynamic at random segments and the growth ratio hits both clamps.
fn entropy_value() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.0f32), Just(1e-5f32), 0.0f32..2e-5, 0.0f32..10.0, 0.0f32..1e4,]
}

fn params_strategy() -> impl Strategy<Value = BudgetParams> {
    (1e-6f64..1.0, -0.5f64..2.0, 0.0f64..2.0, 1.0f64..4096.0, 1.0f64..4.0).prop_map(|(e_t, d, a, b, m)| BudgetParams {
        rigid_entropy_threshold: e_t,
        entropy_growth_threshold: d,
        budget_growth_rate: a,
        base_budget_tokens: b,
        max_budget_tokens: b * m,
    })
}

fn entropies() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..5, 1usize..40)
        .prop_flat_map(|(h, n)| (Just(h), Just(n), proptest::collection::vec(entropy_value(), h * n)))
}

/// Columns `[from, to)` of an `[H, nseg]` row-major matrix.
fn columns(x: &[f32], nseg: usize, from: usize, to: usize) -> Vec<f32> {
    x.chunks_exact(nseg).flat_map(|row| row[from..to].iter().copied()).collect()
}

proptest! {
    #[test]
    fn budgets_stay_within_base_and_max((h, n, e) in entropies(), p in params_strategy()) {
        let (beta, max) = (p.base_budget_tokens as f32, p.max_budget_tokens as f32);
        for typing in [HeadTyping::Paper, HeadTyping::Causal] {
            let out = head_budgets(&e, h, n, &p, typing, None).unwrap();
            prop_assert_eq!(out.budget_tokens.len(), h * n);
            for &b in &out.budget_tokens {
                prop_assert!(b >= beta && b <= max, "{} not in [{}, {}]", b, beta, max);
            }
            for row in out.budget_tokens.chunks_exact(n) {
                prop_assert_eq!(row[0], beta);
            }
        }
    }

    #[test]
    fn paper_rigid_heads_get_beta_everywhere((h, n, e) in entropies(), p in params_strategy()) {
        let out = head_budgets(&e, h, n, &p, HeadTyping::Paper, None).unwrap();
        let e_t = p.rigid_entropy_threshold as f32;
        for k in 0..h {
            let row = &e[k * n..(k + 1) * n];
            prop_assert_eq!(out.rigid[k], row[1..].iter().all(|&x| x < e_t));
            if out.rigid[k] {
                prop_assert!(out.budget_tokens[k * n..(k + 1) * n].iter().all(|&b| b == p.base_budget_tokens as f32));
            }
        }
    }

    #[test]
    fn causal_matches_paper_from_the_turning_segment((h, n, e) in entropies(), p in params_strategy()) {
        let paper = head_budgets(&e, h, n, &p, HeadTyping::Paper, None).unwrap();
        let causal = head_budgets(&e, h, n, &p, HeadTyping::Causal, None).unwrap();
        prop_assert_eq!(&paper.rigid, &causal.rigid);
        let e_t = p.rigid_entropy_threshold as f32;
        let beta = p.base_budget_tokens as f32;
        for k in 0..h {
            let row = &e[k * n..(k + 1) * n];
            // First scored segment at or above e_t, or n when the head ends rigid.
            let turn = (1..n).find(|&s| row[s] >= e_t).unwrap_or(n);
            for s in 0..n {
                let want = if s < turn { beta } else { paper.budget_tokens[k * n + s] };
                prop_assert_eq!(causal.budget_tokens[k * n + s].to_bits(), want.to_bits(), "head {} seg {}", k, s);
            }
        }
    }

    #[test]
    fn chunked_causal_equals_whole_causal(
        (h, n, e) in entropies(),
        p in params_strategy(),
        cuts in proptest::collection::vec(0usize..40, 0..5),
    ) {
        let whole = head_budgets(&e, h, n, &p, HeadTyping::Causal, None).unwrap();
        let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % n).filter(|&c| c > 0).collect();
        bounds.push(0);
        bounds.push(n);
        bounds.sort_unstable();
        bounds.dedup();
        let mut state: Option<HeadState> = None;
        let mut got = vec![0.0f32; h * n];
        let mut rigid = Vec::new();
        for w in bounds.windows(2) {
            let chunk = columns(&e, n, w[0], w[1]);
            let out = head_budgets(&chunk, h, w[1] - w[0], &p, HeadTyping::Causal, state.as_ref()).unwrap();
            for k in 0..h {
                let len = w[1] - w[0];
                got[k * n + w[0]..k * n + w[1]].copy_from_slice(&out.budget_tokens[k * len..(k + 1) * len]);
            }
            rigid = out.rigid;
            state = out.state;
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&got), bits(&whole.budget_tokens));
        prop_assert_eq!(&rigid, &whole.rigid);
        prop_assert_eq!(state.as_ref(), whole.state.as_ref());
    }

    #[test]
    fn keep_counts_within_caps(
        (h, n) in (1usize..4, 2usize..12),
        s_mul in 1usize..5,
        b_pow in 0u32..4,
        tail in 0usize..64,
        budgets in proptest::collection::vec(0.0f32..1e5, 48),
    ) {
        let b = 1usize << b_pow;
        let s = b * s_mul;
        let l = (n - 1) * s + 1 + tail % s;
        let g = Geometry::new(l, s, b).unwrap();
        prop_assert_eq!(g.num_segments, n);
        let budgets: Vec<f32> = budgets.iter().cycle().take(h * n).copied().collect();
        let keep = keep_blocks(&budgets, h, &g).unwrap();
        for k in 0..h {
            prop_assert_eq!(keep[k * n], 0);
            for seg in 1..n {
                let v = keep[k * n + seg];
                let cap = g.visible_blocks(seg).min(g.max_effective_blocks()) as i32;
                let raw = (budgets[k * n + seg] / b as f32).trunc() as i32;
                prop_assert_eq!(v, raw.min(cap));
            }
        }
    }
}
