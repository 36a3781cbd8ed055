"""Baselines and ablations behind one API: `get_method(name, **overrides) -> Method`, all run through `hf.enable`.

Every method is an `EntropyInferConfig` (plus, for StreamingLLM, a replacement decode scorer) applied with
`hf.enable`, so prefill, the compressed cache and the decode path are the same code for every method and only the
decisions differ. `full` is plain HF attention (no `hf.enable`).

Equal budgets (all derived from `EntropyInferConfig.small()`, stated here once; see `BUDGETS`):

- prefill: segments of 128 tokens, blocks of 8, dense below 1024 tokens and in layer 0; base budget β = 512
  tokens per segment (EntropyInfer's dynamic heads may grow to 3β = 1536; CritiPrefill keeps β for every head);
- decode: 256 KV entries per kv head (8 sink + 32 local window + 216 scored), observation window 32 queries,
  avg-pool 5, GQA mean; re-compression every 64 generated tokens for every compressing method, so long answers
  stay bounded the same way (SnapKV/AdaKV/StreamingLLM first compress right after the prompt, EntropyInfer after
  64 generated tokens, which is the "latent" part; the paper's execution after 16).

EntropyInfer's own levers (`LEVER_FIELDS`: the segments holding the prompt's last 128 tokens dense, the first
compression after 64 generated tokens) are `small()`'s; the baselines and `entropyinfer_paper` run without them.

| method | prefill | decode cache |
|---|---|---|
| `full` | dense | everything |
| `entropyinfer` | entropy-typed per-head budgets (β..3β), causal typing, last 128 tokens' segments dense | latent: SnapKV scores from the newest 32 of 64 generated queries, 256/head |
| `entropyinfer_paper` | prototype execution: one k per segment (max over heads), whole-prompt typing | latent after 16 generated tokens (window: prompt tail + 16 generated queries), compressed once |
| `entropyinfer_immediate` | as `entropyinfer` | compressed right after the prompt (no latency) |
| `critiprefill` | fixed β for every head and segment, CritiPrefill layer fusion | everything |
| `snapkv` | dense | SnapKV: prompt-tail window, uniform 256/head, right after the prompt |
| `adakv` | dense | as `snapkv` with AdaKV budgets across the kv heads of a layer (floor 0.2) |
| `streamingllm` | dense | sink 8 + newest 248 entries, no scoring |

`budgets="long32k"` (`entropyinfer eval --budgets long32k`) derives every method the same way from
`EntropyInferConfig.long32k()` instead (x4: segments of 512, gate 4096, β 2048..6144, 1024 decode entries per kv
head, re-compression every 256 steps), for 8k-32k prompts; method names stay the same and the results JSON
records each method's config and the budgets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from ..core.config import EntropyInferConfig

BASE = EntropyInferConfig.small()
DENSE_GATE_TOKENS = 1 << 30  # min_sparse_len_tokens past any prompt: every segment runs dense
BUDGET_PRESETS = {"small": EntropyInferConfig.small, "long32k": EntropyInferConfig.long32k}


def budget_base(budgets: str = "small") -> EntropyInferConfig:
    """The config every method derives from: `small` (2k-8k prompts) or `long32k` (8k-32k)."""
    if budgets not in BUDGET_PRESETS:
        raise ValueError(f"unknown budgets {budgets!r}; budgets: {', '.join(BUDGET_PRESETS)}")
    return BUDGET_PRESETS[budgets]()


def budgets_of(base: EntropyInferConfig) -> dict:
    """The equal budgets every method shares, as the results JSON records them."""
    return {
        "prefill_base_budget_tokens": base.base_budget_tokens,
        "prefill_max_budget_tokens": base.max_budget_tokens,
        "segment_size_tokens": base.segment_size_tokens,
        "block_size_tokens": base.block_size_tokens,
        "min_sparse_len_tokens": base.min_sparse_len_tokens,
        "decode_budget_tokens": base.decode_budget_tokens,
        "sink_tokens": base.sink_tokens,
        "local_window_tokens": base.local_window_tokens,
        "observation_window_tokens": base.observation_window_tokens,
        "decode_evict_interval_steps": base.decode_evict_interval_steps,
    }


BUDGETS = budgets_of(BASE)

# Config fields that only decide what happens after the prompt's forward (decode compression): methods that agree
# on every other field compute the same prefill and share one in the evaluation runner. Listed this way round so
# that a new field counts as a prefill field until someone says otherwise (a prefill lever silently shared with
# another method's prefill would make an ablation compare a method with itself).
DECODE_ONLY_FIELDS = (
    "decode_compression", "decode_budget_tokens", "decode_delay_steps", "decode_evict_interval_steps",
    "observation_window_tokens", "local_window_tokens", "sink_tokens", "pooling_method", "pooling_kernel_tokens",
    "decode_gqa_reduction", "adaptive_decode_budgets", "head_budget_floor_fraction", "decode_free_memory",
    "schema_version",
)
PREFILL_FIELDS = tuple(f.name for f in dataclasses.fields(EntropyInferConfig) if f.name not in DECODE_ONLY_FIELDS)


def streaming_scores(window_q: torch.Tensor, k_cache: torch.Tensor, config: EntropyInferConfig) -> torch.Tensor:
    """StreamingLLM's importance: none. Constant scores, so only the sink and local window decide what stays
    (with equal scores the eviction order keeps the lowest positions, see `decode.eviction_order`)."""
    return torch.zeros(k_cache.shape[1], k_cache.shape[0], dtype=torch.float32, device=k_cache.device)


DECODE_SCORERS: dict[str, Callable] = {"streaming": streaming_scores}


@dataclass(frozen=True)
class Method:
    """A named way to run a model: `config=None` is plain HF attention; otherwise `hf.enable(model, config)`.

    decode_scorer: None (SnapKV observation scores) or a key of `DECODE_SCORERS`.
    """

    name: str
    base: str
    description: str
    config: EntropyInferConfig | None
    decode_scorer: str | None = None
    overrides: dict = field(default_factory=dict)

    # --- what the runner needs to know ---------------------------------------------------------------
    @property
    def dense_prefill(self) -> bool:
        return self.config is None or self.config.min_sparse_len_tokens >= DENSE_GATE_TOKENS

    @property
    def compresses(self) -> bool:
        return self.config is not None and self.config.decode_compression

    @property
    def compresses_after_prompt(self) -> bool:
        return self.compresses and self.config.decode_delay_steps == 0

    def prefill_key(self) -> str:
        """Methods with equal keys compute the same prefill (and the same observation window)."""
        if self.dense_prefill:
            return "dense"
        return json.dumps({f: getattr(self.config, f) for f in PREFILL_FIELDS}, sort_keys=True)

    @property
    def observation_window_tokens(self) -> int:
        return (self.config or BASE).observation_window_tokens

    def prefill_config(self, observation_window_tokens: int | None = None) -> EntropyInferConfig:
        """The config a shared prefill runs under: this method's prefill, the newest `observation_window_tokens`
        prompt queries recorded (default: this method's window), no compression yet."""
        config = self.config if self.config is not None else BASE.replace(min_sparse_len_tokens=DENSE_GATE_TOKENS)
        window = observation_window_tokens or config.observation_window_tokens
        return config.replace(decode_compression=True, decode_delay_steps=DENSE_GATE_TOKENS,
                              decode_evict_interval_steps=0, observation_window_tokens=window)

    @contextlib.contextmanager
    def enable(self, model) -> Iterator[Any]:
        """`hf.enable(model, config, decode_scorer=...)`, or nothing (yields None) for plain attention."""
        if self.config is None:
            yield None
            return
        from .. import hf

        scorer = DECODE_SCORERS[self.decode_scorer] if self.decode_scorer else None
        with hf.enable(model, self.config, decode_scorer=scorer) as handle:
            yield handle

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base, "description": self.description,
                "config": None if self.config is None else self.config.to_dict(),
                "decode_scorer": self.decode_scorer, "overrides": dict(self.overrides)}


