//! Integer sort keys for float scores.
//!
//! Every ranking in the spec is a total order "score, then an index". Packing the score into the high 32 bits
//! of a `u64` and the index into the low 32 bits turns each ranking into plain integer comparison, which is what
//! makes `select_nth_unstable`/`sort_unstable` on the hot paths cheap (no closure, no `partial_cmp`, no branch
//! on NaN — NaN is rejected before keys are built).
//!
//! `-0.0` and `+0.0` compare equal in IEEE arithmetic (and in torch's `topk`/`sort`), so both map to the same
//! key and the tie is broken by the index, as the spec requires.

/// Monotone map f32 -> u32: `a < b` (IEEE, no NaN) iff `asc_key(a) < asc_key(b)`; `-0.0` and `+0.0` map alike.
#[inline(always)]
pub(crate) fn asc_key(x: f32) -> u32 {
    // `x + 0.0` turns -0.0 into +0.0 (round-to-nearest) and leaves every other value unchanged.
    let bits = (x + 0.0).to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Reverse of [`asc_key`]: ascending integer order is descending score order.
#[inline(always)]
pub(crate) fn desc_key(x: f32) -> u32 {
    !asc_key(x)
}

/// Index of the first NaN in `xs`, if any. Written as a branch-free fold per chunk so that it vectorises; the
/// position is only searched for once a chunk is known to contain a NaN.
pub(crate) fn find_nan(xs: &[f32]) -> Option<usize> {
    const CHUNK: usize = 256;
    for (c, chunk) in xs.chunks(CHUNK).enumerate() {
        #[allow(clippy::eq_op)]
        let any = chunk.iter().fold(false, |acc, &v| acc | (v != v));
        if any {
            let i = chunk.iter().position(|v| v.is_nan()).unwrap_or(0);
            return Some(c * CHUNK + i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_monotone() {
        let xs = [
            f32::NEG_INFINITY,
            -f32::MAX,
            -1.5,
            -f32::MIN_POSITIVE,
            -1e-45,
            0.0,
            1e-45,
            f32::MIN_POSITIVE,
            1.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(asc_key(w[0]) < asc_key(w[1]), "{} {}", w[0], w[1]);
            assert!(desc_key(w[0]) > desc_key(w[1]));
        }
        assert_eq!(asc_key(-0.0), asc_key(0.0));
    }

    #[test]
    fn find_nan_positions() {
        let mut v = vec![1.0f32; 1000];
        assert_eq!(find_nan(&v), None);
        v[777] = f32::NAN;
        assert_eq!(find_nan(&v), Some(777));
        v[3] = f32::NAN;
        assert_eq!(find_nan(&v), Some(3));
        assert_eq!(find_nan(&[]), None);
    }
}
