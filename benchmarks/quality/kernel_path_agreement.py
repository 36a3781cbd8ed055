"""Does the serving kernel path plan and attend like the reference path on a real model's queries, keys and values?

Runs SmolLM2 through `hf.enable` (the default config) on one task prompt, keeps every planned layer's post-RoPE
q/k/v, and prefills each layer in chunks of `--chunk` tokens twice, as the SGLang backend would:
- the reference path: `chunk_plan.plan_chunk` (torch planner) and `sparse_chunk_attention` (SDPA);
- the kernel path: `kernel_path.plan_chunk_on_device` (fused profiling kernel, device typing scan, device CSR) and
  the `sparse_prefill` kernel.
Per layer it prints the kv heads typed apart, the plan rows (kv head x segment) whose selected blocks differ, the
two densities, and the attention error of each side against float32 SDPA on the *same* plan (the reference's), so
that a planning difference and an attention difference show apart. Used for issue 18's server gap (QUALITY.md
"Through the SGLang server on the GPU"):

    python benchmarks/quality/kernel_path_agreement.py --device cuda --dtype bfloat16 --task passkey --sample 0
    TRITON_INTERPRET=1 python benchmarks/quality/kernel_path_agreement.py --device cpu --dtype float32

(Triton's CPU interpreter computes `tl.dot` of bfloat16 wrongly: on the CPU use float32.)
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager

import torch

from entropyinfer_sgl import hf
from entropyinfer_sgl.core.config import EntropyInferConfig
from entropyinfer_sgl.core.plan import PrefillPlan
from entropyinfer_sgl.evaluation.models import load_smollm2
from entropyinfer_sgl.evaluation.tasks import TASKS
from entropyinfer_sgl.hf.integration import EntropyInferHandle
from entropyinfer_sgl.runtime.chunk_plan import plan_chunk, plan_pair_counts
from entropyinfer_sgl.runtime.kernel_path import chunk_has_sparse_segment, plan_chunk_on_device
from entropyinfer_sgl.runtime.sparse_attention import sparse_chunk_attention


@contextmanager
def kept_layer_qkv():
    """Inside: every prefill of the HF adapter appends its (q, k, v) `[L, H, D]` (token-major) and scale."""
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]] = []
    original = EntropyInferHandle._prefill

    def keeping(self, module, q, k, v, scale):
        kept.append((q.transpose(0, 1).contiguous(), k.transpose(0, 1).contiguous(),
                     v.transpose(0, 1).contiguous(), scale))
        return original(self, module, q, k, v, scale)

    EntropyInferHandle._prefill = keeping
    try:
        yield kept
    finally:
        EntropyInferHandle._prefill = original


def captured_layers(dtype: str, task: str, sample: int, length: int, device: str = "cpu"
                    ) -> tuple[EntropyInferConfig, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]]:
    """SmolLM2 (`dtype`, on `device`) through `hf.enable` with the default config on one task prompt: the config
    and every planned layer's (q, k, v `[L, H, D]`, scale)."""
    model, tokenizer = load_smollm2(getattr(torch, dtype))
    model = model.to(device)
    config = EntropyInferConfig.small()
    prompt = TASKS[task](tokenizer, length, sample)
    with kept_layer_qkv() as kept, hf.enable(model, config), torch.no_grad():
        model(prompt.prompt_ids.to(device))
    return config, kept


