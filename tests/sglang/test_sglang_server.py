"""End to end on CPU: real SGLang servers on 127.0.0.1 serving a tiny random Llama.

Three servers start once for the module (concurrently), all with `--chunked-prefill-size 128`:
- `dense`: `--attention-backend torch_native`;
- `disabled`: `--enable-entropyinfer` with budgets no prompt reaches (the method profiles and plans every chunk
  but every plan keeps every block and every compression keeps every entry): outputs must equal `dense` exactly;
- `engaged`: `--enable-entropyinfer` with a config that makes the method engage on short prompts.
Then: OpenAI `/v1/completions` and `/generate`, concurrent requests, prompts crossing the chunked-prefill size,
aborts mid-prefill and mid-decode (state freed), radix-cache reuse, an `sgl.function` program, `bench_serving`,
and (marked slow) `bench_one_batch`, `bench_offline_throughput` and `sgl.Engine` in their own processes.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time

import pytest

from entropyinfer_sgl.sglang import compat

import tiny_llama
from sglang_helpers import (DISABLED, ENGAGED, Server, require_entry_point, requires_sglang, run, stop_all,
                            subprocess_env, tiny_model)  # noqa: F401

pytestmark = requires_sglang
CHUNK = 128


@pytest.fixture(scope="module")
def servers(tiny_model, tmp_path_factory):
    require_entry_point()
    logs = tmp_path_factory.mktemp("sglang_logs")
    common = ["--chunked-prefill-size", str(CHUNK)]
    started = {
        "dense": Server("dense", tiny_model, logs, ["--attention-backend", "torch_native", *common]),
        "disabled": Server("disabled", tiny_model, logs,
                           ["--enable-entropyinfer", "--entropyinfer-config", json.dumps(DISABLED), *common]),
        "engaged": Server("engaged", tiny_model, logs,
                          ["--enable-entropyinfer", "--entropyinfer-config", json.dumps(ENGAGED), "--enable-metrics",
                           *common]),
    }
    try:
        for server in started.values():
            server.wait_ready(timeout=400)
        yield started
    finally:
        stop_all(started.values())


def _stat(line: str, name: str) -> float:
    value = re.search(rf"{name}=(\S+)", line).group(1)
    return float("nan") if value == "n/a" else float(value)


# ---------------------------------------------------------------------------------------------------------
def test_servers_use_the_expected_backends(servers):
    assert "EntropyInfer attention backend over 'torch_native'" in servers["engaged"].log_text()
    assert "EntropyInfer attention backend" not in servers["dense"].log_text()


def test_openai_completions_and_generate(servers):
    import requests

    for name in ("dense", "engaged"):
        body = {"model": "tiny", "prompt": tiny_llama.prompt(120, seed=7), "max_tokens": 12, "temperature": 0}
        response = requests.post(servers[name].url + "/v1/completions", json=body, timeout=120)
        response.raise_for_status()
        result = response.json()
        assert result["object"] == "text_completion" and result["usage"]["completion_tokens"] > 0
        assert isinstance(result["choices"][0]["text"], str)
        out = servers[name].generate(tiny_llama.prompt(30, seed=8), max_new_tokens=5)
        assert len(out["output_ids"]) == 5


@pytest.mark.parametrize("num_words", [10, 60, 150, 420])  # 420 words: about 570 tokens, five prefill chunks
def test_method_disabled_equals_dense(servers, num_words):
    text = tiny_llama.prompt(num_words, seed=num_words)
    dense = servers["dense"].generate(text, max_new_tokens=32)
    disabled = servers["disabled"].generate(text, max_new_tokens=32, rid=f"disabled-{num_words}")
    assert disabled["output_ids"] == dense["output_ids"]
    line = servers["disabled"].freed_line(f"disabled-{num_words}")
    if dense["meta_info"]["prompt_tokens"] > 2 * ENGAGED["min_sparse_len_tokens"]:
        assert "dense_chunks=" in line and _stat(line, "prefill_density") == 1.0  # profiled, nothing skipped


def test_a_request_can_turn_the_method_off(servers):
    """`custom_params: {"entropyinfer": {"enabled": false}}` (/generate and the OpenAI API): that request runs dense
    on the engaged server (the dense server's tokens), the next one without it engages again."""
    import requests

    text = tiny_llama.prompt(420, seed=12)
    dense = servers["dense"].generate(text, max_new_tokens=24)
    off = {"custom_params": {"entropyinfer": {"enabled": False}}}
    turned_off = servers["engaged"].generate(text, max_new_tokens=24, rid="override-off",
                                             sampling_params={"max_new_tokens": 24, "temperature": 0,
                                                              "ignore_eos": True, **off})
    assert turned_off["output_ids"] == dense["output_ids"]
    line = servers["engaged"].freed_line("override-off")
    assert "turned EntropyInfer off" in line and _stat(line, "compression_events") == 0
    body = {"model": "tiny", "prompt": text, "max_tokens": 24, "temperature": 0, "ignore_eos": True, **off}
    turned_off_before = servers["engaged"].log_text().count("turned EntropyInfer off")
    texts = {}
    for name in ("dense", "engaged"):
        response = requests.post(servers[name].url + "/v1/completions", json=body, timeout=120)
        response.raise_for_status()
        texts[name] = response.json()["choices"][0]["text"]
    assert texts["engaged"] == texts["dense"]
    deadline = time.time() + 30  # the OpenAI request's own freed line (its rid is the server's)
    while servers["engaged"].log_text().count("turned EntropyInfer off") == turned_off_before:
        assert time.time() < deadline, "the OpenAI request's custom_params did not reach the backend"
        time.sleep(0.2)
    servers["engaged"].generate(text, max_new_tokens=24, rid="override-default")
    line = servers["engaged"].freed_line("override-default")
    assert "turned EntropyInfer off" not in line and _stat(line, "compression_events") >= 1


def test_below_the_length_gate_and_budget_equals_dense(servers):
    text = tiny_llama.prompt(10, seed=3)  # ~14 tokens: below the gate; +20 generated stays within the budget
    dense = servers["dense"].generate(text, max_new_tokens=20)
    engaged = servers["engaged"].generate(text, max_new_tokens=20, rid="below-gate")
    assert dense["meta_info"]["prompt_tokens"] + 20 <= ENGAGED["decode_budget_tokens"]
    assert engaged["output_ids"] == dense["output_ids"]
    # the prompt's only chunk cannot run sparse: it is not profiled (no kv head typed), only counted as dense
    line = servers["engaged"].freed_line("below-gate")
    assert "rigid_fraction=n/a" in line and _stat(line, "dense_chunks") == 2 and _stat(line, "sparse_chunks") == 0


def test_method_engages_across_prefill_chunks(servers):
    text = tiny_llama.prompt(420, seed=11)
    out = servers["engaged"].generate(text, max_new_tokens=40, rid="engaged-long")
    prompt_tokens = out["meta_info"]["prompt_tokens"]
    assert prompt_tokens > 4 * CHUNK and len(out["output_ids"]) == 40
    line = servers["engaged"].freed_line("engaged-long")
    layers = 2
    assert _stat(line, "sparse_chunks") >= layers * (prompt_tokens // CHUNK)  # every 128-token chunk ran sparse
    assert _stat(line, "prefill_density") < 0.8 and 0.0 <= _stat(line, "rigid_fraction") <= 1.0
    assert _stat(line, "compression_events") >= 4  # after 4 tokens, then every 8
    assert _stat(line, "kv_kept_fraction") < 0.5


def _metric(text: str, name: str) -> float:
    """Sum of a Prometheus series over its label sets (0 when absent)."""
    values = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)]
    return sum(values)


