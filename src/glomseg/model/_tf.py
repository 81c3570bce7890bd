"""The one place glomseg imports TensorFlow, tf-keras and segmentation-models.

Everything that needs TensorFlow calls :func:`import_tf` lazily, so
``import glomseg`` stays fast and works without the ``tf`` extra
(``pip install 'glomseg[tf]'``).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Any

__all__ = ["INSTALL_HINT", "import_tf"]

INSTALL_HINT = "GlomUNet needs TensorFlow and segmentation-models: pip install 'glomseg[tf]'"


def import_tf() -> tuple[Any, Any, Any]:
    """Import and return ``(tensorflow, tf_keras, segmentation_models)``.

    Sets ``TF_USE_LEGACY_KERAS=1`` and ``SM_FRAMEWORK=tf.keras`` (unless already
    set) before the imports, as segmentation-models 1.0.1 needs, quiets
    TensorFlow's C++ log, and swallows segmentation_models' import-time print.

    Raises
    ------
    ImportError
        If TensorFlow, tf-keras or segmentation-models is missing, with the
        command that installs them.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            # Old-style packages imported by the backbones (keras_applications,
            # efficientnet, image-classifiers) may use deprecated APIs.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            import segmentation_models as sm
            import tensorflow as tf
            import tf_keras as keras
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return tf, keras, sm
