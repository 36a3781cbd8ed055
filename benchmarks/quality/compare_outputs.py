"""Do two runs give the same answers on the same prompts? Pairs records of one method in one results file with
records of another method in another file (or the same file) by (task, length, sample) and counts, per task, the
prompts whose generated text is identical, and where the others first differ (characters into the answer).

    python benchmarks/quality/compare_outputs.py SERVER.json server_full HF.json full
    python benchmarks/quality/compare_outputs.py SERVER.json server_entropyinfer HF.json entropyinfer

Used for issue 18's server table: the server's tokens against the HF path's for the same method.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def first_difference(a: str, b: str) -> int | None:
    """Index of the first character where a and b differ; None where they are equal."""
    if a == b:
        return None
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return min(len(a), len(b))


def _outputs(path: Path, method: str) -> dict[tuple, dict]:
    records = json.loads(path.read_text())["records"]
    return {(r["task"], r["length"], r["sample"]): r for r in records if r["method"] == method}


def compare(left: dict[tuple, dict], right: dict[tuple, dict]) -> dict[str, dict]:
    """Per task (and "all"): paired prompts, identical outputs, the first-difference positions and the summed score
    difference left - right."""
    rows: dict[str, dict] = defaultdict(lambda: {"paired": 0, "identical": 0, "first_differences": [], "score_delta": 0.0})
    for key in sorted(left.keys() & right.keys()):
        a, b = left[key], right[key]
        position = first_difference(a["output"], b["output"])
        for name in (key[0], "all"):
            row = rows[name]
            row["paired"] += 1
            row["score_delta"] += a["score"] - b["score"]
            if position is None:
                row["identical"] += 1
            else:
                row["first_differences"].append(position)
    return dict(rows)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: compare_outputs.py LEFT.json LEFT_METHOD RIGHT.json RIGHT_METHOD", file=sys.stderr)
        return 2
    left = _outputs(Path(argv[0]), argv[1])
    right = _outputs(Path(argv[2]), argv[3])
    rows = compare(left, right)
    if not rows:
        print(f"error: no prompt is in both {argv[0]} ({argv[1]}) and {argv[2]} ({argv[3]})", file=sys.stderr)
        return 1
    print(f"{argv[1]} ({argv[0]}) vs {argv[3]} ({argv[2]})")
    print("| task | paired | identical | first difference (chars, median) | mean score left - right (points) |")
    print("|---|---:|---:|---:|---:|")
    for name in sorted(rows, key=lambda n: (n == "all", n)):
        row = rows[name]
        positions = sorted(row["first_differences"])
        median = positions[len(positions) // 2] if positions else "-"
        print(f"| {name} | {row['paired']} | {row['identical']} | {median} | {100 * row['score_delta'] / row['paired']:+.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
