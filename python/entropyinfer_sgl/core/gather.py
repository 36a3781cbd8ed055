"""Token positions of per-kv-head block lists: how the CPU (SDPA) paths gather one segment's keys."""

from __future__ import annotations

import torch


def block_token_positions(blocks: list[torch.Tensor], *, block_size_tokens: int, seq_len_tokens: int,
                          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Key positions of each kv head's listed blocks, padded to the longest head.

    blocks: one int tensor of block ids per kv head. Returns token int64 [Hkv, width] (padding and positions past
    the sequence end clamped to a valid position) and present bool [Hkv, width] (False there).
    """
    offsets = torch.arange(block_size_tokens, device=device)
    lengths = [b.numel() * block_size_tokens for b in blocks]
    width = max(lengths)
    token = torch.zeros(len(blocks), width, dtype=torch.int64, device=device)
    present = torch.zeros(len(blocks), width, dtype=torch.bool, device=device)
    for h, b in enumerate(blocks):
        token[h, : lengths[h]] = (b.to(device=device, dtype=torch.int64)[:, None] * block_size_tokens
                                  + offsets[None, :]).flatten()
        present[h, : lengths[h]] = True
    present &= token < seq_len_tokens  # the last key block may be partial
    return token.clamp_(max=seq_len_tokens - 1), present
