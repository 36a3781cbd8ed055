"""benchmarks/quality/compare_outputs.py: pairs records by prompt and counts identical answers per task."""

import json

import pytest
from benchmark_scripts import load_benchmark_script


@pytest.fixture(scope="module")
def compare_outputs():
    return load_benchmark_script("compare_outputs")


def _record(method, task, sample, output, score, length=4000):
    return {"method": method, "task": task, "length": length, "sample": sample, "output": output, "score": score}


def test_first_difference(compare_outputs):
    assert compare_outputs.first_difference("abc", "abc") is None
    assert compare_outputs.first_difference("abc", "abd") == 2
    assert compare_outputs.first_difference("ab", "abc") == 2


def test_counts_identical_answers_per_task_over_paired_prompts_only(tmp_path, compare_outputs, capsys):
    left = [_record("server_full", "passkey", 0, "1234", 1.0), _record("server_full", "passkey", 1, "99", 0.0),
            _record("server_full", "vartrack", 0, "X Y", 1.0), _record("server_full", "vartrack", 5, "lone", 1.0)]
    right = [_record("full", "passkey", 0, "1234", 1.0), _record("full", "passkey", 1, "98", 1.0),
             _record("full", "vartrack", 0, "X Y", 1.0), _record("other", "vartrack", 5, "lone", 0.0)]
    (tmp_path / "l.json").write_text(json.dumps({"records": left}))
    (tmp_path / "r.json").write_text(json.dumps({"records": right}))
    rows = compare_outputs.compare(compare_outputs._outputs(tmp_path / "l.json", "server_full"),
                                   compare_outputs._outputs(tmp_path / "r.json", "full"))
    assert rows["passkey"] == {"paired": 2, "identical": 1, "first_differences": [1], "score_delta": -1.0}
    assert rows["vartrack"]["paired"] == 1 and rows["vartrack"]["identical"] == 1
    assert rows["all"]["paired"] == 3 and rows["all"]["identical"] == 2
    assert compare_outputs.main([str(tmp_path / "l.json"), "server_full", str(tmp_path / "r.json"), "full"]) == 0
    assert "| all | 3 | 2 | 1 | -33.3 |" in capsys.readouterr().out
    assert compare_outputs.main([str(tmp_path / "l.json"), "server_full", str(tmp_path / "r.json"), "nothing"]) == 1
