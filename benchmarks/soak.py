"""A bounded soak of an SGLang server running EntropyInfer: many mixed requests, faults included, nothing lost.

Against a running server (`--url`, `--log` its log file, `--pid` its launcher process) or one it starts itself
(`--model-path`, `--launch-args`, with `--enable-entropyinfer --enable-metrics`). N requests (default 1000) go out
in waves of 4-16 concurrent requests: prompt lengths from below the length gate to the context limit (random
token ids, some sharing a document prefix: radix cache hits), streamed and not, `n > 1` sampling, client
disconnects mid-stream, `/abort_request` aborts, the per-request off switch and lower per-request budgets,
OpenAI `/v1/completions`, and bad requests (out-of-vocabulary ids, empty ids, malformed `custom_params`: each
must be a 400). Afterwards, every request is accounted for (ok / 4xx as expected / aborted), and the run fails on:
a 5xx or a connection error, an unexpected status, a `Traceback` or SGLang's memory-leak message in the server
log, per-request EntropyInfer state still held once idle (`/metrics`: `entropyinfer_held`), server RSS growth
beyond `--max-rss-growth-mib` (from after the first wave to the end), or a final probe request (the first one
repeated: same greedy output) that does not come back the same.

    python benchmarks/soak.py --model-path ~/.cache/entropyinfer/models/smollm2-135m-instruct --requests 1000 \\
        --out soak.json
    python benchmarks/soak.py --url http://127.0.0.1:30000 --log server.log --pid 1234 --requests 300

Prints one JSON line per wave and a summary; `--out` writes the summary as JSON. Exit status 0 only when every
check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

KINDS = ("generate", "stream", "sample_n", "disconnect", "abort", "off", "own_budgets", "openai", "shared", "bad")
WEIGHTS = (20, 14, 8, 8, 8, 8, 6, 8, 12, 8)
LEAK_PATTERNS = ("Traceback", "memory leak", "leak detected")  # SGLang's idle/busy pool checks (any case)


@dataclass
class Outcome:
    kind: str
    status: str  # ok / aborted / 4xx / 5xx / error / unexpected
    detail: str = ""
    prompt_tokens: int = 0
    retractions: int = 0  # times SGLang retracted it (KV pool full) and prefilled it again


@dataclass
class SoakSettings:
    url: str
    vocab: int
    context: int
    gate: int
    max_new: int = 48
    timeout: float = 600.0
    seed: int = 0
    document: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------
def _ids(rng: random.Random, count: int, vocab: int) -> list[int]:
    return [rng.randrange(10, vocab) for _ in range(count)]


def _prompt_length(rng: random.Random, s: SoakSettings, max_new: int) -> int:
    """From a few tokens to the context limit: a third below the length gate, the rest above it."""
    limit = s.context - max_new - 8
    if rng.random() < 1 / 3:
        return rng.randrange(2, max(3, min(s.gate, limit)))
    return rng.randrange(min(s.gate, limit - 1), limit)


def _sampling(max_new: int, **extra) -> dict:
    return {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True, **extra}


def _finish_type(body) -> str | None:
    items = body if isinstance(body, list) else [body]
    types = {((item.get("meta_info") or {}).get("finish_reason") or {}).get("type") for item in items}
    return "abort" if "abort" in types else next(iter(types), None)


def _classify(kind: str, response: requests.Response, prompt_tokens: int) -> Outcome:
    code = response.status_code
    if code >= 500:
        return Outcome(kind, "5xx", f"{code}: {response.text[:300]}", prompt_tokens)
    if kind == "bad":
        if code == 400:
            return Outcome(kind, "4xx", "", prompt_tokens)
        return Outcome(kind, "unexpected", f"bad request answered {code}: {response.text[:300]}", prompt_tokens)
    if code != 200:
        return Outcome(kind, "unexpected", f"{code}: {response.text[:300]}", prompt_tokens)
    body = response.json()
    retractions = sum(int((item.get("meta_info") or {}).get("num_retractions") or 0)
                      for item in (body if isinstance(body, list) else [body]))
    return Outcome(kind, "aborted" if _finish_type(body) == "abort" else "ok", "", prompt_tokens, retractions)


def _stream(s: SoakSettings, body: dict, kind: str, prompt_tokens: int, stop_after: int | None) -> Outcome:
    """A streamed /generate; with `stop_after`, the client disconnects after that many events."""
    with requests.post(s.url + "/generate", json={**body, "stream": True}, stream=True, timeout=s.timeout) as r:
        if r.status_code != 200:
            return _classify(kind, r, prompt_tokens)
        events, aborted = 0, False
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                code = int(event["error"].get("code") or 500)
                status = "5xx" if code >= 500 else "unexpected"
                return Outcome(kind, status, f"stream error: {event['error']}", prompt_tokens)
            aborted = aborted or _finish_type(event) == "abort"
            events += 1
            if stop_after is not None and events >= stop_after:
                return Outcome(kind, "aborted", "client disconnected mid-stream", prompt_tokens)
        return Outcome(kind, "aborted" if aborted else "ok", "", prompt_tokens)


def one_request(s: SoakSettings, index: int, kind: str) -> Outcome:
    """Send request `index` of `kind`; never raises (a connection error is an outcome)."""
    rng = random.Random(s.seed * 1_000_003 + index)
    max_new = rng.randrange(1, s.max_new + 1)
    length = _prompt_length(rng, s, max_new)
    rid = f"soak-{s.seed}-{index}-{kind}"
    body = {"input_ids": _ids(rng, length, s.vocab), "rid": rid, "sampling_params": _sampling(max_new)}
    try:
        if kind == "generate":
            return _classify(kind, requests.post(s.url + "/generate", json=body, timeout=s.timeout), length)
        if kind == "stream":
            return _stream(s, body, kind, length, None)
        if kind == "sample_n":
            body["sampling_params"] = _sampling(max_new, n=rng.choice((2, 3)), temperature=0.8)
            body.pop("rid")  # n > 1 gets a rid per sample from SGLang
            return _classify(kind, requests.post(s.url + "/generate", json=body, timeout=s.timeout), length)
        if kind == "disconnect":
            body["sampling_params"] = _sampling(max(max_new, 16))
            return _stream(s, body, kind, length, rng.randrange(1, 6))
        if kind == "abort":
            body["sampling_params"] = _sampling(max(max_new, 32))
            result: dict = {}
            thread = threading.Thread(target=lambda: result.setdefault(
                "r", requests.post(s.url + "/generate", json=body, timeout=s.timeout)))
            thread.start()
            time.sleep(rng.uniform(0.05, 1.0))
            requests.post(s.url + "/abort_request", json={"rid": rid}, timeout=60)
            thread.join(timeout=s.timeout)
            if "r" not in result:
                return Outcome(kind, "error", "aborted request never answered", length)
            return _classify(kind, result["r"], length)
        if kind == "off":
            body["sampling_params"] = _sampling(max_new, custom_params={"entropyinfer": {"enabled": False}})
            return _classify(kind, requests.post(s.url + "/generate", json=body, timeout=s.timeout), length)
        if kind == "own_budgets":
            body["sampling_params"] = _sampling(max_new, custom_params={"entropyinfer": {"decode_delay_steps": 0}})
            return _classify(kind, requests.post(s.url + "/generate", json=body, timeout=s.timeout), length)
        if kind == "openai":
            openai = {"model": "soak", "prompt": body["input_ids"], "max_tokens": max_new, "temperature": 0,
                      "ignore_eos": True, "stream": rng.random() < 0.5}
            with requests.post(s.url + "/v1/completions", json=openai, timeout=s.timeout, stream=True) as r:
                text = r.text  # the whole body (streamed or not)
                if r.status_code >= 500 or '"code":5' in text.replace(" ", ""):
                    return Outcome(kind, "5xx", text[:300], length)
                return Outcome(kind, "ok" if r.status_code == 200 else "unexpected", text[:300] if
                               r.status_code != 200 else "", length)
        if kind == "shared":  # a question about the shared document: a radix-cache hit
            question = _ids(rng, rng.randrange(8, 200), s.vocab)
            ids = (s.document + question)[: s.context - max_new - 8]
            body["input_ids"] = ids
            return _classify(kind, requests.post(s.url + "/generate", json=body, timeout=s.timeout), len(ids))
        if kind == "bad":
            bad = rng.randrange(4)
            if bad == 0:
                body["input_ids"] = body["input_ids"][:8] + [s.vocab + rng.randrange(1, 1000)]
            elif bad == 1:
                body["input_ids"] = [body["input_ids"][:4], []]
            elif bad == 2:
                body["sampling_params"] = _sampling(max_new, custom_params={"entropyinfer": {"enabled": "yes"}})
            else:
                body["sampling_params"] = _sampling(max_new, custom_params="notadict")
            return _classify(kind, requests.post(s.url + "/generate", json=body, timeout=s.timeout), length)
        raise ValueError(kind)
    except requests.RequestException as err:
        return Outcome(kind, "error", f"{type(err).__name__}: {err}", length)


# --------------------------------------------------------------------------------------------------------
def process_rss_mib(pid: int | None) -> float | None:
    """RSS of a process and its descendants (the server's scheduler and detokenizer), MiB."""
    if pid is None:
        return None
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2 ** 20


def method_counters(url: str) -> dict[str, float]:
    """EntropyInfer's counters from /metrics (what the method did over the run; empty: metrics off)."""
    text = requests.get(url + "/metrics", timeout=30).text
    totals: dict[str, float] = {}
    for name in ("requests", "sparse_chunks", "dense_chunks", "compression_events", "kv_pool_slots_released",
                 "typing_resumed", "typing_bridged", "typing_defaulted"):
        values = [float(m.group(1)) for m in re.finditer(rf"^entropyinfer_{name}_total(?:{{[^}}]*}})? (\S+)$", text,
                                                           re.MULTILINE)]
        if values:
            totals[name] = sum(values)
    return totals


def held_state(url: str) -> dict[str, float] | None:
    """`entropyinfer_held` by kind from /metrics (None: metrics off or no request freed yet)."""
    text = requests.get(url + "/metrics", timeout=30).text
    held: dict[str, float] = {}
    for match in re.finditer(r'^entropyinfer_held\{([^}]*)\} (\S+)$', text, re.MULTILINE):
        kind = re.search(r'kind="([^"]+)"', match.group(1)).group(1)
        held[kind] = held.get(kind, 0.0) + float(match.group(2))
    return held or None


def wait_idle_held(url: str, timeout: float = 60) -> dict[str, float] | None:
    """Per-request state held once every request is done: polled until all 0 (or the timeout)."""
    deadline = time.time() + timeout
    held = held_state(url)
    while held is not None and any(held.values()) and time.time() < deadline:
        time.sleep(1)
        held = held_state(url)
    return held


def probe(s: SoakSettings) -> list[int]:
    """A fixed greedy request (its answer must not change over the soak)."""
    rng = random.Random(12345)
    body = {"input_ids": _ids(rng, min(s.context - 64, max(s.gate * 2, 64)), s.vocab),
            "sampling_params": _sampling(24)}
    response = requests.post(s.url + "/generate", json=body, timeout=s.timeout)
    response.raise_for_status()
    return response.json()["output_ids"]


def log_problems(log: Path | None, start_offset: int) -> list[str]:
    if log is None or not log.is_file():
        return []
    text = log.read_text(errors="replace")[start_offset:]
    return [line for line in text.splitlines() if any(p.lower() in line.lower() for p in LEAK_PATTERNS)]


def run_soak(s: SoakSettings, requests_total: int, *, min_concurrency: int = 4, max_concurrency: int = 16,
             log: Path | None = None, pid: int | None = None, max_rss_growth_mib: float = 512.0,
             quiet: bool = False) -> dict:
    """Run the soak against a ready server; returns the summary (its `passed` says whether every check held)."""
    rng = random.Random(s.seed)
    s.document = _ids(rng, min(s.context // 2, max(2 * s.gate, 256)), s.vocab)
    log_offset = len(log.read_text(errors="replace")) if log is not None and log.is_file() else 0
    counters_before = method_counters(s.url)
    first_probe = probe(s)
    outcomes: list[Outcome] = []
    rss_start = None
    started = time.time()
    index = 0
    with ThreadPoolExecutor(max_workers=max_concurrency) as pool:
        while index < requests_total:
            width = min(rng.randrange(min_concurrency, max_concurrency + 1), requests_total - index)
            kinds = rng.choices(KINDS, weights=WEIGHTS, k=width)
            wave = list(pool.map(lambda item: one_request(s, *item), zip(range(index, index + width), kinds)))
            outcomes += wave
            index += width
            if rss_start is None:
                rss_start = process_rss_mib(pid)
            if not quiet:
                print(json.dumps({"done": index, "width": width, "statuses": dict(Counter(o.status for o in wave)),
                                  "elapsed_s": round(time.time() - started, 1)}), flush=True)
    elapsed = time.time() - started
    last_probe = probe(s)
    held = wait_idle_held(s.url)
    rss_end = process_rss_mib(pid)
    counters_after = method_counters(s.url)
    problems = [f"{o.kind}: {o.status}: {o.detail}" for o in outcomes if o.status in ("5xx", "error", "unexpected")]
    log_lines = log_problems(log, log_offset)
    checks = {
        "every request accounted for": len(outcomes) == requests_total,
        "no 5xx, connection error or unexpected status": not problems,
        "no Traceback or leak message in the server log": not log_lines,
        "per-request state back to 0 when idle": held is None or not any(held.values()),
        "probe answered the same before and after": first_probe == last_probe,
        "RSS growth bounded": rss_start is None or rss_end is None or rss_end - rss_start <= max_rss_growth_mib,
    }
    summary = {
        "requests": requests_total, "elapsed_s": round(elapsed, 1),
        "statuses": dict(Counter(o.status for o in outcomes)),
        "by_kind": {kind: dict(Counter(o.status for o in outcomes if o.kind == kind)) for kind in KINDS},
        "prompt_tokens_max": max((o.prompt_tokens for o in outcomes), default=0),
        "retractions": sum(o.retractions for o in outcomes),
        "method": {name: value - counters_before.get(name, 0.0) for name, value in counters_after.items()},
        "held_when_idle": held, "rss_mib_after_first_wave": rss_start, "rss_mib_end": rss_end,
        "problems": problems[:20], "log_problems": log_lines[:20], "checks": checks, "passed": all(checks.values()),
    }
    return summary


# --------------------------------------------------------------------------------------------------------
def model_facts(url: str) -> tuple[int, int]:
    """(vocabulary size, context length) of the served model."""
    info = requests.get(url + "/get_model_info", timeout=30).json()
    path = Path(info["model_path"]) / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    vocab = int(config.get("vocab_size") or 32000)
    # the server's context length (`--context-length` may be below the config's max_position_embeddings)
    served = requests.get(url + "/v1/models", timeout=30).json().get("data") or [{}]
    context = int(served[0].get("max_model_len") or info.get("max_context_length")
                  or config.get("max_position_embeddings") or 4096)
    return vocab, context


def launch(model_path: str, extra: list[str], log: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, SGLANG_USE_CPU_ENGINE=os.environ.get("SGLANG_USE_CPU_ENGINE", "1"))
    args = [sys.executable, "-m", "sglang.launch_server", "--model-path", model_path, "--host", "127.0.0.1",
            "--port", str(port), "--enable-entropyinfer", "--enable-metrics", *extra]
    out = open(log, "w")
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"error: the server exited with {proc.returncode} before it was ready")
        try:
            if requests.get(url + "/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit(f"error: the server at {url} was not ready after {timeout} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (else --model-path starts one)")
    parser.add_argument("--log", type=Path, help="the server's log file (checked for tracebacks and leak messages)")
    parser.add_argument("--pid", type=int, help="the server's launcher process (RSS of it and its children)")
    parser.add_argument("--model-path", help="start a CPU server for this model with --enable-entropyinfer")
    parser.add_argument("--launch-args", default="--device cpu --dtype float32 --entropyinfer-config small "
                        "--max-total-tokens 24576 --chunked-prefill-size 1024 --sleep-on-idle",
                        help="more arguments for the started server (default: %(default)s)")
    parser.add_argument("--port", type=int, default=30011)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--min-concurrency", type=int, default=4)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--gate", type=int, default=None, help="the length gate (default: from the small preset)")
    parser.add_argument("--context", type=int, default=None, help="the context limit (default: the server's)")
    parser.add_argument("--max-new", type=int, default=48)
    parser.add_argument("--max-rss-growth-mib", type=float, default=512.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not args.url and not args.model_path:
        parser.error("give --url (a running server) or --model-path (start one)")
    proc = None
    url, log, pid = args.url, args.log, args.pid
    if url is None:
        log = log or Path(f"soak_server_{args.port}.log")
        proc = launch(args.model_path, args.launch_args.split(), log, args.port)
        url, pid = f"http://127.0.0.1:{args.port}", proc.pid
    try:
        wait_ready(url, proc)
        vocab, context = model_facts(url)
        from entropyinfer_sgl import EntropyInferConfig

        gate = args.gate or EntropyInferConfig.small().min_sparse_len_tokens
        settings = SoakSettings(url=url, vocab=vocab, context=args.context or context, gate=gate,
                                max_new=args.max_new, seed=args.seed)
        summary = run_soak(settings, args.requests, min_concurrency=args.min_concurrency,
                           max_concurrency=args.max_concurrency, log=log, pid=pid,
                           max_rss_growth_mib=args.max_rss_growth_mib)
        summary.update(vocab=vocab, context=settings.context, gate=gate)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
