"""The checks of the wheel smoke test (scripts/wheel_smoke.sh), run by the clean venv's python from a temp folder.

    VENV/bin/python wheel_smoke_check.py VENV

Each check prints one line; the first failure exits 1 with what went wrong.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path


def fail(message: str) -> None:
    print(f"wheel smoke: FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


def check_import(venv: Path) -> None:
    import entropyinfer_sgl

    where = Path(entropyinfer_sgl.__file__).resolve()
    if venv.resolve() not in where.parents:
        fail(f"entropyinfer_sgl was imported from {where}, not from the wheel installed in {venv}")
    print(f"import: {where.parent}")


def check_rust_planner() -> None:
    import torch

    from entropyinfer_sgl import EntropyInferConfig, _scheduler, head_budgets
    from entropyinfer_sgl.core import rust_planner

    config = EntropyInferConfig.small()
    entropy = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) * 2
    entropy[:2] = 0.0  # two rigid kv heads, two dynamic ones
    rigid, budgets, _ = rust_planner.head_budgets(entropy, config)
    rigid_torch, budgets_torch, _ = head_budgets(entropy, config)
    if not (torch.equal(rigid, rigid_torch) and torch.equal(budgets, budgets_torch)) or rigid.tolist() != [
            True, True, False, False]:
        fail(f"the Rust planner's head budgets differ from the torch planner's: rigid {rigid.tolist()} vs "
             f"{rigid_torch.tolist()}")
    print(f"rust planner: _scheduler {_scheduler.__version__} from {Path(_scheduler.__file__).name}, "
          f"head budgets equal to torch's ({int(rigid.sum())} of {rigid.numel()} heads rigid)")


def check_plugin_entry_point(venv: Path) -> None:
    points = [ep for ep in metadata.entry_points(group="sglang.srt.plugins") if ep.name == "entropyinfer"]
    if len(points) != 1 or points[0].value != "entropyinfer_sgl.sglang.plugin:register":
        fail(f"the sglang.srt.plugins entry point 'entropyinfer' is declared {len(points)} times: {points}")
    dist = metadata.distribution("entropyinfer-sgl")
    if venv.resolve() not in Path(dist.locate_file("")).resolve().parents:
        fail(f"entropyinfer-sgl's metadata was read from {dist.locate_file('')}, not from {venv}")
    register = points[0].load()
    try:  # sglang is not a dependency: the plugin must refuse with the install command, importing nothing heavy
        register()
    except RuntimeError as err:
        if "pip install" not in str(err):
            fail(f"the plugin's refusal without sglang does not say how to install it: {err}")
    else:
        fail("the plugin registered without sglang installed")
    print(f"plugin entry point: sglang.srt.plugins -> {points[0].value} (loads; refuses without sglang)")


def check_cli(venv: Path) -> None:
    out = subprocess.run([str(venv / "bin" / "entropyinfer"), "--help"], capture_output=True, text=True)
    if out.returncode != 0 or "eval" not in out.stdout or "profile" not in out.stdout:
        fail(f"`entropyinfer --help` exited {out.returncode}: {out.stdout[-500:]} {out.stderr[-1000:]}")
    print("cli: entropyinfer --help lists " + out.stdout.splitlines()[0])


def main() -> int:
    venv = Path(sys.argv[1])
    check_import(venv)
    check_rust_planner()
    check_plugin_entry_point(venv)
    check_cli(venv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
