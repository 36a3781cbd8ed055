"""Every Triton kernel compiles for Hopper (sm_90) with the launches the GPU defaults pick, on a machine without a GPU.

The interpreter runs the kernels' logic on the CPU, but it never compiles them: a kernel the interpreter accepts
can still fail on a GPU (a `tl.dot` shape or precision the MMA lowering refuses, a layout conversion, too much
shared memory for the default stages). GPU time is scarce, so this test compiles them here, as the GPU would:

1. under the interpreter (this process), the serving entry points run on small inputs with the GPU's launch
   heuristics (`interpret_mode` reads False in the modules that pick tiles), and every kernel launch is recorded:
   its argument types, constexprs, warps and stages;
2. a subprocess without TRITON_INTERPRET compiles each distinct launch for `GPUTarget("cuda", 90, 32)` down to a
   cubin (Triton's bundled ptxas), in bfloat16 where the capture ran float16 (the interpreter refuses bfloat16;
   the GPU's models run in it), and checks that each fits Hopper's shared memory per block (a launch that does
   not fails with "out of resources" at run time, after compiling).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import HAS_CUDA

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="on a GPU machine the -m gpu tests compile and run these kernels")

KERNEL_MODULES = ("sparse_prefill", "entropy_profile", "budget_scan", "compressed_decode", "observation_scores")
TILE_MODULES = ("sparse_prefill", "compressed_decode", "observation_scores")  # their launch heuristics
POINTER_TYPES = {torch.float16: "*bf16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int32: "*i32",
                 torch.int64: "*i64", torch.bool: "*i1", torch.uint8: "*u8", torch.int8: "*i8"}
OPTIONS = ("num_warps", "num_stages")

COMPILE = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

HOPPER_SHARED_BYTES = 232448  # 227 KiB: the most shared memory one block may use on an H100 or H200
failures = []
for launch in json.load(sys.stdin):
    kernel = getattr(importlib.import_module(launch["module"]), launch["name"])
    # what a launch specializes on (Triton's default): 16-byte aligned pointers, integers divisible by 16 (not for
    # `do_not_specialize` ones). Without it no load is provably aligned, so none is pipelined (cp.async).
    attrs = {(i,): [["tt.divisibility", 16]] for i, param in enumerate(kernel.params)
             if param.name in launch["aligned"] and not param.do_not_specialize}
    source = ASTSource(kernel, launch["signature"], launch["constexprs"], attrs)
    where = f"{launch['name']} {launch['constexprs']} {launch['options']}"
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=launch["options"])
    except Exception as err:  # the test reports every failing launch, not only the first
        failures.append(f"{where}: {type(err).__name__}: {err}")
        continue
    if compiled.metadata.shared > HOPPER_SHARED_BYTES:  # the launch itself would fail: out of resources
        failures.append(f"{where}: needs {compiled.metadata.shared} bytes of shared memory, Hopper has "
                        f"{HOPPER_SHARED_BYTES} per block")
print(json.dumps(failures))
"""


def _argument_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return POINTER_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i64" if abs(value) >= 2 ** 31 else "i32"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a {type(value).__name__} argument")


def _aligned(value) -> bool:
    """What Triton specializes a launch on: a 16-byte aligned tensor, an integer divisible by 16."""
    if isinstance(value, torch.Tensor):
        return value.data_ptr() % 16 == 0
    return isinstance(value, int) and not isinstance(value, bool) and value % 16 == 0


class _Recorder:
    """Stands in for one kernel: records each launch's signature, then launches it."""

    def __init__(self, module: str, name: str, kernel, launches: list[dict]):
        self.module, self.name, self.kernel, self.launches = module, name, kernel, launches
        parameters = inspect.signature(kernel.fn).parameters
        self.arg_names = list(parameters)
        self.constexpr = {n for n, p in parameters.items() if "constexpr" in str(p.annotation)}

    def __getitem__(self, grid):
        launcher = self.kernel[grid]

        def launch(*args, **kwargs):
            values = dict(zip(self.arg_names, args), **{k: v for k, v in kwargs.items() if k not in OPTIONS})
            signature = {n: "constexpr" if n in self.constexpr else _argument_type(values[n]) for n in self.arg_names}
            aligned = [n for n in self.arg_names if n not in self.constexpr and _aligned(values[n])]
            self.launches.append(dict(
                module=self.module, name=self.name, signature=signature, aligned=aligned,
                constexprs={n: values[n] for n in self.constexpr},
                options={k: kwargs.get(k, default) for k, default in zip(OPTIONS, (4, 3))}))
            return launcher(*args, **kwargs)
        return launch


