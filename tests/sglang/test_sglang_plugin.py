"""The plugin inside SGLang's own argument handling, in this process (no server): registration, CLI flags,
config carried on ServerArgs, and the configurations refused at startup."""

from __future__ import annotations

import argparse
import json
import os
import pickle

import pytest

from sglang_helpers import DISABLED, ENGAGED, require_entry_point, requires_sglang, tiny_model  # noqa: F401

pytestmark = requires_sglang


@pytest.fixture(scope="module")
def sglang_args():
    require_entry_point()
    saved = dict(os.environ)
    from entropyinfer_sgl.sglang import compat, plugin

    compat.load_plugins()  # SGLang's loader runs our entry point
    assert plugin.is_registered()
    from sglang.srt.server_args import ServerArgs

    yield ServerArgs
    os.environ.clear()
    os.environ.update(saved)


def _parse(server_args_cls, argv):
    """What SGLang's launchers do: parse, build the record, resolve it (0.5.17 resolves at construction)."""
    from entropyinfer_sgl.sglang import compat

    parser = argparse.ArgumentParser()
    server_args_cls.add_cli_args(parser)
    return compat.resolve_server_args(server_args_cls.from_cli_args(parser.parse_args(argv)))


def _build(server_args_cls, **kwargs):
    """What `sgl.Engine(**kwargs)` does: build the record from keywords and resolve it."""
    from entropyinfer_sgl.sglang import compat

    return compat.resolve_server_args(server_args_cls(**kwargs))


def test_registered_once(sglang_args):
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.plugins.hook_registry import HookRegistry
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES

    from entropyinfer_sgl.sglang import compat, plugin

    hooks = {t: len(h) for t, h in HookRegistry._hooks.items()}
    ours = compat.hook_registrations()
    plugin.register()
    plugin.ensure_loaded()
    assert {t: len(h) for t, h in HookRegistry._hooks.items()} == hooks
    assert compat.hook_registrations() == ours
    assert ATTENTION_BACKEND_CHOICES.count("entropyinfer") == 1 and "entropyinfer" in ATTENTION_BACKENDS
    expected = {compat.TARGET_ADD_CLI_ARGS: 1, compat.TARGET_FROM_CLI_ARGS: 1, compat.TARGET_SUPPORT_TRITON: 1,
                compat.TARGET_REQ_POOL_FREE: 1, compat.TARGET_REQ_POOL_CLEAR: 1, compat.TARGET_REQ_INIT: 1,
                compat.TARGET_DECODE_GRAPH_CAN_RUN: 1, compat.TARGET_CELL_SIZE: 1, compat.TARGET_REQ_POOL_ALLOC: 1,
                compat.TARGET_RUN_BATCH: 1, compat.TARGET_VALIDATE_REQUEST: 1, compat.TARGET_STREAM_START: 1,
                **{target: 1 for target in compat.TARGETS_OPENAI_VALIDATE}}
    if compat.SGLANG_VERSION == "0.5.17":  # resolution is ServerArgs.__post_init__: BEFORE and AFTER hooks
        expected["sglang.srt.server_args.ServerArgs.__post_init__"] = 2
    else:  # 0.5.23: SGLang's resolution hooks, no hook on ServerArgs' methods beyond the CLI pair
        expected.update({"resolution:handle_cuda_graph_config": 1, "resolution:handle_other_validations": 1})
    assert ours == expected


def test_cli_flags_select_the_backend_and_carry_the_config(sglang_args, tiny_model):
    from entropyinfer_sgl.sglang import compat, policy

    sa = _parse(sglang_args, ["--model-path", str(tiny_model), "--device", "cpu", "--enable-entropyinfer",
                              "--entropyinfer-config", json.dumps(ENGAGED)])
    assert compat.resolved_field(sa, "attention_backend") == "entropyinfer"
    assert compat.resolved_field(sa, "disable_cuda_graph")  # turned off for the method
    assert not policy._graph_phase_backends(compat.resolved_field(sa, "cuda_graph_config"))  # no phase enabled
    carried = json.loads(sa._entropyinfer["config"])
    assert {k: carried[k] for k in ENGAGED} == ENGAGED
    assert json.loads(os.environ["ENTROPYINFER_CONFIG"]) == carried  # inherited by spawned processes
    assert pickle.loads(pickle.dumps(sa))._entropyinfer == sa._entropyinfer  # survives the spawn to the scheduler

    from entropyinfer_sgl.sglang.plugin import resolve_config

    assert resolve_config(sa).decode_budget_tokens == ENGAGED["decode_budget_tokens"]


