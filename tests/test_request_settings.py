"""A request's own EntropyInfer settings (custom_params) against the server's config: what is accepted, what is
refused and with which message, and what the request then runs with."""

from __future__ import annotations

import pytest

from entropyinfer_sgl.core.config import EntropyInferConfig
from entropyinfer_sgl.runtime.request_settings import REQUEST_FIELDS, parse_request_settings

SERVER = EntropyInferConfig.small()


def _settings(choice):
    return parse_request_settings({"entropyinfer": choice}, SERVER)


def test_the_request_fields_are_config_fields():
    names = set(SERVER.to_dict())
    assert set(REQUEST_FIELDS[1:]) <= names


@pytest.mark.parametrize("custom_params", [None, {}, {"thinking_budget": 3}])
def test_no_setting_runs_the_servers(custom_params):
    assert parse_request_settings(custom_params, SERVER) is None


def test_lower_budgets_and_delay_run_with_them():
    s = _settings({"base_budget_tokens": 64, "max_budget_tokens": 128, "decode_budget_tokens": 100,
                   "decode_delay_steps": 40})
    assert s.enabled and s.own_prefill_budgets
    assert (s.config.base_budget_tokens, s.config.max_budget_tokens, s.config.decode_budget_tokens,
            s.config.decode_delay_steps) == (64, 128, 100, 40)
    assert s.config.replace(base_budget_tokens=512, max_budget_tokens=1536, decode_budget_tokens=256,
                            decode_delay_steps=SERVER.decode_delay_steps) == SERVER  # nothing else changed
    assert not _settings({"decode_budget_tokens": 100}).own_prefill_budgets
    off = _settings({"enabled": False})
    assert not off.enabled and off.config == SERVER


@pytest.mark.parametrize("custom_params, message", [
    ("notadict", "custom_params must be a JSON object"),
    ({"entropyinfer": 5}, 'custom_params["entropyinfer"] must be a JSON object, got int 5; accepted: {"enabled"'),
    ({"entropyinfer": {"enabled": "yes"}}, 'custom_params["entropyinfer"]["enabled"]=\'yes\': must be true or false'),
    ({"entropyinfer": {"enabled": False, "budget": 1}}, "unknown field(s) 'budget'"),
    ({"entropyinfer": {"base_budget_tokens": 4096}},
     'custom_params["entropyinfer"]["base_budget_tokens"]=4096: above the server\'s base_budget_tokens=512'),
    ({"entropyinfer": {"decode_budget_tokens": 257}}, "above the server's decode_budget_tokens=256"),
    ({"entropyinfer": {"max_budget_tokens": 100}}, "EntropyInferConfig.max_budget_tokens=100: must be >= "
                                                   "base_budget_tokens=512"),
    ({"entropyinfer": {"decode_budget_tokens": 40}}, "must exceed sink_tokens + local_window_tokens = 40"),
    ({"entropyinfer": {"decode_delay_steps": -1}}, "decode_delay_steps=-1: must be >= 0"),
    ({"entropyinfer": {"decode_delay_steps": 2.5}}, '["decode_delay_steps"]=2.5: must be an integer'),
    ({"entropyinfer": {"base_budget_tokens": True}}, "must be an integer"),
    ({"entropyinfer": {"enabled": False, "decode_budget_tokens": 100}}, 'given with "enabled": false'),
])
def test_malformed_unknown_or_out_of_bounds_is_refused(custom_params, message):
    with pytest.raises(ValueError) as err:
        parse_request_settings(custom_params, SERVER)
    assert message in str(err.value)


def test_decode_settings_need_decode_compression():
    server = SERVER.replace(decode_compression=False)
    with pytest.raises(ValueError, match="runs without decode compression"):
        parse_request_settings({"entropyinfer": {"decode_delay_steps": 4}}, server)
    assert parse_request_settings({"entropyinfer": {"base_budget_tokens": 64}}, server).config.base_budget_tokens == 64
