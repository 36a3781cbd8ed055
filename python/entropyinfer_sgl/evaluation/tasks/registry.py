"""The quality tasks: `make(tokenizer, total_tokens, seed) -> Sample`, deterministic from the seed, offline.

| task | what the model must do | score |
|---|---|---|
| `passkey` | find one 5-digit pass key in the haystack | 1 if the key is in the answer |
| `multikey` | 4 keyed pass keys ("the pass key for the red door is ..."), asked for one | 1 if the asked key is in the answer |
| `multivalue` | 4 magic numbers for the same word, scattered; list all of them | fraction of the 4 numbers in the answer |
| `vartrack` | `VAR A = 12345.`, later `VAR B = VAR A.`, plus a distractor `VAR C = 67890.`; list every variable holding 12345 (the answer starts "... are: VAR") | names found / max(2, names listed) |
| `commonwords` | 3 keywords repeated 6x each and 10 distractors once each ("Keyword: x."); name the 3 most frequent | found / max(3, keywords named) |
| `copylist` | a numbered 20-item shopping list hidden in the text; write it out (the answer starts "Shopping list:\\n1."; ~80 generated tokens, so decode compression fires mid-answer) | in-order LCS / 20 |

Prompts go through the chat template; `vartrack` and `copylist` also start the assistant's answer (a 135M model
needs that to answer in the format at all). A base model (no chat template) gets the same text as a plain
completion ending with the start of the answer (`haystack.render_prompt`; each task's `completion` below). Answers
are greedy.
"""

from __future__ import annotations

import functools
import random
from typing import Callable

from ..haystack import COMPLETION as PASSKEY_COMPLETION
from ..haystack import INSTRUCTION as PASSKEY_INSTRUCTION
from ..haystack import NEEDLE_TEMPLATE as PASSKEY_NEEDLE
from ..haystack import QUESTION as PASSKEY_QUESTION
from .common import (Sample, build_prompt, contains_score, distinct, ordered_copy_score, random_number, recall_score,
                     sample_depth, spread_depths, word_set_score)

NOUNS = (
    "apple", "banana", "carrot", "pepper", "onion", "lemon", "cherry", "melon", "grape", "peach", "bread", "butter",
    "cheese", "honey", "rice", "salt", "sugar", "coffee", "tea", "milk", "hammer", "nail", "rope", "ladder",
    "bucket", "brush", "candle", "pencil", "paper", "stamp", "kettle", "spoon", "fork", "plate", "towel", "soap",
    "blanket", "pillow", "lamp", "mirror", "clock", "basket", "bottle", "jacket", "scarf", "glove", "boot", "hat",
    "tiger", "horse", "rabbit", "eagle", "salmon", "turtle", "monkey", "zebra", "camel", "parrot", "wolf", "goat",
)
OBJECTS = ("red door", "blue box", "green house", "yellow car", "silver key", "white boat", "black hat", "pink cup")
MAGIC_WORDS = ("sunflower", "harbor", "violin", "glacier", "lantern", "meadow", "compass", "orchard")
VAR_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


def passkey(tokenizer, total_tokens: int, seed: int, *, source: str = "auto") -> Sample:
    rng = random.Random(f"passkey-{seed}")
    key = random_number(rng, 5)
    depth = sample_depth(seed)
    ids, _, name = build_prompt(tokenizer, total_tokens=total_tokens, needles=[(depth, PASSKEY_NEEDLE.format(key=key))],
                                instruction=PASSKEY_INSTRUCTION, question=PASSKEY_QUESTION, seed=seed, source=source,
                                completion=PASSKEY_COMPLETION)
    return Sample("passkey", seed, ids, key, functools.partial(contains_score, expected=key), 24,
                  {"depth": round(depth, 3), "haystack": name})


def multikey(tokenizer, total_tokens: int, seed: int, *, source: str = "auto", num_keys: int = 4) -> Sample:
    rng = random.Random(f"multikey-{seed}")
    objects = rng.sample(OBJECTS, num_keys)
    keys = distinct(lambda: random_number(rng, 5), num_keys)
    depths = spread_depths(rng, num_keys)
    asked = rng.randrange(num_keys)
    needles = [(d, f"The pass key for the {o} is {k}.") for d, o, k in zip(depths, objects, keys)]
    instruction = ("There are several pass keys hidden inside a lot of irrelevant text. Each one belongs to a "
                   "different object. Find them and memorize them. I will quiz you about one of them.")
    question = f"What is the pass key for the {objects[asked]}? Answer with only the number."
    ids, _, name = build_prompt(tokenizer, total_tokens=total_tokens, needles=needles, instruction=instruction,
                                question=question, seed=seed, source=source,
                                completion=f"The pass key for the {objects[asked]} is")
    return Sample("multikey", seed, ids, keys[asked], functools.partial(contains_score, expected=keys[asked]), 24,
                  {"asked": objects[asked], "depth": round(depths[asked], 3), "distractors": keys[:asked] + keys[asked + 1:],
                   "haystack": name})


