//! Spec §1 (`head_budgets`) and §2 (`keep_blocks`): from per-segment attention entropies to token budgets, and
//! from token budgets to how many key blocks each segment keeps.
//!
//! All arithmetic is float32, one rounding per operation, in the order the spec writes it, because the torch
//! planner must agree with this one bit for bit. Rust never contracts `a * b + c` into an FMA, so writing the
//! expressions out is enough.

use crate::error::{non_finite, param, shape, Result};
use crate::geometry::Geometry;

/// The `1e-9f` that keeps the relative growth finite when the previous entropy is zero.
const GROWTH_EPS: f32 = 1e-9;

/// How heads are classified as rigid (spec §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadTyping {
    /// The prototype's rule, which needs the whole prompt: a head is rigid iff every scored segment's entropy
    /// is below the threshold; rigid heads get β everywhere.
    Paper,
    /// "Rigid so far", safe for chunked prefill: the recurrence runs for every head, the output is β while the
    /// head has been rigid so far, and state is carried from one call (chunk) to the next.
    Causal,
}

/// Budget parameters as the config holds them (float64). They are rounded to float32 inside, the way torch
/// rounds a Python float that meets a float32 tensor; `α·β` and `1 + δ` are formed in float64 first (spec §1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetParams {
    /// e_t: a head is rigid while every scored segment's entropy is below it.
    pub rigid_entropy_threshold: f64,
    /// δ: relative entropy growth at which the budget stays put.
    pub entropy_growth_threshold: f64,
    /// α: budget step per unit of relative growth, as a fraction of β.
    pub budget_growth_rate: f64,
    /// β: minimum budget in tokens.
    pub base_budget_tokens: f64,
    /// Maximum budget in tokens (3β in the prototype).
    pub max_budget_tokens: f64,
}

impl BudgetParams {
    /// The paper's values: e_t = 1e-5, δ = 0.4, α = 0.5, β = 2048, max = 3β.
    pub const PAPER: BudgetParams = BudgetParams {
        rigid_entropy_threshold: 1e-5,
        entropy_growth_threshold: 0.4,
        budget_growth_rate: 0.5,
        base_budget_tokens: 2048.0,
        max_budget_tokens: 6144.0,
    };

    fn to_f32(self) -> Result<F32Params> {
        let named = [
            ("rigid_entropy_threshold", self.rigid_entropy_threshold),
            ("entropy_growth_threshold", self.entropy_growth_threshold),
            ("budget_growth_rate", self.budget_growth_rate),
            ("base_budget_tokens", self.base_budget_tokens),
            ("max_budget_tokens", self.max_budget_tokens),
        ];
        for (name, v) in named {
            if !v.is_finite() {
                return Err(param(format!("{name} must be finite, got {v}")));
            }
        }
        if self.base_budget_tokens <= 0.0 {
            return Err(param(format!("base_budget_tokens must be positive, got {}", self.base_budget_tokens)));
        }
        if self.max_budget_tokens < self.base_budget_tokens {
            return Err(param(format!(
                "max_budget_tokens ({}) must be >= base_budget_tokens ({})",
                self.max_budget_tokens, self.base_budget_tokens
            )));
        }
        let p = F32Params {
            e_t: self.rigid_entropy_threshold as f32,
            delta: self.entropy_growth_threshold as f32,
            one_plus_delta: (1.0 + self.entropy_growth_threshold) as f32,
            alpha_beta: (self.budget_growth_rate * self.base_budget_tokens) as f32,
            beta: self.base_budget_tokens as f32,
            max: self.max_budget_tokens as f32,
        };
        let rounded = [p.e_t, p.delta, p.one_plus_delta, p.alpha_beta, p.beta, p.max];
        if rounded.iter().any(|v| !v.is_finite()) {
            return Err(param("budget parameters overflow float32"));
        }
        Ok(p)
    }
}

/// The parameters after the float32 rounding the spec prescribes.
#[derive(Debug, Clone, Copy)]
struct F32Params {
    e_t: f32,
    delta: f32,
    one_plus_delta: f32,
    alpha_beta: f32,
    beta: f32,
    max: f32,
}

/// Per-head state carried between causal calls (chunks of one prompt).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadState {
    /// Whether every scored segment seen so far had entropy below e_t.
    pub rigid_so_far: Vec<bool>,
    /// Entropy of the last segment seen (the recurrence's `H[s-1]`).
    pub prev_entropy: Vec<f32>,
    /// Recurrence value at the last segment seen — not the output, which is β while rigid.
    pub prev_budget_tokens: Vec<f32>,
    /// Segments processed so far; the next call's first column is global segment `segments_seen`.
    pub segments_seen: usize,
}

impl HeadState {
    /// State before the first chunk: nothing seen, every head rigid so far, previous budget β.
    pub fn fresh(num_heads: usize, params: &BudgetParams) -> Self {
        Self {
            rigid_so_far: vec![true; num_heads],
            prev_entropy: vec![0.0; num_heads],
            prev_budget_tokens: vec![params.base_budget_tokens as f32; num_heads],
            segments_seen: 0,
        }
    }

