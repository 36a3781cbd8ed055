"""The results JSON: one record per (method, task, length, sample), resumable, with the git sha and every method's
config.

Layout: `{"schema": 1, "created", "updated", "git_sha", "git_dirty", "model", "budgets", "methods": {name:
Method.to_dict()}, "records": [{"method", "task", "length", "sample", "prompt_tokens", "score", "answer",
"output", ...Outcome fields}]}`. Saved atomically (temp file + rename) after every sample, so an interrupted
run loses at most the sample in flight; a rerun skips every key already present. A method name that is already
in the file with a different config is an error (results of two configs never mix under one name).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

from ..core.config import EntropyInferConfig
from .methods import BUDGETS, Method

SCHEMA = 1


def git_revision(cwd: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(HEAD sha, whether the work tree has uncommitted changes), or (None, None) outside a git checkout.

    A copy of the tree (the GPU machine's) names its commit in `ENTROPYINFER_GIT_SHA` (dirty unknown: None); the
    name wins over the copy's own git metadata, which may be a stale checkout's.
    """
    cwd = cwd or Path(__file__).resolve().parent
    named = os.environ.get("ENTROPYINFER_GIT_SHA")
    if named:
        return named, None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip() != ""
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def record_key(method: str, task: str, length: int, sample: int) -> tuple[str, str, int, int]:
    return (str(method), str(task), int(length), int(sample))


def with_added_fields(config: dict | None) -> dict | None:
    """A stored config with the `EntropyInferConfig` fields added since it was written set to their defaults.

    A field is added with the default that keeps the earlier behaviour (e.g. `float32_block_scores=False`), so a
    record made before the field existed ran what that default names: it stays comparable with today's config.
    A preset that sets a new field to another value still differs from the stored config, as it should."""
    if config is None:
        return None
    defaults = {field.name: field.default for field in dataclasses.fields(EntropyInferConfig)
                if field.default is not dataclasses.MISSING}
    return {**defaults, **config}


class ResultStore:
    """The records of one results file, keyed by (method, task, length, sample)."""

    def __init__(self, path: str | Path | None, *, model: str | None = None, budgets: dict | None = None):
        self.path = None if path is None else Path(path)
        budgets = dict(BUDGETS if budgets is None else budgets)
        self.data: dict[str, Any] = {"schema": SCHEMA, "created": _now(), "updated": None, "git_sha": None,
                                     "git_dirty": None, "model": model, "budgets": budgets, "methods": {},
                                     "records": []}
        if self.path is not None and self.path.is_file():
            loaded = json.loads(self.path.read_text())
            if loaded.get("schema") != SCHEMA:
                raise ValueError(f"{self.path}: results schema {loaded.get('schema')!r}, this build writes {SCHEMA}")
            if model is not None and loaded.get("model") not in (None, model):
                raise ValueError(f"{self.path} holds results of model {loaded.get('model')!r}, not {model!r}")
            self.data.update(loaded)
            self.data["model"] = self.data.get("model") or model
        self._index = {self._key(r): i for i, r in enumerate(self.data["records"])}

    @staticmethod
    def _key(record: dict) -> tuple[str, str, int, int]:
        return record_key(record["method"], record["task"], record["length"], record["sample"])

    @property
    def records(self) -> list[dict]:
        return self.data["records"]

    def register(self, methods: Iterable[Method]) -> None:
        """Add the methods' configs; raise if a name is already there with another config."""
        for method in methods:
            known = self.data["methods"].get(method.name)
            current = method.to_dict()
            if known is not None and (with_added_fields(known.get("config")), known.get("decode_scorer")) != (
                    current["config"], current["decode_scorer"]):
                raise ValueError(f"method {method.name!r} is in {self.path} with another config; write to a new "
                                 "results file or give the method other overrides")
            self.data["methods"][method.name] = current

    def has(self, method: str, task: str, length: int, sample: int) -> bool:
        return record_key(method, task, length, sample) in self._index

    def add(self, record: dict) -> None:
        key = self._key(record)
        if key in self._index:
            self.data["records"][self._index[key]] = record
        else:
            self._index[key] = len(self.data["records"])
            self.data["records"].append(record)

    def save(self) -> None:
        if self.path is None:
            return
        sha, dirty = git_revision()
        self.data["git_sha"], self.data["git_dirty"], self.data["updated"] = sha, dirty, _now()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(results_json(self.data))
        os.replace(tmp, self.path)


def results_json(data: dict) -> str:
    """A results file's text: the header indented, one compact line per record (a fifth smaller than indented:
    the files travel to the GPU machine with the repository, and a diff shows one line per new record)."""
    header = {key: value for key, value in data.items() if key != "records"}
    opening = json.dumps(header, indent=1)[:-2] + ",\n" if header else "{\n"  # the header without its closing "}"
    records = ",\n".join("  " + json.dumps(record, separators=(",", ":")) for record in data.get("records", []))
    return opening + ' "records": [\n' + records + "\n ]\n}\n"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
