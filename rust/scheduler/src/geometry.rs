//! Sequence geometry of spec §2–§3: how a prompt of L tokens splits into query segments and key blocks.
//!
//! Kept in one validated struct so that `keep_blocks` and `select_blocks` cannot disagree about `nseg`,
//! `nrep`, `num_blocks` or where a segment's own blocks end.

use crate::error::{param, Result};

/// Validated `(L, S, b)` and the counts derived from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// L, prompt length in tokens.
    pub seq_len_tokens: usize,
    /// S, query tokens per segment.
    pub segment_size_tokens: usize,
    /// b, key tokens per block.
    pub block_size_tokens: usize,
    /// `nseg = ceil(L / S)`.
    pub num_segments: usize,
    /// `nrep = S / b`, blocks per segment.
    pub blocks_per_segment: usize,
    /// `num_blocks = (nseg - 1) * nrep`, the key blocks that are scored (the last segment's keys never are).
    pub num_blocks: usize,
}

impl Geometry {
    /// Checks the spec's error cases: `S % b != 0` and `L <= S` (at least two segments are needed, otherwise no
    /// key block is ever scored). Zero sizes are rejected too, and every block index must fit the int32 output.
    pub fn new(seq_len_tokens: usize, segment_size_tokens: usize, block_size_tokens: usize) -> Result<Self> {
        let (l, s, b) = (seq_len_tokens, segment_size_tokens, block_size_tokens);
        if b == 0 {
            return Err(param("block_size_tokens must be positive, got 0"));
        }
        if s == 0 {
            return Err(param("segment_size_tokens must be positive, got 0"));
        }
        if s % b != 0 {
            return Err(param(format!("segment_size_tokens ({s}) must be a multiple of block_size_tokens ({b})")));
        }
        if l <= s {
            return Err(param(format!(
                "seq_len_tokens ({l}) must exceed segment_size_tokens ({s}): at least two segments are needed"
            )));
        }
        if l.div_ceil(b) > i32::MAX as usize {
            return Err(param(format!(
                "seq_len_tokens ({l}) / block_size_tokens ({b}) does not fit int32 block indices"
            )));
        }
        let num_segments = l.div_ceil(s);
        let blocks_per_segment = s / b;
        Ok(Self {
            seq_len_tokens: l,
            segment_size_tokens: s,
            block_size_tokens: b,
            num_segments,
            blocks_per_segment,
            num_blocks: (num_segments - 1) * blocks_per_segment,
        })
    }

    /// Key blocks that segment `s` may select from: those of the earlier segments, `j < s * nrep`.
    #[inline]
    pub fn visible_blocks(&self, s: usize) -> usize {
        s * self.blocks_per_segment
    }

    /// `own_end = ceil(min((s + 1) * S, L) / b)`: one past segment `s`'s last (possibly partial) own block.
    #[inline]
    pub fn own_end(&self, s: usize) -> usize {
        ((s + 1) * self.segment_size_tokens).min(self.seq_len_tokens).div_ceil(self.block_size_tokens)
    }

    /// The prototype's cap on kept blocks, `num_blocks - ((L mod S) // b + 1)`, kept as is (spec §2). Never
    /// negative: `(L mod S) // b + 1 <= nrep <= num_blocks` because there are at least two segments.
    #[inline]
    pub fn max_effective_blocks(&self) -> usize {
        self.num_blocks - ((self.seq_len_tokens % self.segment_size_tokens) / self.block_size_tokens + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_128k() {
        let g = Geometry::new(131072, 512, 8).unwrap();
        assert_eq!(g.num_segments, 256);
        assert_eq!(g.blocks_per_segment, 64);
        assert_eq!(g.num_blocks, 255 * 64);
        assert_eq!(g.max_effective_blocks(), 255 * 64 - 1);
        assert_eq!(g.own_end(0), 64);
        assert_eq!(g.own_end(255), 16384);
    }

    #[test]
    fn ragged_tail() {
        // L = 1000, S = 256, b = 16: 4 segments, the last holds 232 tokens = 14.5 blocks.
        let g = Geometry::new(1000, 256, 16).unwrap();
        assert_eq!(g.num_segments, 4);
        assert_eq!(g.num_blocks, 48);
        assert_eq!(g.own_end(3), 63);
        assert_eq!(g.max_effective_blocks(), 48 - (232 / 16 + 1));
    }

    #[test]
    fn errors() {
        assert!(Geometry::new(1000, 250, 16).is_err());
        assert!(Geometry::new(256, 256, 16).is_err());
        assert!(Geometry::new(1000, 0, 16).is_err());
        assert!(Geometry::new(1000, 256, 0).is_err());
    }
}
