"""A request's own EntropyInfer settings (`custom_params: {"entropyinfer": {...}}`), checked against the server's.

No engine import. `parse_request_settings` is called twice per request: where the server can still answer it
with a 400 (SGLang's request validation, in the HTTP process) and when the scheduler admits it (to run it). A
malformed or unknown setting is a `ValueError` whose message names the field and what is accepted; the caller
turns it into the 400. Nothing is ever dropped quietly.

A request may turn the method off (`enabled: false`, it then runs dense) or lower the budgets the server was
started with; it may not raise them (the server sized its side tables for its own budgets) and may not set decode
settings on a server that runs without decode compression. The per-request config is the server's with the
request's fields replaced (`dataclasses.replace`), so `EntropyInferConfig`'s own validation speaks for the rest
(e.g. `max_budget_tokens >= base_budget_tokens`, `decode_budget_tokens > sink_tokens + local_window_tokens`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.config import EntropyInferConfig

REQUEST_KEY = "entropyinfer"  # the key in a request's custom_params

# The budgets a request may lower (never raise above the server's), and the decode delay it may choose freely.
PREFILL_BUDGETS = ("base_budget_tokens", "max_budget_tokens")
DECODE_BUDGETS = ("decode_budget_tokens",)
DECODE_FIELDS = DECODE_BUDGETS + ("decode_delay_steps",)
REQUEST_FIELDS = ("enabled",) + PREFILL_BUDGETS + DECODE_FIELDS


@dataclass(frozen=True)
class RequestSettings:
    """What one request runs with: the method on or off, and its config (the server's unless it set budgets)."""

    enabled: bool
    config: EntropyInferConfig
    own_prefill_budgets: bool  # its prefill budgets differ from the server's (its typing is not shared via records)


def _accepted(server: EntropyInferConfig) -> str:
    limits = ", ".join(f"{name} (integer, <= {getattr(server, name)})" for name in PREFILL_BUDGETS + DECODE_BUDGETS)
    return (f"accepted: {{\"enabled\": true|false, {limits}, decode_delay_steps (integer >= 0)}}; a budget may not "
            "exceed the server's")


def _where(name: str | None = None) -> str:
    return f'custom_params["{REQUEST_KEY}"]' + ("" if name is None else f'["{name}"]')


def custom_params_problem(custom_params: Any) -> str | None:
    """Why a request's `custom_params` is not usable at all (not a JSON object), or None."""
    if custom_params is None or isinstance(custom_params, dict):
        return None
    return f"custom_params must be a JSON object (e.g. {{\"{REQUEST_KEY}\": {{\"enabled\": false}}}}), got " \
           f"{type(custom_params).__name__} {custom_params!r}"


def parse_request_settings(custom_params: Any, server: EntropyInferConfig) -> RequestSettings | None:
    """The request's own settings, or None when it has none (it runs with the server's). Raises ValueError (the
    message names the field and what is accepted) for anything malformed, unknown or beyond the server's bounds."""
    problem = custom_params_problem(custom_params)
    if problem is not None:
        raise ValueError(problem)
    if not custom_params or REQUEST_KEY not in custom_params:
        return None
    choice = custom_params[REQUEST_KEY]
    if not isinstance(choice, dict):
        raise ValueError(f"{_where()} must be a JSON object, got {type(choice).__name__} {choice!r}; "
                         + _accepted(server))
    unknown = sorted(set(choice) - set(REQUEST_FIELDS))
    if unknown:
        raise ValueError(f"{_where()} has unknown field(s) {', '.join(map(repr, unknown))}; " + _accepted(server))
    enabled = choice.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"{_where('enabled')}={enabled!r}: must be true or false")
    changes = {name: choice[name] for name in REQUEST_FIELDS[1:] if name in choice}
    for name, value in changes.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{_where(name)}={value!r}: must be an integer; " + _accepted(server))
    if changes and not enabled:
        raise ValueError(f"{_where()}: {', '.join(changes)} given with \"enabled\": false (the request would run "
                         "dense and they would not apply); give one or the other")
    decode = [name for name in DECODE_FIELDS if name in changes]
    if decode and not server.decode_compression:
        raise ValueError(f"{_where(decode[0])}: this server runs without decode compression "
                         "(decode_compression=false), so a request cannot set decode settings")
    for name in PREFILL_BUDGETS + DECODE_BUDGETS:
        if name in changes and changes[name] > getattr(server, name):
            raise ValueError(f"{_where(name)}={changes[name]}: above the server's {name}={getattr(server, name)} "
                             "(a request may only lower the budgets the server was started with)")
    try:
        config = dataclasses.replace(server, **changes)
    except ValueError as err:  # EntropyInferConfig's own validation: names the field and the rule
        raise ValueError(f"{_where()}: {err}") from None
    own_prefill = any(getattr(config, name) != getattr(server, name) for name in PREFILL_BUDGETS)
    return RequestSettings(enabled=enabled, config=config, own_prefill_budgets=own_prefill)


def request_report(enabled: bool, config: EntropyInferConfig, stats: Any, dense_reason: str | None) -> dict:
    """What a finished request ran with and what the method did for it (the response's meta_info)."""
    return {
        "enabled": enabled,
        **{name: getattr(config, name) for name in REQUEST_FIELDS[1:]},
        "prefill_density": stats.prefill_density,
        "rigid_fraction": stats.rigid_fraction,
        "kv_kept_fraction": stats.kv_kept_fraction,
        "compression_events": stats.compression_events,
        "sparse_chunks": stats.sparse_chunks,
        "dense_chunks": stats.dense_chunks,
        "prefix_cached_tokens": stats.prefix_cached_tokens,
        "prefix_typing": prefix_typing(stats),
        "nonfinite_entropies": stats.nonfinite_entropies,
        "dense_prefill_reason": dense_reason,
    }


def prefix_typing(stats: Any) -> str | None:
    """How typing went on after the request's prefix-cache hit (`typing_records`): "resumed", "bridged" or
    "defaulted"; None without a hit."""
    return next((kind for kind in ("resumed", "bridged", "defaulted") if getattr(stats, f"typing_{kind}")), None)
