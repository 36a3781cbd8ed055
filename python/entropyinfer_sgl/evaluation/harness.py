"""methods x tasks x lengths x samples -> records in a `ResultStore`, skipping what is already there."""

from __future__ import annotations

import time
from typing import Callable, Sequence

from .methods import Method
from .progress import Progress
from .tasks import make
from .results import ResultStore, git_revision
from .runner import run_sample


def plan_runs(store: ResultStore, methods: Sequence[Method], tasks: Sequence[str], lengths: Sequence[int],
              samples: int, first_sample: int = 0,
              sample_stride: int = 1) -> list[tuple[int, str, int, list[Method]]]:
    """(length, task, sample, methods still to run) for every cell with something left, in run order: sample by
    sample, every task of a sample before the next, so that a run stopped by its deadline leaves cells of equal size.
    The samples are `first_sample + i * sample_stride` for i < samples (parallel workers take interleaved samples,
    so that whatever a deadline leaves is the lowest sample indices, which another run can pair with).
    """
    todo = []
    for length in lengths:
        for sample in range(first_sample, first_sample + samples * sample_stride, sample_stride):
            for task in tasks:
                missing = [m for m in methods if not store.has(m.name, task, length, sample)]
                if missing:
                    todo.append((length, task, sample, missing))
    return todo


def evaluate(model, tokenizer, store: ResultStore, methods: Sequence[Method], tasks: Sequence[str],
             lengths: Sequence[int], samples: int, *, first_sample: int = 0, sample_stride: int = 1,
             progress: bool = True, verbose: bool = False, deadline: float | None = None,
             on_sample: Callable[[dict], None] | None = None, run: Callable | None = None) -> int:
    """Run everything that `store` lacks; save after each sample. Returns the number of records added.

    deadline: a `time.time()` after which no new sample starts (what is done stays saved; rerun to resume).
    run: `run(model, tokenizer, sample, methods) -> {name: Outcome}` (default `run_sample`: the HF path; the
    server harness passes its own, see `evaluation.server`).
    """
    run = run_sample if run is None else run
    store.register(methods)
    store.save()
    todo = plan_runs(store, methods, tasks, lengths, samples, first_sample, sample_stride)
    bar = Progress(sum(len(m) for *_, m in todo), progress)
    sha, dirty = git_revision()
    added = 0
    try:
        for length, task, sample_index, missing in todo:
            if deadline is not None and time.time() > deadline:
                bar.write("deadline reached: stopping (rerun the same command to resume)")
                break
            sample = make(task, tokenizer, length, sample_index)
            outcomes = run(model, tokenizer, sample, missing)
            for method in missing:
                outcome = outcomes[method.name]
                record = {"method": method.name, "task": task, "length": length, "sample": sample_index,
                          "prompt_tokens": sample.num_tokens,
                          "answer": sample.answer if isinstance(sample.answer, str) else list(sample.answer),
                          "output": outcome.text, **outcome.to_dict(), "meta": sample.meta,
                          "git_sha": sha, "git_dirty": dirty}
                record.pop("text")
                store.add(record)
                added += 1
                if verbose:
                    bar.write(f"{method.name:>24} {task:>11} {length:>5} #{sample_index}: score {outcome.score:.2f} "
                              f"density {_fmt(outcome.prefill_density)} cache {_fmt(outcome.cache_fraction)} "
                              f"{outcome.prefill_s:.1f}+{outcome.decode_s:.1f}s {' '.join(outcome.text.split())[:60]!r}")
            store.save()
            if on_sample is not None:
                on_sample({"task": task, "length": length, "sample": sample_index})
            bar.update(len(missing), f"{task}@{length} #{sample_index}")
    finally:
        bar.close()
    return added


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
