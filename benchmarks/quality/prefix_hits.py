"""Does a prefix-cache hit change what the method does to a prompt? The quality tasks' prompts through a server.

The server quality runs send every length of a sample at once, and a sample's 2k, 4k and 8k prompts share their
first 100-2,900 tokens (the haystack up to the shorter prompt's needle), so most 4k and 8k requests find a prefix
in SGLang's radix cache and resume head typing from the typing records (`runtime/typing_records.py`). This script
asks each prompt twice with the method on: *fresh* (radix cache flushed first) and *after a hit* (flushed, then
the same sample's shorter prompt, then this one), and compares the two requests' prefill density, rigid fraction,
score and output tokens, with the cached length and the typing resume (`prefix_typing`) the second one reported.
`--concurrent DELAY_S` sends this prompt DELAY_S seconds after the shorter one, without waiting for its answer (as
`quality.sh server`'s clients do). (On the CPU engine, 4k prompts sent 0.2 s and 1.5 s after their 2k prompt found
nothing cached: SGLang had not inserted the running prompt yet, so the two ran as fresh prompts.)

    PYTHONPATH=python python benchmarks/quality/prefix_hits.py --server http://127.0.0.1:30000 \
        --tasks passkey,copylist --samples 0,2 --pairs 2000:4000,4000:8000 --out prefix_hits.jsonl

`--server`: a running `launch_server --enable-entropyinfer` with the radix cache on (the CPU engine or CUDA);
without it, the CPU engine's demo server (SmolLM2 float32, `--config`, `--chunk` tokens of chunked prefill).
One JSON line per (task, sample, pair); a summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from entropyinfer_sgl.evaluation.server import ServerRunner, response_report


def asked(runner, tokenizer, sample) -> dict:
    ids = sample.prompt_ids[0].tolist()
    out = runner.generate(ids, sample.max_new_tokens, method_enabled=True)
    tokens = out.get("output_ids") or []
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    report = response_report(out)
    return {"tokens": tokens, "score": sample.score(text), "prefill_density": report.get("prefill_density"),
            "rigid_fraction": report.get("rigid_fraction"), "prefix_typing": report.get("prefix_typing"),
            "cached_tokens": (out.get("meta_info") or {}).get("cached_tokens")}


def after_hit(runner, tokenizer, first, prompt, concurrent_delay_s: float | None) -> dict:
    """`prompt` asked after `first` (whose tokens it starts with): once `first` is answered, or `--concurrent`:
    `first` sent, and `prompt` `concurrent_delay_s` later while `first` is still running."""
    if concurrent_delay_s is None:
        asked(runner, tokenizer, first)
        return asked(runner, tokenizer, prompt)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(asked, runner, tokenizer, first)
        time.sleep(concurrent_delay_s)
        hit = asked(runner, tokenizer, prompt)
        running.result()
    return hit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=None, help="base URL of a running server (default: start the CPU one)")
    parser.add_argument("--tasks", default="passkey,copylist")
    parser.add_argument("--samples", default="0,2")
    parser.add_argument("--pairs", default="2000:4000", help="shorter:longer prompt lengths, comma-separated")
    parser.add_argument("--config", default="small", help="the started server's --entropyinfer-config")
    parser.add_argument("--chunk", type=int, default=2048, help="the started server's --chunked-prefill-size")
    parser.add_argument("--concurrent", type=float, default=None, metavar="DELAY_S",
                        help="send this prompt DELAY_S seconds after the shorter one, while that one still runs")
    parser.add_argument("--out", default=None, help="append the JSON lines here too")
    args = parser.parse_args()

    from entropyinfer_sgl.evaluation.models import export_smollm2, load_tokenizer
    from entropyinfer_sgl.evaluation.tasks import TASKS

    tokenizer = load_tokenizer("smollm2")
    server = None
    url = args.server
    if url is None:
        from entropyinfer_sgl.serve_demo import DemoServer
        from entropyinfer_sgl.sglang import site_hooks

        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site_hooks.stub_dir()),
                                                                 os.environ.get("PYTHONPATH")]))
        log = Path(tempfile.mkdtemp(prefix="entropyinfer-prefix-")) / "server.log"
        server = DemoServer(export_smollm2(None), args.config, log,
                            extra_args=["--chunked-prefill-size", str(args.chunk)])
        server.wait_ready(600)
        url = server.url
        print(f"server log: {log}", flush=True)
    runner = ServerRunner(url, stop_token_ids=(int(tokenizer.eos_token_id),))  # as `entropyinfer eval --server`
    rows = []
    try:
        for task in args.tasks.split(","):
            for sample in (int(s) for s in args.samples.split(",")):
                for pair in args.pairs.split(","):
                    short, long = (int(x) for x in pair.split(":"))
                    prompt = TASKS[task](tokenizer, long, sample)
                    requests.post(url + "/flush_cache", timeout=60)
                    fresh = asked(runner, tokenizer, prompt)
                    requests.post(url + "/flush_cache", timeout=60)
                    hit = after_hit(runner, tokenizer, TASKS[task](tokenizer, short, sample), prompt, args.concurrent)
                    row = {"task": task, "sample": sample, "length": long, "after": short, "fresh": fresh, "hit": hit,
                           "concurrent": args.concurrent, "same_tokens": fresh["tokens"] == hit["tokens"]}
                    rows.append(row)
                    print(f"{task} {sample} {long} after {short}: cached {hit['cached_tokens']} "
                          f"(fresh {fresh['cached_tokens']}), typing {hit['prefix_typing']}, density {fresh['prefill_density']:.3f} fresh vs "
                          f"{hit['prefill_density']:.3f} after the hit, rigid {fresh['rigid_fraction']:.3f} vs "
                          f"{hit['rigid_fraction']:.3f}, score {fresh['score']:.2f} vs {hit['score']:.2f}, "
                          f"same tokens: {row['same_tokens']}", flush=True)
                    if args.out:
                        with open(args.out, "a") as out:
                            out.write(json.dumps(row) + "\n")
    finally:
        if server is not None:
            server.stop()
    same = sum(r["same_tokens"] for r in rows)
    drop = [r["hit"]["prefill_density"] - r["fresh"]["prefill_density"] for r in rows]
    print(f"{same} of {len(rows)} prompts gave the same tokens after a prefix hit; density change after the hit "
          f"{min(drop):+.3f} .. {max(drop):+.3f}, mean {sum(drop) / len(drop):+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
