import json
from pathlib import Path

import pytest
import torch

from entropyinfer_sgl import EntropyInferConfig, head_budgets, keep_blocks

VECTORS = Path(__file__).resolve().parent / "data" / "budget_recurrence.json"  # the project's own copy


def _cases():
    data = json.loads(VECTORS.read_text())
    return data["params"], data["cases"]


def test_worked_examples_reproduce():
    params, cases = _cases()
    cfg = EntropyInferConfig.paper().replace(
        rigid_entropy_threshold=params["e_t"], entropy_growth_threshold=params["delta_t"],
        budget_growth_rate=params["alpha"], base_budget_tokens=params["base_budget_tokens"],
        max_budget_tokens=3 * params["base_budget_tokens"])
    assert len(cases) >= 5
    for case in cases:
        entropy = torch.tensor([case["entropy"]], dtype=torch.float32)
        rigid, budgets, state = head_budgets(entropy, cfg)
        assert bool(rigid[0]) == case["rigid"]
        expected = torch.tensor([case["budget_tokens"]], dtype=torch.float32)  # float32 rounding, as the prototype
        assert torch.equal(budgets, expected), (case, budgets)
        assert state is None


def test_budgets_stay_within_base_and_max(generator):
    cfg = EntropyInferConfig.paper()
    entropy = torch.rand(16, 40, generator=generator) * 8
    entropy[3] = 0.0  # a rigid head
    for causal in (False, True):
        rigid, budgets, _ = head_budgets(entropy, cfg, causal=causal)
        assert bool(rigid[3]) and torch.equal(budgets[3], torch.full((40,), 2048.0))
        assert float(budgets.min()) >= 2048 and float(budgets.max()) <= 6144
        assert torch.equal(budgets[:, 0], torch.full((16,), 2048.0))


def test_causal_typing_chunks_equal_whole_prompt(generator):
    cfg = EntropyInferConfig()
    entropy = torch.rand(6, 30, generator=generator) * 4
    entropy[1, :12] = 1e-7  # rigid for a while, then dynamic
    entropy[2] = 1e-8  # rigid throughout
    rigid, whole, _ = head_budgets(entropy, cfg)
    state, parts = None, []
    for lo, hi in ((0, 1), (1, 7), (7, 20), (20, 30)):
        r, b, state = head_budgets(entropy[:, lo:hi], cfg, state=state)
        parts.append(b)
    assert torch.equal(torch.cat(parts, dim=1), whole)
    assert torch.equal(r, rigid) and state.segments_seen == 30
    assert rigid.tolist() == [False, False, True, False, False, False]
    # A head that ends rigid gets the paper's output; one that ends dynamic gets it from its turn on.
    paper_rigid, paper, _ = head_budgets(entropy, cfg.replace(causal_head_typing=False))
    assert torch.equal(paper_rigid, rigid)
    assert torch.equal(whole[2], paper[2]) and torch.equal(whole[1, 12:], paper[1, 12:])
    assert torch.equal(whole[1, :12], torch.full((12,), 2048.0))


def test_paper_typing_refuses_state_and_nan():
    cfg = EntropyInferConfig.paper()
    _, _, state = head_budgets(torch.ones(2, 3), cfg, causal=True)
    with pytest.raises(ValueError, match="whole prompt"):
        head_budgets(torch.ones(2, 3), cfg, state=state)
    with pytest.raises(ValueError, match="NaN"):
        head_budgets(torch.tensor([[1.0, float("nan")]]), cfg)
    with pytest.raises(ValueError, match="num_kv_heads, num_segments"):
        head_budgets(torch.ones(3), cfg)


def test_keep_blocks_caps():
    # 1300 tokens, S=512, b=8: nseg=3, 128 scored blocks, cap = 128 - (276//8 + 1) = 93.
    budgets = torch.tensor([[2048.0, 300.0, 6144.0], [2048.0, 2048.0, 2048.0]])
    keep = keep_blocks(budgets, seq_len_tokens=1300, segment_size_tokens=512, block_size_tokens=8)
    assert keep.dtype == torch.int32
    assert keep.tolist() == [[0, 37, 93], [0, 64, 93]]
    with pytest.raises(ValueError, match="exceed one segment"):
        keep_blocks(budgets[:, :1], seq_len_tokens=512, segment_size_tokens=512, block_size_tokens=8)
    with pytest.raises(ValueError, match="segments"):
        keep_blocks(budgets, seq_len_tokens=3000, segment_size_tokens=512, block_size_tokens=8)