def test_prometheus_metrics(servers):
    import requests

    server = servers["engaged"]
    before = requests.get(server.url + "/metrics", timeout=30).text
    out = server.generate(tiny_llama.prompt(300, seed=21), max_new_tokens=24, rid="metrics-long")
    assert out["meta_info"]["prompt_tokens"] > 2 * CHUNK
    server.freed_line("metrics-long")
    deadline = time.time() + 20
    while True:  # the scheduler writes the series; /metrics (another process) reads them
        after = requests.get(server.url + "/metrics", timeout=30).text
        if _metric(after, "entropyinfer_requests_total") > _metric(before, "entropyinfer_requests_total"):
            break
        assert time.time() < deadline, after[-3000:]
        time.sleep(0.5)
    for name in ("entropyinfer_sparse_chunks_total", "entropyinfer_prefill_pairs_dense_total",
                 "entropyinfer_compression_events_total", "entropyinfer_kv_entries_kept_total"):
        assert _metric(after, name) > _metric(before, name), name
    computed = _metric(after, "entropyinfer_prefill_pairs_computed_total")
    assert 0 < computed < _metric(after, "entropyinfer_prefill_pairs_dense_total")
    assert 'model_name="' in after and 'tp_rank="0"' in after


def test_concurrent_requests(servers):
    results, errors = {}, []

    def one(i):
        try:
            text = tiny_llama.prompt(15 + 45 * i, seed=300 + i)
            results[i] = servers["engaged"].generate(text, max_new_tokens=12 + i, rid=f"concurrent-{i}")
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for i in range(8):
        assert len(results[i]["output_ids"]) == 12 + i
        servers["engaged"].freed_line(f"concurrent-{i}")


