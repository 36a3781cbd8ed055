"""Quality tasks: deterministic from the seed, the answer is really in the prompt, lengths land, scorers behave."""

from __future__ import annotations

import pytest
import torch

from quality_markers import needs_smollm2_tokenizer
from entropyinfer_sgl.evaluation.tasks import TASKS, get_task, make
from entropyinfer_sgl.evaluation.tasks.common import ordered_copy_score, recall_score, word_set_score

pytestmark = needs_smollm2_tokenizer

PERFECT = {  # a correct answer, as the model would write it
    "passkey": lambda s: f"The pass key is {s.answer}.",
    "multikey": lambda s: f"The pass key for the {s.meta['asked']} is {s.answer}.",
    "multivalue": lambda s: "The numbers are " + ", ".join(s.answer) + ".",
    "vartrack": lambda s: " = VAR ".join(s.answer),
    "commonwords": lambda s: ", ".join(s.answer),
    "copylist": lambda s: " ".join(f"{i + 2}. {item}\n" for i, item in enumerate(s.answer[1:])).join(
        [f"{s.answer[0]}\n", ""]),
}


def test_every_required_task_is_registered():
    assert set(TASKS) == {"passkey", "multikey", "multivalue", "vartrack", "commonwords", "copylist"}
    with pytest.raises(ValueError, match="unknown task"):
        get_task("qa")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_deterministic_and_answer_in_prompt(task, smollm2_tokenizer):
    tok = smollm2_tokenizer
    a, b, c = make(task, tok, 1500, 3), make(task, tok, 1500, 3), make(task, tok, 1500, 4)
    assert torch.equal(a.prompt_ids, b.prompt_ids) and a.answer == b.answer
    assert not torch.equal(a.prompt_ids[:, :400], c.prompt_ids[:, :400]) or a.answer != c.answer
    text = tok.decode(a.prompt_ids[0])
    answers = [a.answer] if isinstance(a.answer, str) else list(a.answer)
    for answer in answers:
        assert answer in text, (task, answer)
    assert text.count("<|im_start|>assistant") == 1  # the question is asked once, in the user turn
    assert "Paul Graham" in a.meta.get("haystack", "") or "paul-graham" in a.meta.get("haystack", "")


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("length", [1000, 2000, 8000])
def test_length_lands_near_the_target(task, length, smollm2_tokenizer):
    sample = make(task, smollm2_tokenizer, length, 0)
    # within 3% + 64 tokens (commonwords inserts 28 short needles; each sentence-boundary insert costs ~1 token
    # beyond the estimate, and the estimate reserves 2 per needle)
    assert abs(sample.num_tokens - length) <= 0.03 * length + 64, sample.num_tokens
    assert sample.prompt_ids.dtype == torch.int64 and sample.prompt_ids.shape[0] == 1


@pytest.mark.parametrize("task", sorted(TASKS))
def test_scorers(task, smollm2_tokenizer):
    sample = make(task, smollm2_tokenizer, 1000, 1)
    assert sample.score(PERFECT[task](sample)) == 1.0
    assert sample.score("") == 0.0
    assert sample.score("I do not know.") == 0.0


def test_partial_credit_scorers():
    assert recall_score("11111 and 33333", expected=("11111", "22222", "33333", "44444")) == 0.5
    words = ("apple", "pear", "plum", "fig", "kiwi", "lime")
    assert word_set_score("apple pear plum", expected=words[:3], vocabulary=words) == 1.0
    assert word_set_score("apple pear plum fig kiwi lime", expected=words[:3], vocabulary=words) == 0.5  # lists all
    items = ("apple", "pear", "plum", "fig")
    assert ordered_copy_score("1. apple 2. pear 3. plum 4. fig", expected=items) == 1.0
    assert ordered_copy_score("1. fig 2. plum 3. pear 4. apple", expected=items) == 0.25  # wrong order
    assert ordered_copy_score("1. apple 2. plum", expected=items) == 0.5
    assert ordered_copy_score("pineapple", expected=items) == 0.0  # whole words only


BASE_MODEL_ENDINGS = {  # how each task's plain-text prompt ends: the start of the answer a base model continues
    "passkey": r"The pass key is$", "multikey": r"The pass key for the [a-z ]+ is$",
    "multivalue": r"mentioned in the text are:$", "vartrack": r"are: VAR$",
    "commonwords": r"most frequent keywords are:$", "copylist": r"Shopping list:\n1\.$",
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_base_model_prompts_are_plain_completions(task, smollm2_tokenizer):
    """A tokenizer without a chat template (a base model such as Gemma-3-270M) gets BOS + the same instruction,
    haystack and question as plain text, ending with the start of the answer."""
    import copy
    import re

    base = copy.deepcopy(smollm2_tokenizer)
    base.chat_template = None
    sample = make(task, base, 1500, 3)
    text = base.decode(sample.prompt_ids[0])
    assert text.startswith(base.bos_token) and "<|im_start|>user" not in text and "assistant" not in text
    assert re.search(BASE_MODEL_ENDINGS[task], text), text[-120:]
    answers = [sample.answer] if isinstance(sample.answer, str) else list(sample.answer)
    assert all(answer in text for answer in answers)
    assert abs(sample.num_tokens - 1500) <= 0.03 * 1500 + 64, sample.num_tokens
