"""Host-to-device copies of the small index tensors the planners build on the host, without a host sync."""

from __future__ import annotations

import torch


def host_to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor.to(device)` that does not wait for the device. A plain `.to(device)` from pageable memory makes
    PyTorch synchronize the stream (every kernel queued so far); once per layer in prefill that drains the GPU's
    queue and leaves it idle while the host launches the next layer (the 128k profile in benchmarks/RESULTS.md).
    CUDA stages pageable memory at the call, so the host tensor may be dropped right after."""
    return tensor.to(device, non_blocking=True)
