"""benchmarks/quality/merge_shards.py: joins workers' results files; one key in two shards must agree but for the
wall times."""

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark_script


@pytest.fixture(scope="module")
def merge_shards():
    return load_benchmark_script("merge_shards")


def _shard(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps({"schema": 1, "model": "smollm2", "methods": {}, "records": records}))
    return path


def _record(sample: int, output: str, prefill_s: float) -> dict:
    return {"method": "full", "task": "passkey", "length": 2000, "sample": sample, "output": output, "score": 1.0,
            "prefill_s": prefill_s, "decode_s": 0.5}


def test_a_key_in_two_shards_keeps_the_first_record_when_only_wall_times_differ(tmp_path, merge_shards):
    a = _shard(tmp_path / "a.json", [_record(0, "1234", 2.4), _record(1, "77", 0.3)])
    b = _shard(tmp_path / "b.json", [_record(1, "77", 0.9), _record(2, "5", 0.3)])
    store = merge_shards.merge_shards(tmp_path / "out.json", [a, b])
    assert sorted(r["sample"] for r in store.records) == [0, 1, 2]
    assert next(r for r in store.records if r["sample"] == 1)["prefill_s"] == 0.3


def test_a_key_in_two_shards_with_other_outputs_is_an_error(tmp_path, merge_shards):
    a = _shard(tmp_path / "a.json", [_record(1, "77", 0.3)])
    b = _shard(tmp_path / "b.json", [_record(1, "78", 0.3)])
    with pytest.raises(ValueError, match="differs"):
        merge_shards.merge_shards(tmp_path / "out.json", [a, b])
