from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

import glomseg

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def test_import_does_not_load_tensorflow_dask_or_openvino():
    heavy = (
        "{'tensorflow', 'segmentation_models', 'keras', 'tf_keras', 'dask', 'distributed', "
        "'openslide', 'h5py', 'openvino', 'openvino_telemetry', 'nncf'}"
    )
    code = (
        f"import sys, glomseg; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_is_sorted_and_importable():
    assert list(glomseg.__all__) == sorted(glomseg.__all__)
    for name in glomseg.__all__:
        assert hasattr(glomseg, name), name


def test_errors_are_catchable_as_builtins():
    assert issubclass(glomseg.errors.SlideReadError, OSError)
    assert issubclass(glomseg.errors.AnnotationError, ValueError)
    assert issubclass(glomseg.errors.WindowError, ValueError)
    for error in (
        glomseg.errors.SlideReadError,
        glomseg.errors.AnnotationError,
        glomseg.errors.WindowError,
        glomseg.errors.DatasetError,
    ):
        assert issubclass(error, glomseg.GlomsegError)


def test_the_core_install_and_dev_allow_numpy_2():
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    core = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    assert core["numpy"].specifier.contains("2.3.0")
    assert "patchify" not in core  # it pins numpy<2: an extra of its own
    extras = project["optional-dependencies"]
    assert [Requirement(r).name for r in extras["patchify"]] == ["patchify"]
    dev = Requirement(extras["dev"][0])
    assert dev.name == "glomseg"
    assert "patchify" not in dev.extras
    assert "openslide" in dev.extras
