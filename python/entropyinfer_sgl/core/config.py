"""`EntropyInferConfig`: every hyperparameter of the method, in one frozen, validated dataclass.

Names carry their unit (`_tokens`, `_blocks`, `_steps`); the same names are used in JSON, in the
`--entropyinfer-*` CLI flags and in the docs. The prototype's names are given in each field's comment.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

POOLING_METHODS = ("avgpool", "maxpool", "none")
GQA_REDUCTIONS = ("mean", "max")


@dataclass(frozen=True)
class EntropyInferConfig:
    """Hyperparameters of EntropyInfer prefill sparsity and latent decode compression.

    `EntropyInferConfig()` is the recommended configuration at paper scale (per-head budgets and causal head
    typing on); `paper()` reproduces the public prototype exactly; `small()` scales the method for 8k-context
    models such as SmolLM2-135M.
    """

    # --- prefill: segments, blocks and the length gate -------------------------------------------------
    segment_size_tokens: int = 512  # prototype `segment_size`: query tokens scored together
    block_size_tokens: int = 8  # prototype `block_size`: key tokens per scored/selected block
    min_sparse_len_tokens: int = 4096  # prototype `threshold_len`: segments starting before this are dense
    num_dense_layers: int = 1  # prototype `layer_skip`: layers with index < this run dense

    # --- prefill: head typing and the budget recurrence -------------------------------------------------
    rigid_entropy_threshold: float = 1e-5  # prototype `e_t` (nats)
    entropy_growth_threshold: float = 0.4  # prototype `delta_t`: relative entropy growth that keeps the budget
    budget_growth_rate: float = 0.5  # prototype `alpha`: budget step per unit growth, as a fraction of base
    base_budget_tokens: int = 2048  # prototype `base_budget` (β): minimum prefill budget per segment
    max_budget_tokens: int = 6144  # 3β in the prototype (hard-coded there)
    layer_fusion: bool = False  # CritiPrefill layer fusion of block scores (0.25 previous + 0.75 current)

    # --- beyond the prototype ---------------------------------------------------------------------------
    per_head_budgets: bool = True  # False = the prototype's execution: one k (max over kv heads) per segment
    causal_head_typing: bool = True  # True = "rigid so far" (chunked-prefill safe); False = whole-prompt test
    dense_tail_tokens: int = 0  # segments holding any of the prompt's last this many tokens run dense (the
    # question at a prompt's end attends to everything); 0 = only the last segment, as the prototype
    prefill_sink_tokens: int = 0  # the blocks of the prompt's first this many tokens rank first in every sparse
    # segment's selection (inside its budget: density unchanged); 0 = scores alone decide, as the prototype
    prefill_local_tokens: int = 0  # the blocks of the this many tokens just before a sparse segment (its
    # neighbours) rank first as well, after the sink blocks; 0 = as the prototype
    float32_block_scores: bool = False  # score blocks (representatives x key blocks) in float32 for a bf16 model
    # too; False = bf16 scores, as the prototype (rounding a score of ~100 to steps of 0.5 nats). float16 models
    # are always scored in float32 (`profile.block_score_dtype`: float16 overflows on these scores)

    # --- decode: latent KV compression ------------------------------------------------------------------
    decode_compression: bool = True  # prototype `latent_decode`
    decode_budget_tokens: int = 1024  # prototype `decode_evict_budgets`: entries kept per kv head (incl. windows)
    decode_delay_steps: int = 16  # prototype `decode_gap` (N_D); 0 = compress right after prefill (SnapKV)
    decode_evict_interval_steps: int = 0  # re-compress every this many steps after the first; 0 = only once
    observation_window_tokens: int = 32  # prototype `window_size`: queries that score the cache
    local_window_tokens: int = 32  # newest entries always kept (the prototype ties this to the window)
    sink_tokens: int = 0  # oldest entries always kept (the prototype keeps none)
    pooling_method: str = "avgpool"  # prototype `pooling_method`
    pooling_kernel_tokens: int = 5  # prototype `pooling_kernel_size`
    decode_gqa_reduction: str = "mean"  # how a kv group's query heads' scores are combined (never expand the cache)
    adaptive_decode_budgets: bool = False  # AdaKV: budgets allocated across the kv heads of a layer
    head_budget_floor_fraction: float = 0.2  # AdaKV floor: share of the uniform budget every head keeps
    decode_free_memory: bool = False  # SGLang phase 2: evicted entries' KV memory goes back to the pool

    schema_version: int = field(default=SCHEMA_VERSION, compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    # ----------------------------------------------------------------------------------------------------
    @classmethod
    def paper(cls) -> "EntropyInferConfig":
        """The public prototype's exact defaults (SHA-4096/EntropyInfer `entropy_infer.json`)."""
        return cls(per_head_budgets=False, causal_head_typing=False)

    @classmethod
    def small(cls) -> "EntropyInferConfig":
        """The method scaled for 8k-context models (SmolLM2-135M): sparsity and compression engage from 2k tokens.

        Everything scales by 1/4 of the paper preset: segments of 128 tokens (a 2k prompt gets 16 segments to
        type heads over), the length gate at 1024 tokens (the first 1k stay dense, as the prototype keeps the
        first 4k), budgets of 512..1536 tokens (the prototype's budget/segment ratio of 4, so a 2k prompt's late
        segments run at roughly 25-75% density), and a decode budget of 256 entries per kv head (8 sink + 32
        local window + 216 scored) re-compressed every 64 steps so that long outputs stay bounded.

        Two levers beyond the paper, kept because the paired quality harness showed them helping
        (`benchmarks/QUALITY.md`): the segments holding the prompt's last 128 tokens run dense
        (`dense_tail_tokens`: the question at the end of a prompt reads every block, not the ones its segment's
        budget picked) and the first compression waits for 64 generated tokens (`decode_delay_steps`: the
        observation window then holds generated queries only, never the prompt's tail, and a short answer is
        never compressed at all).
        """
        return cls(
            segment_size_tokens=128,
            block_size_tokens=8,
            min_sparse_len_tokens=1024,
            base_budget_tokens=512,
            max_budget_tokens=1536,
            decode_budget_tokens=256,
            decode_delay_steps=64,
            decode_evict_interval_steps=64,
            sink_tokens=8,
            dense_tail_tokens=128,
        )

    @classmethod
    def long32k(cls) -> "EntropyInferConfig":
        """The method scaled for 8k-32k prompts (Gemma-3-270M's global layers): the paper preset's prefill and
        decode budgets (segments of 512 tokens, blocks of 8, the length gate at 4096, β = 2048 .. 3β = 6144, 1024
        decode entries per kv head) with `small()`'s decode choices (8 sink entries, re-compression).

        Why these numbers: they are `small()` x 4, and `small()` is tuned for 2k-8k, so at 8k-32k every ratio is
        the one `small()` runs at 2k-8k. A 32k prompt gets 64 segments to type heads over (`small()` at 8k: 64);
        β / segment = 4 as in the prototype, so a late segment of a 32k prompt attends to 2048..6144 of up to 32k
        visible tokens (6-19%) and one of an 8k prompt to 25-75%; the first 4096 tokens stay dense (the
        prototype's gate, `small()`'s 1024 x 4). 1024 decode entries are 3-12% of an 8k-32k cache, the share
        `small()`'s 256 are of 2k-8k; re-compression every 256 generated tokens (`small()`: 64). Only full-attention
        layers are affected: a hybrid model's sliding-window layers keep their window (`hf.enable`). `small()`'s
        quality levers (`dense_tail_tokens`, the later `decode_delay_steps`) are not carried over: they were
        measured at 2k-8k only.
        """
        return cls(sink_tokens=8, decode_evict_interval_steps=256)

    # ----------------------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "EntropyInferConfig":
        """A copy with `changes` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, **dump_kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **dump_kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EntropyInferConfig":
        if not isinstance(data, dict):
            raise ValueError(f"EntropyInferConfig expects a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown EntropyInferConfig field(s): {', '.join(unknown)}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(f"schema_version={version!r} is not supported (this build reads {SCHEMA_VERSION})")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "EntropyInferConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"EntropyInferConfig JSON is not valid: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path_or_json: str | Path) -> "EntropyInferConfig":
        """Read a config from a JSON file path, a JSON string, or a preset name (`paper`, `small`, `long32k`,
        `default`)."""
        text = str(path_or_json).strip()
        presets = {"paper": cls.paper, "small": cls.small, "long32k": cls.long32k, "default": cls}
        if text in presets:
            return presets[text]()
        if text.startswith("{"):
            return cls.from_json(text)
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"EntropyInferConfig: {text!r} is neither a preset, a JSON object nor a file")
        return cls.from_json(path.read_text())


# --------------------------------------------------------------------------------------------------------
_INT_FIELDS_MIN = {
    "segment_size_tokens": 1,
    "block_size_tokens": 1,
    "min_sparse_len_tokens": 0,
    "num_dense_layers": 0,
    "base_budget_tokens": 1,
    "max_budget_tokens": 1,
    "decode_budget_tokens": 1,
    "decode_delay_steps": 0,
    "decode_evict_interval_steps": 0,
    "observation_window_tokens": 1,
    "local_window_tokens": 0,
    "sink_tokens": 0,
    "pooling_kernel_tokens": 1,
    "dense_tail_tokens": 0,
    "prefill_sink_tokens": 0,
    "prefill_local_tokens": 0,
    "schema_version": 1,
}
_BOOL_FIELDS = ("layer_fusion", "per_head_budgets", "causal_head_typing", "float32_block_scores",
                "decode_compression", "adaptive_decode_budgets", "decode_free_memory")


def _fail(name: str, value: Any, why: str) -> None:
    raise ValueError(f"EntropyInferConfig.{name}={value!r}: {why}")


def _validate(cfg: EntropyInferConfig) -> None:
    for name, minimum in _INT_FIELDS_MIN.items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(name, value, "must be an integer")
        if value < minimum:
            _fail(name, value, f"must be >= {minimum}")
    for name in _BOOL_FIELDS:
        value = getattr(cfg, name)
        if not isinstance(value, bool):
            _fail(name, value, "must be true or false")
    for name in ("rigid_entropy_threshold", "entropy_growth_threshold", "budget_growth_rate",
                 "head_budget_floor_fraction"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(name, value, "must be a finite number")
        if value < 0:
            _fail(name, value, "must be >= 0")
    if cfg.head_budget_floor_fraction > 1:
        _fail("head_budget_floor_fraction", cfg.head_budget_floor_fraction, "must be <= 1")
    if cfg.segment_size_tokens % cfg.block_size_tokens != 0:
        _fail("block_size_tokens", cfg.block_size_tokens,
              f"must divide segment_size_tokens={cfg.segment_size_tokens}")
    if cfg.max_budget_tokens < cfg.base_budget_tokens:
        _fail("max_budget_tokens", cfg.max_budget_tokens,
              f"must be >= base_budget_tokens={cfg.base_budget_tokens}")
    if cfg.pooling_method not in POOLING_METHODS:
        _fail("pooling_method", cfg.pooling_method, f"must be one of {POOLING_METHODS}")
    if cfg.pooling_kernel_tokens % 2 == 0:
        _fail("pooling_kernel_tokens", cfg.pooling_kernel_tokens, "must be odd (same-length pooling)")
    if cfg.decode_gqa_reduction not in GQA_REDUCTIONS:
        _fail("decode_gqa_reduction", cfg.decode_gqa_reduction, f"must be one of {GQA_REDUCTIONS}")
    interval = cfg.decode_evict_interval_steps
    if cfg.decode_compression and interval > 0 and cfg.local_window_tokens + interval < cfg.observation_window_tokens:
        # A re-compression scores with the newest observation_window_tokens queries; their keys must all still be
        # in the cache, i.e. inside the local window kept last time or generated since.
        _fail("decode_evict_interval_steps", interval,
              f"local_window_tokens={cfg.local_window_tokens} + decode_evict_interval_steps < "
              f"observation_window_tokens={cfg.observation_window_tokens}: re-compression would score with "
              "window tokens that the previous compression evicted")
    if cfg.decode_free_memory and not cfg.decode_compression:
        _fail("decode_free_memory", True, "needs decode_compression (only compression events free memory)")
    protected = cfg.sink_tokens + cfg.local_window_tokens
    if cfg.decode_budget_tokens <= protected:
        _fail("decode_budget_tokens", cfg.decode_budget_tokens,
              f"must exceed sink_tokens + local_window_tokens = {protected}")
