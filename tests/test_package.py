from __future__ import annotations

import subprocess
import sys

import glomseg


def test_import_does_not_load_tensorflow_or_dask():
    heavy = "{'tensorflow', 'segmentation_models', 'keras', 'tf_keras', 'dask', 'distributed'}"
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
