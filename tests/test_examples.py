from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def test_every_example_is_covered():
    assert SCRIPTS == [
        "build_tiles.py",
        "evaluate.py",
        "export_qupath.py",
        "predict_slides.py",
        "quickstart.py",
        "train.py",
        "train_hubmap_tiles.py",
    ]


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_has_help(script):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
    assert "python examples/" in result.stdout  # the docstring's usage line


def test_build_tiles_on_the_bundled_sample(tmp_path):
    sample = EXAMPLES / "data" / "sample"
    slides = [str(sample / "van0013_train_17.tif"), str(sample / "van0013_train_306.tif")]
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "build_tiles.py"),
            *slides,
            "--out",
            str(tmp_path / "t"),
            "--tile",
            "200",
            "--stride",
            "200",
            "--downsample",
            "4",
            "--recipe",
            "all",
            "--processes",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    # 1200 x 1600 at 4x is 300 x 400: with 200-px tiles, "drop" leaves 1 x 2 tiles a slide
    assert "4 of 4 tiles kept" in result.stdout
    assert (tmp_path / "t" / "images" / "van0013_train_306__r000_c001.png").is_file()
