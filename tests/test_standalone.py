"""The repository stands alone: no tracked file points at the team's workspace, and no test reads from it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE_SHARED = REPO_ROOT.parent / "shared"  # what tests/conftest.py's audit hook refuses

# Built from pieces so that this file does not match itself.
_WORKSPACE_PATH = re.compile("(" + r"\.\./" + "shared" + "|" + "/work/" + "shared" + r")\b")


def _tracked_text_files():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    for name in listed.stdout.decode().split("\0"):
        path = REPO_ROOT / name
        if name and path.is_file():
            try:
                yield name, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # binary data (PNG plots)
                continue


def test_no_tracked_file_names_the_workspace():
    offenders = [f"{name}:{text[:m.start()].count(chr(10)) + 1}" for name, text in _tracked_text_files()
                 for m in _WORKSPACE_PATH.finditer(text)]
    assert not offenders, f"files outside the repository are named in: {offenders}"


def test_the_pattern_catches_a_workspace_path():
    assert _WORKSPACE_PATH.search("json.loads(open('" + ".." + "/shared/vectors/x.json'))")
    assert not _WORKSPACE_PATH.search("tests/data/budget_recurrence.json")


def test_reading_the_workspace_fails_the_test():
    with pytest.raises(PermissionError, match="outside the repository"):
        open(WORKSPACE_SHARED / "README.md")  # noqa: SIM115 (refused before anything is opened)
