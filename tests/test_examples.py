from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
#: A line of TensorFlow's C++ log (``I0000 00:00:17963... cudart_stub.cc:31] ...``) or absl's.
TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:. ]+\d+ \S+:\d+\]|absl::InitializeLog", re.MULTILINE)
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def test_every_example_is_covered():
    assert SCRIPTS == [
        "build_tiles.py",
        "evaluate.py",
        "export_qupath.py",
        "predict_cluster.py",
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


@pytest.mark.slow
def test_quickstart_runs_with_a_short_fine_tune(tmp_path):
    out = tmp_path / "q"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--out", str(out), "--steps", "4"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not TF_LOG_LINE.search(result.stdout + result.stderr), result.stderr[-3000:]
    assert "1. pretrained model 'glomeruli-pas'" in result.stdout
    assert result.stdout.count("mean Dice (the Kaggle score)") == 2
    assert (out / "submission.csv").read_text().startswith("id,predicted")
    assert (out / "overview.png").is_file()
    assert len(list(out.glob("*.predicted.json"))) == 4


@pytest.mark.slow
def test_train_hubmap_tiles_on_the_bundled_sample(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "train_hubmap_tiles.py"),
            "--tiles",
            str(EXAMPLES / "data" / "sample"),
            "--out",
            str(tmp_path / "m"),
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--minutes",
            "30",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation Dice over" in result.stdout
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["steps_run"] == 4
    assert 0 <= summary["dice_pooled"] <= 1
    assert (tmp_path / "m" / "model.h5").is_file()


def test_predict_cluster_on_a_local_cluster_then_resume(tmp_path):
    pytest.importorskip("distributed")
    pytest.importorskip("tensorflow")
    sample = EXAMPLES / "data" / "sample"
    command = [
        sys.executable,
        str(EXAMPLES / "predict_cluster.py"),
        str(sample / "van0013_train_306.tif"),
        str(sample / "van0013_train_323.tif"),
        "--workers",
        "1",
        "--truth",
        "--out",
        str(tmp_path / "c"),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 predicted, 0 done before, 0 failed" in result.stdout
    mean = float(result.stdout.split("mean Dice ")[1].split(",")[0])
    assert mean >= 0.8  # the shipped model on tiles it never trained on
    rows = (tmp_path / "c" / "submission.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["id", "van0013_train_306", "van0013_train_323"]
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 predicted, 2 done before, 0 failed" in again.stdout
