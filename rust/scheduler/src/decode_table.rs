//! The pool slots one decode step reads per kv head of a compressed request (the SGLang backend's reference path,
//! every decode step and layer): a decode table's kept positions, then every position appended since the
//! compression event, mapped through the request's `req_to_token` row.
//!
//! Host integer bookkeeping only (no scores, no floats): it replaces a per-head loop of small tensor ops that
//! cost more than the arithmetic (`benchmarks/RESULTS.md`, "Host bookkeeping per decode step in Rust").

use crate::error::{param, shape, Result};

/// A decode table: per kv head, the kept token positions (increasing, `< base_len`), padded to `max_kept`.
#[derive(Debug, Clone, Copy)]
pub struct TableView<'a> {
    /// `[num_heads, max_kept]` row-major kept positions; entries past a head's length are padding (ignored).
    pub positions: &'a [i64],
    /// `[num_heads]` kept entries per head.
    pub lengths: &'a [i64],
    /// Number of kv heads.
    pub num_heads: usize,
    /// Every position `>= base_len` (appended since the event) is visible to every head.
    pub base_len: usize,
}

/// What [`visible_slots`] returns: `slots` `[num_heads, width]` row-major, `lengths` `[num_heads]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibleSlots {
    /// Pool slots per head: its kept positions' slots, then the appended positions' slots, then padding
    /// (`row[0]`, the slot of position 0: a valid slot that the attention masks out).
    pub slots: Vec<i64>,
    /// Visible entries per head (kept + appended).
    pub lengths: Vec<i64>,
    /// The longest head's visible entries.
    pub width: usize,
}

/// The pool slots a query at position `seq_len - 1` reads per kv head: `row[p]` for the head's kept positions
/// `p`, then for `p` in `base_len .. seq_len`, padded with `row[0]` to the longest head.
///
/// `row` is the request's `req_to_token` row (at least `seq_len` entries; int32 or int64 pool slots). Kept
/// positions must be in `0 .. base_len`, lengths in `0 ..= max_kept`, `base_len <= seq_len`.
pub fn visible_slots<S: Copy + Into<i64>>(table: &TableView<'_>, seq_len: usize, row: &[S]) -> Result<VisibleSlots> {
    let h = table.num_heads;
    if table.lengths.len() != h {
        return Err(shape(format!("lengths has {} values, expected num_heads = {h}", table.lengths.len())));
    }
    if h == 0 {
        if !table.positions.is_empty() {
            return Err(shape(format!("positions has {} values for 0 kv heads", table.positions.len())));
        }
        return Ok(VisibleSlots { slots: Vec::new(), lengths: Vec::new(), width: 0 });
    }
    if !table.positions.len().is_multiple_of(h) {
        return Err(shape(format!(
            "positions has {} values, not a multiple of num_heads = {h}",
            table.positions.len()
        )));
    }
    let max_kept = table.positions.len() / h;
    if table.base_len > seq_len {
        return Err(param(format!("base_len = {} exceeds seq_len = {seq_len}", table.base_len)));
    }
    if row.len() < seq_len {
        return Err(shape(format!("row has {} slots, fewer than seq_len = {seq_len}", row.len())));
    }
    let appended = seq_len - table.base_len;
    let mut kept = Vec::with_capacity(h);
    for (head, &n) in table.lengths.iter().enumerate() {
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= max_kept)
            .ok_or_else(|| param(format!("lengths[{head}] = {n} is outside 0 ..= max_kept = {max_kept}")))?;
        kept.push(n);
    }
    let width = kept.iter().max().copied().unwrap_or(0) + appended;
    let pad = if width == 0 { 0 } else { row[0].into() };
    let mut slots = vec![pad; h * width];
    for (head, (&n, out)) in kept.iter().zip(slots.chunks_exact_mut(width.max(1))).enumerate() {
        let positions = &table.positions[head * max_kept..head * max_kept + n];
        for (column, (&p, slot)) in positions.iter().zip(out.iter_mut()).enumerate() {
            let p = usize::try_from(p).ok().filter(|&p| p < table.base_len).ok_or_else(|| {
                param(format!("positions[{head}, {column}] = {p} is outside 0 .. base_len = {}", table.base_len))
            })?;
            *slot = row[p].into();
        }
        for (slot, &s) in out[n..n + appended].iter_mut().zip(&row[table.base_len..seq_len]) {
            *slot = s.into();
        }
    }
    let lengths = kept.iter().map(|&n| (n + appended) as i64).collect();
    Ok(VisibleSlots { slots, lengths, width })
}

#[cfg(test)]
mod tests;
