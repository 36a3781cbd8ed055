//! `entropyinfer_sgl._scheduler`: the planner core (`entropyinfer-scheduler`) as a Python extension module.
//!
//! A thin shim on purpose: it checks dtypes and ranks, reads C-contiguous numpy inputs in place (no copy: the CPU
//! engine plans every chunk and layer from them; other layouts are copied in row-major order), runs the core with
//! the GIL released (`Python::detach`: the server's other threads go on while a layer is planned), and wraps the
//! outputs as new numpy arrays. Inputs are read while the GIL is released, so a caller must not write to an input
//! array from another thread during the call (`core/rust_planner.py` passes views of the planner's own tensors,
//! which no other thread writes).
//! All numerics and all value checks live in the core; this file only maps its errors to exception classes.

use std::borrow::Cow;

use entropyinfer_scheduler as core;
use entropyinfer_scheduler::SchedulerError as CoreError;
use numpy::ndarray::{Array2, ArrayViewD};
use numpy::{
    dtype, Element, IntoPyArray, PyArray1, PyArray2, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods,
    PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

create_exception!(
    entropyinfer_sgl._scheduler,
    SchedulerError,
    PyValueError,
    "Base class of the planner's errors (a ValueError)."
);
create_exception!(
    entropyinfer_sgl._scheduler,
    ShapeError,
    SchedulerError,
    "Array shapes that disagree with each other, with the sequence geometry, or with the expected rank."
);
create_exception!(
    entropyinfer_sgl._scheduler,
    ParameterError,
    SchedulerError,
    "A scalar parameter or an integer input outside its documented range."
);
create_exception!(
    entropyinfer_sgl._scheduler,
    NonFiniteError,
    SchedulerError,
    "NaN (or, for entropies and budgets, infinity) in a floating-point input."
);

/// Each core error variant has its own exception class.
fn to_py(err: CoreError) -> PyErr {
    match err {
        CoreError::InvalidShape(m) => ShapeError::new_err(m),
        CoreError::InvalidParameter(m) => ParameterError::new_err(m),
        CoreError::NonFiniteInput(m) => NonFiniteError::new_err(m),
    }
}

// ------------------------------------------------------------------------------------------------ inputs

/// A numpy array of element type `T` and rank `ndim`, borrowed read-only.
///
/// A non-array is a `TypeError`, so is a wrong dtype (no silent casts: float64 entropies would round
/// differently from the torch planner's float32); a wrong rank is a `ShapeError`.
fn read_array<'py, T: Element + Copy>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dtype_name: &str,
    ndim: usize,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let py = obj.py();
    let untyped = obj.cast::<PyUntypedArray>().map_err(|_| {
        let type_name = obj.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string());
        PyTypeError::new_err(format!("{name} must be a numpy.ndarray of {dtype_name}, got {type_name}"))
    })?;
    if !untyped.dtype().is_equiv_to(&dtype::<T>(py)) {
        let got = untyped.dtype().str().map_or_else(|_| "?".to_owned(), |s| s.to_string());
        return Err(PyTypeError::new_err(format!("{name} must have dtype {dtype_name}, got {got}")));
    }
    if untyped.ndim() != ndim {
        return Err(ShapeError::new_err(format!("{name} must be {ndim}-dimensional, got shape {:?}", untyped.shape())));
    }
    Ok(obj.cast::<PyArrayDyn<T>>()?.readonly())
}

/// The elements of `array` in row-major order: its own buffer when C-contiguous (no copy), else a copy.
fn row_major<'a, T: Element + Copy>(array: &'a PyReadonlyArrayDyn<'_, T>) -> Cow<'a, [T]> {
    // `as_slice` also accepts Fortran-contiguous arrays (memory order, not row-major), hence the explicit check.
    match array.as_slice() {
        Ok(contiguous) if array.is_c_contiguous() => Cow::Borrowed(contiguous),
        _ => Cow::Owned(copy_logical_order(array.as_array())),
    }
}