def test_engine_style_construction_reads_the_environment(sglang_args, tiny_model, monkeypatch):
    monkeypatch.setenv("ENTROPYINFER_CONFIG", json.dumps(DISABLED))
    from entropyinfer_sgl.sglang import compat

    sa = _build(sglang_args, model_path=str(tiny_model), device="cpu", attention_backend="entropyinfer")
    assert json.loads(sa._entropyinfer["config"])["base_budget_tokens"] == DISABLED["base_budget_tokens"]
    assert pickle.loads(pickle.dumps(sa))._entropyinfer == sa._entropyinfer
    dense = _build(sglang_args, model_path=str(tiny_model), device="cpu", attention_backend="torch_native")
    assert getattr(dense, "_entropyinfer", None) is None and not compat.resolved_field(dense, "disable_cuda_graph")


@pytest.mark.parametrize("argv, message", [
    (["--enable-entropyinfer", "--attention-backend", "triton"], "cannot be combined with --attention-backend triton"),
    (["--entropyinfer-config", "small"], "needs --enable-entropyinfer"),
    (["--enable-entropyinfer", "--entropyinfer-config", '{"segment_size_tokens": 30}'], "block_size_tokens"),
    (["--enable-entropyinfer", "--entropyinfer-config", "/no/such/file.json"], "neither a preset"),
    (["--enable-entropyinfer", "--entropyinfer-config",
      json.dumps(dict(ENGAGED, local_window_tokens=0, decode_evict_interval_steps=4))], "re-compression"),
])
def test_bad_cli_input_is_refused(sglang_args, tiny_model, argv, message):
    with pytest.raises(ValueError, match=message):
        _parse(sglang_args, ["--model-path", str(tiny_model), "--device", "cpu", *argv])


