"""Every Triton kernel compiles for Hopper (sm_90) with the launches the GPU defaults pick, on a machine without a GPU
(`kernels/hopper_compile.py`: launches recorded under the interpreter, compiled to cubins in a subprocess). The
interpreter never compiles a kernel, so without this a launch the CPU tests pass could still fail on the GPU: a
lowering Triton refuses, or more shared memory than a Hopper block may use."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from .conftest import HAS_CUDA

TOOL = Path(__file__).resolve().parents[2] / "kernels" / "hopper_compile.py"


def _tool():
    spec = importlib.util.spec_from_file_location("kernels_hopper_compile", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ptxas_available() -> bool:
    """Triton's bundled ptxas (or the one TRITON_PTXAS_PATH names): what turns the PTX into a cubin."""
    nvidia = pytest.importorskip("triton.backends.nvidia")
    return (Path(nvidia.__file__).parent / "bin" / "ptxas").is_file() or bool(os.environ.get("TRITON_PTXAS_PATH"))


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU machine the -m gpu tests compile and run these kernels")
def test_kernels_compile_for_hopper():
    if not _ptxas_available():
        pytest.skip("no ptxas: this Triton cannot compile for NVIDIA GPUs here")
    tool = _tool()
    launches = tool.record_launches()
    names = {launch["name"] for launch in launches}
    assert names >= {"_sparse_prefill_kernel", "_softmax_partials_kernel", "_block_entropy_kernel",
                     "_budget_scan_kernel", "_window_lse_kernel", "_window_scores_kernel",
                     "_compressed_decode_split_kernel", "_compressed_decode_reduce_kernel"}, names
    prefill = [launch for launch in launches if launch["name"] == "_sparse_prefill_kernel"]
    assert {launch["constexprs"]["VARLEN"] for launch in prefill} == {False, True}
    # the GPU's packed-GQA launch, not the interpreter's small tiles
    assert all(launch["constexprs"]["HEAD_ROWS"] == 4 and launch["options"]["num_warps"] == 8 for launch in prefill)
    scores = [launch for launch in launches if launch["name"] == "_window_scores_kernel"]
    assert {launch["constexprs"]["GIVEN_LSE"] for launch in scores} == {False, True}
    assert any(launch["constexprs"]["LSE_ROWS"] for launch in launches
               if launch["name"] == "_compressed_decode_reduce_kernel")

    rows = tool.compile_launches(launches)
    failures = [f"{row['name']} {row['constexprs']} {row['options']}: {row['error']}" for row in rows if "error" in row]
    assert not failures, "\n".join(failures)
    assert len(rows) == len(launches)
    # compiled as a launch on the GPU is: the attention kernels' key loads are pipelined (cp.async) into wgmma
    for row in rows:
        if row["name"] in ("_sparse_prefill_kernel", "_window_scores_kernel", "_block_entropy_kernel"):
            assert row["async_copies"] > 0 and row["wgmma"] > 0, row
