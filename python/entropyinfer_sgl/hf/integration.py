"""`hf.enable(model, config)`: EntropyInfer inside an HF transformers model, without editing model code.

Within the context:

- the model's attention implementation is `"entropyinfer"` (registered once in transformers'
  `AttentionInterface`, plus a mask function in `AttentionMaskInterface` that rejects padding and lets the
  attention function handle causality); the previous implementation is restored on exit;
- a forward pre-hook on every attention module swaps the layers of the cache it is given (the `DynamicCache`
  that `generate` or the model creates) for `EntropyInferCacheLayer`s;
- prefill (the first forward of a prompt, batch size 1) profiles and plans every layer from its post-RoPE q/k
  and attends through the plan; decode steps record their queries, and when `compression_due` fires each
  layer's cache is scored and shrunk to its kept entries per kv head.

Supported: Llama, Qwen2, Qwen3, Mistral families (MHA or GQA) with full attention on every layer, and Gemma-3 text
models (`gemma3_text`, hybrid: sliding-window and global layers); batch size 1, no padding. Everything else
raises `ValueError` at `enable` or at the first forward.

Hybrid models (`HYBRID_MODEL_TYPES`): EntropyInfer (sparse prefill, decode compression) runs on the full-attention
("global") layers only. The sliding-window layers run dense attention over their window, exactly as the model's
own attention does (`sliding_window_attention_sdpa`), and their cache layers (transformers'
`DynamicSlidingWindowLayer`) are never replaced or compressed. `enable` logs which layers run the method
(logger `entropyinfer_sgl.hf`), and `handle.method_layers` / `stats.method_layers` name them; a model whose every
layer is sliding-window is refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..core.config import EntropyInferConfig
from ..core.decode import compression_due
from ..core.plan import PrefillPlan, plan_prefill, sparse_segment_mask
from ..core.profile import HeadProfile, profile_prefill
from ..runtime.stats import RequestStats
from .attention import load_prefill_kernel, masked_attention_sdpa, sliding_window_attention_sdpa, sparse_prefill_sdpa
from .cache import CompressionRecord, EntropyInferCacheLayer

ATTENTION_NAME = "entropyinfer"
# Models whose sliding-window layers run dense within their window while the global layers run EntropyInfer.
HYBRID_MODEL_TYPES = ("gemma3_text",)
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral") + HYBRID_MODEL_TYPES
FULL_ATTENTION, SLIDING_ATTENTION = "full_attention", "sliding_attention"

logger = logging.getLogger("entropyinfer_sgl.hf")

# attention module -> the handle serving it (weak, so a dropped model does not leak)
_HANDLES: "weakref.WeakKeyDictionary[nn.Module, EntropyInferHandle]" = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerPrefillRecord:
    """What prefill decided for one layer: per kv head typing, budgets and entropies, and the density run."""

    layer_idx: int
    seq_len_tokens: int
    num_kv_heads: int
    density: float  # fraction of causal block pairs computed (1.0 = dense)
    path: str  # "sparse-sdpa", "kernel" or "dense"
    rigid: torch.Tensor | None  # bool [Hkv]; None when the prompt fits in one segment (not profiled)
    budget_tokens: torch.Tensor | None  # float32 [Hkv] mean budget over segments
    entropy: torch.Tensor | None  # float32 [Hkv] mean block-distribution entropy (nats) over segments >= 1
    normalized_entropy: torch.Tensor | None  # float32 [Hkv] mean of entropy / ln(visible blocks)

    @property
    def causal_block_pairs(self) -> float:
        """The weight of this layer in the overall density: dense causal work, all kv heads."""
        return float(self.seq_len_tokens) * (self.seq_len_tokens + 1) / 2 * self.num_kv_heads


@dataclass(kw_only=True)
class EntropyInferStats(RequestStats):
    """A snapshot of what EntropyInfer did in the latest prompt (prefill) and the decode steps after it: the
    counters every adapter keeps (`RequestStats`: prefill_density, rigid_fraction, kv_kept_fraction,
    compression_events, ...; a "chunk" is one layer of the prompt here) plus the per-layer detail.

    cache_fraction: entries the cache holds now / tokens it has seen, over all layers and kv heads.
    rigid: bool [layers, Hkv]; budget_tokens, entropy, normalized_entropy: float32 [layers, Hkv] (NaN where a
    layer was not profiled); layer_density: float32 [layers] (NaN on sliding-window layers); compressions: every
    layer's compression record. The shared counters cover the method layers only.
    method_layers / sliding_layers: which layers ran EntropyInfer and which ran dense within their window.
    """

    cache_fraction: float | None
    rigid: torch.Tensor
    budget_tokens: torch.Tensor
    entropy: torch.Tensor
    normalized_entropy: torch.Tensor
    layer_density: torch.Tensor
    compressions: tuple[CompressionRecord, ...] = field(repr=False)
    layers: tuple[LayerPrefillRecord, ...] = field(repr=False)
    method_layers: tuple[int, ...] = ()  # layers running EntropyInfer (every layer unless the model is hybrid)
    sliding_layers: tuple[int, ...] = ()  # hybrid models: layers run dense within their sliding window

    def summary(self) -> str:
        cache = "n/a" if self.cache_fraction is None else f"{self.cache_fraction:.4f}"
        hybrid = (f" method_layers={len(self.method_layers)}/{len(self.method_layers) + len(self.sliding_layers)}"
                  if self.sliding_layers else "")
        return f"{super().summary()} cache_fraction={cache}{hybrid}"


# ---------------------------------------------------------------------------------------------------------
def _text_config(model: nn.Module):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


# What to do with a model outside the supported set (appended to the refusals).
_RUN_WITHOUT = (f"hf.enable runs decoder-only causal LMs of the {', '.join(SUPPORTED_MODEL_TYPES)} families with "
                f"full attention on every layer ({', '.join(HYBRID_MODEL_TYPES)}: full-attention and sliding-window "
                "layers); run this model without hf.enable, or use one of those")


def check_supported(model: nn.Module) -> None:
    """Raise `ValueError` naming the reason (and what to do) when `model` is outside what `hf.enable` supports;
    `TypeError` when it is not a transformers model at all."""
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or config is None or not hasattr(config, "model_type"):
        raise TypeError(f"hf.enable expects a transformers causal LM (e.g. AutoModelForCausalLM.from_pretrained("
                        f"path)), got {type(model).__name__}")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"hf.enable: encoder-decoder models ({config.model_type}) are not supported; {_RUN_WITHOUT}")
    text = _text_config(model)
    model_type = getattr(text, "model_type", None)
    if any(getattr(text, name, None) for name in ("kv_lora_rank", "q_lora_rank")):
        raise ValueError(f"hf.enable: multi-head latent attention (MLA, {model_type}) is not supported; "
                         f"{_RUN_WITHOUT}")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"hf.enable: model_type={model_type!r} is not supported; {_RUN_WITHOUT}")
    if model_type in HYBRID_MODEL_TYPES:
        if config.model_type != model_type:  # Gemma-3's image-text model: image tokens attend bidirectionally
            raise ValueError(f"hf.enable: the {config.model_type} wrapper around a {model_type} text model is not "
                             f"supported (load the text model alone, e.g. its ForCausalLM class); {_RUN_WITHOUT}")
        _check_hybrid(text, model_type)
        return _check_dispatch(model)
    layer_types = getattr(text, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        raise ValueError(f"hf.enable: {model_type} has non-full-attention layers {sorted(set(layer_types))}; "
                         f"sliding-window layers are not supported; {_RUN_WITHOUT}")
    if getattr(text, "use_sliding_window", False):
        raise ValueError(f"hf.enable: {model_type} with use_sliding_window=True is not supported; {_RUN_WITHOUT}")
    if model_type == "mistral" and getattr(text, "sliding_window", None) is not None:
        raise ValueError(f"hf.enable: mistral with sliding_window={text.sliding_window} is not supported "
                         "(set config.sliding_window=None for full attention)")
    _check_dispatch(model)


def _check_dispatch(model: nn.Module) -> None:
    if not hasattr(model, "set_attn_implementation") or not model._can_set_attn_implementation():
        raise ValueError(f"hf.enable: {type(model).__name__} does not dispatch attention through "
                         "transformers' AttentionInterface")


def _check_hybrid(text, model_type: str) -> None:
    """A hybrid model runs when its layers are full-attention or sliding-window ones, at least one full, and its
    attention is plain causal softmax attention (no logit softcapping, no bidirectional attention)."""
    layer_types = list(getattr(text, "layer_types", None) or [])
    unknown = sorted(set(layer_types) - {FULL_ATTENTION, SLIDING_ATTENTION})
    if not layer_types or unknown:
        raise ValueError(f"hf.enable: {model_type} layer types {unknown or 'missing'} are not supported (only "
                         f"{FULL_ATTENTION!r} and {SLIDING_ATTENTION!r} layers); {_RUN_WITHOUT}")
    if FULL_ATTENTION not in layer_types:
        raise ValueError(f"hf.enable: every one of the {len(layer_types)} layers of this {model_type} model is "
                         "sliding-window attention, so EntropyInfer has no full-attention layer to run on; run this "
                         "model without hf.enable")
    if SLIDING_ATTENTION in layer_types and not getattr(text, "sliding_window", None):
        raise ValueError(f"hf.enable: {model_type} has sliding-window layers but no config.sliding_window")
    if getattr(text, "attn_logit_softcapping", None) is not None:
        raise ValueError(f"hf.enable: {model_type} with attn_logit_softcapping={text.attn_logit_softcapping} is not "
                         "supported (EntropyInfer's attention is plain softmax attention); run it without hf.enable")
    if getattr(text, "use_bidirectional_attention", False):
        raise ValueError(f"hf.enable: {model_type} with use_bidirectional_attention=True is not supported "
                         "(EntropyInfer is causal); run it without hf.enable")


def layer_roles(model: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(method layers, sliding-window layers) of a supported model: the full-attention layers run EntropyInfer,
    the sliding-window ones (hybrid models only) run dense within their window."""
    text = _text_config(model)
    num_layers = getattr(text, "num_hidden_layers", None)
    layer_types = list(getattr(text, "layer_types", None) or [FULL_ATTENTION] * (num_layers or 0))
    if getattr(text, "model_type", None) not in HYBRID_MODEL_TYPES:
        layer_types = [FULL_ATTENTION] * len(layer_types)
    method = tuple(i for i, t in enumerate(layer_types) if t == FULL_ATTENTION)
    sliding = tuple(i for i, t in enumerate(layer_types) if t == SLIDING_ATTENTION)
    return method, sliding


