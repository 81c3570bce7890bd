"""Many slides at once, in this process or on a Dask cluster: :func:`predict_slides`.

Resumable: each slide's outputs are written atomically with a record, so a
rerun skips the slides already done. Dask is imported only when a client is given.

May import: every other stage and :mod:`glomseg.errors`.
"""

from __future__ import annotations

from glomseg.distributed._distributed import (
    ModelSource,
    SlideOutcome,
    SlidesReport,
    predict_slides,
)

__all__ = [
    "ModelSource",
    "SlideOutcome",
    "SlidesReport",
    "predict_slides",
]
