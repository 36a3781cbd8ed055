//! Planning cost of one 128k-token request with the paper's defaults.
//!
//! L = 131072 tokens, S = 512, b = 8 (nseg = 256, nrep = 64, num_blocks = 16320), 8 kv heads, 32 layers.
//! One iteration = for every layer: `head_budgets` (paper typing) + `keep_blocks` + `select_blocks`, from
//! random entropies and block scores. Input generation is outside the timed loop. Two variants: `select_blocks`
//! as shipped (it splits the rows over `min(available_parallelism, 8)` threads) and pinned to one thread.
//!
//! Run: `cargo bench -p entropyinfer-scheduler --bench plan_128k` (from the workspace root).

use criterion::{criterion_group, criterion_main, Criterion};
use entropyinfer_scheduler::{
    head_budgets, keep_blocks, select_blocks_with_threads, BudgetParams, Geometry, HeadTyping,
};
use std::hint::black_box;
use std::time::Duration;

const L: usize = 131_072;
const S: usize = 512;
const B: usize = 8;
const H: usize = 8;
const LAYERS: usize = 32;
/// Distinct block-score tensors cycled over the layers (each is 133 MB, far larger than any cache, so reusing
/// them does not flatter the timing; 32 distinct ones would need 4.2 GB).
const SCORE_SETS: usize = 4;

/// xorshift64*: deterministic, dependency-free random numbers.
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32) / (1u64 << 24) as f32
    }
}

struct Inputs {
    geometry: Geometry,
    entropy: Vec<Vec<f32>>,      // per layer, [H, nseg]
    block_scores: Vec<Vec<f32>>, // SCORE_SETS of [H, nseg, num_blocks]
    sparse: Vec<bool>,
}

fn inputs() -> Inputs {
    let geometry = Geometry::new(L, S, B).unwrap();
    let nseg = geometry.num_segments;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let entropy = (0..LAYERS)
        .map(|layer| {
            (0..H * nseg)
                .map(|i| {
                    // Two heads of every fourth layer are rigid (entropy ~ 0), the rest wander in [0, 8).
                    if layer % 4 == 0 && i / nseg < 2 {
                        rng.next_f32() * 1e-6
                    } else {
                        rng.next_f32() * 8.0
                    }
                })
                .collect()
        })
        .collect();
    let block_scores =
        (0..SCORE_SETS).map(|_| (0..H * nseg * geometry.num_blocks).map(|_| rng.next_f32()).collect()).collect();
    Inputs { geometry, entropy, block_scores, sparse: vec![true; nseg] }
}

/// One request: all layers planned one after the other (`threads` as in `select_blocks_with_threads`, 0 =
/// automatic). Returns nnz so the work cannot be optimised away.
fn plan_request(x: &Inputs, threads: usize) -> usize {
    let nseg = x.geometry.num_segments;
    let mut nnz = 0;
    for layer in 0..LAYERS {
        let budgets = head_budgets(&x.entropy[layer], H, nseg, &BudgetParams::PAPER, HeadTyping::Paper, None).unwrap();
        let keep = keep_blocks(&budgets.budget_tokens, H, &x.geometry).unwrap();
        let scores = &x.block_scores[layer % SCORE_SETS];
        let csr = select_blocks_with_threads(scores, &keep, &x.sparse, H, &x.geometry, threads).unwrap();
        nnz += csr.indices.len();
    }
    nnz
}

fn bench(c: &mut Criterion) {
    let x = inputs();
    let mut group = c.benchmark_group("plan_128k");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("request_auto_threads", |bench| bench.iter(|| black_box(plan_request(black_box(&x), 0))));
    group.bench_function("request_1_thread", |bench| bench.iter(|| black_box(plan_request(black_box(&x), 1))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
