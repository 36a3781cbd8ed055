import json

import pytest

from entropyinfer_sgl import EntropyInferConfig


def test_paper_preset_is_the_prototype():
    cfg = EntropyInferConfig.paper()
    assert (cfg.segment_size_tokens, cfg.block_size_tokens, cfg.min_sparse_len_tokens) == (512, 8, 4096)
    assert (cfg.rigid_entropy_threshold, cfg.entropy_growth_threshold, cfg.budget_growth_rate) == (1e-5, 0.4, 0.5)
    assert (cfg.base_budget_tokens, cfg.max_budget_tokens, cfg.num_dense_layers) == (2048, 6144, 1)
    assert (cfg.decode_budget_tokens, cfg.decode_delay_steps, cfg.observation_window_tokens) == (1024, 16, 32)
    assert (cfg.pooling_method, cfg.pooling_kernel_tokens, cfg.local_window_tokens) == ("avgpool", 5, 32)
    assert not cfg.per_head_budgets and not cfg.causal_head_typing
    assert cfg.decode_evict_interval_steps == 0 and not cfg.layer_fusion and cfg.sink_tokens == 0


def test_small_preset_engages_at_2k():
    cfg = EntropyInferConfig.small()
    assert cfg.min_sparse_len_tokens < 2048 - cfg.segment_size_tokens
    assert cfg.decode_budget_tokens < 2048
    assert cfg.per_head_budgets and cfg.causal_head_typing


@pytest.mark.parametrize("preset", [EntropyInferConfig, EntropyInferConfig.paper, EntropyInferConfig.small])
def test_json_round_trip(preset, tmp_path):
    cfg = preset()
    assert EntropyInferConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "cfg.json"
    path.write_text(cfg.to_json(indent=1))
    assert EntropyInferConfig.load(path) == cfg
    assert EntropyInferConfig.load(cfg.to_json()) == cfg


def test_load_preset_names():
    assert EntropyInferConfig.load("paper") == EntropyInferConfig.paper()
    assert EntropyInferConfig.load("small") == EntropyInferConfig.small()


@pytest.mark.parametrize("changes, field", [
    ({"segment_size_tokens": 0}, "segment_size_tokens"),
    ({"block_size_tokens": 7}, "block_size_tokens"),  # does not divide 512
    ({"base_budget_tokens": -1}, "base_budget_tokens"),
    ({"base_budget_tokens": 0}, "base_budget_tokens"),
    ({"max_budget_tokens": 1000}, "max_budget_tokens"),  # below base
    ({"rigid_entropy_threshold": float("nan")}, "rigid_entropy_threshold"),
    ({"budget_growth_rate": -0.1}, "budget_growth_rate"),
    ({"pooling_method": "median"}, "pooling_method"),
    ({"pooling_kernel_tokens": 4}, "pooling_kernel_tokens"),
    ({"decode_budget_tokens": 32}, "decode_budget_tokens"),  # not above the local window
    ({"head_budget_floor_fraction": 1.5}, "head_budget_floor_fraction"),
    ({"per_head_budgets": "yes"}, "per_head_budgets"),
    ({"float32_block_scores": 1}, "float32_block_scores"),
    ({"segment_size_tokens": 512.0}, "segment_size_tokens"),
    ({"decode_gqa_reduction": "sum"}, "decode_gqa_reduction"),
    # re-compression would score with observation-window keys the previous compression evicted
    ({"decode_evict_interval_steps": 2, "local_window_tokens": 8, "observation_window_tokens": 32},
     "decode_evict_interval_steps"),
])
def test_validation_names_field_and_value(changes, field):
    with pytest.raises(ValueError, match=field):
        EntropyInferConfig(**changes)


def test_unknown_field_and_bad_json():
    with pytest.raises(ValueError, match="unknown EntropyInferConfig field"):
        EntropyInferConfig.from_dict({"segment_size": 512})
    with pytest.raises(ValueError, match="not valid"):
        EntropyInferConfig.from_json("{nope")
    with pytest.raises(ValueError, match="schema_version"):
        EntropyInferConfig.from_dict({"schema_version": 99})
    with pytest.raises(ValueError, match="neither"):
        EntropyInferConfig.load("/does/not/exist.json")


def test_frozen():
    cfg = EntropyInferConfig()
    with pytest.raises(Exception):
        cfg.segment_size_tokens = 3  # type: ignore[misc]
    assert json.loads(cfg.to_json())["segment_size_tokens"] == 512