def _generate_in_background(server, text, max_new_tokens, rid):
    box = {}

    def call():
        try:
            box["result"] = server.generate(text, max_new_tokens=max_new_tokens, rid=rid, timeout=300)
        except Exception as err:  # noqa: BLE001
            box["error"] = err

    thread = threading.Thread(target=call)
    thread.start()
    return thread, box


def _abort(server, rid):
    import requests

    requests.post(server.url + "/abort_request", json={"rid": rid}, timeout=30).raise_for_status()


def test_abort_mid_decode_frees_the_state(servers):
    server = servers["engaged"]
    thread, box = _generate_in_background(server, tiny_llama.prompt(80, seed=21), 3000, "abort-decode")
    deadline = time.time() + 60
    while "EntropyInfer request abort-decode: compression at" not in server.log_text():
        assert time.time() < deadline and thread.is_alive(), server.tail()
        time.sleep(0.2)
    time.sleep(1.0)  # decoding, with compression events behind it
    _abort(server, "abort-decode")
    thread.join(timeout=60)
    assert "error" not in box, box
    meta = box["result"]["meta_info"]
    assert meta["finish_reason"]["type"] == "abort" and 0 < meta["completion_tokens"] < 3000
    line = server.freed_line("abort-decode")
    assert _stat(line, "compression_events") >= 1
    assert len(server.generate("still serving", max_new_tokens=3)["output_ids"]) == 3


def test_abort_mid_prefill_frees_the_state(servers):
    server = servers["engaged"]
    long_text = tiny_llama.prompt(2400, seed=22)  # ~3200 tokens: 25 prefill chunks of 128
    chunks_before = server.log_text().count("#new-token: 128,")
    thread, box = _generate_in_background(server, long_text, 8, "abort-prefill")
    deadline = time.time() + 60
    while server.log_text().count("#new-token: 128,") < chunks_before + 2:  # two chunks in: mid-prefill
        assert time.time() < deadline and thread.is_alive(), server.tail()
        time.sleep(0.05)
    _abort(server, "abort-prefill")
    thread.join(timeout=120)
    assert "error" not in box, box
    meta = box["result"]["meta_info"]
    assert meta["finish_reason"]["type"] == "abort"
    assert meta["completion_tokens"] == 0, "the prefill finished before the abort arrived"
    line = server.freed_line("abort-prefill")
    assert _stat(line, "compression_events") == 0
    assert len(server.generate("still serving", max_new_tokens=3)["output_ids"]) == 3


def _ids(count: int, seed: int) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.randrange(10, 10_000) for _ in range(count)]


