#!/usr/bin/env python3
"""Set up glomseg's environment and run its main job or its checks.

    python3 dev.py quickstart   # the quickstart on the bundled real sample
    python3 dev.py test         # lint, type check, tests with doctests, docs build

Each command creates (or updates) a virtual environment in ``.venv`` with glomseg
installed in editable mode and every extra, so nothing needs installing by hand.
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
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".glomseg-installed"


def run(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    result = subprocess.run([str(a) for a in args], cwd=ROOT, check=False)
    if result.returncode:
        sys.exit(result.returncode)


def ensure_env() -> None:
    """Create ``.venv`` and install glomseg[dev] unless pyproject.toml is unchanged since."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    STAMP.write_text(digest)


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


COMMANDS = {"quickstart": quickstart, "test": test}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2)
    COMMANDS[sys.argv[1]](sys.argv[2:])
