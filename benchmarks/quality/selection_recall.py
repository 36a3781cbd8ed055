"""How much of dense attention a prefill plan keeps: the selection recall of EntropyInfer's block choice.

For a task prompt on a real model (SmolLM2 by default), one dense forward records every layer's post-RoPE
queries and keys. For every layer that runs sparse, kv head and sparse segment, the *attention mass* of a block is
the share of dense attention (softmax over all visible keys, averaged over the kv head's query heads) that
falls on the block's keys, per query. A query's recall is the mass of the blocks its segment's plan computes (the
selected blocks plus the segment itself); 1 = nothing of its dense attention is dropped.

Printed per config: mean recall over (layer, kv head, query of a sparse segment), low percentiles, the density, and the
same for an *oracle* that picks, at the same keep counts, the blocks with the most true mass (what a perfect
scorer could reach at that budget). Offline, CPU, minutes per prompt: a way to choose which levers to run on the
powered quality harness, not a quality figure itself.

    PYTHONPATH=python python benchmarks/quality/selection_recall.py --task vartrack --length 4000 --samples 2 \
        --config 'small' --config 'small:prefill_sink_tokens=64,prefill_local_tokens=128'
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import torch

from entropyinfer_sgl import EntropyInferConfig, plan_prefill, profile_prefill


@dataclass
class LayerQK:
    q: torch.Tensor  # [L, Hq, D] post-RoPE
    k: torch.Tensor  # [L, Hkv, D]


def record_qk(model, prompt_ids: torch.Tensor) -> list[LayerQK]:
    """One dense forward; every attention layer's queries and keys (float32, post-RoPE)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layers: list[LayerQK] = []

    def capture(module, query, key, value, attention_mask, **kwargs):
        layers.append(LayerQK(query[0].transpose(0, 1).float().clone(), key[0].transpose(0, 1).float().clone()))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("entropyinfer_recall_capture", capture)
    previous = model.config._attn_implementation
    model.set_attn_implementation("entropyinfer_recall_capture")
    try:
        with torch.no_grad():
            model(prompt_ids, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    return layers


def query_block_mass(qk: LayerQK, config: EntropyInferConfig) -> torch.Tensor:
    """Each query's dense attention per key block, `[Hkv, L, num_key_blocks]` (mean over the kv head's query
    heads): the segment mass is its mean over the segment's queries."""
    q, k = qk.q, qk.k
    seq_len, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_q_heads // num_kv_heads
    segment, block = config.segment_size_tokens, config.block_size_tokens
    num_segments, num_key_blocks = -(-seq_len // segment), -(-seq_len // block)
    mass = torch.zeros(num_kv_heads, seq_len, num_key_blocks)
    keys = k.repeat_interleave(group, dim=1).permute(1, 2, 0)  # [Hq, D, L]
    positions = torch.arange(seq_len)
    for s in range(num_segments):
        rows = slice(s * segment, min((s + 1) * segment, seq_len))
        logits = torch.matmul(q[rows].permute(1, 0, 2), keys) / math.sqrt(head_dim)  # [Hq, n, L]
        logits.masked_fill_(positions[None, None, :] > positions[rows][None, :, None], float("-inf"))
        p = torch.softmax(logits, dim=-1)  # [Hq, n, L]
        padded = torch.nn.functional.pad(p, (0, num_key_blocks * block - seq_len))
        per_block = padded.view(num_q_heads, p.shape[1], num_key_blocks, block).sum(-1)
        mass[:, rows] = per_block.view(num_kv_heads, group, p.shape[1], num_key_blocks).mean(1)
    return mass


def segment_mass(query_mass: torch.Tensor, segment_size_tokens: int) -> torch.Tensor:
    """`[Hkv, nseg, NB]`: the mean of `query_block_mass` over each segment's queries."""
    heads, seq_len, num_blocks = query_mass.shape
    num_segments = -(-seq_len // segment_size_tokens)
    return torch.stack([query_mass[:, s * segment_size_tokens:(s + 1) * segment_size_tokens].mean(1)
                        for s in range(num_segments)], dim=1)


def plan_recall(plan, query_mass: torch.Tensor) -> list[float]:
    """Recall of every query of every sparse (kv head, segment) row of `plan`: the share of its dense attention
    on the blocks the plan computes for its segment."""
    out = []
    segment = plan.segment_size_tokens
    for h in range(plan.num_kv_heads):
        for s in range(plan.num_segments):
            if bool(plan.sparse_segments[s]) and int(plan.keep_blocks[h, s]) > 0:
                rows = query_mass[h, s * segment:(s + 1) * segment]
                out += rows[:, plan.row(h, s).long()].sum(-1).tolist()
    return out


def oracle_profile(profile, mass: torch.Tensor):
    """The profile with its block scores replaced by the true mass of earlier blocks (same keep counts)."""
    import dataclasses

    num_blocks = profile.block_scores.shape[-1]
    return dataclasses.replace(profile, block_scores=mass[:, :, :num_blocks].to(profile.block_scores.dtype))


def parse_config(spec: str) -> tuple[str, EntropyInferConfig]:
    """`preset` or `preset:key=value,...` (values as JSON where they parse)."""
    preset, _, body = spec.partition(":")
    config = EntropyInferConfig.load(preset)
    changes = {}
    for item in filter(None, body.split(",")):
        key, value = item.split("=", 1)
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    return spec, config.replace(**changes)


def summarize(values: list[float]) -> str:
    t = torch.tensor(values)
    low = [f"p{q}% {float(torch.quantile(t[torch.randperm(t.numel())[:1 << 24]], q / 100)):.3f}" for q in (10, 1)]
    below = float((t < 0.5).float().mean())
    return f"mean {float(t.mean()):.4f}  {'  '.join(low)}  below 0.5: {below:.4f}  (n={t.numel()})"


def main() -> None:
    from entropyinfer_sgl.evaluation.models import load_smollm2
    from entropyinfer_sgl.evaluation.tasks import make

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="vartrack")
    parser.add_argument("--length", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--config", action="append", default=None, help="preset[:key=value,...]; repeatable")
    args = parser.parse_args()
    configs = [parse_config(spec) for spec in (args.config or ["small"])]
    model, tokenizer = load_smollm2()
    results: dict[str, dict[str, list[float]]] = {name: {"plan": [], "oracle": [], "density": []}
                                                  for name, _ in configs}
    for seed in range(args.samples):
        sample = make(args.task, tokenizer, args.length, seed)
        layers = record_qk(model, sample.prompt_ids)
        for layer_idx, qk in enumerate(layers):
            masses = {}
            for name, config in configs:
                if layer_idx < config.num_dense_layers:
                    continue
                key = (config.segment_size_tokens, config.block_size_tokens)
                if key not in masses:
                    query_mass = query_block_mass(qk, config)
                    masses[key] = query_mass, segment_mass(query_mass, config.segment_size_tokens)
                query_mass, mass = masses[key]
                profile = profile_prefill(qk.q, qk.k, config)
                plan = plan_prefill(profile, config, layer_idx=layer_idx)
                results[name]["plan"] += plan_recall(plan, query_mass)
                results[name]["oracle"] += plan_recall(plan_prefill(oracle_profile(profile, mass), config,
                                                                    layer_idx=layer_idx), query_mass)
                results[name]["density"].append(plan.density())
    print(f"{args.task} at {args.length} tokens, {args.samples} sample(s), SmolLM2-135M-Instruct float32")
    for name, r in results.items():
        print(f"{name}\n  plan   {summarize(r['plan'])}\n  oracle {summarize(r['oracle'])}\n"
              f"  density {sum(r['density']) / len(r['density']):.3f}")


if __name__ == "__main__":
    main()