/// Row-major copy of a strided (non-contiguous, possibly negative-stride) view.
fn copy_logical_order<T: Copy>(view: ArrayViewD<'_, T>) -> Vec<T> {
    view.iter().copied().collect()
}

/// A Python int that must be a non-negative size.
fn size(value: i64, name: &str) -> PyResult<usize> {
    usize::try_from(value).map_err(|_| ParameterError::new_err(format!("{name} must be >= 0, got {value}")))
}

fn geometry(seq_len_tokens: i64, segment_size_tokens: i64, block_size_tokens: i64) -> PyResult<core::Geometry> {
    core::Geometry::new(
        size(seq_len_tokens, "seq_len_tokens")?,
        size(segment_size_tokens, "segment_size_tokens")?,
        size(block_size_tokens, "block_size_tokens")?,
    )
    .map_err(to_py)
}

fn vec_2d<'py, T: Element>(py: Python<'py>, data: Vec<T>, rows: usize, cols: usize) -> Bound<'py, PyArray2<T>> {
    Array2::from_shape_vec((rows, cols), data).expect("the core returns rows * cols values").into_pyarray(py)
}

/// The causal state tuple `(rigid_so_far bool[H], prev_entropy f32[H], prev_budget_tokens f32[H],
/// segments_seen int)`.
fn read_state(obj: &Bound<'_, PyAny>) -> PyResult<core::HeadState> {
    let tuple = obj.cast::<PyTuple>().map_err(|_| {
        PyTypeError::new_err(
            "state must be a tuple (rigid_so_far, prev_entropy, prev_budget_tokens, segments_seen) or None",
        )
    })?;
    if tuple.len() != 4 {
        return Err(PyTypeError::new_err(format!(
            "state must have 4 items (rigid_so_far, prev_entropy, prev_budget_tokens, segments_seen), got {}",
            tuple.len()
        )));
    }
    let rigid_so_far =
        row_major(&read_array::<bool>(&tuple.get_item(0)?, "state[0] (rigid_so_far)", "bool", 1)?).into_owned();
    let prev_entropy =
        row_major(&read_array::<f32>(&tuple.get_item(1)?, "state[1] (prev_entropy)", "float32", 1)?).into_owned();
    let prev_budget_tokens =
        row_major(&read_array::<f32>(&tuple.get_item(2)?, "state[2] (prev_budget_tokens)", "float32", 1)?).into_owned();
    let seen: i64 =
        tuple.get_item(3)?.extract().map_err(|_| PyTypeError::new_err("state[3] (segments_seen) must be an int"))?;
    Ok(core::HeadState {
        rigid_so_far,
        prev_entropy,
        prev_budget_tokens,
        segments_seen: size(seen, "state[3] (segments_seen)")?,
    })
}

// ------------------------------------------------------------------------------------------------ functions

