"""Shared pieces of the Triton launchers: interpreter detection, device checks, launch configurations."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

_TRUTHY = ("1", "true", "on", "yes")  # what Triton itself accepts for TRITON_INTERPRET

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpret_mode() -> bool:
    """Whether `TRITON_INTERPRET` asks for the Triton interpreter (kernels simulated on the CPU with numpy).

    Triton reads the variable when a kernel is defined, so it must be set before `entropyinfer_sgl.kernels`
    (and Triton) are imported; the launchers check that their kernels were defined in the current mode.
    """
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUTHY


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and launch parameters of one kernel launch.

    block_m: query tokens per program (prefill only; must divide segment_size_tokens, >= 16, power of two).
    block_n: keys per inner iteration (power of two >= 16; prefill: must divide block_m; the gather of listed
        blocks uses max(block_n, next power of two of block_size_tokens) lanes).
    num_warps, num_stages: Triton launch parameters (ignored by the interpreter).
    pack_gqa: prefill only: a program takes all q heads of a kv head (block_m rows = block_m / G tokens x the next
        power of two G of the group size), so each K/V tile is loaded once per group, not once per q head.
    """

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    pack_gqa: bool = False

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 16 or value & (value - 1):
                raise ValueError(f"LaunchConfig.{name}={value!r}: must be a power of two >= 16")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"LaunchConfig.num_warps={self.num_warps!r}: must be 1, 2, 4, 8 or 16")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"LaunchConfig.num_stages={self.num_stages!r}: must be an integer >= 1")
        if not isinstance(self.pack_gqa, bool):
            raise ValueError(f"LaunchConfig.pack_gqa={self.pack_gqa!r}: must be a bool")


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether a key offset (position * token stride + head * head stride + d) can pass 2**31 - 1."""
    return any(sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) >= 2**31 - 1 for t in tensors)


def largest_power_of_two_divisor(n: int) -> int:
    return n & -n


def defined_interpreted(jit_function) -> bool:
    """Whether Triton defined this kernel for its interpreter (it decides at `@triton.jit` time)."""
    return type(jit_function).__name__ == "InterpretedFunction"


def check_kernel_device(*tensors: torch.Tensor, kernels: tuple = ()) -> torch.device:
    """All tensors on one device the kernels can run on: CUDA, or CPU under the Triton interpreter; and the
    `kernels` (jit functions, helpers included) defined in the mode TRITON_INTERPRET asks for now."""
    device = tensors[0].device
    for tensor in tensors[1:]:
        if tensor.device != device:
            raise ValueError(f"all inputs must be on one device, got {device} and {tensor.device}")
    if device.type == "cpu":
        if not interpret_mode():
            raise RuntimeError(
                "entropyinfer_sgl.kernels got CPU tensors: the Triton kernels run on CUDA tensors, or on CPU only "
                "under the Triton interpreter (set TRITON_INTERPRET=1 before importing Triton). There is no "
                "CPU fallback; entropyinfer_sgl.core.reference has the float32 torch references")
    elif device.type != "cuda":
        raise RuntimeError(f"entropyinfer_sgl.kernels runs on CUDA (or CPU under TRITON_INTERPRET=1), got {device}")
    wrong = [getattr(getattr(k, "fn", k), "__name__", repr(k)) for k in kernels
             if defined_interpreted(k) != interpret_mode()]
    if wrong:
        raise RuntimeError(
            f"TRITON_INTERPRET={'1' if interpret_mode() else '0'} now, but the kernels {wrong} were defined "
            f"{'without' if interpret_mode() else 'with'} the interpreter: set TRITON_INTERPRET before Triton and "
            "entropyinfer_sgl.kernels are first imported (and do not import them while it differs)")
    return device


def check_dtype(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in KERNEL_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
    if tensor.dtype == torch.bfloat16 and interpret_mode():
        raise ValueError("the Triton interpreter does not support bfloat16 arithmetic; use float16/float32 on CPU")


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs get IEEE float32 products (not TF32) so that they match the float32 reference."""
    return "ieee" if dtype == torch.float32 else "tf32"


@functools.lru_cache(maxsize=None)
def multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def device_parallelism(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; a small fixed number under the interpreter."""
    if device.type == "cuda" and not interpret_mode():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return multiprocessor_count(index)
    return 4
