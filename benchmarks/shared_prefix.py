"""A shared-document workload against a running SGLang server (radix cache on): time to first token per request.

One document of `--doc-tokens` random token ids is asked `--questions` questions (`--question-tokens` each), one
after another: the first request prefills the document, the others find it in the radix cache and prefill only
their question. Then `--fresh` new documents, one question each (no shared prefix). Every request generates one
token, so its latency is its time to first token. Prints one JSON line per request (kind, prompt and cached
tokens, latency) and a summary line per kind; `--out` writes them all as JSON.

    python benchmarks/shared_prefix.py --url http://127.0.0.1:30000 --doc-tokens 65536 --questions 8 --fresh 8
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path


def _ids(count: int, rng: random.Random, vocab: int) -> list[int]:
    return [rng.randrange(10, vocab) for _ in range(count)]


def _generate(url: str, input_ids: list[int], rid: str, timeout: float) -> dict:
    import requests

    body = {"input_ids": input_ids, "rid": rid,
            "sampling_params": {"max_new_tokens": 1, "temperature": 0, "ignore_eos": True}}
    start = time.perf_counter()
    response = requests.post(url + "/generate", json=body, timeout=timeout)
    latency = time.perf_counter() - start
    response.raise_for_status()
    meta = response.json()["meta_info"]
    return {"rid": rid, "prompt_tokens": meta["prompt_tokens"], "cached_tokens": meta.get("cached_tokens", 0),
            "latency_s": round(latency, 4)}


def run(args: argparse.Namespace) -> list[dict]:
    rng = random.Random(args.seed)
    document = _ids(args.doc_tokens, rng, args.vocab)
    rows = []
    for i in range(args.questions):
        row = _generate(args.url, document + _ids(args.question_tokens, rng, args.vocab), f"{args.tag}-q{i}",
                        args.timeout)
        rows.append({"kind": "first question" if i == 0 else "shared document", **row})
        print(json.dumps(rows[-1]), flush=True)
    for i in range(args.fresh):
        row = _generate(args.url, _ids(args.doc_tokens + args.question_tokens, rng, args.vocab),
                        f"{args.tag}-fresh{i}", args.timeout)
        rows.append({"kind": "fresh document", **row})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for kind in ("first question", "shared document", "fresh document"):
        latencies = [r["latency_s"] for r in rows if r["kind"] == kind]
        if latencies:
            cached = [r["cached_tokens"] for r in rows if r["kind"] == kind]
            out.append({"summary": kind, "n": len(latencies), "mean_ttft_s": round(statistics.mean(latencies), 4),
                        "median_ttft_s": round(statistics.median(latencies), 4),
                        "mean_cached_tokens": round(statistics.mean(cached), 1)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:30000")
    parser.add_argument("--doc-tokens", type=int, default=65536)
    parser.add_argument("--question-tokens", type=int, default=256)
    parser.add_argument("--questions", type=int, default=8, help="requests over the shared document")
    parser.add_argument("--fresh", type=int, default=8, help="requests over documents of their own")
    parser.add_argument("--vocab", type=int, default=49152, help="token ids are drawn below this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="shared", help="request id prefix (server log lines carry it)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, help="write every row and the summary as JSON")
    args = parser.parse_args(argv)
    for name in ("doc_tokens", "question_tokens", "vocab"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    rows = run(args)
    summary = summarize(rows)
    for line in summary:
        print(json.dumps(line), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
