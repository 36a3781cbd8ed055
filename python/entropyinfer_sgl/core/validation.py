"""Input checks shared by the public entry points: bad input gets a clear error, never a silent wrong answer."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def prompt_len_or_seq_len(seq_len_tokens: int, prompt_len_tokens: int | None) -> int:
    """The prompt length the planning rules use: `prompt_len_tokens` (a chunk of a longer prompt ends at
    `seq_len_tokens`), or the sequence so far when not given."""
    if prompt_len_tokens is None:
        return seq_len_tokens
    require(prompt_len_tokens >= seq_len_tokens,
            f"prompt_len_tokens={prompt_len_tokens} is shorter than the {seq_len_tokens} tokens planned")
    return prompt_len_tokens


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None, *,
                           token_stride_ok: bool = False) -> tuple[int, int, int, int]:
    """Validate one sequence's q `[L, Hq, D]`, k (and v) `[L, Hkv, D]`; return (L, Hq, Hkv, D).

    token_stride_ok: accept token rows at any stride as long as each row's `[H, D]` is packed (head slices of a
    fused QKV projection, as SGLang hands them over).
    """
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        require(tensor.dim() == 3, f"{name} must be [seq_len, num_heads, head_dim], got shape {tuple(tensor.shape)}")
        require(tensor.dtype in FLOAT_DTYPES, f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
        if token_stride_ok and tensor.dim() == 3:
            require(tensor.stride(2) == 1 and tensor.stride(1) == tensor.shape[2],
                    f"{name} must have packed [heads, head_dim] rows, got strides {tensor.stride()}")
        else:
            require(tensor.is_contiguous(), f"{name} must be contiguous (call .contiguous() first)")
    seq_len, num_q_heads, head_dim = q.shape
    require(k.shape[0] == seq_len, f"q has {seq_len} tokens but k has {k.shape[0]}")
    require(k.shape[2] == head_dim, f"q head_dim {head_dim} != k head_dim {k.shape[2]}")
    require(k.dtype == q.dtype, f"q dtype {q.dtype} != k dtype {k.dtype}")
    require(k.device == q.device, f"q is on {q.device} but k is on {k.device}")
    num_kv_heads = k.shape[1]
    require(num_kv_heads >= 1 and num_q_heads % num_kv_heads == 0,
            f"num_q_heads={num_q_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    if v is not None:
        require(v.shape[:2] == k.shape[:2], f"v shape {tuple(v.shape)} does not match k shape {tuple(k.shape)}")
        require(v.dtype == q.dtype and v.device == q.device, "v must share q's dtype and device")
    return seq_len, num_q_heads, num_kv_heads, head_dim


def check_finite(name: str, tensor: torch.Tensor) -> None:
    require(bool(torch.isfinite(tensor).all()), f"{name} contains NaN or inf")
