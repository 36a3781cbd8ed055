"""The soak's CI form: `benchmarks/soak.py` with 60 mixed requests (4-16 concurrent, streamed and not, n > 1,
client disconnects, /abort_request, the off switch and lower budgets, OpenAI completions, radix-cache hits, bad
requests) against a CPU server with `--enable-entropyinfer` (the tiny Llama, the method engaged on short prompts,
a small KV pool). Every request is accounted for, no 5xx, no traceback, per-request state back to 0 when idle,
RSS growth bounded, and a probe request answers the same before and after."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sglang_helpers import ENGAGED, Server, require_entry_point, requires_sglang, tiny_model  # noqa: F401

pytestmark = [requires_sglang, pytest.mark.slow]  # about a minute
REPO = Path(__file__).resolve().parents[2]


def test_soak_ci_form(tiny_model, tmp_path):
    require_entry_point()
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import soak
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    server = Server("soak", tiny_model, tmp_path,
                    ["--enable-entropyinfer", "--entropyinfer-config", json.dumps(ENGAGED), "--enable-metrics",
                     "--chunked-prefill-size", "128", "--max-running-requests", "16"])
    try:
        server.wait_ready(timeout=400)
        vocab, _ = soak.model_facts(server.url)
        settings = soak.SoakSettings(url=server.url, vocab=vocab, context=1024,
                                     gate=ENGAGED["min_sparse_len_tokens"], max_new=24, seed=1)
        summary = soak.run_soak(settings, 60, log=server.log, pid=server.proc.pid, max_rss_growth_mib=256,
                                quiet=True)
    finally:
        server.stop()
    print(json.dumps(summary, indent=1))
    assert summary["passed"], json.dumps(summary, indent=1)
    statuses = summary["statuses"]
    assert sum(statuses.values()) == 60 and statuses.get("ok", 0) > 20
    assert summary["by_kind"]["bad"] in ({}, {"4xx": summary["by_kind"]["bad"].get("4xx")})
