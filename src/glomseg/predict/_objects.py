"""Remove low-confidence regions from a thresholded mask, whole or row band by row band.

A thresholded probability map holds, besides glomeruli, regions where the
model was only half sure: tubule clusters and dense nuclei that look a little
like a glomerulus. Their mean probability is lower than that of real
glomeruli, whose centres the model is sure of. :class:`ObjectFilter` removes
every 8-connected region of the mask whose mean probability is below
``min_confidence``.

It works on a stream of row bands, as :func:`glomseg.predict_slide` produces
them, and gives the same mask as on the whole image at once
(:func:`filter_objects`, used by :func:`glomseg.predict_image`): rows are held
back until every region that touches them is complete, then handed on with the
rejected regions cleared. A region taller than ``max_rows`` is kept whatever
its confidence (nothing that tall is a glomerulus, and holding it would hold
back every row below its top), so memory stays bounded by ``max_rows`` rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["ObjectFilter", "filter_objects"]

_EIGHT = np.ones((3, 3), dtype=bool)


class ObjectFilter:
    """Clear regions of a mask whose mean probability is below a confidence, band by band.

    Parameters
    ----------
    width : int
        Columns of the mask.
    min_confidence : float
        A region is kept when the mean of its pixels' probabilities (clipped to
        ``[0, 1]``) is at least this.
    max_rows : int
        Regions taller than this are kept whatever their confidence; > 0.

    Examples
    --------
    Two blobs over a threshold of 0.5, one sure (0.9) and one not (0.6), fed in
    bands of two rows:

    >>> import numpy as np
    >>> probs = np.zeros((6, 8), dtype=np.float32)
    >>> probs[1:5, 1:3] = 0.9
    >>> probs[2:6, 5:7] = 0.6
    >>> f = ObjectFilter(8, min_confidence=0.8, max_rows=100)
    >>> bands = [f.push(r, probs[r:r + 2] > 0.5, probs[r:r + 2]) for r in (0, 2, 4)]
    >>> out = np.concatenate([m for band in bands + [f.finish()] for _, m in band])
    >>> out.astype(int)[:, :7]
    array([[0, 0, 0, 0, 0, 0, 0],
           [0, 1, 1, 0, 0, 0, 0],
           [0, 1, 1, 0, 0, 0, 0],
           [0, 1, 1, 0, 0, 0, 0],
           [0, 1, 1, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 0]])
    """

    def __init__(self, width: int, *, min_confidence: float, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.width = int(width)
        self.min_confidence = float(min_confidence)
        self.max_rows = int(max_rows)
        self._top = 0  # image row of the first held row
        self._mask = np.zeros((0, self.width), dtype=np.bool_)
        self._probs = np.zeros((0, self.width), dtype=np.float32)
        # Held pixels of regions already decided "keep": a region holding one is kept.
        self._keep = np.zeros((0, self.width), dtype=np.bool_)

    @property
    def held_rows(self) -> int:
        """Rows received but not yet handed on."""
        return int(self._mask.shape[0])

    def push(
        self, start: int, mask: NDArray[np.bool_], probs: NDArray[np.floating[Any]]
    ) -> list[tuple[int, NDArray[np.bool_]]]:
        """Add the next rows; return the rows now final, as ``[(first row, mask)]``.

        Parameters
        ----------
        start : int
            Image row of ``mask[0]``: the row after the last one pushed.
        mask, probs : numpy.ndarray
            The thresholded rows and their probabilities, both ``(n, width)``.
        """
        expected = self._top + self.held_rows
        if start != expected:
            raise ValueError(f"rows must come in order: expected row {expected}, got {start}")
        if mask.shape != probs.shape or mask.ndim != 2 or mask.shape[1] != self.width:
            raise ValueError(
                f"mask {mask.shape} and probs {probs.shape} must both be (n, {self.width})"
            )
        self._mask = np.concatenate([self._mask, mask.astype(np.bool_, copy=False)])
        self._probs = np.concatenate([self._probs, probs.astype(np.float32, copy=False)])
        self._keep = np.concatenate([self._keep, np.zeros(mask.shape, dtype=np.bool_)])
        return self._release(final=False)

    def finish(self) -> list[tuple[int, NDArray[np.bool_]]]:
        """Every row still held, with every region decided."""
        return self._release(final=True)

    def _release(self, *, final: bool) -> list[tuple[int, NDArray[np.bool_]]]:
        n = self.held_rows
        if n == 0:
            return []
        labels, count = ndimage.label(self._mask, structure=_EIGHT)
        # The last row is held until the end: it links the regions still open, and
        # the marks of those already kept, to the rows still to come.
        release = n if final else n - 1
        if count:
            inside = self._mask.ravel()  # only region pixels: a mask is mostly background
            ids = labels.ravel()[inside]
            probs = np.clip(self._probs.ravel()[inside], 0, 1)
            pixels = np.bincount(ids, minlength=count + 1)
            sums = np.bincount(ids, weights=probs, minlength=count + 1)
            kept = np.bincount(ids, weights=self._keep.ravel()[inside], minlength=count + 1) > 0
            boxes = ndimage.find_objects(labels)
            tops = np.array([box[0].start for box in boxes])
            heights = np.array([box[0].stop - box[0].start for box in boxes])
            open_ = np.zeros(count, dtype=np.bool_)
            if not final:
                open_[np.unique(labels[-1][labels[-1] > 0]) - 1] = True
            sure = sums[1:] >= self.min_confidence * pixels[1:]
            keep = kept[1:] | (heights > self.max_rows) | (~open_ & sure)
            drop = ~open_ & ~keep
            waiting = open_ & ~keep
            if waiting.any():
                release = min(release, int(tops[waiting].min()))
            # Decisions are final: drop rejected regions, mark kept ones for later passes.
            verdict = np.zeros(count + 1, dtype=np.int8)
            verdict[1:][keep] = 1
            verdict[1:][drop] = 2
            pixel_verdict = verdict[labels]
            self._mask[pixel_verdict == 2] = False
            self._keep |= pixel_verdict == 1
        out = [(self._top, self._mask[:release].copy())] if release else []
        self._top += release
        self._mask = self._mask[release:]
        self._probs = self._probs[release:]
        self._keep = self._keep[release:]
        return out


def filter_objects(
    probs: NDArray[np.floating[Any]], threshold: float, min_confidence: float, max_rows: int
) -> NDArray[np.bool_]:
    """``probs > threshold`` without the regions whose mean probability is below ``min_confidence``.

    What :class:`ObjectFilter` gives for the same rows in any bands.

    Examples
    --------
    >>> import numpy as np
    >>> probs = np.zeros((4, 9), dtype=np.float32)
    >>> probs[1:3, 1:3], probs[1:3, 5:8] = 0.95, 0.55
    >>> filter_objects(probs, 0.5, 0.8, max_rows=100).astype(int)
    array([[0, 0, 0, 0, 0, 0, 0, 0, 0],
           [0, 1, 1, 0, 0, 0, 0, 0, 0],
           [0, 1, 1, 0, 0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 0, 0, 0]])
    """
    mask = probs > np.float32(threshold)
    stream = ObjectFilter(probs.shape[1], min_confidence=min_confidence, max_rows=max_rows)
    rows = stream.push(0, mask, probs) + stream.finish()
    return np.concatenate([m for _, m in rows]) if rows else mask