@pytest.mark.parametrize("kwargs, message", [
    ({"enable_mixed_chunk": True}, "enable-mixed-chunk"),
    ({"speculative_algorithm": "NGRAM"}, "speculative decoding"),
    ({"tp_size": 2}, "tp-size=2"),
    ({"enable_torch_compile": True}, "torch-compile"),
    ({"cuda_graph_backend_decode": "full"}, "CUDA graphs"),
    ({"prefill_attention_backend": "torch_native"}, "must serve both prefill and decode"),
    ({"kv_cache_dtype": "fp8_e4m3"}, "quantized KV"),
    ({"enable_hierarchical_cache": True}, "HiCache"),
])
def test_unsupported_combinations_are_refused_at_startup(sglang_args, tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _build(sglang_args, model_path=str(tiny_model), device="cpu", attention_backend="entropyinfer", **kwargs)


def test_free_memory_turns_the_overlap_scheduler_off_or_is_refused(sglang_args, tiny_model, monkeypatch):
    """Phase 2 (decode_free_memory) frees pool slots between a forward and its results: SGLang 0.5.17 with page
    size 1 only, overlap scheduler off."""
    from entropyinfer_sgl.sglang import compat

    monkeypatch.setenv("ENTROPYINFER_CONFIG", json.dumps(dict(ENGAGED, decode_free_memory=True)))
    if not compat.free_memory_supported():
        with pytest.raises(ValueError, match="phase 2 runs on sglang 0.5.17 only"):
            _build(sglang_args, model_path=str(tiny_model), device="cpu", attention_backend="entropyinfer")
        return
    sa = _build(sglang_args, model_path=str(tiny_model), device="cpu", attention_backend="entropyinfer")
    assert compat.resolved_field(sa, "disable_overlap_schedule")
    with pytest.raises(ValueError, match="page-size=16"):
        _build(sglang_args, model_path=str(tiny_model), device="cpu", attention_backend="entropyinfer", page_size=16)
    monkeypatch.setenv("ENTROPYINFER_CONFIG", json.dumps(ENGAGED))  # phase 1 leaves SGLang's choice alone
    sa = _build(sglang_args, model_path=str(tiny_model), device="cpu", attention_backend="entropyinfer")
    assert compat.resolved_field(sa, "disable_overlap_schedule") == compat.resolved_field(
        _build(sglang_args, model_path=str(tiny_model), device="cpu", attention_backend="torch_native"),
        "disable_overlap_schedule")


def test_no_decode_graphs_on_cpu(sglang_args, tiny_model):
    from entropyinfer_sgl.sglang import policy

    assert not policy.decode_graphs_supported(_build(sglang_args, model_path=str(tiny_model), device="cpu"))


def test_decode_graphs_stay_where_the_method_captures_them(sglang_args, tiny_model, monkeypatch):
    """Where EntropyInfer can capture its decode (CUDA, kernel path, 0.5.17): prefill graphs off, decode graphs
    left to SGLang (full allowed, other backends and prefill graphs refused)."""
    from entropyinfer_sgl.sglang import compat, policy

    if not compat.release_captures_decode():
        pytest.skip(f"sglang {compat.SGLANG_VERSION}: EntropyInfer keeps every CUDA graph off with this release")
    monkeypatch.setattr(policy, "decode_graphs_supported", lambda sa: True)
    sa = _build(sglang_args, model_path=str(tiny_model), device="cpu", attention_backend="entropyinfer")
    assert compat.resolved_field(sa, "disable_prefill_cuda_graph") or compat.SGLANG_VERSION != "0.5.17"
    assert not compat.resolved_field(sa, "disable_cuda_graph")
    _build(sglang_args, model_path=str(tiny_model), device="cpu", attention_backend="entropyinfer",
           cuda_graph_backend_decode="full")
    for kwargs in ({"cuda_graph_backend_prefill": "full"}, {"cuda_graph_backend_decode": "breakable"}):
        with pytest.raises(ValueError, match="captures only the decode phase"):
            _build(sglang_args, model_path=str(tiny_model), device="cpu", attention_backend="entropyinfer", **kwargs)


def test_side_tables_are_charged_per_pool_token(sglang_args, tiny_model, monkeypatch):
    """SGLang's per-token KV cost grows by the share of a compressible request's decode table and observation
    windows (one such request per decode_budget_tokens + 1 pool tokens), only for servers running the method with
    decode compression."""
    from types import SimpleNamespace

    import torch

    from entropyinfer_sgl.sglang import plugin

    def kvc(**kwargs):
        sa = _build(sglang_args, model_path=str(tiny_model), device="cpu", **kwargs)
        model = SimpleNamespace(num_hidden_layers=32, get_num_kv_heads=lambda tp_size: 8 // tp_size,
                                get_num_attention_heads=lambda tp_size: 32 // tp_size, head_dim=128,
                                dtype=torch.bfloat16)
        return SimpleNamespace(server_args=sa, model_config=model, ps=SimpleNamespace(attn_tp_size=1))

    monkeypatch.setenv("ENTROPYINFER_CONFIG", json.dumps({"decode_budget_tokens": 1024}))
    per_table = 4 * 32 * (8 * (1024 + 1) + 1)
    per_windows = 32 * 32 * 32 * (128 * 2 + 4)  # layers x W x Hq x (D x bf16 + a float32 log-sum-exp): ~8 MiB
    assert plugin._side_table_bytes_per_token(kvc(attention_backend="entropyinfer"), 0) == \
        -(-(per_table + per_windows) // 1025)
    assert plugin._side_table_bytes_per_token(kvc(attention_backend="torch_native"), 0) == 0
    monkeypatch.setenv("ENTROPYINFER_CONFIG", json.dumps({"decode_compression": False}))
    assert plugin._side_table_bytes_per_token(kvc(attention_backend="entropyinfer"), 0) == 0


@pytest.mark.parametrize("choice, enabled, base_budget", [
    ({"enabled": False}, False, 512), ({"enabled": True}, True, 512), ({"base_budget_tokens": 64}, True, 64),
])
def test_request_settings_are_read_at_admission(sglang_args, choice, enabled, base_budget):
    """What the ReqToTokenPool.alloc hook records per request (kept until SGLang frees the request)."""
    from types import SimpleNamespace

    from entropyinfer_sgl.core.config import EntropyInferConfig
    from entropyinfer_sgl.runtime.requests import STORE
    from entropyinfer_sgl.sglang import plugin

    saved = STORE.config
    STORE.config = EntropyInferConfig.small()
    try:
        req = SimpleNamespace(rid="override-unit", req_pool_idx=0, origin_input_ids=[1, 2, 3], output_ids=[],
                              sampling_params=SimpleNamespace(custom_params={"entropyinfer": choice, "other": 1}))
        plugin._on_request_admitted(req)
        settings = STORE.request_settings("override-unit")
        assert settings.enabled is enabled and settings.config.base_budget_tokens == base_budget
        STORE.free("override-unit")
        assert STORE.request_settings("override-unit") is None
        plugin._on_request_admitted(SimpleNamespace(rid="plain", origin_input_ids=[1], output_ids=[],
                                                    sampling_params=SimpleNamespace(custom_params=None)))
        assert STORE.request_settings("plain") is None
        STORE.free("plain")
        # a malformed value that came around the request validation hook: failed (400), never run otherwise
        bad = SimpleNamespace(rid="bad-unit", origin_input_ids=[1], output_ids=[],
                              sampling_params=SimpleNamespace(custom_params={"entropyinfer": {"enabled": "no"}}))
        plugin._on_request_admitted(bad)
        assert bad.to_finish.status_code == 400 and "must be true or false" in bad.to_finish.message
        STORE.free("bad-unit")
    finally:
        STORE.config = saved


@pytest.mark.parametrize("facts, problem", [
    (dict(input_ids=[1, 2, 100000]), "input_ids[2]=100000 is not a token id of this model"),
    (dict(input_ids=[-1, 2]), "input_ids[0]=-1"),
    (dict(input_ids=[]), "no input tokens"),
    (dict(custom_params="notadict"), "custom_params must be a JSON object"),
    (dict(custom_params={"entropyinfer": 5}), 'custom_params["entropyinfer"] must be a JSON object'),
    (dict(custom_params={"entropyinfer": {"enabled": "yes"}}), '["enabled"]=\'yes\': must be true or false'),
    (dict(custom_params={"entropyinfer": {"budget": 3}}), "unknown field(s) 'budget'; accepted:"),
    (dict(custom_params={"entropyinfer": {"decode_budget_tokens": 10 ** 6}}), "above the server's"),
    (dict(input_ids=[1, 2, 3], custom_params={"entropyinfer": {"enabled": False}}), None),
    (dict(input_ids=[], multimodal=True), None),
])
def test_requests_refused_before_scheduling(sglang_args, facts, problem):
    """The request validation hook's check: the message SGLang answers the 400 with (None: accepted). Only a
    server with the entropyinfer backend refuses."""
    from entropyinfer_sgl.sglang import compat, plugin

    served = _parse(sglang_args, ["--model-path", "dummy", "--enable-entropyinfer", "--entropyinfer-config", "small"])
    dense = _parse(sglang_args, ["--model-path", "dummy"])
    base = dict(custom_params=None, input_ids=None, vocab_size=49152, multimodal=False)
    message = plugin._request_problem(compat.RequestFacts(server_args=served, **{**base, **facts}))
    assert (message is None) if problem is None else (problem in message), message
    assert plugin._request_problem(compat.RequestFacts(server_args=dense, **{**base, **facts})) is None


def test_support_triton_is_false_for_the_cpu_path(sglang_args):
    from sglang.srt.utils import common

    from entropyinfer_sgl.sglang import compat

    if compat.SGLANG_VERSION == "0.5.17":  # a name blocklist there: only the hook makes `entropyinfer` False
        assert common.support_triton("triton")
    assert not common.support_triton("entropyinfer")  # torch_native underneath on this (CPU) machine


@pytest.mark.parametrize("extra, reason", [
    (["--entropyinfer-config", "{bad"], "error: --entropyinfer-config: EntropyInferConfig JSON is not valid"),
    (["--entropyinfer-config", '{"base_budget_tokens": -1}'],
     "error: --entropyinfer-config: EntropyInferConfig.base_budget_tokens=-1: must be >= 1"),
    (["--tp-size", "2"], "error: EntropyInfer (--enable-entropyinfer / --attention-backend entropyinfer) does not "
                         "support yet: --tp-size=2"),
])
def test_startup_refusals_are_one_line_and_exit_1(tiny_model, tmp_path, extra, reason):
    """`python -m sglang.launch_server ... --enable-entropyinfer` with a configuration the plugin refuses ends with
    one `error: <reason>` line and exit status 1, without a traceback (before any model is loaded)."""
    import sys

    from sglang_helpers import run

    proc = run([sys.executable, "-m", "sglang.launch_server", "--model-path", str(tiny_model), "--device", "cpu",
                "--enable-entropyinfer", *extra], timeout=180, log=tmp_path / "start.log")
    assert proc.returncode == 1, proc.stdout
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(reason), proc.stdout
    assert "Traceback" not in proc.stdout, proc.stdout
