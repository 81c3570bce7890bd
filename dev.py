#!/usr/bin/env python3
"""Set up glomseg's environment and run its main job or its checks.

    python3 dev.py quickstart   # the quickstart on the bundled real sample
    python3 dev.py test         # lint, type check, tests with doctests, docs build

Each command creates (or updates) a virtual environment in ``.venv`` with glomseg
installed in editable mode and every extra (on numpy 2), so nothing needs
installing by hand. ``test`` also checks ``patchify_tiles`` against patchify in a
second, core-only environment, ``.venv-patchify`` (patchify pins numpy<2).
Extra arguments after ``test`` go to pytest (for example ``-m slow``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("GLOMSEG_VENV", ROOT / ".venv"))
PYTHON = VENV / ("Scripts" if os.name == "nt" else "bin") / "python"


#: A second, core-only environment with numpy 1.x and the ``patchify`` extra (patchify pins
#: numpy<2, which the main environment no longer has), for the patchify_tiles checks.
PATCHIFY_VENV = Path(os.environ.get("GLOMSEG_PATCHIFY_VENV", ROOT / ".venv-patchify"))
PATCHIFY_TESTS = ("-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=-ra --strict-markers")


def run(*args: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    result = subprocess.run([str(a) for a in args], cwd=ROOT, check=False, env=env)
    if result.returncode:
        sys.exit(result.returncode)


def _python(environment: Path) -> Path:
    return environment / ("Scripts" if os.name == "nt" else "bin") / "python"


def ensure_env(environment: Path = VENV, *requirements: str) -> Path:
    """Create ``environment`` and install ``requirements`` unless pyproject.toml is unchanged."""
    requirements = requirements or ("-e", ".[dev]")
    python = _python(environment)
    stamp = environment / ".glomseg-installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and python.exists():
        return python
    if not python.exists():
        print(f"creating {environment}", flush=True)
        venv.create(environment, with_pip=True)
    run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(python, "-m", "pip", "install", "--quiet", *requirements)
    stamp.write_text(digest)
    return python


def quickstart(args: list[str]) -> None:
    ensure_env()
    run(PYTHON, ROOT / "examples" / "quickstart.py", *args)


def test(args: list[str]) -> None:
    ensure_env()
    paths = ("src", "tests", "examples", "benchmarks", "docs", "dev.py")
    sources = [p for p in paths if (ROOT / p).exists()]
    run(PYTHON, "-m", "ruff", "check", *sources)
    run(PYTHON, "-m", "ruff", "format", "--check", *sources)
    run(PYTHON, "-m", "mypy")
    run(PYTHON, "-m", "pytest", *args)
    html = ROOT / "docs" / "_build" / "html"
    run(PYTHON, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", html)
    # patchify_tiles against patchify itself, where patchify (and so numpy 1.x) is installed:
    # here these tests may not skip.
    patchify_python = ensure_env(
        PATCHIFY_VENV, "-e", ".[patchify]", "pytest>=8", "hypothesis>=6.100", "numpy<2"
    )
    tests = ("tests/tiles/test_tiling.py", "-k", "patchify")
    env = {**os.environ, "GLOMSEG_REQUIRE_PATCHIFY": "1"}
    run(patchify_python, *PATCHIFY_TESTS, *tests, env=env)


COMMANDS = {"quickstart": quickstart, "test": test}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2)
    COMMANDS[sys.argv[1]](sys.argv[2:])