def _serving_launches(monkeypatch) -> list[dict]:
    """Run the serving entry points at the 8B model's head geometry (group 4, head_dim 128: the GPU defaults'
    packed-GQA prefill and 128-key decode tiles) and record their kernel launches."""
    from entropyinfer_sgl import EntropyInferConfig
    from entropyinfer_sgl.core.device_plan import plan_prefill_device
    from entropyinfer_sgl.kernels.compressed_decode import DecodeLaunch, PoolRows
    from entropyinfer_sgl.kernels.observation_scores import window_attention, window_log_sum_exp
    from entropyinfer_sgl.kernels.sparse_prefill import sparse_prefill, sparse_prefill_varlen

    launches: list[dict] = []
    for short in KERNEL_MODULES:
        module = importlib.import_module(f"entropyinfer_sgl.kernels.{short}")
        for name, value in vars(module).items():
            if name.startswith("_") and name.endswith("_kernel") and hasattr(value, "fn"):
                monkeypatch.setattr(module, name, _Recorder(module.__name__, name, value, launches))
        if short in TILE_MODULES:
            monkeypatch.setattr(module, "interpret_mode", lambda: False)

    gen = torch.Generator().manual_seed(0)
    hq, hkv, d, dtype = 8, 2, 128, torch.float16

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    config = EntropyInferConfig().replace(min_sparse_len_tokens=1024)
    q, k, v = randn(1536, hq, d), randn(1536, hkv, d), randn(1536, hkv, d)
    _, plan = plan_prefill_device(q, k, config, layer_idx=1)
    sparse_prefill(q, k, v, plan)
    _, short_plan = plan_prefill_device(q[:1024], k[:1024], config, layer_idx=1)
    sparse_prefill_varlen(torch.cat([q, q[:1024]]), torch.cat([k, k[:1024]]), torch.cat([v, v[:1024]]),
                          [plan, short_plan])

    pool_k, pool_v = randn(400, hkv, d), randn(400, hkv, d)
    slots = torch.randperm(400, generator=gen)[:300]
    window = randn(32, hq, d)
    lse = window_log_sum_exp(window, pool_k, slots=slots)
    window_attention(window, pool_k, slots=slots, row_lse=lse)
    window_attention(window, pool_k, slots=slots, reduction="max")

    batch, tables, kept = 3, 2, 64
    q1 = randn(batch, hq, d)
    kept_indices = torch.randint(0, 400, (tables, hkv, kept), generator=gen, dtype=torch.int32)
    kept_lengths = torch.full((tables, hkv), kept, dtype=torch.int32)
    rows = PoolRows(req_to_token=torch.randint(0, 400, (4, 256), generator=gen, dtype=torch.int32),
                    row_indices=torch.tensor([0, 2, 3]), seq_lens=torch.tensor([200, 256, 9], dtype=torch.int32),
                    table_of_row=torch.tensor([0, -1, -1, 1], dtype=torch.int32),
                    tail_starts=torch.tensor([150, 5], dtype=torch.int32))
    lse_table = torch.full((5, hq), float("nan"))
    for num_splits in (1, 3):  # direct, and split + reduce
        launch = DecodeLaunch(q1, pool_k, pool_v, kept_indices, num_splits=num_splits, pool_rows=rows)
        launch.run(q1, pool_k, pool_v, kept_indices, kept_lengths, pool_rows=rows,
                   lse_rows=(lse_table, torch.tensor([4, 0, 2])))
    return launches


def _distinct(launches: list[dict]) -> list[dict]:
    seen, out = set(), []
    for launch in launches:
        key = json.dumps(launch, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(launch)
    return out


def _ptxas_available() -> bool:
    """Triton's bundled ptxas (or the one TRITON_PTXAS_PATH names): what turns the PTX into a cubin."""
    nvidia = pytest.importorskip("triton.backends.nvidia")
    bundled = Path(nvidia.__file__).parent / "bin" / "ptxas"
    return bundled.is_file() or bool(os.environ.get("TRITON_PTXAS_PATH"))


def test_kernels_compile_for_hopper(monkeypatch):
    if not _ptxas_available():
        pytest.skip("no ptxas: this Triton cannot compile for NVIDIA GPUs here")
    launches = _distinct(_serving_launches(monkeypatch))
    names = {launch["name"] for launch in launches}
    assert names >= {"_sparse_prefill_kernel", "_softmax_partials_kernel", "_block_entropy_kernel",
                     "_window_lse_kernel", "_window_scores_kernel", "_compressed_decode_split_kernel",
                     "_compressed_decode_reduce_kernel"}, names
    packed = [launch for launch in launches if launch["name"] == "_sparse_prefill_kernel"]
    assert {launch["constexprs"]["VARLEN"] for launch in packed} == {False, True}
    assert all(launch["constexprs"]["HEAD_ROWS"] == 4 and launch["options"]["num_warps"] == 8 for launch in packed)
    scores = [launch for launch in launches if launch["name"] == "_window_scores_kernel"]
    assert {launch["constexprs"]["GIVEN_LSE"] for launch in scores} == {False, True}
    assert any(launch["constexprs"].get("LSE_ROWS") for launch in launches
               if launch["name"] == "_compressed_decode_reduce_kernel")

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    python = str(Path(__file__).resolve().parents[2] / "python")
    env["PYTHONPATH"] = os.pathsep.join([python] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    result = subprocess.run([sys.executable, "-c", COMPILE], input=json.dumps(launches), capture_output=True,
                            text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(failures)