# The attention modules' keyword for the KV cache: transformers <= 5.17 passes `past_key_values`, later 5.x
# releases pass `cache` (`past_key_values` is deprecated until 5.40 and renamed by a decorator on `forward`, which
# runs after our pre-hook, so the hook sees whichever name the caller used).
CACHE_KWARGS = ("cache", "past_key_values")


def cache_argument(kwargs: dict):
    """The cache object an attention module's forward receives, under either of transformers' names (or None)."""
    for name in CACHE_KWARGS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def _check_config(config: EntropyInferConfig) -> None:
    if not isinstance(config, EntropyInferConfig):
        raise TypeError(f"hf.enable: config must be an EntropyInferConfig (e.g. EntropyInferConfig.small(), or "
                        f"EntropyInferConfig.load(preset_json_or_path)), got {type(config).__name__}")


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    modules = [m for name, m in model.named_modules() if name.endswith("self_attn") and hasattr(m, "layer_idx")]
    if not modules:
        raise ValueError(f"hf.enable: found no attention modules (`*.self_attn` with `layer_idx`) in "
                         f"{type(model).__name__}")
    return modules


# ---------------------------------------------------------------------------------------------------------
def _entropyinfer_mask(batch_size: int, q_length: int, kv_length: int, *args, attention_mask=None, **kwargs):
    """Mask function for `AttentionMaskInterface`: no padding allowed; causality is the attention's job."""
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("EntropyInfer (hf.enable) does not support padding masks yet: give one prompt at a time "
                         "(batch size 1), unpadded (attention_mask all ones, or none)")
    return None


