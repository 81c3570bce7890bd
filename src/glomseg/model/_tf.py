"""The one place glomseg imports TensorFlow, tf-keras and segmentation-models.

Everything that needs TensorFlow calls :func:`import_tf` lazily, so
``import glomseg`` stays fast and works without the ``tf`` extra
(``pip install 'glomseg[tf]'``).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["INSTALL_HINT", "import_tf"]

INSTALL_HINT = "GlomUNet needs TensorFlow and segmentation-models: pip install 'glomseg[tf]'"

#: Lines TensorFlow's C++ side prints while it loads and looks for GPUs, whatever
#: ``TF_CPP_MIN_LOG_LEVEL`` says (they come before its logging is set up), and
#: that say nothing wrong: no CUDA driver on a CPU machine, CPU features, oneDNN.
START_UP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "cudart_stub.cc",
    "failed call to cuInit",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning: Could not find TensorRT",
)


@contextlib.contextmanager
def _without_start_up_noise() -> Iterator[None]:
    """Hold what is written to file descriptor 2; then pass on all but :data:`START_UP_NOISE`."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not any(n in line for n in START_UP_NOISE))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_tf() -> tuple[Any, Any, Any]:
    """Import and return ``(tensorflow, tf_keras, segmentation_models)``.

    Sets ``TF_USE_LEGACY_KERAS=1`` and ``SM_FRAMEWORK=tf.keras`` (unless already
    set) before the imports, as segmentation-models 1.0.1 needs, and swallows
    segmentation_models' import-time print. Unless ``TF_CPP_MIN_LOG_LEVEL`` is
    set (then TensorFlow logs as it says), it sets it to 2 (errors only) and,
    while TensorFlow loads and looks for GPUs, drops the lines of
    :data:`START_UP_NOISE` that it prints before that setting applies, such as
    ``failed call to cuInit`` on a machine without a GPU; other lines pass.

    Raises
    ------
    ImportError
        If TensorFlow, tf-keras or segmentation-models is missing, with the
        command that installs them.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
    # Quiet unless the user chose a log level: then TensorFlow prints what they asked for.
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "tensorflow" not in sys.modules
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with (
            _without_start_up_noise() if quiet else contextlib.nullcontext(),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            # Old-style packages imported by the backbones (keras_applications,
            # efficientnet, image-classifiers) may use deprecated APIs.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            import segmentation_models as sm
            import tensorflow as tf
            import tf_keras as keras

            if quiet:
                tf.config.list_physical_devices("GPU")  # where CUDA is looked for, and logs
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return tf, keras, sm