    fn validate(&self, num_heads: usize) -> Result<()> {
        let lens = [
            ("rigid_so_far", self.rigid_so_far.len()),
            ("prev_entropy", self.prev_entropy.len()),
            ("prev_budget_tokens", self.prev_budget_tokens.len()),
        ];
        for (name, len) in lens {
            if len != num_heads {
                return Err(shape(format!("state.{name} has {len} entries, expected H = {num_heads}")));
            }
        }
        if self.prev_entropy.iter().any(|v| !v.is_finite()) {
            return Err(non_finite("state.prev_entropy contains NaN or inf"));
        }
        if self.prev_budget_tokens.iter().any(|v| !v.is_finite()) {
            return Err(non_finite("state.prev_budget_tokens contains NaN or inf"));
        }
        Ok(())
    }
}

/// Output of [`head_budgets`].
#[derive(Debug, Clone, PartialEq)]
pub struct HeadBudgets {
    /// `[H]`: rigid (paper) or rigid-so-far after the last segment (causal).
    pub rigid: Vec<bool>,
    /// `[H, nseg]` row-major: budget in tokens per head and segment.
    pub budget_tokens: Vec<f32>,
    /// Causal mode: the state to pass to the next chunk. Paper mode: `None`.
    pub state: Option<HeadState>,
}

/// `torch.clamp(x, lo, hi)`: `min(max(x, lo), hi)`, NaN passes through, `hi` wins when `lo > hi`.
/// (`f32::clamp` would panic on `lo > hi`, which a negative δ can produce for `clamp(r, 0, 1 + δ)`.)
#[inline(always)]
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    let y = if x < lo { lo } else { x };
    if y > hi {
        hi
    } else {
        y
    }
}

/// One step of the dynamic recurrence at global segment `s >= 1`.
#[inline(always)]
fn recurrence_step(p: &F32Params, s: usize, entropy: f32, prev_entropy: f32, prev_budget: f32) -> f32 {
    let r = if s == 1 {
        p.delta
    } else {
        let growth = (entropy - prev_entropy) / (prev_entropy + GROWTH_EPS);
        clamp(growth, 0.0, p.one_plus_delta)
    };
    let step = p.alpha_beta * (r - p.delta);
    clamp(prev_budget + step, p.beta, p.max)
}

/// Spec §1: per-head token budgets from the entropies `[H, nseg]` (row-major, segment 0 first).
///
/// `Paper` typing needs the whole prompt and takes no state (passing one is an error). `Causal` typing starts
/// from `state` (or [`HeadState::fresh`] when `None`) and returns the state after this call's segments, so that
/// processing `[H, a]` then `[H, b]` equals processing `[H, a + b]` exactly. The input state is not modified,
/// so a failed call leaves the caller's state usable.
///
/// Empty inputs (`H == 0` or `nseg == 0`, with an empty slice) are valid and give empty outputs; a causal call
/// with no segments returns the state unchanged. NaN or infinite entropies are errors, except at global
/// segment 0, whose entropy is never read (spec §1; it may be NaN when a float16 mask overflows there).
pub fn head_budgets(
    entropy: &[f32],
    num_heads: usize,
    num_segments: usize,
    params: &BudgetParams,
    typing: HeadTyping,
    state: Option<&HeadState>,
) -> Result<HeadBudgets> {
    if num_heads.checked_mul(num_segments) != Some(entropy.len()) {
        return Err(shape(format!(
            "entropy has {} values, expected H * nseg = {num_heads} * {num_segments}",
            entropy.len()
        )));
    }
    let p = params.to_f32()?;
    // Global segment 0 sees no key block, so its entropy is never used, and it is not checked either: in
    // practice it can be NaN (a softmax over nothing, or a float16 mask overflow). It enters the state as 0.
    let first_is_segment_0 = match (typing, state) {
        (HeadTyping::Causal, Some(st)) => st.segments_seen == 0,
        _ => true,
    };
    let skip = usize::from(first_is_segment_0);
    for (h, row) in entropy.chunks_exact(num_segments.max(1)).enumerate() {
        if let Some(j) = row.iter().skip(skip).position(|v| !v.is_finite()) {
            let s = j + skip;
            return Err(non_finite(format!("entropy[{h}, {s}] = {}", row[s])));
        }
    }
    match typing {
        HeadTyping::Paper => {
            if state.is_some() {
                return Err(param("paper head typing takes no state (it needs the whole prompt)"));
            }
            Ok(paper(entropy, num_heads, num_segments, &p))
        }
        HeadTyping::Causal => {
            let fresh;
            let state = match state {
                Some(s) => {
                    s.validate(num_heads)?;
                    s
                }
                None => {
                    fresh = HeadState::fresh(num_heads, params);
                    &fresh
                }
            };
            causal(entropy, num_heads, num_segments, &p, state)
        }
    }
}