def entropyinfer_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           **kwargs):
    """The `"entropyinfer"` attention function: q `[B, Hq, L, D]`, k/v `[B, Hkv, T, D]` -> (`[B, L, Hq, D]`, None)."""
    handle = _HANDLES.get(module)
    if handle is None:
        raise RuntimeError("attn_implementation='entropyinfer' only works inside `entropyinfer_sgl.hf.enable(...)`")
    return handle._attend(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


_REGISTERED = False


def register() -> None:
    """Register `"entropyinfer"` in transformers' attention and mask interfaces (idempotent; no model changes)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, entropyinfer_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, _entropyinfer_mask)
    _REGISTERED = True


# ---------------------------------------------------------------------------------------------------------
class EntropyInferHandle:
    """What `hf.enable` yields: the config, and `stats` about the latest prompt and its decode steps."""

    def __init__(self, model: nn.Module, config: EntropyInferConfig, decode_scorer=None):
        self.model = model
        self.config = config
        self.decode_scorer = decode_scorer  # None: SnapKV observation scores (`decode.observation_scores`)
        text = _text_config(model)
        self._num_layers = getattr(text, "num_hidden_layers", None)
        self.method_layers, self.sliding_layers = layer_roles(model)
        self._sliding = frozenset(self.sliding_layers)
        self._sliding_window = getattr(text, "sliding_window", None) if self.sliding_layers else None
        self._first_method_layer = self.method_layers[0] if self.method_layers else 0
        self._current_layer: dict[int, EntropyInferCacheLayer | None] = {}
        self._records: dict[int, LayerPrefillRecord] = {}
        self._compressions: list[CompressionRecord] = []
        self._layers: dict[int, EntropyInferCacheLayer] = {}
        self._previous_block_scores: torch.Tensor | None = None
        self._kernel = None
        self._kernel_loaded = False

    # --- hooks -----------------------------------------------------------------------------------------
    def _pre_hook(self, module: nn.Module, args, kwargs):
        cache = cache_argument(kwargs)
        layer_idx = module.layer_idx
        if cache is None:
            self._current_layer[layer_idx] = None
            return None
        layers = getattr(cache, "layers", None)
        if layers is None:
            raise ValueError(f"hf.enable: unsupported cache {type(cache).__name__} (use the default DynamicCache)")
        while len(layers) <= layer_idx:  # a cache built without the model's config grows layer by layer
            layers.append(self._new_cache_layer(len(layers)))
        if layer_idx in self._sliding:  # the model's own sliding-window cache layer, never touched
            self._current_layer[layer_idx] = None
            return None
        layer = layers[layer_idx]
        if not isinstance(layer, EntropyInferCacheLayer):
            from transformers.cache_utils import DynamicLayer

            if type(layer) is not DynamicLayer:
                raise ValueError(f"hf.enable: cache layer {type(layer).__name__} is not supported "
                                 "(use the default DynamicCache)")
            layer = EntropyInferCacheLayer.from_dynamic_layer(layer)
            layers[layer_idx] = layer
        self._current_layer[layer_idx] = layer
        self._layers[layer_idx] = layer
        return None

    def _new_cache_layer(self, layer_idx: int):
        """The cache layer a missing `layer_idx` gets: EntropyInfer's on method layers, transformers' sliding-window
        layer (what `DynamicCache(config=...)` builds) on sliding-window layers."""
        if layer_idx in self._sliding:
            from transformers.cache_utils import DynamicSlidingWindowLayer

            return DynamicSlidingWindowLayer(sliding_window=self._sliding_window)
        return EntropyInferCacheLayer()

    # --- the attention function ------------------------------------------------------------------------
    def _attend(self, module, query, key, value, attention_mask, *, dropout, scaling, **kwargs):
        batch, num_q_heads, q_len, head_dim = query.shape
        if batch != 1:
            raise ValueError(f"EntropyInfer (hf.enable) supports batch size 1, got {batch}: run the prompts one at "
                             "a time (a loop over the rows of input_ids)")
        if attention_mask is not None:
            raise ValueError("EntropyInfer (hf.enable) does not take a custom attention mask (padding or 4D masks): "
                             "give one unpadded prompt and no attention mask (or one of all ones)")
        if dropout:
            raise ValueError("EntropyInfer (hf.enable) is inference-only (attention dropout must be 0)")
        if kwargs.get("softcap") is not None:
            raise ValueError(f"EntropyInfer (hf.enable) does not support attention logit softcapping "
                             f"(softcap={kwargs['softcap']})")
        scale = scaling if scaling is not None else 1.0 / math.sqrt(head_dim)
        layer_idx = module.layer_idx
        window = kwargs.get("sliding_window")
        if layer_idx in self._sliding:
            if window is None or window != self._sliding_window:
                raise ValueError(f"EntropyInfer (hf.enable): layer {layer_idx} is a sliding-window layer of "
                                 f"{self._sliding_window} tokens in the config, but its attention passed "
                                 f"sliding_window={window}")
            out = sliding_window_attention_sdpa(query[0], key[0], value[0], window, scale=scale)
            return out.transpose(0, 1)[None].contiguous(), None
        if window is not None:
            raise ValueError(f"EntropyInfer (hf.enable) does not support sliding-window attention on layer "
                             f"{layer_idx} (model_type {getattr(_text_config(self.model), 'model_type', None)!r} "
                             "is not a hybrid model it knows)")
        cache_layer = self._current_layer.get(layer_idx)
        if cache_layer is None and self.config.decode_compression:
            raise ValueError(
                "EntropyInfer (hf.enable): decode compression is on but no KV cache reached the attention of layer "
                f"{layer_idx} (a forward with use_cache=False, or a transformers release that passes the cache "
                "under another name). Pass use_cache=True (generate does), or enable with "
                "config.replace(decode_compression=False) to run sparse prefill only.")
        q, k, v = query[0], key[0], value[0]  # [Hq, L, D], [Hkv, T, D]
        fresh = k.shape[1] == q_len
        if fresh:
            out = self._prefill(module, q, k, v, scale)
            if cache_layer is not None:
                cache_layer.prompt_tokens, cache_layer.generated_tokens = q_len, 0
        else:
            out = masked_attention_sdpa(q, k, v, None if cache_layer is None else cache_layer.valid, scale=scale)
            if cache_layer is not None:
                if q_len == 1:
                    cache_layer.generated_tokens += 1
                else:  # more prompt (chunked or continued): dense over the cache, decode counting restarts
                    cache_layer.prompt_tokens, cache_layer.generated_tokens = cache_layer.cumulative_length, 0
        if cache_layer is not None and self.config.decode_compression:
            cache_layer.record_queries(q, self.config.observation_window_tokens)
            # decode_delay_steps=0 (SnapKV): the first compression fires right after the prompt's forward.
            if ((q_len == 1 and compression_due(cache_layer.generated_tokens, self.config))
                    or (fresh and compression_due(0, self.config))):
                self._compressions.append(cache_layer.compress(self.config, layer_idx=layer_idx,
                                                               **self._scorer_kwargs()))
        return out.transpose(0, 1)[None].contiguous(), None

    def _prefill(self, module, q, k, v, scale) -> torch.Tensor:
        cfg = self.config
        layer_idx = module.layer_idx
        num_q_heads, seq_len, head_dim = q.shape
        num_kv_heads = k.shape[0]
        if layer_idx == self._first_method_layer or not self._records:
            self._reset_prompt()
        profile: HeadProfile | None = None
        plan: PrefillPlan | None = None
        if seq_len > cfg.segment_size_tokens:
            q_tm, k_tm = q.transpose(0, 1).contiguous(), k.transpose(0, 1).contiguous()
            previous = self._previous_block_scores if cfg.layer_fusion else None
            profile = profile_prefill(q_tm, k_tm, cfg, previous_block_scores=previous)
            self._previous_block_scores = profile.block_scores
            if bool(sparse_segment_mask(seq_len, cfg, layer_idx=layer_idx).any()):
                plan = plan_prefill(profile, cfg, layer_idx=layer_idx)
        if plan is None:
            out = torch.nn.functional.scaled_dot_product_attention(
                q[None], k[None], v[None], is_causal=True, scale=scale, enable_gqa=num_q_heads != num_kv_heads)[0]
            path, density = "dense", 1.0
        else:
            out, path = self._sparse(q, k, v, plan, scale)
            density = plan.density()
        self._records[layer_idx] = _record(layer_idx, seq_len, num_kv_heads, density, path, profile, cfg)
        return out

    def _sparse(self, q, k, v, plan: PrefillPlan, scale: float) -> tuple[torch.Tensor, str]:
        """Block-sparse attention through the plan: the CUDA kernel when importable, else SDPA. -> (out, path)."""
        if q.is_cuda:
            if not self._kernel_loaded:
                self._kernel, self._kernel_loaded = load_prefill_kernel(), True
            if self._kernel is not None:
                result = self._kernel(q.transpose(0, 1).contiguous(), k.transpose(0, 1).contiguous(),
                                      v.transpose(0, 1).contiguous(), plan, scale=scale)
                out = result[0] if isinstance(result, tuple) else result  # [L, Hq, D]
                return out.to(q.dtype).transpose(0, 1), "kernel"
        return sparse_prefill_sdpa(q, k, v, plan, scale=scale), "sparse-sdpa"

    def _scorer_kwargs(self) -> dict:
        return {} if self.decode_scorer is None else {"scorer": self.decode_scorer}

    def compress_now(self, cache) -> list[CompressionRecord]:
        """Compress every layer of `cache` (a cache filled by a forward inside `enable`) with this handle's config.

        For callers that share one prefill between several decode configurations (copying its cache): a config
        with `decode_delay_steps=0` compresses right after the prompt, which this reproduces on the copy.
        Recorded in `stats` like the compressions that fire during decode.
        """
        records = []
        for layer_idx, layer in enumerate(getattr(cache, "layers", [])):
            if layer_idx in self._sliding:  # sliding-window layers keep their window, uncompressed
                continue
            if not isinstance(layer, EntropyInferCacheLayer):
                raise ValueError("compress_now needs a cache filled inside hf.enable (EntropyInferCacheLayer layers)")
            self._layers[layer_idx] = layer
            records.append(layer.compress(self.config, layer_idx=layer_idx, **self._scorer_kwargs()))
        self._compressions.extend(records)
        return records

    def _reset_prompt(self) -> None:
        self._records.clear()
        self._compressions.clear()
        self._previous_block_scores = None

    # --- stats -----------------------------------------------------------------------------------------
    @property
    def stats(self) -> EntropyInferStats:
        """A snapshot of the latest prompt's prefill decisions and the compression since (see EntropyInferStats)."""
        records = [self._records[i] for i in sorted(self._records)]
        text = _text_config(self.model)
        num_layers = max([self._num_layers or 0] + [r.layer_idx + 1 for r in records])
        num_kv_heads = (getattr(text, "num_key_value_heads", None) or getattr(text, "num_attention_heads", 1)
                        if not records else records[0].num_kv_heads)
        rigid = torch.zeros(num_layers, num_kv_heads, dtype=torch.bool)
        budgets = torch.full((num_layers, num_kv_heads), float("nan"))
        entropy, normalized = budgets.clone(), budgets.clone()
        layer_density = torch.full((num_layers,), float("nan"))
        for r in records:
            layer_density[r.layer_idx] = r.density
            if r.rigid is not None:
                rigid[r.layer_idx] = r.rigid
                budgets[r.layer_idx], entropy[r.layer_idx] = r.budget_tokens, r.entropy
                normalized[r.layer_idx] = r.normalized_entropy
        held = [(layer.valid_entries(), layer.cumulative_length * layer.keys.shape[1])
                for layer in self._layers.values() if layer.is_initialized and layer.cumulative_length]
        stats = EntropyInferStats(cache_fraction=sum(h for h, _ in held) / sum(t for _, t in held) if held else None,
                                  rigid=rigid, budget_tokens=budgets, entropy=entropy, normalized_entropy=normalized,
                                  layer_density=layer_density, compressions=tuple(self._compressions),
                                  layers=tuple(records), method_layers=self.method_layers,
                                  sliding_layers=self.sliding_layers)
        for r in records:
            pairs = r.causal_block_pairs
            stats.add_chunk(sparse=r.path != "dense", pairs_computed=r.density * pairs, pairs_dense=pairs)
            if r.rigid is not None:
                stats.rigid_heads += int(r.rigid.sum())
                stats.typed_heads += r.rigid.numel()
        stats.entries_kept = sum(int(c.entries_kept.sum()) for c in self._compressions)
        stats.entries_before = sum(int(c.entries_before.sum()) for c in self._compressions)
        stats.compression_events = len({c.generated_tokens for c in self._compressions})
        return stats


def _record(layer_idx: int, seq_len: int, num_kv_heads: int, density: float, path: str,
            profile: HeadProfile | None, cfg: EntropyInferConfig) -> LayerPrefillRecord:
    if profile is None:
        return LayerPrefillRecord(layer_idx, seq_len, num_kv_heads, density, path, None, None, None, None)
    entropy = profile.entropy.float().cpu()[:, 1:]  # segment 0 sees no block
    visible = torch.arange(1, entropy.shape[1] + 1, dtype=torch.float32) * (
        cfg.segment_size_tokens // cfg.block_size_tokens)
    normalized = entropy / torch.log(visible.clamp(min=2.0))[None, :]
    return LayerPrefillRecord(
        layer_idx, seq_len, num_kv_heads, density, path, rigid=profile.rigid.cpu().clone(),
        budget_tokens=profile.budget_tokens.float().mean(dim=1).cpu(), entropy=entropy.mean(dim=1),
        normalized_entropy=normalized.mean(dim=1))


# ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def enable(model: nn.Module, config: EntropyInferConfig | None = None, *,
           decode_scorer=None) -> Iterator[EntropyInferHandle]:
    """Run `model` with EntropyInfer sparse prefill and decode compression inside a `with` block.

    Parameters
    ----------
    model: a transformers causal LM of the Llama / Qwen2 / Qwen3 / Mistral families (full attention only), or a
        Gemma-3 text model (EntropyInfer on its global layers, the sliding-window layers dense within their window).
    config: the hyperparameters (default `EntropyInferConfig()`; `EntropyInferConfig.small()` for 8k models).
    decode_scorer: optional replacement for the SnapKV observation scores at decode compression,
        `scorer(window_q [W, Hq, D], k_cache [T, Hkv, D], config) -> float32 [Hkv, T]` (baselines such as
        StreamingLLM use it; see `entropyinfer_sgl.evaluation.methods`).

    Yields an `EntropyInferHandle`; `handle.stats` describes the latest prompt. On exit the attention
    implementation and hooks are restored, so the model behaves exactly as before. Caches compressed inside
    the block are only valid inside it.

    Example
    -------
    >>> with hf.enable(model, EntropyInferConfig.small()) as handle:   # doctest: +SKIP
    ...     out = model.generate(**inputs, max_new_tokens=64)
    >>> handle.stats.prefill_density                                   # doctest: +SKIP
    """
    config = EntropyInferConfig() if config is None else config
    _check_config(config)
    check_supported(model)
    modules = _attention_modules(model)
    for m in modules:
        if m in _HANDLES:
            raise RuntimeError("hf.enable is already active on this model (nested enable is not supported)")
    register()
    handle = EntropyInferHandle(model, config, decode_scorer=decode_scorer)
    if handle.sliding_layers:
        logger.info("hf.enable: EntropyInfer runs on the %d full-attention layers %s of %s; its %d sliding-window "
                    "layers %s run dense within their %d-token window (cache uncompressed)",
                    len(handle.method_layers), list(handle.method_layers), type(model).__name__,
                    len(handle.sliding_layers), list(handle.sliding_layers), handle._sliding_window)
    previous = model.config._attn_implementation
    hooks = []
    try:
        for m in modules:
            _HANDLES[m] = handle
            hooks.append(m.register_forward_pre_hook(handle._pre_hook, with_kwargs=True))
        model.set_attn_implementation(ATTENTION_NAME)
        if model.config._attn_implementation != ATTENTION_NAME:
            raise ValueError(f"hf.enable: {type(model).__name__} refused attn_implementation={ATTENTION_NAME!r}")
        yield handle
    finally:
        for h in hooks:
            h.remove()
        for m in modules:
            _HANDLES.pop(m, None)
        if model.config._attn_implementation != previous:
            model.set_attn_implementation(previous)