def _hit_stats(server, rid: str) -> dict[str, float]:
    line = server.freed_line(rid)
    return {name: _stat(line, name) for name in ("prefix_cached_tokens", "typing_resumed", "typing_bridged",
                                                 "typing_defaulted", "sparse_chunks", "prefill_density")}


def test_prefix_cache_hits_keep_the_method_on(servers):
    """Shared prefixes come from the radix cache (on by default): a chat template's system prompt (shorter than a
    segment), a long document asked several questions, a previous turn with its answer. Every long request still
    runs its own segments sparse, with head typing resumed from the typing records."""
    import requests

    engaged = servers["engaged"]
    before = requests.get(engaged.url + "/metrics", timeout=30).text
    system = _ids(24, seed=1)
    for i in range(3):
        out = engaged.generate(input_ids=system + _ids(200, seed=10 + i), max_new_tokens=4, rid=f"chat-{i}")
        stats = _hit_stats(engaged, f"chat-{i}")
        assert stats["sparse_chunks"] > 0 and stats["prefill_density"] < 1.0, stats
        if i:
            assert out["meta_info"]["cached_tokens"] >= 24 and stats["prefix_cached_tokens"] >= 24, stats
            assert stats["typing_resumed"] == 1, stats  # nothing is typed before a prefix shorter than a segment

    document = _ids(320, seed=2)  # ten segments of 32 tokens
    for i in range(3):
        out = engaged.generate(input_ids=document + _ids(100, seed=20 + i), max_new_tokens=4, rid=f"doc-{i}")
        stats = _hit_stats(engaged, f"doc-{i}")
        assert stats["sparse_chunks"] > 0 and stats["prefill_density"] < 1.0, stats
        if i:
            assert out["meta_info"]["cached_tokens"] >= 320 and stats["typing_resumed"] == 1, stats

    turn = _ids(200, seed=3)
    first = engaged.generate(input_ids=turn, max_new_tokens=64, rid="turn-1")
    second = engaged.generate(input_ids=turn + first["output_ids"] + _ids(150, seed=4), max_new_tokens=4,
                              rid="turn-2")
    stats = _hit_stats(engaged, "turn-2")
    # the previous turn's answer is cached too, but no prefill typed it: typing bridges over its segments
    assert second["meta_info"]["cached_tokens"] > 200 and stats["typing_bridged"] == 1, stats
    assert stats["sparse_chunks"] > 0, stats

    deadline = time.time() + 20
    while True:  # the scheduler writes the series; /metrics (another process) reads them
        after = requests.get(engaged.url + "/metrics", timeout=30).text
        grown = (_metric(after, "entropyinfer_typing_bridged_total")
                 > _metric(before, "entropyinfer_typing_bridged_total"))
        if grown:
            break
        assert time.time() < deadline, after[-3000:]
        time.sleep(0.5)
    assert _metric(after, "entropyinfer_typing_resumed_total") >= _metric(before, "entropyinfer_typing_resumed_total") + 4
    assert _metric(after, "entropyinfer_prefix_cached_tokens_total") > _metric(before, "entropyinfer_prefix_cached_tokens_total")