# ---------------------------------------------------------------------------------------------------------
def _dense(config: EntropyInferConfig) -> EntropyInferConfig:
    return config.replace(min_sparse_len_tokens=DENSE_GATE_TOKENS)


# EntropyInfer's own levers beyond the paper (`EntropyInferConfig.small()` turns them on): the baselines and the
# paper-execution ablation run without them (the dataclass defaults, the prototype's), so each stays the method
# it names.
LEVER_FIELDS = ("dense_tail_tokens", "decode_delay_steps")


def without_levers(config: EntropyInferConfig) -> EntropyInferConfig:
    """`config` with EntropyInfer's own levers (`LEVER_FIELDS`) at the dataclass defaults."""
    defaults = EntropyInferConfig()
    return config.replace(**{name: getattr(defaults, name) for name in LEVER_FIELDS})


def _registry(budgets: str = "small") -> dict[str, tuple[str, EntropyInferConfig | None, str | None]]:
    DEFAULT = budget_base(budgets)  # noqa: N806 - `entropyinfer` itself
    BASE = without_levers(DEFAULT)  # noqa: N806 - what the baselines and the paper ablation derive from
    snapkv = _dense(BASE).replace(decode_delay_steps=0)
    window = BASE.decode_budget_tokens - BASE.sink_tokens  # StreamingLLM: sink 8 + newest 248 (small)
    return {
        "full": ("dense attention, full KV cache (plain HF attention)", None, None),
        "entropyinfer": (f"EntropyInferConfig.{budgets}(): entropy-typed per-head prefill budgets, causal typing, "
                         f"the last {DEFAULT.dense_tail_tokens} prompt tokens' segments dense, latent decode "
                         f"compression (after {DEFAULT.decode_delay_steps} generated tokens, every "
                         f"{DEFAULT.decode_evict_interval_steps})", DEFAULT, None),
        "entropyinfer_paper": (f"{budgets} scale, prototype execution: one k per segment (max over kv heads), "
                               "whole-prompt head typing, decode compression once",
                               BASE.replace(per_head_budgets=False, causal_head_typing=False,
                                            decode_evict_interval_steps=0), None),
        "entropyinfer_immediate": ("EntropyInfer with decode_delay_steps=0: compression right after the prompt "
                                   "(immediate instead of latent)", DEFAULT.replace(decode_delay_steps=0), None),
        "critiprefill": ("CritiPrefill: fixed budget β for every head and segment (no entropy typing), layer "
                         "fusion, no decode compression",
                         BASE.replace(max_budget_tokens=BASE.base_budget_tokens, layer_fusion=True,
                                      decode_compression=False), None),
        "snapkv": ("SnapKV: dense prefill, compression right after the prompt with the prompt-tail observation "
                   "window, uniform budgets", snapkv, None),
        "adakv": ("AdaKV: as snapkv with adaptive budgets across the kv heads of each layer (floor 0.2)",
                  snapkv.replace(adaptive_decode_budgets=True), None),
        # sink 7 + 1 scored entry (constant scores: ties keep the lowest position, i.e. position 7) + local 248
        # = exactly StreamingLLM's sink 8 + newest 248 (the config needs budget > sink + local).
        "streamingllm": (f"StreamingLLM: dense prefill, decode cache = {BASE.sink_tokens} sink + newest {window} "
                         "entries per kv head",
                         _dense(BASE).replace(decode_delay_steps=0, sink_tokens=BASE.sink_tokens - 1,
                                              local_window_tokens=window), "streaming"),
    }