/// Per-head token budgets from per-segment attention entropies (planner spec section 1).
///
/// entropy: float32 [H, nseg], segment 0 first. All arithmetic is float32, bit-identical to the torch planner.
/// causal=False is the paper's typing (needs the whole prompt; state must be None; the returned state is
/// None). causal=True types heads "rigid so far" and carries state across chunks: pass the returned state to
/// the next call (None starts fresh); chunked calls give exactly the whole-prompt result. The entropy of global
/// segment 0 is never read (it may be NaN); any other NaN/inf entropy is an error.
///
/// Returns (rigid bool[H], budget_tokens float32[H, nseg], state), state being
/// (rigid_so_far bool[H], prev_entropy float32[H], prev_budget_tokens float32[H], segments_seen int) or None.
/// Raises ShapeError, ParameterError or NonFiniteError; TypeError for a non-float32 array.
#[pyfunction]
#[pyo3(signature = (
    entropy,
    *,
    rigid_entropy_threshold,
    entropy_growth_threshold,
    budget_growth_rate,
    base_budget_tokens,
    max_budget_tokens,
    causal,
    state = None,
))]
#[allow(clippy::too_many_arguments)]
fn head_budgets<'py>(
    py: Python<'py>,
    entropy: &Bound<'py, PyAny>,
    rigid_entropy_threshold: f64,
    entropy_growth_threshold: f64,
    budget_growth_rate: f64,
    base_budget_tokens: f64,
    max_budget_tokens: f64,
    causal: bool,
    state: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let entropy = read_array::<f32>(entropy, "entropy", "float32", 2)?;
    let shape = entropy.shape().to_vec();
    let entropy = row_major(&entropy);
    let (num_heads, num_segments) = (shape[0], shape[1]);
    let params = core::BudgetParams {
        rigid_entropy_threshold,
        entropy_growth_threshold,
        budget_growth_rate,
        base_budget_tokens,
        max_budget_tokens,
    };
    let typing = if causal { core::HeadTyping::Causal } else { core::HeadTyping::Paper };
    let state = state.filter(|s| !s.is_none()).map(read_state).transpose()?;
    let out = py
        .detach(|| core::head_budgets(&entropy, num_heads, num_segments, &params, typing, state.as_ref()))
        .map_err(to_py)?;
    let rigid = PyArray1::from_vec(py, out.rigid);
    let budgets = vec_2d(py, out.budget_tokens, num_heads, num_segments);
    let state: Bound<'py, PyAny> = match out.state {
        Some(st) => (
            PyArray1::from_vec(py, st.rigid_so_far),
            PyArray1::from_vec(py, st.prev_entropy),
            PyArray1::from_vec(py, st.prev_budget_tokens),
            st.segments_seen,
        )
            .into_pyobject(py)?
            .into_any(),
        None => py.None().into_bound(py),
    };
    PyTuple::new(py, [rigid.into_any(), budgets.into_any(), state])
}

/// Key blocks kept per head and segment (planner spec section 2).
///
/// budget_tokens: float32 [H, nseg] with nseg = ceil(seq_len_tokens / segment_size_tokens).
/// keep = trunc(budget / block_size) in float32, capped by the s * (S / b) visible blocks and by the prototype's
/// max_effective_blocks; segment 0 keeps 0. Always per head (the per_head_budgets=False max is the caller's).
///
/// Returns int32 [H, nseg]. Raises ParameterError (S % b != 0, L <= S, negative budget), ShapeError,
/// NonFiniteError.
#[pyfunction]
#[pyo3(signature = (budget_tokens, *, seq_len_tokens, segment_size_tokens, block_size_tokens))]
fn keep_blocks<'py>(
    py: Python<'py>,
    budget_tokens: &Bound<'py, PyAny>,
    seq_len_tokens: i64,
    segment_size_tokens: i64,
    block_size_tokens: i64,
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    let budgets = read_array::<f32>(budget_tokens, "budget_tokens", "float32", 2)?;
    let shape = budgets.shape().to_vec();
    let budgets = row_major(&budgets);
    let g = geometry(seq_len_tokens, segment_size_tokens, block_size_tokens)?;
    if shape[1] != g.num_segments {
        return Err(ShapeError::new_err(format!(
            "budget_tokens has {} segments, expected nseg = ceil({seq_len_tokens} / {segment_size_tokens}) = {}",
            shape[1], g.num_segments
        )));
    }
    let keep = py.detach(|| core::keep_blocks(&budgets, shape[0], &g)).map_err(to_py)?;
    Ok(vec_2d(py, keep, shape[0], shape[1]))
}

