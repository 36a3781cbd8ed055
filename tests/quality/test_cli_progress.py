"""`entropyinfer profile` and `entropyinfer eval` on a tiny random-weight model (the SmolLM2 tokenizer, the smallest
prompts of the harness tests): a progress bar on stderr (tqdm, or one line per step without it) and, on stdout,
where the PNG / markdown / JSON went."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from quality_markers import needs_smollm2_tokenizer
from entropyinfer_sgl import cli
from hf_helpers import SPARSE, tiny_model


@pytest.fixture
def tiny_load(monkeypatch, smollm2_tokenizer):
    model = tiny_model(vocab_size=smollm2_tokenizer.vocab_size + 64)
    monkeypatch.setattr(cli, "_load", lambda args: (model, smollm2_tokenizer))


def _paths(stdout: str, label: str) -> Path:
    line = next(line for line in stdout.splitlines() if line.startswith(f"{label}: "))
    path = Path(line.split(": ", 1)[1].split(" (")[0])
    assert path.is_absolute() and path.is_file(), line
    return path


@needs_smollm2_tokenizer
@pytest.mark.parametrize("have_tqdm", [True, False])
def test_profile_shows_progress_per_layer_and_where_the_heatmap_went(tmp_path, capsys, monkeypatch, tiny_load,
                                                                     have_tqdm):
    if not have_tqdm:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # `from tqdm import tqdm` raises ImportError
    heatmap, map_json = tmp_path / "h.png", tmp_path / "m.json"
    assert cli.main(["profile", "--passkey-tokens", "300", "--config", SPARSE.to_json(), "--heatmap", str(heatmap),
                     "--map-json", str(map_json)]) == 0
    out = capsys.readouterr()
    tokens = re.search(r"passkey prompt \(.*\): (\d+) tokens", out.out).group(1)  # ~300: whole sentences
    if have_tqdm:
        assert f"prefill of {tokens} tokens: 100%" in out.err and "2/2" in out.err, out.err
    else:
        assert (f"prefill of {tokens} tokens: [1/2] layer 0\nprefill of {tokens} tokens: [2/2] layer 1"
                in out.err), out.err
    assert _paths(out.out, "map") == map_json.resolve()
    if "heatmap: skipped" not in out.out:
        assert _paths(out.out, "heatmap") == heatmap.resolve()


@needs_smollm2_tokenizer
def test_eval_shows_progress_and_where_results_table_and_plot_went(tmp_path, capsys, tiny_load):
    results = tmp_path / "r.json"
    assert cli.main(["eval", "--methods", "full", "--tasks", "passkey", "--lengths", "300", "--samples", "2",
                     "--out", str(results)]) == 0
    out = capsys.readouterr()
    assert "2 runs to do" in out.err and "2/2" in out.err, out.err
    assert _paths(out.out, "results") == results.resolve()
    assert "(2 records added, 2 in all)" in out.out
    assert _paths(out.out, "table") == results.with_suffix(".md").resolve()
    if "plot: skipped" not in out.out:
        assert _paths(out.out, "plot") == results.with_suffix(".png").resolve()
    # a rerun has nothing to do, loads no model, and still says where everything is
    assert cli.main(["eval", "--methods", "full", "--tasks", "passkey", "--lengths", "300", "--samples", "2",
                     "--out", str(results)]) == 0
    out = capsys.readouterr()
    assert "0 runs to do" in out.err and "(0 records added, 2 in all)" in out.out
    assert _paths(out.out, "table") == results.with_suffix(".md").resolve()
