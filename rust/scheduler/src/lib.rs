//! EntropyInfer planner core, pure Rust (no Python): the contract of `docs/planner_spec.md`.
//!
//! The same planner exists in torch (`entropyinfer_sgl.core`: `budgets`, `plan`, `decode`); this one runs on the CPU scheduler without
//! touching the GPU and is exposed to Python by the `entropyinfer-scheduler-py` shim. Inputs and outputs are
//! flat row-major slices plus their dimensions, so the crate has no array dependency and the shim only copies.
//!
//! | spec | function | module |
//! |---|---|---|
//! | §1 | [`head_budgets`] | [`budget`] |
//! | §2 | [`keep_blocks`] | [`budget`] |
//! | §3 | [`select_blocks`] | [`select`] |
//! | §4 | [`adaptive_budgets`] | [`decode`] |
//! | §5 | [`eviction_order`] | [`decode`] |
//! | – | [`visible_slots`] (serving bookkeeping, every decode step) | [`decode_table`] |
//!
//! Every function validates its inputs and returns a [`SchedulerError`] instead of panicking or propagating NaN.
//!
//! ```
//! use entropyinfer_scheduler::{head_budgets, keep_blocks, select_blocks, BudgetParams, Geometry, HeadTyping};
//!
//! // One kv head, a 40-token prompt in segments of 16 tokens and blocks of 4: 3 segments, 8 scored blocks.
//! let g = Geometry::new(40, 16, 4)?;
//! let entropy = [0.0, 2.0, 6.0]; // growth 2.0 at segment 2, capped at 1 + δ: budget + α·β·(1.4 - 0.4)
//! let params = BudgetParams { base_budget_tokens: 8.0, max_budget_tokens: 24.0, ..BudgetParams::PAPER };
//! let budgets = head_budgets(&entropy, 1, 3, &params, HeadTyping::Paper, None)?;
//! assert_eq!(budgets.budget_tokens, vec![8.0, 8.0, 12.0]);
//! let keep = keep_blocks(&budgets.budget_tokens, 1, &g)?;
//! assert_eq!(keep, vec![0, 2, 3]);
//! let scores = [0.0; 8].iter().chain(&[0.9, 0.1, 0.8, 0.2, 0.0, 0.0, 0.0, 0.0]).chain(&[0.1; 8]).copied();
//! let scores: Vec<f32> = scores.collect();
//! let csr = select_blocks(&scores, &keep, &[true; 3], 1, &g)?;
//! assert_eq!(csr.indptr, vec![0, 4, 10, 15]);
//! assert_eq!(&csr.indices[4..10], &[0, 2, 4, 5, 6, 7]); // best 2 of blocks 0..4, then own blocks 4..8
//! # Ok::<(), entropyinfer_scheduler::SchedulerError>(())
//! ```

#![deny(missing_docs)]

pub mod budget;
pub mod decode;
pub mod decode_table;
pub mod error;
pub mod geometry;
mod order;
pub mod select;

pub use budget::{head_budgets, keep_blocks, BudgetParams, HeadBudgets, HeadState, HeadTyping};
pub use decode::{adaptive_budgets, eviction_order};
pub use decode_table::{visible_slots, TableView, VisibleSlots};
pub use error::{Result, SchedulerError};
pub use geometry::Geometry;
pub use select::{select_blocks, select_blocks_with_threads, Csr};
