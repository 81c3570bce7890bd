"""Scoring: Dice per image and pooled, whole-slide evaluation and overlays.

:func:`dice_coefficient` scores two masks, :func:`evaluate_slide` scores a
predicted slide against its polygons, window by window, and :func:`write_overlay`
draws prediction against truth.

May import: every stage below it (io, annotations, tiles, model, predict) and
:mod:`glomseg.errors`.
"""

from __future__ import annotations

from glomseg.evaluate._evaluate import (
    DiceReport,
    SlideDice,
    evaluate_slide,
    evaluate_slides,
)
from glomseg.evaluate._metrics import (
    dice_coefficient,
    mean_dice,
    soft_dice,
)
from glomseg.evaluate._overlay import write_overlay

__all__ = [
    "DiceReport",
    "SlideDice",
    "dice_coefficient",
    "evaluate_slide",
    "evaluate_slides",
    "mean_dice",
    "soft_dice",
    "write_overlay",
]