fn paper(entropy: &[f32], num_heads: usize, num_segments: usize, p: &F32Params) -> HeadBudgets {
    if num_segments == 0 {
        // No scored segment: every head is (vacuously) rigid.
        return HeadBudgets { rigid: vec![true; num_heads], budget_tokens: Vec::new(), state: None };
    }
    let mut rigid = Vec::with_capacity(num_heads);
    let mut budget_tokens = vec![p.beta; num_heads * num_segments];
    for (row, out) in entropy.chunks_exact(num_segments).zip(budget_tokens.chunks_exact_mut(num_segments)) {
        // Segment 0 sees nothing, so its entropy never types the head (true when nseg == 1).
        let is_rigid = row[1..].iter().all(|&e| e < p.e_t);
        rigid.push(is_rigid);
        if is_rigid {
            continue; // already β everywhere
        }
        let mut prev_budget = p.beta; // B[0] = β
        for s in 1..num_segments {
            prev_budget = recurrence_step(p, s, row[s], row[s - 1], prev_budget);
            out[s] = prev_budget;
        }
    }
    HeadBudgets { rigid, budget_tokens, state: None }
}

fn causal(
    entropy: &[f32],
    num_heads: usize,
    num_segments: usize,
    p: &F32Params,
    state: &HeadState,
) -> Result<HeadBudgets> {
    let seen = state.segments_seen;
    if seen.checked_add(num_segments).is_none() {
        return Err(param("state.segments_seen overflows"));
    }
    let mut next = HeadState {
        rigid_so_far: state.rigid_so_far.clone(),
        prev_entropy: state.prev_entropy.clone(),
        prev_budget_tokens: state.prev_budget_tokens.clone(),
        segments_seen: seen + num_segments,
    };
    let mut budget_tokens = vec![0.0f32; num_heads * num_segments];
    if num_segments == 0 {
        return Ok(HeadBudgets { rigid: next.rigid_so_far.clone(), budget_tokens, state: Some(next) });
    }
    for (h, (row, out)) in
        entropy.chunks_exact(num_segments).zip(budget_tokens.chunks_exact_mut(num_segments)).enumerate()
    {
        let mut rigid = next.rigid_so_far[h];
        let mut prev_entropy = next.prev_entropy[h];
        let mut prev_budget = next.prev_budget_tokens[h];
        for (j, (&e, o)) in row.iter().zip(out.iter_mut()).enumerate() {
            let s = seen + j;
            let e = if s == 0 { 0.0 } else { e };
            let b = if s == 0 {
                p.beta
            } else {
                // Dynamic is sticky: once one scored segment reaches e_t the head never turns rigid again.
                rigid &= e < p.e_t;
                recurrence_step(p, s, e, prev_entropy, prev_budget)
            };
            *o = if rigid { p.beta } else { b };
            prev_entropy = e;
            prev_budget = b;
        }
        next.rigid_so_far[h] = rigid;
        next.prev_entropy[h] = prev_entropy;
        next.prev_budget_tokens[h] = prev_budget;
    }
    Ok(HeadBudgets { rigid: next.rigid_so_far.clone(), budget_tokens, state: Some(next) })
}

/// Spec §2: how many key blocks segment `s` of head `h` keeps, `[H, nseg]` row-major.
///
/// `trunc(f32(B / f32(b)))`, capped by the visible block count `s * nrep` and by the prototype's
/// `max_effective_blocks`; segment 0 keeps nothing (it sees nothing). Per-head counts always: collapsing them to
/// the per-segment maximum (`per_head_budgets = false`) is the caller's business.
pub fn keep_blocks(budget_tokens: &[f32], num_heads: usize, geometry: &Geometry) -> Result<Vec<i32>> {
    let nseg = geometry.num_segments;
    if num_heads.checked_mul(nseg) != Some(budget_tokens.len()) {
        return Err(shape(format!(
            "budget_tokens has {} values, expected H * nseg = {num_heads} * {nseg} (nseg = ceil(L / S) = ceil({} / {}))",
            budget_tokens.len(),
            geometry.seq_len_tokens,
            geometry.segment_size_tokens
        )));
    }
    if let Some(i) = budget_tokens.iter().position(|v| !v.is_finite()) {
        return Err(non_finite(format!("budget_tokens[{}, {}] = {}", i / nseg, i % nseg, budget_tokens[i])));
    }
    if let Some(i) = budget_tokens.iter().position(|&v| v < 0.0) {
        return Err(param(format!("budget_tokens[{}, {}] = {} is negative", i / nseg, i % nseg, budget_tokens[i])));
    }
    let block = geometry.block_size_tokens as f32; // f32(b), exact below 2^24
    let max_effective = geometry.max_effective_blocks();
    let mut keep = vec![0i32; budget_tokens.len()];
    for (row, out) in budget_tokens.chunks_exact(nseg).zip(keep.chunks_exact_mut(nseg)) {
        for s in 1..nseg {
            let q = (row[s] / block).trunc(); // float32 division, then truncation
            let cap = geometry.visible_blocks(s).min(max_effective);
            // Compare in f64 (exact for both) so that a huge budget never overflows the i32 cast.
            out[s] = if f64::from(q) >= cap as f64 { cap as i32 } else { q as i32 };
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests;