def test_shared_prefix_benchmark_smoke(servers, tmp_path):
    """`benchmarks/shared_prefix.py` (the GPU shared-document workload) end to end on the tiny model."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "shared.json"
    proc = run([sys.executable, str(repo / "benchmarks" / "shared_prefix.py"), "--url", servers["engaged"].url,
                "--doc-tokens", "200", "--question-tokens", "70", "--questions", "3", "--fresh", "1",
                "--vocab", "10000", "--tag", "smoke", "--out", str(out)], timeout=300, log=tmp_path / "bench.log")
    assert proc.returncode == 0, proc.stdout
    result = json.loads(out.read_text())
    kinds = [row["kind"] for row in result["rows"]]
    assert kinds == ["first question", "shared document", "shared document", "fresh document"]
    assert [row["cached_tokens"] >= 192 for row in result["rows"]] == [False, True, True, False]
    assert {line["summary"] for line in result["summary"]} == {"first question", "shared document", "fresh document"}
    assert "typing_resumed=1" in servers["engaged"].freed_line("smoke-q2")


def test_radix_cache_hits_with_the_method_disabled_equal_dense(servers):
    text = tiny_llama.prompt(200, seed=31)
    dense = servers["dense"].generate(text, max_new_tokens=16)
    first = servers["disabled"].generate(text, max_new_tokens=16, rid="radix-1")
    again = servers["disabled"].generate(text, max_new_tokens=16, rid="radix-2")
    assert first["meta_info"]["cached_tokens"] == 0 and again["meta_info"]["cached_tokens"] > 0
    assert again["output_ids"] == dense["output_ids"] == first["output_ids"]
    assert "prefix-cache hit" not in servers["disabled"].freed_line("radix-2")  # no dense fallback any more
    document = _ids(320, seed=5)
    for i in range(2):
        question = document + _ids(100, seed=50 + i)
        dense = servers["dense"].generate(input_ids=question, max_new_tokens=16)
        disabled = servers["disabled"].generate(input_ids=question, max_new_tokens=16, rid=f"radix-doc-{i}")
        assert disabled["output_ids"] == dense["output_ids"]
    assert _stat(servers["disabled"].freed_line("radix-doc-1"), "typing_resumed") == 1


FRONTEND = """
import json, sys
import sglang as sgl

@sgl.function
def continue_text(s, text):
    s += text
    s += sgl.gen("more", max_tokens=12, temperature=0)
    s += " and then"
    s += sgl.gen("again", max_tokens=6, temperature=0)

sgl.set_default_backend(sgl.RuntimeEndpoint(sys.argv[1]))
state = continue_text.run(text=sys.argv[2])
batch = continue_text.run_batch([{"text": sys.argv[2][: 40 * (i + 1)]} for i in range(3)])
print("FRONTEND", json.dumps({"more": state["more"], "batch": [s["again"] for s in batch]}))
"""


def test_frontend_program(servers, tmp_path):
    script = tmp_path / "frontend.py"
    script.write_text(FRONTEND)
    result = run([sys.executable, str(script), servers["engaged"].url, tiny_llama.prompt(150, seed=41)],
                 timeout=240, log=tmp_path / "frontend.log")
    assert result.returncode == 0, result.stdout[-3000:]
    payload = json.loads(result.stdout.split("FRONTEND ", 1)[1].splitlines()[0])
    assert isinstance(payload["more"], str) and len(payload["batch"]) == 3


def test_bench_serving(servers, tiny_model, tmp_path):
    result = run([sys.executable, "-m", compat.upstream_command("serving"), "--backend", "sglang", "--base-url",
                  servers["engaged"].url, "--tokenizer", str(tiny_model), "--dataset-name", "random-ids",
                  "--random-input-len", "300", "--random-output-len", "16", "--random-range-ratio", "0.5",
                  "--num-prompts", "8", "--request-rate", "inf", "--disable-tqdm", "--seed", "1"],
                 timeout=300, log=tmp_path / "bench_serving.log", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"Successful requests:\s+8", result.stdout), result.stdout[-3000:]


# ---------------------------------------------------------------------------------------------------------
# The benchmarks and the offline Engine, each in its own process (each loads the model itself).
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_one_batch_wrapper(tiny_model, tmp_path):
    require_entry_point()
    result = run([sys.executable, "-m", "entropyinfer_sgl.sglang.bench_one_batch", "--model-path", str(tiny_model),
                  "--device", "cpu", "--dtype", "float32", "--max-total-tokens", "4096", "--enable-entropyinfer",
                  "--entropyinfer-config", json.dumps(ENGAGED), "--batch-size", "2", "--input-len", "256",
                  "--output-len", "8", "--run-name", "entropyinfer"],
                 timeout=300, log=tmp_path / "bench_one_batch.log", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "EntropyInfer attention backend" in result.stdout
    assert re.search(r"Prefill\. latency", result.stdout) and re.search(r"Decode", result.stdout)


@pytest.mark.slow
def test_upstream_bench_one_batch_with_autoload(tiny_model, tmp_path):
    """`python -m sglang.bench_one_batch --enable-entropyinfer` (0.5.23: `sglang.benchmark.one_batch`) works
    unmodified with ENTROPYINFER_AUTOLOAD=1."""
    from entropyinfer_sgl.sglang import site_hooks

    if not site_hooks.installed(cpu_stub=True) and not site_hooks.installed():
        pytest.skip("the site hooks are not installed (bash scripts/install_sglang_cpu.sh)")
    result = run([sys.executable, "-m", compat.upstream_command("one_batch"), "--model-path", str(tiny_model),
                  "--device", "cpu", "--dtype", "float32", "--max-total-tokens", "4096", "--enable-entropyinfer",
                  "--entropyinfer-config", json.dumps(ENGAGED), "--batch-size", "1", "--input-len", "128",
                  "--output-len", "4"],
                 timeout=300, log=tmp_path / "bench_one_batch_upstream.log", cwd=tmp_path,
                 env=subprocess_env(ENTROPYINFER_AUTOLOAD="1"))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "EntropyInfer attention backend" in result.stdout


@pytest.mark.slow
def test_bench_offline_throughput_wrapper(tiny_model, tmp_path):
    require_entry_point()
    sharegpt = tiny_llama.sharegpt_file(tmp_path / "sharegpt.json")
    result = run([sys.executable, "-m", "entropyinfer_sgl.sglang.bench_offline_throughput", "--model-path",
                  str(tiny_model), "--device", "cpu", "--dtype", "float32", "--max-total-tokens", "8192",
                  "--enable-entropyinfer", "--entropyinfer-config", json.dumps(ENGAGED),
                  "--dataset-name", "random", "--dataset-path", str(sharegpt), "--num-prompts", "6",
                  "--random-input-len", "200", "--random-output-len", "12", "--random-range-ratio", "0.5",
                  "--skip-warmup"],
                 timeout=400, log=tmp_path / "bench_offline.log", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"Successful requests:\s+6", result.stdout), result.stdout[-3000:]


ENGINE = """
import json, os, sys
from entropyinfer_sgl.sglang import engine

