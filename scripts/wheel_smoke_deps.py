"""Give a clean venv the runtime dependencies a wheel declares, from this python's installs, without copying them.

    python scripts/wheel_smoke_deps.py WHEEL VENV_PYTHON

Why: the wheel smoke test (scripts/wheel_smoke.sh) installs the wheel into a venv that must not see this
project's editable install, yet reinstalling torch (about 3 GB with its CUDA libraries) for every test run is
neither fast nor offline. So the venv is created without system site-packages, and this script links exactly the
wheel's declared dependencies (`Requires-Dist` without extras, followed transitively through each
dependency's own requirements, environment markers evaluated) from this python's site-packages into one folder,
which a `.pth` file puts on the venv's path. Only a plain folder is added: the `.pth` files of this python's
site-packages (the editable install's among them) are never processed in the venv, so nothing else leaks in.

Fails (exit 1, one line) when a declared dependency is not installed here or its version is outside the declared
range: then the smoke test could not tell whether the wheel's own requirements are enough.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - pip always vendors it
    from pip._vendor.packaging.requirements import Requirement


def declared_requirements(wheel: Path) -> list[Requirement]:
    """The wheel's `Requires-Dist` entries."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        fields = Parser().parsestr(archive.read(name).decode())
    return [Requirement(text) for text in fields.get_all("Requires-Dist") or []]


def applies(requirement: Requirement, marker_env: dict[str, str], extras: frozenset[str] = frozenset()) -> bool:
    """True when the requirement holds on the venv's platform, with no extra or one of `extras` requested."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**marker_env, "extra": extra}) for extra in {"", *extras})


def closure(requirements: list[Requirement], marker_env: dict[str, str]) -> list[metadata.Distribution]:
    """The installed distributions that satisfy `requirements`, transitively, extras included (each once)."""
    found: dict[str, metadata.Distribution] = {}
    extras_done: dict[str, frozenset[str]] = {}
    pending = [r for r in requirements if applies(r, marker_env)]
    while pending:
        requirement = pending.pop()
        key = re.sub(r"[-_.]+", "-", requirement.name).lower()
        extras = frozenset(requirement.extras) | extras_done.get(key, frozenset())
        if key in found and extras == extras_done[key]:
            continue
        try:
            dist = found.get(key) or metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"wheel_smoke_deps: {requirement} is declared but not installed in {sys.executable}; "
                             "install it there first") from None
        if not requirement.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"wheel_smoke_deps: {requirement} is declared but {sys.executable} has "
                             f"{dist.metadata['Name']} {dist.version}")
        found[key], extras_done[key] = dist, extras
        pending.extend(r for r in (Requirement(t) for t in dist.requires or []) if applies(r, marker_env, extras))
    return list(found.values())


def top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The files and folders a distribution installed at the top of site-packages (from its RECORD)."""
    if dist.files is None:
        raise SystemExit(f"wheel_smoke_deps: {dist.metadata['Name']} has no RECORD: cannot tell its files")
    names = set()
    for path in dist.files:
        first = path.parts[0]
        if first not in ("..", "__pycache__") and not first.endswith(".pth"):
            names.add(first)
    return names


def venv_facts(venv_python: str) -> tuple[dict[str, str], Path]:
    """The venv's environment-marker values and its site-packages folder."""
    code = ("import json, sys, sysconfig, platform, os; "
            "print(json.dumps({'site': sysconfig.get_paths()['purelib'], 'env': {"
            "'python_version': '.'.join(platform.python_version_tuple()[:2]), "
            "'python_full_version': platform.python_version(), 'os_name': os.name, 'sys_platform': sys.platform, "
            "'platform_machine': platform.machine(), 'platform_system': platform.system(), "
            "'platform_release': platform.release(), 'platform_version': platform.version(), "
            "'platform_python_implementation': platform.python_implementation(), "
            "'implementation_name': sys.implementation.name, "
            "'implementation_version': platform.python_version()}}))")
    facts = json.loads(subprocess.run([venv_python, "-I", "-c", code], check=True, capture_output=True,
                                      text=True).stdout)
    return facts["env"], Path(facts["site"])


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    wheel, venv_python = Path(argv[0]), argv[1]
    marker_env, venv_site = venv_facts(venv_python)
    deps = closure(declared_requirements(wheel), marker_env)
    folder = venv_site.parent / "entropyinfer-wheel-deps"
    folder.mkdir(exist_ok=True)
    for dist in deps:
        for name in top_level_entries(dist):
            source, link = Path(dist.locate_file(name)), folder / name
            if source.exists() and not link.exists():  # namespace folders (e.g. nvidia/) are shared: link once
                link.symlink_to(source)
    (venv_site / "entropyinfer-wheel-deps.pth").write_text(f"{folder}\n")
    print(f"linked {len(deps)} distributions: {', '.join(sorted(d.metadata['Name'] for d in deps))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
