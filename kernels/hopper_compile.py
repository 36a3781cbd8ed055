"""Compile every Triton kernel for Hopper (sm_90) without a GPU: the launches the serving entry points make, with the
GPU's launch heuristics. `python kernels/hopper_compile.py [--triton-path DIR]` prints one row per distinct launch:
shared memory, registers and spills (ptxas -v), pipelined loads (cp.async) and wgmma ops, or the compile error.

Why: the Triton interpreter (how the CPU tests run the kernels) never compiles them, so a launch it runs can still
fail on the GPU (a lowering Triton refuses, more shared memory than a block may use), and GPU time is scarce.

1. `record_launches()` (in a process under TRITON_INTERPRET=1): runs the entry points on small inputs at the 8B
   model's head geometry (group 4, head_dim 128) with the modules that pick tiles told they are not interpreted,
   and records each kernel launch: argument types, which arguments a real launch would specialize as 16-byte
   aligned or divisible by 16, constexprs, warps and stages. float16 stands in for bfloat16 (the interpreter
   refuses bfloat16) and is compiled as bfloat16.
2. `compile_launches(launches)`: a subprocess without TRITON_INTERPRET compiles each for
   `GPUTarget("cuda", 90, 32)` to a cubin with Triton's bundled ptxas. Without the alignment specializations no load
   is provably aligned and nothing would be pipelined, unlike on the GPU.

tests/kernel_tests/test_hopper_compile.py runs both and fails on any compile error or launch over Hopper's shared
memory per block.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNEL_MODULES = ("sparse_prefill", "entropy_profile", "budget_scan", "compressed_decode", "observation_scores")
TILE_MODULES = ("sparse_prefill", "compressed_decode", "observation_scores")  # their launch heuristics
OPTIONS = {"num_warps": 4, "num_stages": 3}  # Triton's defaults on CUDA
HOPPER_SHARED_BYTES = 232448  # 227 KiB: the most shared memory one block may use on an H100 or H200
REPORTED_CONSTEXPRS = ("BLOCK_M", "BLOCK_N", "BLOCK_J", "BLOCK_R", "VARLEN", "GIVEN_LSE", "DIRECT", "LSE_ROWS")


def _pointer_type(dtype) -> str:
    import torch

    return {torch.float16: "*bf16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int32: "*i32",
            torch.int64: "*i64", torch.bool: "*i1", torch.uint8: "*u8", torch.int8: "*i8"}[dtype]


def _argument_type(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return _pointer_type(value.dtype)
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i64" if abs(value) >= 2 ** 31 else "i32"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a {type(value).__name__} argument")


def _aligned(value) -> bool:
    """What a launch specializes on (Triton's default): a 16-byte aligned tensor, an integer divisible by 16."""
    import torch

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
            self.launches.append(dict(
                module=self.module, name=self.name,
                signature={n: "constexpr" if n in self.constexpr else _argument_type(values[n])
                           for n in self.arg_names},
                aligned=[n for n in self.arg_names if n not in self.constexpr and _aligned(values[n])],
                constexprs={n: values[n] for n in self.constexpr},
                options={k: kwargs.get(k, default) for k, default in OPTIONS.items()}))
            return launcher(*args, **kwargs)
        return launch


@contextlib.contextmanager
def _recording(launches: list[dict]):
    """Every kernel of KERNEL_MODULES records its launches, and the tile heuristics pick the GPU's launches."""
    replaced = []
    try:
        for short in KERNEL_MODULES:
            module = importlib.import_module(f"entropyinfer_sgl.kernels.{short}")
            for name, value in list(vars(module).items()):
                if name.startswith("_") and name.endswith("_kernel") and hasattr(value, "fn"):
                    replaced.append((module, name, value))
                    setattr(module, name, _Recorder(module.__name__, name, value, launches))
            if short in TILE_MODULES:
                replaced.append((module, "interpret_mode", module.interpret_mode))
                module.interpret_mode = lambda: False
        yield
    finally:
        for module, name, value in reversed(replaced):
            setattr(module, name, value)


def record_launches() -> list[dict]:
    """The distinct kernel launches of the serving entry points (prefill planning and attention, a chunk batch, a
    compression event's scoring, serving decode with tables and window log-sum-exps). Needs TRITON_INTERPRET=1."""
    import torch

    from entropyinfer_sgl import EntropyInferConfig
    from entropyinfer_sgl.core.device_plan import plan_prefill_device
    from entropyinfer_sgl.kernels import interpret_mode
    from entropyinfer_sgl.kernels.compressed_decode import DecodeLaunch, PoolRows
    from entropyinfer_sgl.kernels.observation_scores import window_attention, window_log_sum_exp
    from entropyinfer_sgl.kernels.sparse_prefill import sparse_prefill, sparse_prefill_varlen

    if not interpret_mode():
        raise RuntimeError("record_launches runs the kernels under the interpreter: set TRITON_INTERPRET=1 before "
                           "importing Triton")
    launches: list[dict] = []
    gen = torch.Generator().manual_seed(0)
    hq, hkv, d, dtype = 8, 2, 128, torch.float16

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    with _recording(launches):
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

        tables, kept = 2, 64
        q1 = randn(3, hq, d)
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
    distinct = {json.dumps(launch, sort_keys=True): launch for launch in launches}
    return list(distinct.values())


def _compile_one(launch: dict) -> dict:
    """Compile one recorded launch for sm_90 (in a process without TRITON_INTERPRET): its row of the report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    row = dict(name=launch["name"], options=launch["options"],
               constexprs={k: v for k, v in launch["constexprs"].items() if k in REPORTED_CONSTEXPRS})
    kernel = getattr(importlib.import_module(launch["module"]), launch["name"])
    attrs = {(i,): [["tt.divisibility", 16]] for i, param in enumerate(kernel.params)
             if param.name in launch["aligned"] and not param.do_not_specialize}
    source = ASTSource(kernel, launch["signature"], launch["constexprs"], attrs)
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=launch["options"])
    except Exception as err:  # every failing launch is reported, not only the first
        return dict(row, error=f"{type(err).__name__}: {err}")
    ir = compiled.asm["ttgir"]
    row.update(shared_bytes=compiled.metadata.shared, async_copies=len(re.findall("async_copy_global_to_local", ir)),
               wgmma=len(re.findall("warp_group_dot ", ir)))
    ptx = Path(os.environ.get("TMPDIR", "/tmp")) / f"hopper_compile_{os.getpid()}.ptx"
    ptx.write_text(compiled.asm["ptx"])
    try:
        info = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", str(ptx), "-o", os.devnull],
                              capture_output=True, text=True).stderr
    finally:
        ptx.unlink()
    registers = re.search(r"Used (\d+) registers", info)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    if registers and spills:
        row.update(registers=int(registers.group(1)), spill_stores=int(spills.group(1)),
                   spill_loads=int(spills.group(2)))
    if compiled.metadata.shared > HOPPER_SHARED_BYTES:  # the launch itself would fail: out of resources
        row["error"] = (f"needs {compiled.metadata.shared} bytes of shared memory, Hopper has {HOPPER_SHARED_BYTES} "
                        "per block")
    return row


def compile_launches(launches: list[dict], *, triton_path: str | None = None) -> list[dict]:
    """Compile the recorded launches in a subprocess without TRITON_INTERPRET: one report row each. triton_path: a
    folder holding another Triton for the compile (e.g. the GPU image's: `pip install --target DIR triton==3.6.0`)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    first = [triton_path] if triton_path else []
    env["PYTHONPATH"] = os.pathsep.join(first + [str(REPO / "python")]
                                        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    result = subprocess.run([sys.executable, __file__, "--compile-stdin"], input=json.dumps(launches),
                            capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"compiling for sm_90 failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-stdin", action="store_true", help=argparse.SUPPRESS)  # compile_launches' child
    parser.add_argument("--triton-path", help="compile with the Triton installed in this folder (the launches are "
                        "still recorded with this environment's Triton interpreter)")
    args = parser.parse_args()
    if args.compile_stdin:
        print(json.dumps([_compile_one(launch) for launch in json.load(sys.stdin)]))
        return
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton and the kernels are imported
    sys.path.insert(0, str(REPO / "python"))
    rows = compile_launches(record_launches(), triton_path=args.triton_path)
    for row in rows:
        print(json.dumps(row))
    if any("error" in row for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
