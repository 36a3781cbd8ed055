"""Phase 2 (`decode_free_memory`) served end to end on CPU: compression events return pool slots to SGLang.

Servers with the `engaged` config, `--chunked-prefill-size 128` and a small pool (SGLang caches the prompt in the
radix cache and the request holds it while it runs): `phase1` (evicted entries only hidden), `phase2` (freed;
reference path), `phase2_kernels` (freed; the kernel path under the Triton interpreter) and `phase2_retract` (freed,
with SGLang's retraction test mode). SGLang's own memory checks run at every step
(`SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY`: free + cached + the running requests' own slots = pool size;
`SGLANG_CHECK_KV_PAGE_INVARIANTS`: no slot a request can reach is free, no slot is freed twice) and when idle (the
pool back to its initial free count); a failed check kills the scheduler.
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import tiny_llama
from entropyinfer_sgl.sglang import compat
from sglang_helpers import ENGAGED, Server, require_entry_point, requires_sglang, stop_all, subprocess_env, tiny_model  # noqa: F401



def _phase2_supported() -> bool:
    try:
        return compat.free_memory_supported()
    except RuntimeError:  # no supported sglang: requires_sglang skips
        return False


pytestmark = [requires_sglang, pytest.mark.slow,
              pytest.mark.skipif(not _phase2_supported(),
                                 reason=f"phase 2 runs on sglang 0.5.17 only (found {compat.SGLANG_VERSION})")]

POOL_TOKENS = 1400  # two ~500-token prompts and their outputs fit uncompressed, a third does not
CHECKS = dict(SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY="1", SGLANG_CHECK_KV_PAGE_INVARIANTS="1",
              SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE="1")


def _server(name: str, model, tmp_path, config: dict, **env) -> Server:
    args = ["--enable-entropyinfer", "--entropyinfer-config", json.dumps(config), "--chunked-prefill-size", "128",
            "--max-total-tokens", str(POOL_TOKENS), "--decode-log-interval", "1"]
    return Server(name, model, tmp_path, args, env=subprocess_env(**CHECKS, **env))


def _max_running(server: Server) -> int:
    return max((int(n) for n in re.findall(r"Decode batch.*?#running-req: (\d+)", server.log_text())), default=0)


def _healthy_when_idle(server: Server) -> None:
    import requests

    time.sleep(3)  # idle: SGLang checks the pool is back to its initial free count
    assert server.proc.poll() is None, server.tail()
    # SGLang's /health generates one token and answers 503 itself after 20 s without one: wait for its answer
    assert requests.get(server.url + "/health", timeout=40).status_code == 200
    text = server.log_text()
    for bad in ("memory leak", "Mem Leak", "double free", "use-after-free", "Traceback"):
        assert bad not in text, server.tail()


def test_phase2_frees_memory_serves_the_same_tokens_and_admits_more(tiny_model, tmp_path):
    require_entry_point()
    phase2 = dict(ENGAGED, decode_free_memory=True)
    servers = {
        "phase1": _server("phase1", tiny_model, tmp_path, ENGAGED),
        "phase2": _server("phase2", tiny_model, tmp_path, phase2),
        "phase2_kernels": _server("phase2_kernels", tiny_model, tmp_path, phase2, ENTROPYINFER_USE_KERNELS="1",
                                  TRITON_INTERPRET="1"),
        # SGLang's own retraction test mode: every 7th forward retracts a decoding request (its slots released
        # through SGLang's retract path, then prefilled again with its output so far)
        "phase2_retract": _server("phase2_retract", tiny_model, tmp_path, phase2, SGLANG_TEST_RETRACT="1",
                                  SGLANG_TEST_RETRACT_INTERVAL="7"),
    }
    try:
        for server in servers.values():
            server.wait_ready(timeout=400)
        assert "overlap scheduler is turned off" in servers["phase2"].log_text()
        # one long request: compression at 4 generated tokens, then every 8 steps; phase 2 frees at each event
        text = tiny_llama.prompt(420, seed=41)
        same = {name: s for name, s in servers.items() if name != "phase2_retract"}
        outs = {name: s.generate(text, max_new_tokens=30, rid=f"{name}-long", timeout=400)["output_ids"]
                for name, s in same.items()}
        assert outs["phase2"] == outs["phase1"] and outs["phase2_kernels"] == outs["phase1"]
        stats = {name: s.freed_line(f"{name}-long") for name, s in same.items()}
        assert "slots_released=0" in stats["phase1"]
        for name in ("phase2", "phase2_kernels"):
            assert int(re.search(r"compression_events=(\d+)", stats[name]).group(1)) >= 3
            assert int(re.search(r"slots_released=(\d+)", stats[name]).group(1)) > 400, stats[name]

        # the same prompt again: its chunks stayed in the radix cache (unlocked, unaltered) and are reused
        again = servers["phase2"].generate(text, max_new_tokens=30, rid="phase2-again", timeout=400)
        assert again["meta_info"]["cached_tokens"] > 0
        assert again["output_ids"] == servers["phase1"].generate(text, max_new_tokens=30, rid="phase1-again",
                                                                 timeout=400)["output_ids"]

        # a document asked three questions, the last two at once: both read the cached document while the other
        # compacts (a request unlocks its radix nodes only once it reads its own copies), same tokens as phase 1.
        # Each question is asked alone first, so that the two asked at once are whole-prompt radix hits: how much
        # of a prompt is cached (and so how its prefill is chunked, and its float rounding) then does not depend on
        # whether the two reach the scheduler in one step or two, which the two servers' timing decides.
        document = tiny_llama.prompt(300, seed=45)
        questions = [f"{document} {tiny_llama.prompt(60, seed=46 + i)}" for i in range(3)]
        answers = {}
        for name in ("phase1", "phase2"):
            for i, question in enumerate(questions):
                servers[name].generate(question, max_new_tokens=30, rid=f"{name}-q{i}-alone", timeout=400)
            answers[name] = servers[name].generate(questions[1:], max_new_tokens=30, rid=[f"{name}-q1", f"{name}-q2"],
                                                   timeout=600)
        assert [a["output_ids"] for a in answers["phase2"]] == [a["output_ids"] for a in answers["phase1"]]
        assert all(a["meta_info"]["cached_tokens"] > 300 for a in answers["phase2"])
        for rid in ("phase2-q1", "phase2-q2"):
            line = servers["phase2"].freed_line(rid)
            assert "typing_resumed=1" in line and "slots_released=0" not in line, line

        # four ~500-token requests at once (one batched /generate, so that they reach the scheduler together
        # however busy the client machine is): phase 1 holds two at a time; phase 2 admits more as events free slots
        prompts = [tiny_llama.prompt(360, seed=50 + i) for i in range(4)]
        for name in ("phase1", "phase2"):
            outs = servers[name].generate(prompts, max_new_tokens=40, rid=[f"{name}-c{i}" for i in range(4)],
                                          timeout=600)
            assert [len(out["output_ids"]) for out in outs] == [40] * 4
        assert _max_running(servers["phase1"]) <= 2
        assert _max_running(servers["phase2"]) >= 3

        # an abort mid-decode of a compacted request
        server = servers["phase2"]
        worker = threading.Thread(target=lambda: _ignore_errors(server.generate, tiny_llama.prompt(380, seed=61),
                                                                max_new_tokens=400, rid="phase2-abort",
                                                                timeout=600))
        worker.start()
        server.wait_for_log("EntropyInfer request phase2-abort: compression at", timeout=300)
        import requests

        requests.post(server.url + "/abort_request", json={"rid": "phase2-abort"}, timeout=30)
        worker.join(timeout=120)
        assert "slots_released=0" not in server.freed_line("phase2-abort")
        # retractions of compacted requests
        server = servers["phase2_retract"]
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(server.generate, tiny_llama.prompt(300, seed=70 + i), max_new_tokens=40,
                                   rid=f"retract-{i}", timeout=600) for i in range(3)]
            for future in futures:
                assert len(future.result()["output_ids"]) == 40
        log = server.log_text()
        assert "Testing retraction" in log
        released = [int(n) for n in re.findall(r"EntropyInfer request retract-\d freed: .*slots_released=(\d+)", log)]
        assert len(released) > 3 and max(released) > 0  # some requests were retracted, some after compaction
        for server in servers.values():
            _healthy_when_idle(server)
    finally:
        stop_all(servers.values())


def _ignore_errors(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the aborted request's HTTP call may end either way
        pass