METHOD_NAMES = tuple(_registry())


def get_method(name: str, *, budgets: str = "small", **overrides: Any) -> Method:
    """A registered method at the equal budgets of `budgets` ("small" or "long32k"), with config fields
    overridden (`beta=B` sets base β=B and max 3β).

    >>> get_method("entropyinfer", beta=256).config.max_budget_tokens
    768
    """
    registry = _registry(budgets)
    if name not in registry:
        raise ValueError(f"unknown method {name!r}; methods: {', '.join(registry)}")
    description, config, scorer = registry[name]
    changes = dict(overrides)
    if "beta" in changes:
        beta = int(changes.pop("beta"))
        changes.setdefault("base_budget_tokens", beta)
        if config is not None and config.max_budget_tokens == config.base_budget_tokens:
            changes.setdefault("max_budget_tokens", beta)  # a fixed-budget method stays fixed
        else:
            changes.setdefault("max_budget_tokens", 3 * beta)
    if changes:
        if config is None:
            raise ValueError(f"method {name!r} (plain attention) takes no config overrides, got {sorted(changes)}")
        config = config.replace(**changes)
    label = name if not overrides else f"{name}[{','.join(f'{k}={v}' for k, v in sorted(overrides.items()))}]"
    return Method(label, name, description, config, scorer, dict(overrides))


def parse_method_spec(spec: str, *, budgets: str = "small") -> Method:
    """`name` or `name[key=value,key=value]` (values parsed as JSON when they are, else kept as strings)."""
    spec = spec.strip()
    if "[" not in spec:
        return get_method(spec, budgets=budgets)
    if not spec.endswith("]"):
        raise ValueError(f"method spec {spec!r}: expected name[key=value,...]")
    name, body = spec[:-1].split("[", 1)
    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        if "=" not in item:
            raise ValueError(f"method spec {spec!r}: {item!r} is not key=value")
        key, value = item.split("=", 1)
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return get_method(name.strip(), budgets=budgets, **overrides)


def all_methods() -> list[Method]:
    return [get_method(name) for name in METHOD_NAMES]


def config_difference(method: Method, reference: EntropyInferConfig = BASE) -> dict[str, Any]:
    """The config fields where `method` differs from `reference` (for tables and docs)."""
    if method.config is None:
        return {}
    return {f.name: getattr(method.config, f.name) for f in dataclasses.fields(EntropyInferConfig)
            if getattr(method.config, f.name) != getattr(reference, f.name)}