def multivalue(tokenizer, total_tokens: int, seed: int, *, source: str = "auto", num_values: int = 4) -> Sample:
    rng = random.Random(f"multivalue-{seed}")
    word = rng.choice(MAGIC_WORDS)
    values = distinct(lambda: random_number(rng, 5), num_values)
    depths = spread_depths(rng, num_values)
    needles = [(d, f"One of the special magic numbers for {word} is {v}.") for d, v in zip(depths, values)]
    instruction = (f"Some special magic numbers for {word} are hidden inside a lot of irrelevant text. Find all of "
                   "them and memorize them. I will quiz you about them.")
    question = f"What are all the special magic numbers for {word} mentioned in the text? Answer with only the numbers."
    ids, _, name = build_prompt(tokenizer, total_tokens=total_tokens, needles=needles, instruction=instruction,
                                question=question, seed=seed, source=source,
                                completion=f"The special magic numbers for {word} mentioned in the text are:")
    return Sample("multivalue", seed, ids, tuple(values), functools.partial(recall_score, expected=tuple(values)), 48,
                  {"word": word, "haystack": name})


def vartrack(tokenizer, total_tokens: int, seed: int, *, source: str = "auto", num_vars: int = 2) -> Sample:
    rng = random.Random(f"vartrack-{seed}")
    # the chain plus one distractor variable
    names = distinct(lambda: "".join(rng.choice(VAR_LETTERS) for _ in range(3)), num_vars + 1)
    chain, distractor = names[:num_vars], names[num_vars]
    value, other = random_number(rng, 5), random_number(rng, 5)
    statements = [f"VAR {chain[0]} = {value}."] + [f"VAR {chain[i]} = VAR {chain[i - 1]}." for i in range(1, num_vars)]
    statements.append(f"VAR {distractor} = {other}.")
    depths = sorted(spread_depths(rng, len(statements)))  # the chain in reading order, the distractor last
    instruction = "Memorize and track the chain of variable assignments hidden in the following text."
    question = (f"Find all variables that are assigned the value {value} in the text above, directly or through "
                "another variable. Answer with only the variable names.")
    ids, _, hay = build_prompt(tokenizer, total_tokens=total_tokens, needles=list(zip(depths, statements)),
                               instruction=instruction, question=question, seed=seed, source=source,
                               answer_prefix=f"The variables assigned the value {value} are: VAR")
    scorer = functools.partial(_var_score, expected=tuple(chain), vocabulary=tuple(names))
    return Sample("vartrack", seed, ids, tuple(chain), scorer, 32, {"value": value, "haystack": hay})


def _var_score(text: str, *, expected: tuple[str, ...], vocabulary: tuple[str, ...]) -> float:
    import re

    tokens = set(re.findall(r"[A-Z]{3}", text))
    found = sum(1 for e in expected if e in tokens)
    named = sum(1 for v in vocabulary if v in tokens)
    return found / max(len(expected), named)


def commonwords(tokenizer, total_tokens: int, seed: int, *, source: str = "auto", num_common: int = 3,
                repeats: int = 6, num_rare: int = 10) -> Sample:
    rng = random.Random(f"commonwords-{seed}")
    words = rng.sample(NOUNS, num_common + num_rare)
    common, rare = words[:num_common], words[num_common:]
    mentions = [w for w in common for _ in range(repeats)] + rare
    depths = spread_depths(rng, len(mentions), low=0.02, high=0.98)
    needles = [(d, f"Keyword: {w}.") for d, w in zip(depths, mentions)]
    instruction = "Some keywords are hidden inside the following text, each on a line starting with 'Keyword:'."
    question = (f"Which {num_common} keywords appear most often in the text above? "
                f"Answer with only the {num_common} words.")
    ids, _, name = build_prompt(tokenizer, total_tokens=total_tokens, needles=needles, instruction=instruction,
                                question=question, seed=seed, source=source,
                                completion=f"The {num_common} most frequent keywords are:")
    scorer = functools.partial(word_set_score, expected=tuple(common), vocabulary=tuple(words))
    return Sample("commonwords", seed, ids, tuple(common), scorer, 24, {"haystack": name})


def copylist(tokenizer, total_tokens: int, seed: int, *, source: str = "auto", num_items: int = 20) -> Sample:
    rng = random.Random(f"copylist-{seed}")
    items = rng.sample(NOUNS, num_items)
    depth = sample_depth(seed)
    listing = "\nShopping list:\n" + "\n".join(f"{i + 1}. {item}" for i, item in enumerate(items)) + "\n"
    instruction = "A shopping list is hidden inside the following text. Find it and memorize it."
    question = "What is on the shopping list? Write the whole list."
    ids, _, name = build_prompt(tokenizer, total_tokens=total_tokens, needles=[(depth, listing)],
                                instruction=instruction, question=question, seed=seed, source=source,
                                answer_prefix="Shopping list:\n1.")
    return Sample("copylist", seed, ids, tuple(items), functools.partial(ordered_copy_score, expected=tuple(items)),
                  96, {"depth": round(depth, 3), "haystack": name})


TASKS: dict[str, Callable[..., Sample]] = {
    "passkey": passkey,
    "multikey": multikey,
    "multivalue": multivalue,
    "vartrack": vartrack,
    "commonwords": commonwords,
    "copylist": copylist,
}


def get_task(name: str) -> Callable[..., Sample]:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}") from None


def make(name: str, tokenizer, total_tokens: int, seed: int, **kwargs) -> Sample:
    """`get_task(name)(tokenizer, total_tokens, seed)`."""
    return get_task(name)(tokenizer, total_tokens, seed, **kwargs)
