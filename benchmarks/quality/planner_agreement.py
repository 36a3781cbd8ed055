"""Do two ways of planning the prefill agree on a real model's queries and keys? Runs SmolLM2 through `hf.enable`
(the default config) on one task prompt, keeps every planned layer's post-RoPE q/k, and plans each layer twice:

- `--compare precision`: the reference planner on the model's q/k as they are (`--dtype`) and on the same values
  upcast to float32: which kv heads are typed differently, how far the budgets move, which plan rows (kv head x
  segment) select other blocks;
- `--compare device`: the reference planner against the kernel path's device planner (`plan_prefill_device`; on
  the CPU only under TRITON_INTERPRET=1, whose bfloat16 is not faithful: use float32 there).

    TRITON_INTERPRET=1 python benchmarks/quality/planner_agreement.py --compare device --dtype float32
    python benchmarks/quality/planner_agreement.py --compare precision --dtype bfloat16 --task vartrack --sample 0

Used for issue 18's server table (QUALITY.md "Through the SGLang server on the GPU"): one line per layer, then the
totals.
"""

from __future__ import annotations

import argparse

import torch

from entropyinfer_sgl.core.config import EntropyInferConfig
from entropyinfer_sgl.core.plan import PrefillPlan, plan_prefill
from entropyinfer_sgl.core.profile import HeadProfile, profile_prefill
from entropyinfer_sgl.evaluation.tasks import TASKS
from kernel_path_agreement import captured_layers, selected_blocks  # this folder's sibling script


def plans(q: torch.Tensor, k: torch.Tensor, config: EntropyInferConfig, compare: str, layer_idx: int
          ) -> tuple[HeadProfile, PrefillPlan, HeadProfile, PrefillPlan]:
    """(profile, plan) of the reference planner, then of the other side."""
    prompt_len = q.shape[0]
    reference = profile_prefill(q, k, config)
    reference_plan = plan_prefill(reference, config, layer_idx=layer_idx, prompt_len_tokens=prompt_len)
    if compare == "precision":
        other = profile_prefill(q.float(), k.float(), config)
        return reference, reference_plan, other, plan_prefill(other, config, layer_idx=layer_idx,
                                                              prompt_len_tokens=prompt_len)
    from entropyinfer_sgl.core.device_plan import plan_prefill_device

    other, plan = plan_prefill_device(q, k, config, layer_idx=layer_idx, prompt_len_tokens=prompt_len)
    return reference, reference_plan, other, plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=("precision", "device"), required=True)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--task", choices=sorted(TASKS), default="passkey")
    parser.add_argument("--sample", type=int, default=0)
    parser.add_argument("--length", type=int, default=4000, help="prompt tokens (default 4000)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config, kept = captured_layers(args.dtype, args.task, args.sample, args.length)
    typed_apart = heads = rows_apart = rows = 0
    for index, (q, k, _, _) in enumerate(kept):
        layer_idx = index  # the adapter profiles every layer of the prompt (the dense ones too, for typing)
        reference, reference_plan, other, other_plan = plans(q, k, config, args.compare, layer_idx)
        apart = int((reference.rigid != other.rigid).sum())
        typed_apart, heads = typed_apart + apart, heads + reference.rigid.numel()
        blocks_apart = (selected_blocks(reference_plan, 0) != selected_blocks(other_plan, 0)).any(dim=-1)
        rows_apart, rows = rows_apart + int(blocks_apart.sum()), rows + blocks_apart.numel()
        budget_move = (reference.budget_tokens.float() - other.budget_tokens.float()).abs().mean().item()
        print(f"layer {layer_idx}: rigid {reference.rigid.float().mean():.3f} vs {other.rigid.float().mean():.3f}, "
              f"kv heads typed apart {apart}/{reference.rigid.numel()}, mean |budget change| {budget_move:.1f} "
              f"tokens, plan rows apart {int(blocks_apart.sum())}/{blocks_apart.numel()}, density "
              f"{reference_plan.density():.3f} vs {other_plan.density():.3f}")
    print(f"{args.task} sample {args.sample}, {args.length} tokens, {args.dtype}, {args.compare}: "
          f"{typed_apart} of {heads} kv heads typed apart, {rows_apart} of {rows} plan rows (kv head x segment) "
          f"select other blocks, over {len(kept)} layers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
