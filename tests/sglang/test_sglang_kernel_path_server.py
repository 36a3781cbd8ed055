"""The backend's kernel path (Triton kernels over SGLang's pool; CUDA in production) served end to end on CPU under
the Triton interpreter, against the reference path: same tokens, same per-request stats.

Two servers with the `engaged` config and `--chunked-prefill-size 128`: `reference` (the CPU default) and `kernels`
(`ENTROPYINFER_USE_KERNELS=1 TRITON_INTERPRET=1`). A ~570-token prompt crosses four chunk boundaries, so the first
chunk is planned on the device and later ones continue causal typing after a cached prefix (`sparse_prefill` with
`prefix_len`), then decode compresses and re-compresses (`compressed_decode` over per-head slot tables).
"""

from __future__ import annotations

import json
import re
import time

import pytest

import tiny_llama
from sglang_helpers import ENGAGED, Server, require_entry_point, requires_sglang, stop_all, subprocess_env, tiny_model  # noqa: F401

pytestmark = [requires_sglang, pytest.mark.slow]


def _freed_stats(server: Server, rid: str, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in server.log_text().splitlines():
            if f"EntropyInfer request {rid} freed" in line:
                return line.split("freed:", 1)[1].strip()
        time.sleep(0.2)
    raise AssertionError(f"no 'freed' line for {rid}:\n{server.tail()}")


def test_kernel_path_serves_like_the_reference_path(tiny_model, tmp_path):
    require_entry_point()
    common = ["--enable-entropyinfer", "--entropyinfer-config", json.dumps(ENGAGED), "--chunked-prefill-size", "128"]
    servers = {
        "reference": Server("reference", tiny_model, tmp_path, common),
        "kernels": Server("kernels", tiny_model, tmp_path, common,
                          env=subprocess_env(ENTROPYINFER_USE_KERNELS="1", TRITON_INTERPRET="1")),
    }
    try:
        for server in servers.values():
            server.wait_ready(timeout=400)
        assert "kernel path" in servers["kernels"].log_text()
        assert "reference path" in servers["reference"].log_text()
        for words, seed, new_tokens in ((420, 11, 30), (150, 12, 20)):  # different seeds: no radix-cache hit
            text = tiny_llama.prompt(words, seed=seed)
            outs = {name: s.generate(text, max_new_tokens=new_tokens, rid=f"{name}-{words}", timeout=300)
                    for name, s in servers.items()}
            assert outs["kernels"]["output_ids"] == outs["reference"]["output_ids"]
            stats = {name: _freed_stats(s, f"{name}-{words}") for name, s in servers.items()}
            assert stats["kernels"] == stats["reference"]
            assert int(re.search(r"sparse_chunks=(\d+)", stats["kernels"]).group(1)) > 0
            assert int(re.search(r"compression_events=(\d+)", stats["kernels"]).group(1)) >= 2
    finally:
        stop_all(servers.values())