/// Key blocks each (head, segment) row attends to, as CSR (planner spec section 3).
///
/// block_scores: float32 [H, nseg, num_blocks] with num_blocks = (nseg - 1) * (S / b); keep_blocks: int32
/// [H, nseg]; sparse_segments: bool [nseg]. Row r = h * nseg + s lists, ascending, the keep[h, s] best visible
/// blocks (j < s * S / b; ties to the lower index) then the segment's own blocks, or every block up to the
/// segment's end for a dense row (sparse_segments[s] false or keep 0). Scores a segment cannot see do not matter,
/// but a NaN anywhere in block_scores is an error.
///
/// Returns (indptr int32 [H * nseg + 1], indices int32 [nnz]). Raises ShapeError, ParameterError (negative keep,
/// keep above the visible count), NonFiniteError (NaN score).
#[pyfunction]
#[pyo3(signature = (
    block_scores,
    keep_blocks,
    sparse_segments,
    *,
    seq_len_tokens,
    segment_size_tokens,
    block_size_tokens,
))]
fn select_blocks<'py>(
    py: Python<'py>,
    block_scores: &Bound<'py, PyAny>,
    keep_blocks: &Bound<'py, PyAny>,
    sparse_segments: &Bound<'py, PyAny>,
    seq_len_tokens: i64,
    segment_size_tokens: i64,
    block_size_tokens: i64,
) -> PyResult<Bound<'py, PyTuple>> {
    let g = geometry(seq_len_tokens, segment_size_tokens, block_size_tokens)?;
    let scores = read_array::<f32>(block_scores, "block_scores", "float32", 3)?;
    let keep = read_array::<i32>(keep_blocks, "keep_blocks", "int32", 2)?;
    let sparse = read_array::<bool>(sparse_segments, "sparse_segments", "bool", 1)?;
    let (score_shape, keep_shape) = (scores.shape().to_vec(), keep.shape().to_vec());
    let (scores, keep, sparse) = (row_major(&scores), row_major(&keep), row_major(&sparse));
    let expected = [keep_shape[0], g.num_segments, g.num_blocks];
    if score_shape != expected || keep_shape[1] != g.num_segments {
        return Err(ShapeError::new_err(format!(
            "block_scores {score_shape:?} and keep_blocks {keep_shape:?} must be [H, nseg, num_blocks] = {expected:?} \
             and [H, nseg] for seq_len_tokens={seq_len_tokens}, segment_size_tokens={segment_size_tokens}, \
             block_size_tokens={block_size_tokens}"
        )));
    }
    let csr = py.detach(|| core::select_blocks(&scores, &keep, &sparse, keep_shape[0], &g)).map_err(to_py)?;
    PyTuple::new(py, [PyArray1::from_vec(py, csr.indptr), PyArray1::from_vec(py, csr.indices)])
}

/// Decode budgets across kv heads, AdaKV style (planner spec section 4).
///
/// scores: float32 [H, T] over the candidate entries (neither sink nor local window). With
/// B' = min(budget_tokens, T) and floor = floor(floor_fraction * B'), each head keeps its own top `floor`; the
/// other H * (B' - floor) slots go to the best remaining candidates of all heads (score desc, then lower head,
/// then lower position).
///
/// Returns int32 [H], summing to exactly H * B', each >= floor. Raises ShapeError, ParameterError
/// (floor_fraction outside [0, 1], negative budget), NonFiniteError (NaN score).
#[pyfunction]
#[pyo3(signature = (scores, *, budget_tokens, floor_fraction))]
fn adaptive_budgets<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    budget_tokens: i64,
    floor_fraction: f64,
) -> PyResult<Bound<'py, PyArray1<i32>>> {
    let scores = read_array::<f32>(scores, "scores", "float32", 2)?;
    let shape = scores.shape().to_vec();
    let scores = row_major(&scores);
    let budget = size(budget_tokens, "budget_tokens")?;
    let out =
        py.detach(|| core::adaptive_budgets(&scores, shape[0], shape[1], budget, floor_fraction)).map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out))
}