def selected_blocks(plan: PrefillPlan, first_segment: int) -> torch.Tensor:
    """bool `[Hkv, segments from first_segment on, key blocks]`: which blocks each plan row attends."""
    rows = plan.num_kv_heads * plan.num_segments
    indptr = plan.indptr.long()
    lengths = indptr[1:] - indptr[:-1]
    row_of = torch.repeat_interleave(torch.arange(rows, device=indptr.device), lengths)
    num_blocks = -(-plan.seq_len_tokens // plan.block_size_tokens)
    mask = torch.zeros(rows, num_blocks, dtype=torch.bool, device=indptr.device)
    mask[row_of, plan.indices[:int(indptr[-1])].long()] = True
    return mask.view(plan.num_kv_heads, plan.num_segments, num_blocks)[:, first_segment:]


def relative_error(out: torch.Tensor, oracle: torch.Tensor) -> float:
    return float((out.float() - oracle).abs().max() / oracle.abs().max().clamp(min=1e-30))


def compare_layer(q, k, v, scale: float, config: EntropyInferConfig, layer_idx: int, chunk: int) -> dict:
    """Chunked prefill of one layer through both paths: what differs (see the module docstring)."""
    from entropyinfer_sgl.kernels.sparse_prefill import sparse_prefill

    seq_len = k.shape[0]
    reference_typing = kernel_typing = None
    rows_apart = rows = 0
    pairs = {"reference": [0.0, 0.0], "kernel": [0.0, 0.0]}
    errors = {"reference": 0.0, "kernel": 0.0}
    rigid = {}
    for start in range(0, seq_len, chunk):
        end = min(seq_len, start + chunk)
        q_chunk, k_all, v_all = q[start:end], k[:end], v[:end]
        args = dict(prefix_len=start, layer_idx=layer_idx, previous_block_scores=None, prompt_len_tokens=seq_len)
        reference = plan_chunk(q_chunk, k_all, config, typing=reference_typing, **args)
        kernel = plan_chunk_on_device(q_chunk, k_all, config, typing=kernel_typing, **args)
        reference_typing, kernel_typing = reference.typing, kernel.typing
        if reference.rigid is not None:
            rigid = {"reference": reference.rigid.cpu(), "kernel": kernel.rigid.cpu()}
        if reference.plan is None or kernel.plan is None:
            continue
        first = start // config.segment_size_tokens
        apart = (selected_blocks(reference.plan, first) != selected_blocks(kernel.plan, first)).any(dim=-1)
        rows_apart, rows = rows_apart + int(apart.sum()), rows + apart.numel()
        for name, side in (("reference", reference), ("kernel", kernel)):
            computed, dense = plan_pair_counts(side.plan, start)
            pairs[name][0] += float(computed)
            pairs[name][1] += dense
        if not chunk_has_sparse_segment(start, end, config, layer_idx, seq_len):
            continue
        plan = reference.plan
        oracle = sparse_chunk_attention(q_chunk.float(), k_all.float(), v_all.float(), plan, prefix_len=start,
                                        scale=scale)
        by_sdpa = sparse_chunk_attention(q_chunk, k_all, v_all, plan, prefix_len=start, scale=scale)
        by_kernel = sparse_prefill(q_chunk, k_all, v_all, plan, prefix_len=start, scale=scale)[0]
        errors["reference"] = max(errors["reference"], relative_error(by_sdpa, oracle))
        errors["kernel"] = max(errors["kernel"], relative_error(by_kernel, oracle))
    density = {name: (c / d if d else 1.0) for name, (c, d) in pairs.items()}
    typed_apart = int((rigid["reference"] != rigid["kernel"]).sum()) if rigid else 0
    return dict(typed_apart=typed_apart, heads=len(rigid.get("reference", [])), rows_apart=rows_apart, rows=rows,
                density=density, errors=errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--task", choices=sorted(TASKS), default="passkey")
    parser.add_argument("--sample", type=int, default=0)
    parser.add_argument("--length", type=int, default=4000, help="prompt tokens (default 4000)")
    parser.add_argument("--chunk", type=int, default=2048, help="chunked-prefill tokens (default 2048)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config, kept = captured_layers(args.dtype, args.task, args.sample, args.length, args.device)
    totals = dict(typed_apart=0, heads=0, rows_apart=0, rows=0)
    worst = {"reference": 0.0, "kernel": 0.0}
    with torch.no_grad():
        for layer_idx, (q, k, v, scale) in enumerate(kept):
            found = compare_layer(q, k, v, scale, config, layer_idx, args.chunk)
            for key in totals:
                totals[key] += found[key]
            for name in worst:
                worst[name] = max(worst[name], found["errors"][name])
            print(f"layer {layer_idx}: kv heads typed apart {found['typed_apart']}/{found['heads']}, plan rows apart "
                  f"{found['rows_apart']}/{found['rows']}, density {found['density']['reference']:.3f} (reference) "
                  f"vs {found['density']['kernel']:.3f} (kernel); attention error vs float32 on the reference plan: "
                  f"SDPA {found['errors']['reference']:.2e}, kernel {found['errors']['kernel']:.2e}", flush=True)
    print(f"{args.task} sample {args.sample}, {args.length} tokens, {args.dtype} on {args.device}, chunks of "
          f"{args.chunk}: {totals['typed_apart']} of {totals['heads']} kv heads typed apart, {totals['rows_apart']} "
          f"of {totals['rows']} plan rows apart over {len(kept)} layers; worst attention error SDPA "
          f"{worst['reference']:.2e}, kernel {worst['kernel']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