def main():
    llm = engine(config=sys.argv[2], model_path=sys.argv[1], device="cpu", dtype="float32", max_total_tokens=8192,
                 chunked_prefill_size=128, random_seed=0, log_level="error")
    try:
        outs = [llm.generate(text, {"max_new_tokens": 32, "temperature": 0, "ignore_eos": True})
                for text in json.loads(sys.argv[3])]
        print("ENGINE", json.dumps([o["output_ids"] for o in outs]))
    finally:
        llm.shutdown()

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_engine_with_the_method_disabled_equals_dense(servers, tiny_model, tmp_path):
    """`sgl.Engine(attention_backend="entropyinfer")` with the config passed in (through ENTROPYINFER_CONFIG)."""
    texts = [tiny_llama.prompt(n, seed=500 + n) for n in (20, 130, 400)]
    dense = [servers["dense"].generate(t, max_new_tokens=32)["output_ids"] for t in texts]
    script = tmp_path / "engine.py"
    script.write_text(ENGINE)
    result = run([sys.executable, str(script), str(tiny_model), json.dumps(DISABLED), json.dumps(texts)],
                 timeout=400, log=tmp_path / "engine.log")
    assert result.returncode == 0, result.stdout[-3000:]
    assert json.loads(result.stdout.split("ENGINE ", 1)[1].splitlines()[0]) == dense


def test_refused_combination_fails_startup(tiny_model, tmp_path):
    result = run([sys.executable, "-m", "sglang.launch_server", "--model-path", str(tiny_model), "--device", "cpu",
                  "--enable-entropyinfer", "--enable-mixed-chunk", "--port", "1"],
                 timeout=240, log=tmp_path / "refused.log")
    assert result.returncode != 0
    assert ("EntropyInfer (--enable-entropyinfer / --attention-backend entropyinfer) does not support yet"
            in result.stdout)
    assert "--enable-mixed-chunk" in result.stdout
