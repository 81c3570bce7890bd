"""Deprecated: synthetic slides moved to :mod:`glomseg.io.synthetic` in 0.2.

Importing this module still works for one release and warns; import
:mod:`glomseg.io.synthetic` instead.
"""

from __future__ import annotations

import warnings

from glomseg.io.synthetic import *  # noqa: F403
from glomseg.io.synthetic import (  # noqa: F401  (module-level names that imported before)
    __all__,
    annotation_features,
    make_glomeruli,
)

warnings.warn(
    "glomseg.synthetic has moved to glomseg.io.synthetic; the old module will be removed in "
    "glomseg 0.3",
    DeprecationWarning,
    stacklevel=2,
)
