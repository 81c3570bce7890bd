"""Dice scores: per image, Kaggle's mean over images, and soft Dice for probabilities.

All functions are pure numpy and work band by band of rows, so scoring a
whole-slide mask needs no full-size temporary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["dice_coefficient", "mean_dice", "soft_dice"]

#: Elements handled at once (bounds the temporaries to a few tens of MB).
_BAND_ELEMENTS = 1 << 22


def _check_pair(pred: ArrayLike, truth: ArrayLike) -> tuple[NDArray[Any], NDArray[Any]]:
    a, b = np.asarray(pred), np.asarray(truth)
    if a.shape != b.shape:
        raise ValueError(
            f"pred and truth must have the same shape, got pred {a.shape} and truth {b.shape}"
        )
    return a, b


def _check_binary(name: str, array: NDArray[Any]) -> None:
    if array.dtype != np.bool_ and array.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be a bool or integer mask, got dtype {array.dtype}; "
            "threshold probabilities first, or use soft_dice"
        )


def _bands(shape: tuple[int, ...]) -> Iterable[slice | tuple[()]]:
    if not shape:
        yield ()  # a 0-d array: index it whole
        return
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, _BAND_ELEMENTS // per_row)
    for start in range(0, shape[0], step):
        yield slice(start, start + step)


def _nonzero(band: NDArray[Any]) -> NDArray[np.bool_]:
    return band if band.dtype == np.bool_ else band != 0


def dice_coefficient(pred: ArrayLike, truth: ArrayLike) -> float:
    """Dice coefficient of two binary masks: ``2 |P & T| / (|P| + |T|)``.

    Parameters
    ----------
    pred, truth : array_like
        Masks of the same shape, bool or integer (nonzero = inside).

    Returns
    -------
    float
        In ``[0, 1]``; 1.0 when both masks are empty (the competition's rule).

    Raises
    ------
    ValueError
        If the shapes differ (the message names both).
    TypeError
        If a mask is not bool or integer (use :func:`soft_dice` for probabilities).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[1, 1, 0, 0]], dtype=bool)
    >>> b = np.array([[0, 1, 1, 0]], dtype=bool)
    >>> dice_coefficient(a, b)
    0.5
    >>> dice_coefficient(np.zeros((2, 2)), np.zeros((2, 2), dtype=bool))
    Traceback (most recent call last):
    ...
    TypeError: pred must be a bool or integer mask, got dtype float64; ...
    >>> dice_coefficient(a, b.T)
    Traceback (most recent call last):
    ...
    ValueError: pred and truth must have the same shape, got pred (1, 4) and truth (4, 1)
    """
    p, t = _check_pair(pred, truth)
    _check_binary("pred", p)
    _check_binary("truth", t)
    both = total = 0
    for rows in _bands(p.shape):
        pb, tb = _nonzero(p[rows]), _nonzero(t[rows])
        both += int(np.count_nonzero(pb & tb))
        total += int(np.count_nonzero(pb)) + int(np.count_nonzero(tb))
    if total == 0:
        return 1.0
    return 2.0 * both / total


def mean_dice(
    preds: Iterable[ArrayLike] | Mapping[str, ArrayLike],
    truths: Iterable[ArrayLike] | Mapping[str, ArrayLike],
) -> float:
    """Mean of per-image Dice coefficients, the Kaggle HuBMAP score.

    Parameters
    ----------
    preds, truths : iterables of masks, or mappings from image id to mask
        Paired in order (iterables, which may be generators so that only one
        whole-slide pair is in memory at a time) or by id (two mappings with the
        same keys).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If there are no images, the counts or ids differ, or a pair's shapes differ.

    Examples
    --------
    >>> import numpy as np
    >>> full, empty = np.ones((2, 2), dtype=bool), np.zeros((2, 2), dtype=bool)
    >>> mean_dice([full, empty], [full, full])  # (1 + 0) / 2
    0.5
    >>> mean_dice({"a": empty}, {"a": empty})
    1.0
    """
    if isinstance(preds, Mapping) or isinstance(truths, Mapping):
        if not (isinstance(preds, Mapping) and isinstance(truths, Mapping)):
            raise TypeError("give two mappings (id -> mask) or two iterables, not one of each")
        if set(preds) != set(truths):
            missing = sorted(set(truths) - set(preds))
            extra = sorted(set(preds) - set(truths))
            raise ValueError(
                f"preds and truths must have the same ids; missing {missing}, extra {extra}"
            )
        pairs: Iterable[tuple[ArrayLike, ArrayLike]] = ((preds[k], truths[k]) for k in truths)
    else:
        for name, value in (("preds", preds), ("truths", truths)):
            if isinstance(value, np.ndarray) and value.ndim < 3:
                raise ValueError(
                    f"{name} is one {value.ndim}-D array, not a batch (n, h, w) or a sequence "
                    "of masks; for a single image use dice_coefficient"
                )
        pairs = _zip_same_length(preds, truths)
    scores = [dice_coefficient(p, t) for p, t in pairs]
    if not scores:
        raise ValueError("mean_dice needs at least one image")
    return float(np.mean(scores))


def _zip_same_length(
    preds: Iterable[ArrayLike], truths: Iterable[ArrayLike]
) -> Iterable[tuple[ArrayLike, ArrayLike]]:
    sentinel = object()
    left, right = iter(preds), iter(truths)
    count = 0
    while True:
        p, t = next(left, sentinel), next(right, sentinel)
        if p is sentinel and t is sentinel:
            return
        if p is sentinel or t is sentinel:
            longer = "truths" if p is sentinel else "preds"
            raise ValueError(f"preds and truths differ in length: {longer} has more than {count}")
        count += 1
        yield p, t  # type: ignore[misc]


def soft_dice(prob: ArrayLike, truth: ArrayLike, *, smooth: float = 0.0) -> float:
    """Soft Dice of probabilities against a mask: ``(2 sum(p t) + s) / (sum(p) + sum(t) + s)``.

    Parameters
    ----------
    prob : array_like
        Probabilities in ``[0, 1]`` (any real dtype; bool is allowed).
    truth : array_like
        Target of the same shape: a mask or probabilities in ``[0, 1]``.
    smooth : float
        Added to numerator and denominator (``>= 0``); default 0, so that on
        binary inputs this equals :func:`dice_coefficient`.

    Returns
    -------
    float
        In ``[0, 1]``; 1.0 when both are all zero. Sums accumulate in float64.

    Raises
    ------
    ValueError
        If the shapes differ, a value is outside ``[0, 1]`` or NaN, or
        ``smooth`` is negative.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([0.5, 1.0, 0.0], dtype=np.float32)
    >>> t = np.array([1, 1, 0], dtype=bool)
    >>> round(soft_dice(p, t), 4)  # 2 * 1.5 / (1.5 + 2)
    0.8571
    """
    p, t = _check_pair(prob, truth)
    if not (isinstance(smooth, int | float) and math.isfinite(smooth) and smooth >= 0):
        raise ValueError(f"smooth must be a finite number >= 0, got {smooth!r}")
    for name, array in (("prob", p), ("truth", t)):
        if array.dtype != np.bool_ and array.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be a real or bool array, got dtype {array.dtype}")
    inter = total = 0.0
    for rows in _bands(p.shape):
        pb = p[rows].astype(np.float64, copy=False)
        tb = t[rows].astype(np.float64, copy=False)
        for name, band in (("prob", pb), ("truth", tb)):
            if band.size and not (band.min() >= 0.0 and band.max() <= 1.0):
                raise ValueError(f"{name} values must lie in [0, 1] (and not be NaN)")
        inter += float(np.vdot(pb.ravel(), tb.ravel()))
        total += float(pb.sum()) + float(tb.sum())
    if total + smooth == 0:
        return 1.0
    return min(1.0, (2.0 * inter + smooth) / (total + smooth))
