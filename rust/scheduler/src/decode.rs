//! Spec §4 (`adaptive_budgets`, AdaKV) and §5 (`eviction_order`): decode-time KV cache compression.
//!
//! Both rank scores with a total order (score, then head, then position), packed into `u64` keys so that the
//! answer does not depend on the sort algorithm: ties are never left to chance.

use crate::error::{non_finite, param, shape, Result};
use crate::order::{asc_key, desc_key, find_nan};

fn check_scores(scores: &[f32], num_heads: usize, num_entries: usize) -> Result<()> {
    if num_heads.checked_mul(num_entries) != Some(scores.len()) {
        return Err(shape(format!("scores has {} values, expected H * T = {num_heads} * {num_entries}", scores.len())));
    }
    if num_entries > i32::MAX as usize {
        return Err(shape(format!("T = {num_entries} does not fit int32 positions")));
    }
    if let Some(i) = find_nan(scores) {
        return Err(non_finite(format!("scores[{}, {}] is NaN", i / num_entries, i % num_entries)));
    }
    Ok(())
}

/// Spec §4: per-head budgets `[H]` over the `T` candidate entries of each head (`scores` is `[H, T]`).
///
/// With `B' = min(budget_tokens, T)` and `floor = floor(floor_fraction * B')`, every head first keeps its own top
/// `floor` candidates; the remaining `H * (B' - floor)` slots go to the best of all the other candidates of all
/// heads (score desc, then lower head, then lower position). The budgets sum to exactly `H * B'`, each is at
/// least `floor` and at most `T`. `floor_fraction = 1` gives SnapKV's uniform `B'` per head.
pub fn adaptive_budgets(
    scores: &[f32],
    num_heads: usize,
    num_entries: usize,
    budget_tokens: usize,
    floor_fraction: f64,
) -> Result<Vec<i32>> {
    check_scores(scores, num_heads, num_entries)?;
    if !(0.0..=1.0).contains(&floor_fraction) {
        return Err(param(format!("floor_fraction must be in [0, 1], got {floor_fraction}")));
    }
    let t = num_entries;
    if num_heads.checked_mul(t).is_none_or(|n| n as u64 > 1u64 << 32) {
        return Err(shape(format!("H * T = {num_heads} * {t} exceeds 2^32 entries")));
    }
    let b = budget_tokens.min(t);
    let floor = ((floor_fraction * b as f64).floor() as usize).min(b); // float64 product, then floor
    let mut budgets = vec![floor as i32; num_heads];
    let picks = num_heads * (b - floor);
    if picks == 0 {
        return Ok(budgets);
    }
    if b == t {
        // Every candidate of every head is kept.
        budgets.fill(t as i32);
        return Ok(budgets);
    }

    // Pool = each head's candidates minus its own top `floor`, keyed by (score desc, h * T + pos): the low
    // 32 bits order (head, position) lexicographically because pos < T.
    let mut pool: Vec<u64> = Vec::with_capacity(num_heads * (t - floor));
    let mut head_keys: Vec<u64> = Vec::with_capacity(t);
    for (h, row) in scores.chunks_exact(t).enumerate() {
        let base = (h * t) as u64;
        head_keys.clear();
        head_keys.extend(row.iter().enumerate().map(|(p, &x)| (u64::from(desc_key(x)) << 32) | p as u64));
        let rest = if floor == 0 {
            &head_keys[..]
        } else {
            head_keys.select_nth_unstable(floor - 1);
            &head_keys[floor..]
        };
        // The position field is replaced by the flat index; both fit in the low 32 bits.
        pool.extend(rest.iter().map(|&k| (k & !0xFFFF_FFFF) | (base + (k & 0xFFFF_FFFF))));
    }
    let winners: &[u64] = if picks >= pool.len() {
        &pool
    } else {
        pool.select_nth_unstable(picks - 1);
        &pool[..picks]
    };
    for &k in winners {
        budgets[((k & 0xFFFF_FFFF) as usize) / t] += 1;
    }
    Ok(budgets)
}

/// Spec §5: per head, a permutation of `0..T` in ascending importance (evicted first), `[H, T]` row-major.
///
/// Unprotected entries come first, by score ascending, the higher position first among equal scores; then the
/// protected ones (`pos < sink_tokens` or `pos >= T - local_window_tokens`) in increasing position. So the
/// last `k` entries of a row are exactly "protected first, then the top by score, ties to the lower position".
pub fn eviction_order(
    scores: &[f32],
    num_heads: usize,
    num_entries: usize,
    sink_tokens: usize,
    local_window_tokens: usize,
) -> Result<Vec<i32>> {
    check_scores(scores, num_heads, num_entries)?;
    let t = num_entries;
    // Unprotected positions are [lo, hi); empty when the sink and the local window cover everything.
    let lo = sink_tokens.min(t);
    let hi = t.saturating_sub(local_window_tokens).max(lo);
    let mut order = vec![0i32; num_heads * t];
    let mut keys: Vec<u64> = Vec::with_capacity(hi - lo);
    for (row, out) in scores.chunks_exact(t.max(1)).zip(order.chunks_exact_mut(t.max(1))) {
        keys.clear();
        // Low bits `!pos` so that, among equal scores, the higher position sorts (and is evicted) first.
        keys.extend((lo..hi).map(|p| (u64::from(asc_key(row[p])) << 32) | u64::from(!(p as u32))));
        keys.sort_unstable();
        let (ranked, protected) = out.split_at_mut(hi - lo);
        for (slot, &k) in ranked.iter_mut().zip(keys.iter()) {
            *slot = !(k as u32) as i32;
        }
        for (slot, p) in protected.iter_mut().zip((0..lo).chain(hi..t)) {
            *slot = p as i32;
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests;
