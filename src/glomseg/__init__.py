"""glomseg: find glomeruli in huge kidney whole-slide images.

The public API is listed in :data:`__all__`. Importing glomseg never imports
TensorFlow; the model (:class:`GlomUNet`) loads it on first use.
"""

from __future__ import annotations

import logging

from glomseg._reader import SlideReader
from glomseg._window import Window
from glomseg.errors import (
    AnnotationError,
    DatasetError,
    GlomsegError,
    SlideReadError,
    WindowError,
)

__version__ = "0.1.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AnnotationError",
    "DatasetError",
    "GlomsegError",
    "SlideReadError",
    "SlideReader",
    "Window",
    "WindowError",
    "__version__",
]
