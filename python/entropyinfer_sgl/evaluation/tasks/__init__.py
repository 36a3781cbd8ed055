"""Offline long-context quality tasks (passkey, multi-key/multi-value NIAH, variable tracking, common words,
a long-output list copy), each `make(tokenizer, total_tokens, seed) -> Sample`. See `registry.py`."""

from .common import Sample, build_prompt
from .registry import TASKS, get_task, make

__all__ = ["Sample", "TASKS", "build_prompt", "get_task", "make"]