/// Eviction order of a KV cache (planner spec section 5).
///
/// scores: float32 [H, T] over the whole cache. Per head, a permutation of 0..T in ascending importance:
/// unprotected entries by score ascending (equal scores: higher position first), then the protected ones
/// (position < sink_tokens or >= T - local_window_tokens) in increasing position. Keeping B entries of head h =
/// the last B of order[h], re-sorted by position.
///
/// Returns int32 [H, T]. Raises ShapeError, ParameterError (negative counts), NonFiniteError (NaN score).
#[pyfunction]
#[pyo3(signature = (scores, *, sink_tokens, local_window_tokens))]
fn eviction_order<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    sink_tokens: i64,
    local_window_tokens: i64,
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    let scores = read_array::<f32>(scores, "scores", "float32", 2)?;
    let shape = scores.shape().to_vec();
    let scores = row_major(&scores);
    let sink = size(sink_tokens, "sink_tokens")?;
    let window = size(local_window_tokens, "local_window_tokens")?;
    let out = py.detach(|| core::eviction_order(&scores, shape[0], shape[1], sink, window)).map_err(to_py)?;
    Ok(vec_2d(py, out, shape[0], shape[1]))
}

/// The pool slots one decode step reads per kv head of a compressed request (the reference path's decode
/// bookkeeping, every step and layer): the table's kept positions, then positions base_len .. seq_len - 1 (appended
/// since the compression event), mapped through the request's `req_to_token` row, padded with row[0].
///
/// positions: int64 [Hkv, max_kept] kept positions (< base_len, increasing; padding past lengths ignored); lengths:
/// int64 [Hkv]; row: int32 or int64 [>= seq_len] pool slots (read in place when C-contiguous).
///
/// Returns (slots int64 [Hkv, width], lengths int64 [Hkv]). Raises ShapeError, ParameterError (a position or length
/// out of range, base_len > seq_len); TypeError for other dtypes.
#[pyfunction]
#[pyo3(signature = (positions, lengths, row, *, base_len, seq_len))]
fn visible_slots<'py>(
    py: Python<'py>,
    positions: &Bound<'py, PyAny>,
    lengths: &Bound<'py, PyAny>,
    row: &Bound<'py, PyAny>,
    base_len: i64,
    seq_len: i64,
) -> PyResult<Bound<'py, PyTuple>> {
    let positions = read_array::<i64>(positions, "positions", "int64", 2)?;
    let num_heads = positions.shape()[0];
    let lengths = read_array::<i64>(lengths, "lengths", "int64", 1)?;
    let (positions, lengths) = (row_major(&positions), row_major(&lengths));
    let base_len = size(base_len, "base_len")?;
    let seq_len = size(seq_len, "seq_len")?;
    let table = core::TableView { positions: &positions, lengths: &lengths, num_heads, base_len };
    let is_int32 = row.cast::<PyUntypedArray>().is_ok_and(|a| a.dtype().is_equiv_to(&dtype::<i32>(py)));
    let out = if is_int32 {
        let row = read_array::<i32>(row, "row", "int32 or int64", 1)?;
        let row = row_major(&row);
        py.detach(|| core::visible_slots(&table, seq_len, &row))
    } else {
        let row = read_array::<i64>(row, "row", "int32 or int64", 1)?;
        let row = row_major(&row);
        py.detach(|| core::visible_slots(&table, seq_len, &row))
    }
    .map_err(to_py)?;
    let slots = vec_2d(py, out.slots, num_heads, out.width);
    PyTuple::new(py, [slots.into_any(), PyArray1::from_vec(py, out.lengths).into_any()])
}

/// EntropyInfer planner (Rust): head budgets, keep counts, CSR block selection, decode budgets, eviction order, and the
/// decode tables' visible slots (serving bookkeeping).
#[pymodule]
fn _scheduler(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SchedulerError", py.get_type::<SchedulerError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("ParameterError", py.get_type::<ParameterError>())?;
    m.add("NonFiniteError", py.get_type::<NonFiniteError>())?;
    m.add_function(wrap_pyfunction!(head_budgets, m)?)?;
    m.add_function(wrap_pyfunction!(keep_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(select_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(adaptive_budgets, m)?)?;
    m.add_function(wrap_pyfunction!(eviction_order, m)?)?;
    m.add_function(wrap_pyfunction!(visible_slots, m)?)?;
    Ok(())
}
