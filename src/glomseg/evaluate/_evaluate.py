"""Whole-slide Dice: a predicted mask scored against annotation polygons, window by window."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from glomseg.annotations._annotations import read_annotations
from glomseg.annotations._rasterize import MaskRasterizer
from glomseg.io._row_stream import default_workers
from glomseg.io._window import Window
from glomseg.predict._slide_mask import MaskLike, _as_mask, _mask_shape, _read_mask
from glomseg.tiles._tiling import _positive_int

if TYPE_CHECKING:
    pass

__all__ = ["DiceReport", "SlideDice", "evaluate_slide", "evaluate_slides"]


@dataclass(frozen=True)
class SlideDice:
    """The Dice score of one slide and the pixel counts it comes from.

    Attributes
    ----------
    dice : float
        ``2 |P & T| / (|P| + |T|)``, 1.0 when both are empty.
    intersection, predicted, truth : int
        ``|P & T|``, ``|P|`` and ``|T|`` in pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from shapely.geometry import box
    >>> pred = np.zeros((6, 6), dtype=bool)
    >>> pred[1:3, 1:5] = True  # 8 pixels, 6 of them in the truth
    >>> score = evaluate_slide(pred, [box(1, 1, 3, 2)])  # truth: rows 1-2, cols 1-3
    >>> score
    SlideDice(dice=0.857..., intersection=6, predicted=8, truth=6)
    """

    dice: float
    intersection: int
    predicted: int
    truth: int


@dataclass(frozen=True)
class DiceReport:
    """Per-slide Dice scores and their mean, the Kaggle HuBMAP score.

    Attributes
    ----------
    per_slide : dict of str to SlideDice
        In the order given.
    mean : float
        Mean of the per-slide Dice scores.

    Examples
    --------
    >>> import numpy as np
    >>> empty = np.zeros((4, 4), dtype=bool)
    >>> report = evaluate_slides({"a": (empty, []), "b": (~empty, [])})
    >>> report.per_slide["a"].dice, report.per_slide["b"].dice, report.mean
    (1.0, 0.0, 0.5)
    """

    per_slide: dict[str, SlideDice] = field(default_factory=dict)
    mean: float = float("nan")

    @property
    def pooled(self) -> float:
        """Dice pooled over the pixels of all slides, ``2 sum |P & T| / sum (|P| + |T|)``.

        1.0 when every mask is empty; NaN when there are no slides. Large slides
        weigh more than small ones, unlike :attr:`mean`.

        Examples
        --------
        >>> import numpy as np
        >>> from shapely.geometry import box
        >>> pred = np.zeros((6, 6), dtype=bool)
        >>> pred[1:3, 1:5] = True  # 8 pixels, 6 of them in the truth
        >>> empty = np.zeros((6, 6), dtype=bool)
        >>> report = evaluate_slides({"a": (pred, [box(1, 1, 3, 2)]), "b": (empty, [])})
        >>> round(report.mean, 3), round(report.pooled, 3)  # (0.857 + 1) / 2, and 12 / 14
        (0.929, 0.857)
        >>> evaluate_slides({"b": (empty, [])}).pooled
        1.0
        """
        if not self.per_slide:
            return float("nan")
        scores = self.per_slide.values()
        total = sum(s.predicted + s.truth for s in scores)
        return 2 * sum(s.intersection for s in scores) / total if total else 1.0


def _rasterizer(truth: object) -> MaskRasterizer:
    if isinstance(truth, MaskRasterizer):
        return truth
    if isinstance(truth, str | os.PathLike):
        return MaskRasterizer(read_annotations(truth))
    if isinstance(truth, Iterable):
        return MaskRasterizer(truth)
    raise TypeError(
        "truth must be an annotation JSON path, a MaskRasterizer or an iterable of "
        f"geometries, got {type(truth).__name__}"
    )


def evaluate_slide(
    prediction: MaskLike,
    truth: str | os.PathLike[str] | MaskRasterizer | Iterable[object],
    *,
    window: int = 4096,
    workers: int | None = None,
) -> SlideDice:
    """Score a predicted slide mask against annotation polygons, window by window.

    The truth is rasterized one window at a time with
    :class:`glomseg.MaskRasterizer` (pixel-centre rule), and the counts of the
    windows are summed, so no full-size truth mask is ever made. The result
    equals :func:`glomseg.dice_coefficient` of the prediction and the full
    rasterized truth.

    Parameters
    ----------
    prediction : SlideMask, path or numpy.ndarray
        The predicted full-resolution mask.
    truth : path, MaskRasterizer or iterable of geometries
        The annotation JSON of the slide, or its polygons.
    window : int
        Side of the windows compared at once.
    workers : int, optional
        Windows compared at once by threads; default the machine's cores.

    Returns
    -------
    SlideDice

    Raises
    ------
    ValueError
        If a truth polygon lies wholly outside the prediction (a mask of another
        slide, or not at full resolution): its glomeruli would count for nothing.

    Examples
    --------
    >>> import numpy as np
    >>> from shapely.geometry import box
    >>> pred = np.zeros((10, 10), dtype=bool)
    >>> pred[1:4, 1:4] = True
    >>> evaluate_slide(pred, [box(1, 1, 3, 3)], window=4)  # truth: pixels 1..3
    SlideDice(dice=1.0, intersection=9, predicted=9, truth=9)
    """
    mask = _as_mask(prediction)
    rasterizer = _rasterizer(truth)
    side = _positive_int("window", window)
    threads = default_workers() if workers is None else _positive_int("workers", workers)
    h, w = _mask_shape(mask)
    beyond = [
        i
        for i, g in enumerate(rasterizer.geometries)
        if g.bounds[0] >= w or g.bounds[1] >= h  # wholly right of or below the mask
    ]
    if beyond:
        raise ValueError(
            f"{len(beyond)} of {len(rasterizer)} truth polygons lie wholly outside the "
            f"prediction of shape {(h, w)} (first: polygon {beyond[0]}, bounds "
            f"{tuple(round(b, 1) for b in rasterizer.geometries[beyond[0]].bounds)}): is the "
            "mask at full resolution and of this slide?"
        )
    windows = [
        Window.from_bounds(r, c, min(r + side, h), min(c + side, w))
        for r in range(0, h, side)
        for c in range(0, w, side)
    ]

    def count(win: Window) -> tuple[int, int, int]:
        p = _read_mask(mask, win)
        t = rasterizer.rasterize(win)
        return int(np.count_nonzero(p & t)), int(np.count_nonzero(p)), int(np.count_nonzero(t))

    if threads > 1 and len(windows) > 1:
        # Mask chunks decompress and polygons rasterize with the GIL released.
        with ThreadPoolExecutor(min(threads, len(windows))) as pool:
            counts = list(pool.map(count, windows))
    else:
        counts = [count(win) for win in windows]
    both = sum(c[0] for c in counts)
    predicted = sum(c[1] for c in counts)
    actual = sum(c[2] for c in counts)
    total = predicted + actual
    dice = 1.0 if total == 0 else 2.0 * both / total
    return SlideDice(dice, both, predicted, actual)


def evaluate_slides(
    pairs: Mapping[str, tuple[MaskLike, str | os.PathLike[str] | MaskRasterizer]],
    *,
    window: int = 4096,
    client: Any = None,
    progress: bool = False,
) -> DiceReport:
    """Score many slides with :func:`evaluate_slide` and average, as Kaggle does.

    Parameters
    ----------
    pairs : mapping of str to (prediction, truth)
        Slide id to its predicted mask and its annotations.
    window : int
        Side of the windows compared at once.
    client : dask.distributed.Client, optional
        Score one slide per task on this client's cluster; give masks and
        annotations as paths the workers can read. The result is the same.
    progress : bool
        Show a progress bar of slides.

    Returns
    -------
    DiceReport

    Raises
    ------
    SlideTaskError
        With a client, when slides failed: raised once every slide has
        finished, listing each failure.

    Examples
    --------
    >>> import numpy as np
    >>> from shapely.geometry import box
    >>> full = np.ones((4, 4), dtype=bool)
    >>> report = evaluate_slides({"a": (full, [box(0, 0, 3, 3)]), "b": (full, [])})
    >>> report.per_slide["a"].dice, report.per_slide["b"].dice, report.mean
    (1.0, 0.0, 0.5)
    """
    if not pairs:
        raise ValueError("evaluate_slides needs at least one slide")
    if client is None and not progress:
        scores = {key: evaluate_slide(p, t, window=window) for key, (p, t) in pairs.items()}
    else:
        scores = _evaluate_tasks(pairs, window, client, progress)
    mean = float(np.mean([s.dice for s in scores.values()]))
    return DiceReport(scores, mean)


def _evaluate_tasks(
    pairs: Mapping[str, tuple[MaskLike, str | os.PathLike[str] | MaskRasterizer]],
    window: int,
    client: Any,
    progress: bool,
) -> dict[str, SlideDice]:
    from glomseg.errors import SlideTaskError
    from glomseg.io._tasks import _check_client, _run_tasks

    if client is not None:
        _check_client(client)
    tasks = {key: (p, t, window) for key, (p, t) in pairs.items()}
    scores: dict[str, SlideDice] = {}
    failures: dict[str, str] = {}
    for key, result, error in _run_tasks(
        _evaluate_one, tasks, client=client, progress=progress, desc="evaluate"
    ):
        if error is not None:
            if client is None:
                raise error
            failures[key] = f"{type(error).__name__}: {error}"
        else:
            scores[key] = result
    if failures:
        raise SlideTaskError(failures, total=len(pairs))
    return {key: scores[key] for key in pairs}


def _evaluate_one(prediction: MaskLike, truth: Any, window: int) -> SlideDice:
    return evaluate_slide(prediction, truth, window=window)
