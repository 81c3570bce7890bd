"""Reading slides: the lowest stage of the pipeline.

:class:`SlideReader` opens a TIFF slide of any HuBMAP layout and reads windows of
it (:class:`Window`, ``(row, col, height, width)``) at any downsample without
decoding the whole slide; :func:`tissue_pixels` tells tissue from glass;
:mod:`glomseg.io.synthetic` writes synthetic slides for tests and benchmarks.
Private modules here also hold the TIFF layout, colour, segment and metadata
readers, resampling, atomic files, row-by-row slide streams and the
one-task-per-slide runner that ``client=`` arguments share.

May import: :mod:`glomseg.errors` only.
"""

from __future__ import annotations

from glomseg.io._reader import SlideReader
from glomseg.io._tissue import tissue_pixels
from glomseg.io._window import Window

__all__ = [
    "SlideReader",
    "Window",
    "tissue_pixels",
]
