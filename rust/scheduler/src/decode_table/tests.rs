use super::*;
use crate::SchedulerError;
use proptest::prelude::*;

fn table<'a>(positions: &'a [i64], lengths: &'a [i64], num_heads: usize, base_len: usize) -> TableView<'a> {
    TableView { positions, lengths, num_heads, base_len }
}

#[test]
fn kept_then_appended_then_padding() {
    // 2 kv heads kept [1, 4] and [3] of 6 positions; seq_len 8: positions 6 and 7 appended since.
    let positions = [1, 4, 3, 0];
    let row: Vec<i32> = (0..10).map(|p| 100 + p).collect();
    let out = visible_slots(&table(&positions, &[2, 1], 2, 6), 8, &row).unwrap();
    assert_eq!(out.width, 4);
    assert_eq!(out.lengths, vec![4, 3]);
    assert_eq!(out.slots, vec![101, 104, 106, 107, 103, 106, 107, 100]);
}

#[test]
fn nothing_appended_and_empty_heads() {
    let positions = [2, 0, 0, 0];
    let row: Vec<i64> = vec![7, 8, 9];
    let out = visible_slots(&table(&positions, &[1, 0], 2, 3), 3, &row).unwrap();
    assert_eq!((out.width, out.lengths.clone(), out.slots), (1, vec![1, 0], vec![9, 7]));
    let out = visible_slots(&table(&positions, &[0, 0], 2, 3), 3, &row).unwrap();
    assert_eq!((out.width, out.lengths, out.slots), (0, vec![0, 0], vec![]));
}

#[test]
fn bad_inputs_are_refused() {
    let row: Vec<i32> = (0..8).collect();
    let param_err = |r: Result<VisibleSlots>| matches!(r, Err(SchedulerError::InvalidParameter(_)));
    let shape_err = |r: Result<VisibleSlots>| matches!(r, Err(SchedulerError::InvalidShape(_)));
    assert!(param_err(visible_slots(&table(&[5, 0], &[1], 1, 4), 6, &row))); // kept position past base_len
    assert!(param_err(visible_slots(&table(&[-1, 0], &[1], 1, 4), 6, &row)));
    assert!(param_err(visible_slots(&table(&[1, 2], &[3], 1, 4), 6, &row))); // length past max_kept
    assert!(param_err(visible_slots(&table(&[1, 2], &[-1], 1, 4), 6, &row)));
    assert!(param_err(visible_slots(&table(&[1, 2], &[2], 1, 7), 6, &row))); // base_len past seq_len
    assert!(shape_err(visible_slots(&table(&[1, 2], &[2], 1, 4), 9, &row))); // row shorter than seq_len
    assert!(shape_err(visible_slots(&table(&[1, 2, 3], &[1, 1], 2, 4), 6, &row)));
    assert!(shape_err(visible_slots(&table(&[1, 2], &[1, 1, 1], 2, 4), 6, &row)));
}

/// Brute force: per head, the list of visible positions, mapped through the row, padded with row[0].
fn oracle(positions: &[i64], lengths: &[i64], h: usize, base: usize, seq: usize, row: &[i64]) -> VisibleSlots {
    let k = positions.len() / h;
    let heads: Vec<Vec<i64>> = (0..h)
        .map(|i| {
            let kept = positions[i * k..i * k + lengths[i] as usize].iter().map(|&p| row[p as usize]);
            kept.chain((base..seq).map(|p| row[p])).collect()
        })
        .collect();
    let width = heads.iter().map(Vec::len).max().unwrap_or(0);
    let mut slots = Vec::new();
    for head in &heads {
        slots.extend(head);
        slots.extend(std::iter::repeat_n(row[0], width - head.len()));
    }
    VisibleSlots { slots, lengths: heads.iter().map(|v| v.len() as i64).collect(), width }
}

proptest! {
    #[test]
    fn matches_the_brute_force(h in 1usize..5, base in 1usize..40, appended in 0usize..10, seed in any::<u64>()) {
        let seq = base + appended;
        let mut state = seed | 1;
        let mut next = move || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state };
        let k = base;
        let mut positions = vec![0i64; h * k];
        let mut lengths = vec![0i64; h];
        for i in 0..h {
            let kept: Vec<i64> = (0..base as i64).filter(|_| next() % 3 != 0).collect();
            lengths[i] = kept.len() as i64;
            positions[i * k..i * k + kept.len()].copy_from_slice(&kept);
        }
        let row: Vec<i64> = (0..seq + 3).map(|_| (next() % 100_000) as i64).collect();
        let got = visible_slots(&table(&positions, &lengths, h, base), seq, &row).unwrap();
        prop_assert_eq!(got, oracle(&positions, &lengths, h, base, seq, &row));
    }
}
