"""Join results files written by parallel workers (scripts/gpu/quality.sh: one file per worker) into one results
file that `entropyinfer eval` can resume and `entropyinfer report` reads.

    python benchmarks/quality/merge_shards.py OUT.json SHARD.json [SHARD.json ...]

Records are keyed by (method, task, length, sample); a key in two shards is an error unless both records agree but
for their wall times (a run resumed with another SHARDS can give one sample to two workers; greedy decoding makes
the same output, the clocks differ): the first shard's record is kept. Method configs must agree across shards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from entropyinfer_sgl.evaluation.results import ResultStore, record_key

WALL_TIMES = ("prefill_s", "decode_s")


def _without_wall_times(record: dict) -> dict:
    return {name: value for name, value in record.items() if name not in WALL_TIMES}


def merge_shards(out: Path, shards: list[Path]) -> ResultStore:
    store = ResultStore(out)
    seen: dict = {}
    for shard in shards:
        data = json.loads(shard.read_text())
        for name, method in data["methods"].items():
            known = store.data["methods"].get(name)
            if known is not None and known != method:
                raise ValueError(f"{shard}: method {name!r} has another config than in an earlier shard")
            store.data["methods"][name] = method
        for record in data["records"]:
            key = record_key(record["method"], record["task"], record["length"], record["sample"])
            if key in seen:
                if _without_wall_times(seen[key][0]) != _without_wall_times(record):
                    raise ValueError(f"{shard}: record {key} differs from the one in {seen[key][1]}")
                continue
            seen[key] = (record, shard)
            store.add(record)
        store.data["model"] = store.data.get("model") or data.get("model")
    store.save()
    return store


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    store = merge_shards(Path(argv[0]), [Path(p) for p in argv[1:]])
    print(f"{len(store.records)} records in {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
