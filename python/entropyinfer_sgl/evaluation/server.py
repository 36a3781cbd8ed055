"""The quality tasks through a running SGLang server: the number a user of `--enable-entropyinfer` sees.

Each sample's prompt token ids (the exact tokens the HF harness feeds) go to the server's `/generate` with greedy
sampling, the task's `max_new_tokens` and the model's end-of-turn ids as stop tokens. One server started with
`--enable-entropyinfer` serves two methods:

- `server_entropyinfer`: the request runs with the server's EntropyInfer config (chunked prefill, the radix cache,
  the kernel path and decode compression all as the server runs them);
- `server_full`: the same server, the request's off switch `custom_params: {"entropyinfer": {"enabled": false}}`:
  dense prefill and the full cache, SGLang's own dense attention.

A server without `--enable-entropyinfer` serves `server_full` only (the off switch is then a plain request).
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass

from ..core.config import EntropyInferConfig
from .methods import Method
from .runner import Outcome
from .tasks import Sample

SERVER_METHODS = ("server_full", "server_entropyinfer")
REQUEST_KEY = "entropyinfer"  # the plugin's custom_params key


def server_method(name: str, config: EntropyInferConfig | None = None) -> Method:
    """`server_full` or `server_entropyinfer`; `config`: what the server was started with (recorded, not sent)."""
    if name == "server_full":
        return Method(name=name, base=name, config=None,
                      description="SGLang server, request off switch: dense prefill, full KV cache")
    if name == "server_entropyinfer":
        return Method(name=name, base=name, config=config,
                      description="SGLang server with --enable-entropyinfer, the server's config")
    raise ValueError(f"unknown server method {name!r}; server methods: {', '.join(SERVER_METHODS)}")


@dataclass
class ServerRunner:
    """Runs samples on the server at `base_url` (e.g. `http://127.0.0.1:30000`)."""

    base_url: str
    stop_token_ids: tuple[int, ...]
    timeout_s: float = 600.0

    def generate(self, input_ids: list[int], max_new_tokens: int, *, method_enabled: bool) -> dict:
        sampling = {"temperature": 0.0, "max_new_tokens": max_new_tokens,
                    "stop_token_ids": list(self.stop_token_ids)}
        if not method_enabled:
            sampling["custom_params"] = {REQUEST_KEY: {"enabled": False}}
        body = json.dumps({"input_ids": input_ids, "sampling_params": sampling}).encode()
        request = urllib.request.Request(f"{self.base_url.rstrip('/')}/generate", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def run_sample(self, tokenizer, sample: Sample, methods) -> dict[str, Outcome]:
        """Every method's outcome on `sample` (one request each, in turn)."""
        ids = sample.prompt_ids[0].tolist()
        outcomes = {}
        for method in methods:
            start = time.perf_counter()
            out = self.generate(ids, sample.max_new_tokens, method_enabled=method.name != "server_full")
            seconds = time.perf_counter() - start
            tokens = out.get("output_ids") or tokenizer(out["text"], add_special_tokens=False)["input_ids"]
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            stats = response_report(out)
            outcomes[method.name] = Outcome(
                text=text, new_tokens=len(tokens), score=sample.score(text),
                prefill_density=stats.get("prefill_density"), rigid_fraction=stats.get("rigid_fraction"),
                kv_kept_fraction=stats.get("kv_kept_fraction"), cache_fraction=stats.get("cache_fraction"),
                compression_events=int(stats.get("compression_events") or 0),
                prefill_s=0.0, decode_s=seconds)  # one request: its whole latency counts as decode_s
        return outcomes


def response_report(out: dict) -> dict:
    """What the request ran with (`meta_info["entropyinfer"]`: one entry per output token, the last is the
    request's report), or {} from a server without the plugin."""
    report = (out.get("meta_info") or {}).get(REQUEST_KEY)
    if isinstance(report, list):
        report = report[-1] if report else None
    return report if isinstance(report, dict) else {}
