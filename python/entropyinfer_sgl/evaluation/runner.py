"""Run one sample under several methods: one prefill per group of methods that prefill alike, then each method's
greedy decode on its own copy of that prefill's cache.

Methods whose prefill is the same (`Method.prefill_key`: e.g. `full`, `snapkv`, `adakv` and `streamingllm` all
prefill densely; `entropyinfer` and `entropyinfer_immediate` prefill alike) share one prefill forward, which
runs inside `hf.enable` with the group's prefill config and records the observation window. Each method then
decodes a deep copy of that cache inside its own `hf.enable` (or plain attention for `full`); a method that
compresses right after the prompt (`decode_delay_steps=0`) compresses the copy first (`handle.compress_now`),
which is exactly what `hf.enable` does at the end of the prompt's forward. Decoding is greedy, batch size 1,
and stops at the end-of-turn token or after `max_new_tokens`.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from .methods import Method
from .tasks import Sample


@dataclass
class Outcome:
    """What one method produced on one sample."""

    text: str
    new_tokens: int
    score: float
    prefill_density: float | None
    rigid_fraction: float | None
    kv_kept_fraction: float | None  # entries kept / entries before, over every compression event
    cache_fraction: float | None  # entries held at the end / tokens seen, all layers and kv heads
    compression_events: int
    prefill_s: float  # the (shared) prefill's wall time
    decode_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def _eos_ids(tokenizer, model) -> set[int]:
    ids = set()
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def prefill(model, input_ids: torch.Tensor, method: Method, *, observation_window_tokens: int | None = None):
    """(cache, next-token logits [V], prefill stats, seconds) for `method`'s prefill, with the newest
    `observation_window_tokens` (default: the method's window) prompt queries recorded in every layer."""
    from transformers import DynamicCache

    from .. import hf

    start = time.perf_counter()
    cache = DynamicCache(config=model.config)  # hybrid models: the sliding-window layers get their own cache layers
    with hf.enable(model, method.prefill_config(observation_window_tokens)) as handle, torch.no_grad():
        out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        stats = handle.stats
    return cache, out.logits[0, -1].float(), stats, time.perf_counter() - start


def decode(model, cache, logits: torch.Tensor, method: Method, *, max_new_tokens: int, eos_ids: set[int]):
    """Greedy decode from the prefill's `logits` on `cache` (modified in place). -> (token ids, stats, seconds)."""
    start = time.perf_counter()
    tokens: list[int] = []
    next_id = int(logits.argmax())
    device = logits.device
    with method.enable(model) as handle, torch.no_grad():
        if method.compresses_after_prompt:
            window = method.config.observation_window_tokens
            for layer in cache.layers:  # a shared prefill may have recorded a longer window
                if getattr(layer, "window_q", None) is not None:  # (sliding-window layers record none)
                    layer.window_q = layer.window_q[-window:]
            handle.compress_now(cache)
        while True:
            tokens.append(next_id)
            if next_id in eos_ids or len(tokens) >= max_new_tokens:
                break
            out = model(input_ids=torch.tensor([[next_id]], device=device), past_key_values=cache, use_cache=True)
            next_id = int(out.logits[0, -1].argmax())
        stats = None if handle is None else handle.stats
    return tokens, stats, time.perf_counter() - start


def run_sample(model, tokenizer, sample: Sample, methods: Sequence[Method]) -> dict[str, Outcome]:
    """Every method's outcome on `sample` (methods that prefill alike share one prefill)."""
    groups: "OrderedDict[str, list[Method]]" = OrderedDict()
    for method in methods:
        groups.setdefault(method.prefill_key(), []).append(method)
    eos_ids = _eos_ids(tokenizer, model)
    device = next(model.parameters()).device
    input_ids = sample.prompt_ids.to(device)
    outcomes: dict[str, Outcome] = {}
    for members in groups.values():
        window = max(m.observation_window_tokens for m in members)
        cache, logits, prefill_stats, prefill_s = prefill(model, input_ids, members[0],
                                                          observation_window_tokens=window)
        for index, method in enumerate(members):
            own = cache if index == len(members) - 1 else copy.deepcopy(cache)
            tokens, stats, decode_s = decode(model, own, logits, method, max_new_tokens=sample.max_new_tokens,
                                             eos_ids=eos_ids)
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            outcomes[method.name] = Outcome(
                text=text, new_tokens=len(tokens), score=sample.score(text),
                prefill_density=prefill_stats.prefill_density, rigid_fraction=prefill_stats.rigid_fraction,
                kv_kept_fraction=None if stats is None else stats.kv_kept_fraction,
                cache_fraction=1.0 if stats is None or stats.cache_fraction is None else stats.cache_fraction,
                compression_events=0 if stats is None else stats.compression_events,
                prefill_s=prefill_s, decode_s=decode_s)
            del own
        del cache
    return outcomes
