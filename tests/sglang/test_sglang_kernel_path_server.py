"""The backend's kernel path (Triton kernels over SGLang's pool; CUDA in production) served end to end on CPU under
the Triton interpreter, against the reference path: same tokens, same per-request stats.

Two servers with the `engaged` config and `--chunked-prefill-size 128`: `reference` (the CPU default) and `kernels`
(`ENTROPYINFER_USE_KERNELS=1 TRITON_INTERPRET=1`). A ~570-token prompt crosses four chunk boundaries, so the first
chunk is planned on the device and later ones continue causal typing after a cached prefix (`sparse_prefill` with
`prefix_len`), then decode compresses and re-compresses (`compressed_decode` over the decode-table arena; the
observation windows recorded in the window arena by device writes, not in Python, with each query's log-sum-exp, so
a first event scores in one pass over the keys); every table is returned when its request ends.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

import tiny_llama
from sglang_helpers import ENGAGED, Server, require_entry_point, requires_sglang, stop_all, subprocess_env, tiny_model  # noqa: F401

pytestmark = [requires_sglang, pytest.mark.slow]


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
        assert "observation window arena" in servers["kernels"].log_text()  # its windows: recorded on the device
        assert "reference path" in servers["reference"].log_text()
        for words, seed, new_tokens in ((420, 11, 30), (150, 12, 20)):  # different seeds: no radix-cache hit
            text = tiny_llama.prompt(words, seed=seed)
            outs = {name: s.generate(text, max_new_tokens=new_tokens, rid=f"{name}-{words}", timeout=300)
                    for name, s in servers.items()}
            assert outs["kernels"]["output_ids"] == outs["reference"]["output_ids"]
            stats = {name: s.freed_line(f"{name}-{words}").split("freed:", 1)[1].strip()
                     for name, s in servers.items()}
            assert stats["kernels"] == stats["reference"]
            assert int(re.search(r"sparse_chunks=(\d+)", stats["kernels"]).group(1)) > 0
            assert int(re.search(r"compression_events=(\d+)", stats["kernels"]).group(1)) >= 2
        # the first events read the keys once: the prompt's last chunk and the decode steps through the arena
        # recorded every window query's log-sum-exp
        assert "scores in one pass over the keys" in servers["kernels"].log_text()
        assert "scores in two passes" not in servers["kernels"].log_text()
        # concurrently: the short request decodes in the same batches as the compressed long one, so those
        # batches mix kept tables and whole req_to_token rows in one launch per layer. The short one is sent once
        # the long one's first chunk is scheduled: a chunk's end decides which segment is the last (dense) one, so
        # both servers must cut the long prompt alike (a short request first would shorten its first chunk)
        prompts = {"long": tiny_llama.prompt(300, seed=31), "short": tiny_llama.prompt(8, seed=32)}
        concurrent = {}
        for name, server in servers.items():
            prefill_batches = server.log_text().count("Prefill batch")
            with ThreadPoolExecutor(2) as pool:
                futures = {}
                for key, text in prompts.items():
                    futures[key] = pool.submit(server.generate, text, max_new_tokens=30, rid=f"{name}-c-{key}",
                                               timeout=300)
                    if key == "long":
                        server.wait_for_log("Prefill batch", prefill_batches + 1)
                concurrent[name] = {key: f.result()["output_ids"] for key, f in futures.items()}
        assert concurrent["kernels"] == concurrent["reference"]
        assert "compression_events=0" not in servers["kernels"].freed_line("kernels-c-long")
        in_use = [int(n) for n in re.findall(r"returned its decode table: (\d+) in use",
                                             servers["kernels"].log_text())]
        assert len(in_use) >= 3 and in_use[-1] == 0  # one per compressed request; none left behind
        windows_in_use = [int(n) for n in re.findall(r"returned its observation window slot: (\d+) in use",
                                                     servers["kernels"].log_text())]
        assert len(windows_in_use) >= 3 and windows_in_use[-1] == 0
    finally:
        stop_all(servers.values())
