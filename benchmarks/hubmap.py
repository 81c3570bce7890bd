"""The real HuBMAP tiles as a training and validation set, and whole-image Dice.

Shared by ``bench_training.py`` and ``build_pretrained.py``. The 110 PAS tiles of
``shared/data/hubmap_tiles`` (1600 x 1200, ~0.98 um/px, slide VAN0013-LK-202-96)
are split by source image id: ids below 250 train (66 images), ids from 250
validate (44 images), so no image, and no overlapping crop of one, is on both
sides. Validation scores whole images at full resolution against their polygons,
as the Kaggle metric does: mean Dice per image, and Dice pooled over all pixels.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glomseg import (
    SlideReader,
    SlideSource,
    evaluate_slides,
    load_training_images,
    sliding_window_predict,
)

HERE = Path(__file__).resolve().parent
TILES_ENV = "GLOMSEG_HUBMAP_TILES"
SPLIT_ID = 250
PIXEL_SIZE_UM = 0.98  # of the tiles at full resolution
DOWNSAMPLE = 2


def find_tiles(path: Path | None) -> Path:
    """The tile folder: the argument, else $GLOMSEG_HUBMAP_TILES, else ../shared/data beside."""
    candidates = [path] if path is not None else []
    if os.environ.get(TILES_ENV):
        candidates.append(Path(os.environ[TILES_ENV]))
    candidates.append(HERE.parent.parent / "shared" / "data" / "hubmap_tiles")
    for candidate in candidates:
        if candidate is not None and any(candidate.glob("*.jpg")):
            return candidate
    raise SystemExit(
        f"no HuBMAP tiles found (tried {[str(c) for c in candidates]}); pass --tiles DIR "
        f"or set {TILES_ENV}"
    )


def source_id(name: str) -> int:
    match = re.search(r"(\d+)$", name)
    if match is None:
        raise ValueError(f"cannot read a tile id from {name!r}")
    return int(match[1])


@dataclass
class Split:
    train: list[SlideSource]
    validation: list[SlideSource]


def split(tiles: Path) -> Split:
    sources = [SlideSource.from_path(p) for p in sorted(tiles.glob("*.jpg"))]
    return Split(
        train=[s for s in sources if source_id(s.slide_id) < SPLIT_ID],
        validation=[s for s in sources if source_id(s.slide_id) >= SPLIT_ID],
    )


class Validation:
    """Whole validation images at the model's resolution, scored at full resolution."""

    def __init__(self, sources: list[SlideSource], downsample: int = DOWNSAMPLE) -> None:
        self.sources = sources
        self.downsample = downsample
        self.images, _ = load_training_images(sources, downsample=downsample)
        self.shapes = []
        for source in sources:
            with SlideReader(source.slide) as reader:
                self.shapes.append(reader.shape)

    def score(self, predictor: Any, *, tile_size: int, tta: bool = False) -> dict[str, float]:
        """Mean per-image and pooled Dice of ``predictor`` (a batch -> probabilities callable)."""
        begin = time.perf_counter()
        masks = {}
        ds = self.downsample
        for source, image, (h, w) in zip(self.sources, self.images, self.shapes, strict=True):
            probs = sliding_window_predict(
                image, predictor, tile_size=tile_size, stride=tile_size * 3 // 4, tta=tta
            )
            small = probs > 0.5
            masks[source.slide_id] = (
                np.repeat(np.repeat(small, ds, axis=0), ds, axis=1)[:h, :w],
                source.annotations,
            )
        report = evaluate_slides(masks)
        return {
            "mean": report.mean,
            "pooled": report.pooled,
            "seconds": time.perf_counter() - begin,
        }
