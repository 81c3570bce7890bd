"""Decide which tiles to keep: :class:`TileStats`, tile predicates and :class:`TileFilter`.

A tile is summarised once by :func:`tile_stats` (glomerulus coverage, tissue
fraction, brightness), then judged by predicates. A predicate returns ``None``
to keep a tile or a string saying why it rejects it; a :class:`TileFilter`
requires every predicate to pass and reports the first failure as a
:class:`Decision`.

Two recipes are provided:

:meth:`TileFilter.seed_recipe`
    The seed's rule: keep tiles whose mask covers 10 % to 90 % of the tile.
    Simple, but it throws away most glomeruli (a glomerulus rarely fills 10 %
    of a large tile) and every background tile.
:meth:`TileFilter.winners_recipe`
    What Kaggle winners did: keep every tile that holds any glomerulus pixel,
    plus a deterministic sample of the background tiles that show tissue.

Everything here is pure: arrays and numbers in, numbers and decisions out.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from glomseg.io._tissue import tissue_pixels
from glomseg.tiles._tiling import TileKey

__all__ = [
    "CoverageBand",
    "Decision",
    "GlomerulusOrSample",
    "MinTissue",
    "NotBlank",
    "TileFilter",
    "TilePredicate",
    "TileStats",
    "tile_stats",
]

#: Rows processed at a time by :func:`tile_stats`, bounding its temporary memory.
_BAND_ROWS = 512


def _fraction(name: str, value: float) -> float:
    """Return ``value`` as a float in [0, 1], else raise a message naming it."""
    return _number(name, value, 0.0, 1.0)


def _number(name: str, value: float, low: float, high: float) -> float:
    """Return ``value`` as a float in [low, high], else raise a message naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not low <= number <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
    return number


def _integer(name: str, value: object) -> int:
    """Return ``value`` as an ``int`` (not a bool), else raise a message naming it."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return int(operator.index(value))  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def _g(value: float) -> str:
    """Format a number for a message: up to 4 significant digits."""
    return f"{value:.4g}"


# -- statistics ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TileStats:
    """What the filters need to know about one tile, computed once by :func:`tile_stats`.

    Parameters
    ----------
    coverage : float
        Fraction of the tile's pixels inside a glomerulus, in [0, 1].
    tissue : float
        Fraction of the tile's pixels that look like stained tissue (HSV
        saturation above a threshold), in [0, 1].
    mean : float
        Mean of all the tile's ``uint8`` values (every pixel, every channel), in
        [0, 255].
    std : float
        Standard deviation of those same values, >= 0.

    Raises
    ------
    ValueError
        If a value is outside its range.

    Examples
    --------
    >>> TileStats(coverage=0.25, tissue=0.8, mean=180.0, std=40.0)
    TileStats(coverage=0.25, tissue=0.8, mean=180.0, std=40.0)
    >>> TileStats(coverage=1.5, tissue=0.8, mean=180.0, std=40.0)
    Traceback (most recent call last):
    ...
    ValueError: coverage must be in [0, 1], got 1.5
    """

    coverage: float
    tissue: float
    mean: float
    std: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "coverage", _fraction("coverage", self.coverage))
        object.__setattr__(self, "tissue", _fraction("tissue", self.tissue))
        object.__setattr__(self, "mean", _number("mean", self.mean, 0.0, 255.0))
        object.__setattr__(self, "std", _number("std", self.std, 0.0, float("inf")))


def tile_stats(
    image: NDArray[np.uint8],
    mask: NDArray[np.bool_] | NDArray[np.uint8],
    *,
    saturation_threshold: int = 40,
) -> TileStats:
    """Summarise a tile and its mask as a :class:`TileStats`.

    Parameters
    ----------
    image : numpy.ndarray
        ``uint8`` RGB tile of shape ``(h, w, 3)``.
    mask : numpy.ndarray
        Glomerulus mask of shape ``(h, w)``; any nonzero value counts as inside
        (``bool``, or ``uint8`` 0/1 as stored on disk).
    saturation_threshold : int
        A pixel counts as tissue when its HSV saturation, on the 0-255 scale,
        is strictly greater than this; default 40, the HuBMAP competition's
        common rule. In [0, 255].

    Returns
    -------
    TileStats
        ``coverage`` (mask fraction), ``tissue`` (saturated fraction), ``mean``
        and ``std`` of all the image's values.

    Raises
    ------
    ValueError
        If the shapes or dtypes are wrong, the tile is empty, or the threshold
        is out of range.

    Notes
    -----
    The saturation of a pixel is ``255 * (max - min) / max`` over its three
    channels (0 where ``max`` is 0), as HSV's S channel on the 0-255 scale. The
    comparison is done exactly in integers, without the rounding of OpenCV's
    ``cvtColor``, so a pixel of saturation exactly 40.0 is not tissue. Bright
    glass and black padding both have saturation near 0. The image is processed
    in bands of rows, so temporary memory stays small even for a 4000 x 4000
    tile, and ``mean`` and ``std`` are exact (from a 256-bin histogram).

    Examples
    --------
    >>> import numpy as np
    >>> image = np.full((4, 4, 3), 255, dtype=np.uint8)  # white glass
    >>> image[:2] = (200, 100, 150)  # top half stained: saturation 127.5
    >>> mask = np.zeros((4, 4), dtype=bool)
    >>> mask[0, :2] = True
    >>> stats = tile_stats(image, mask)
    >>> stats.coverage, stats.tissue
    (0.125, 0.5)
    >>> round(stats.mean, 2), round(stats.std, 2)
    (202.5, 59.91)
    """
    image = np.asarray(image)
    mask_array = np.asarray(mask)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be uint8 of shape (h, w, 3), got {image.dtype} of shape {image.shape}"
        )
    if mask_array.shape != image.shape[:2]:
        raise ValueError(
            f"mask shape {mask_array.shape} must equal the image's (h, w) {image.shape[:2]}"
        )
    if image.size == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    threshold = _integer("saturation_threshold", saturation_threshold)
    if not 0 <= threshold <= 255:
        raise ValueError(f"saturation_threshold must be in [0, 255], got {threshold}")

    height, width = mask_array.shape
    n_pixels = height * width
    histogram = np.zeros(256, dtype=np.int64)
    tissue = 0
    for start in range(0, height, _BAND_ROWS):
        band = image[start : start + _BAND_ROWS]
        histogram += np.bincount(band.reshape(-1), minlength=256)
        tissue += int(np.count_nonzero(tissue_pixels(band, saturation_threshold=threshold)))
    values = np.arange(256, dtype=np.int64)
    n_values = int(histogram.sum())
    total = int(histogram @ values)
    total_sq = int(histogram @ (values * values))
    mean = total / n_values
    variance = max(total_sq / n_values - mean * mean, 0.0)
    return TileStats(
        coverage=int(np.count_nonzero(mask_array)) / n_pixels,
        tissue=tissue / n_pixels,
        mean=mean,
        std=variance**0.5,
    )


# -- predicates ------------------------------------------------------------------
@runtime_checkable
class TilePredicate(Protocol):
    """A rule a tile must pass: ``None`` keeps it, a string says why it is rejected.

    Any callable ``(stats, key) -> str | None`` will do; ``key`` is the tile's
    :class:`~glomseg.tiles.TileKey` ``(slide_id, grid_row, grid_col)``, which rules
    that sample tiles use to decide deterministically.

    Examples
    --------
    >>> from glomseg.tiles._tiling import TileKey
    >>> def not_first_row(stats: TileStats, key: TileKey) -> str | None:
    ...     return "first row" if key.grid_row == 0 else None
    >>> isinstance(not_first_row, TilePredicate)
    True
    """

    def __call__(self, stats: TileStats, key: TileKey, /) -> str | None:
        """Return ``None`` to keep the tile, or the reason for rejecting it."""
        ...


@dataclass(frozen=True, slots=True)
class CoverageBand:
    """Keep tiles whose glomerulus coverage lies in ``[low, high]`` (the seed's rule).

    Parameters
    ----------
    low, high : float
        Bounds on :attr:`TileStats.coverage`, inclusive, with
        ``0 <= low <= high <= 1``. The seed kept 10 % to 90 %.

    Examples
    --------
    >>> from glomseg.tiles._tiling import TileKey
    >>> key = TileKey("26dc41664", 0, 0)
    >>> CoverageBand()(TileStats(0.03, 0.9, 180.0, 40.0), key)
    'coverage 0.03 outside [0.1, 0.9]'
    >>> CoverageBand()(TileStats(0.5, 0.9, 180.0, 40.0), key) is None
    True
    >>> CoverageBand(low=0.5, high=0.2)
    Traceback (most recent call last):
    ...
    ValueError: low must be <= high, got low=0.5, high=0.2
    """

    low: float = 0.10
    high: float = 0.90

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", _fraction("low", self.low))
        object.__setattr__(self, "high", _fraction("high", self.high))
        if self.low > self.high:
            raise ValueError(f"low must be <= high, got low={self.low!r}, high={self.high!r}")

    def __call__(self, stats: TileStats, key: TileKey, /) -> str | None:
        """Reject a tile whose coverage is outside the band."""
        return self.prejudge(stats.coverage, key)

    def prejudge(self, coverage: float, key: TileKey, /) -> str | None:
        """The same rule from the mask alone (see :meth:`TileFilter.prejudge`)."""
        if self.low <= coverage <= self.high:
            return None
        return f"coverage {_g(coverage)} outside [{_g(self.low)}, {_g(self.high)}]"


@dataclass(frozen=True, slots=True)
class MinTissue:
    """Keep tiles whose tissue fraction is at least ``fraction``.

    Parameters
    ----------
    fraction : float
        Lower bound, inclusive, on :attr:`TileStats.tissue`, in [0, 1].
        The default 0.015 follows a widely used HuBMAP Kaggle kernel, which
        dropped 256 x 256 tiles with no more than 1000 pixels of saturation > 40
        (about 1.5 %).

    Examples
    --------
    >>> from glomseg.tiles._tiling import TileKey
    >>> key = TileKey("26dc41664", 0, 0)
    >>> MinTissue(0.25)(TileStats(0.0, 0.1, 230.0, 12.0), key)
    'tissue 0.1 < 0.25'
    >>> MinTissue(fraction=-0.1)
    Traceback (most recent call last):
    ...
    ValueError: fraction must be in [0, 1], got -0.1
    """

    fraction: float = 0.015

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", _fraction("fraction", self.fraction))

    def __call__(self, stats: TileStats, key: TileKey, /) -> str | None:
        """Reject a tile with too little tissue."""
        if stats.tissue >= self.fraction:
            return None
        return f"tissue {_g(stats.tissue)} < {_g(self.fraction)}"


@dataclass(frozen=True, slots=True)
class NotBlank:
    """Reject blank tiles: bare glass, too bright *and* too uniform.

    A tile is blank when ``mean > max_mean`` and ``std < min_std`` (both over
    all its ``uint8`` values). Glass in PAS and H&E slides is near white
    (mean ~230-250) with little texture; stained tissue is darker or varied.
    Black padding is not caught here (it is dark); :class:`MinTissue` catches
    it, since it has no saturation.

    Parameters
    ----------
    max_mean : float
        Brightness above which a uniform tile is blank, in [0, 255]; default 220.
    min_std : float
        Spread below which a bright tile is blank, >= 0; default 10.

    Examples
    --------
    >>> from glomseg.tiles._tiling import TileKey
    >>> key = TileKey("26dc41664", 0, 0)
    >>> NotBlank()(TileStats(0.0, 0.0, 243.0, 3.5), key)
    'blank: mean 243 > 220 and std 3.5 < 10'
    >>> NotBlank()(TileStats(0.0, 0.0, 243.0, 25.0), key) is None
    True
    """

    max_mean: float = 220.0
    min_std: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_mean", _number("max_mean", self.max_mean, 0.0, 255.0))
        object.__setattr__(self, "min_std", _number("min_std", self.min_std, 0.0, float("inf")))

    def __call__(self, stats: TileStats, key: TileKey, /) -> str | None:
        """Reject a bright, uniform tile."""
        if stats.mean > self.max_mean and stats.std < self.min_std:
            return (
                f"blank: mean {_g(stats.mean)} > {_g(self.max_mean)} "
                f"and std {_g(stats.std)} < {_g(self.min_std)}"
            )
        return None


def _uniform(seed: int, key: TileKey) -> float:
    """A uniform number in [0, 1) fixed by ``seed`` and the tile's identity.

    It hashes the values with BLAKE2b, so it is the same in every process, run
    and platform (unlike :func:`hash`, which is salted per process for strings).
    """
    slide_id, grid_row, grid_col = key
    text = f"{seed}\x1f{slide_id}\x1f{int(grid_row)}\x1f{int(grid_col)}"
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class GlomerulusOrSample:
    """Keep every tile with a glomerulus, and a deterministic sample of the others.

    A tile with any glomerulus pixel (``coverage > 0``) is kept. A background
    tile is kept when it shows at least ``min_tissue`` tissue and its draw
    :meth:`draw` is below ``background_share``. The draw is a hash of
    ``(seed, slide_id, grid_row, grid_col)``, so a rerun, another process or a
    parallel worker makes the same choice for the same tile, and about
    ``background_share`` of the eligible background tiles are kept.

    Parameters
    ----------
    background_share : float
        Expected share of background tiles kept, in [0, 1]; default 0.1.
    seed : int
        Changes which background tiles are drawn; default 0.
    min_tissue : float
        Background tiles with less tissue than this are never kept, in [0, 1];
        default 0 (no condition).

    Examples
    --------
    >>> from glomseg.tiles._tiling import TileKey
    >>> rule = GlomerulusOrSample(background_share=0.5, seed=1)
    >>> rule(TileStats(0.002, 0.6, 190.0, 30.0), TileKey("26dc41664", 4, 2)) is None
    True
    >>> keys = [TileKey("26dc41664", 0, col) for col in range(1000)]
    >>> kept = [rule(TileStats(0.0, 0.6, 190.0, 30.0), k) is None for k in keys]
    >>> 400 < sum(kept) < 600
    True
    >>> rule.draw(keys[0]) == rule.draw(TileKey("26dc41664", 0, 0))
    True
    """

    background_share: float = 0.1
    seed: int = 0
    min_tissue: float = 0.0

    def __post_init__(self) -> None:
        share = _fraction("background_share", self.background_share)
        object.__setattr__(self, "background_share", share)
        object.__setattr__(self, "seed", _integer("seed", self.seed))
        object.__setattr__(self, "min_tissue", _fraction("min_tissue", self.min_tissue))

    def draw(self, key: TileKey) -> float:
        """The tile's deterministic uniform draw in [0, 1), from ``seed`` and ``key``."""
        return _uniform(self.seed, key)

    def __call__(self, stats: TileStats, key: TileKey, /) -> str | None:
        """Keep glomerulus tiles; keep background tiles with tissue by sampling."""
        if stats.coverage > 0:
            return None
        if stats.tissue < self.min_tissue:
            return f"background with tissue {_g(stats.tissue)} < {_g(self.min_tissue)}"
        return self.prejudge(stats.coverage, key)

    def prejudge(self, coverage: float, key: TileKey, /) -> str | None:
        """Reject a background tile that is not drawn, from the mask alone.

        See :meth:`TileFilter.prejudge`; a drawn background tile still needs
        its image for the tissue condition.
        """
        if coverage > 0:
            return None
        u = self.draw(key)
        if u < self.background_share:
            return None
        return f"background not sampled: draw {u:.3f} >= share {_g(self.background_share)}"


# -- composition -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a tile is kept, and if not, why.

    Truthy when the tile is kept.

    Parameters
    ----------
    kept : bool
        Whether every predicate passed.
    reason : str
        Empty when kept; otherwise ``"<Predicate>: <reason>"`` for the first
        predicate that failed.

    Examples
    --------
    >>> d = Decision(False, "CoverageBand: coverage 0.03 outside [0.1, 0.9]")
    >>> bool(d), d.reason
    (False, 'CoverageBand: coverage 0.03 outside [0.1, 0.9]')
    """

    kept: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.kept


def _predicate_name(predicate: object) -> str:
    name = getattr(predicate, "__name__", None)
    return name if isinstance(name, str) else type(predicate).__name__


@dataclass(frozen=True, slots=True, init=False)
class TileFilter:
    """Keep a tile when all its predicates pass.

    Parameters
    ----------
    *predicates : TilePredicate
        The rules, checked in order; the first failure gives the reason. No
        predicates keeps every tile.

    Examples
    --------
    >>> from glomseg.tiles._tiling import TileKey
    >>> key = TileKey("26dc41664", 2, 5)
    >>> seed = TileFilter.seed_recipe()
    >>> seed(TileStats(coverage=0.03, tissue=0.7, mean=190.0, std=35.0), key)
    Decision(kept=False, reason='CoverageBand: coverage 0.03 outside [0.1, 0.9]')
    >>> custom = TileFilter(NotBlank(), MinTissue(0.2))
    >>> custom(TileStats(coverage=0.0, tissue=0.1, mean=190.0, std=35.0), key).reason
    'MinTissue: tissue 0.1 < 0.2'
    >>> bool(custom(TileStats(coverage=0.0, tissue=0.5, mean=190.0, std=35.0), key))
    True
    """

    predicates: tuple[TilePredicate, ...]

    def __init__(self, *predicates: TilePredicate) -> None:
        for index, predicate in enumerate(predicates):
            if not callable(predicate):
                raise TypeError(
                    f"predicates[{index}] must be callable (stats, key) -> str | None, "
                    f"got {predicate!r}"
                )
        object.__setattr__(self, "predicates", tuple(predicates))

    def __call__(self, stats: TileStats, key: TileKey) -> Decision:
        """Judge one tile.

        Parameters
        ----------
        stats : TileStats
            The tile's statistics, from :func:`tile_stats`.
        key : TileKey
            The tile's identity ``(slide_id, grid_row, grid_col)``.

        Returns
        -------
        Decision
            Kept, or rejected with the failing predicate's name and reason.
        """
        for predicate in self.predicates:
            reason = predicate(stats, key)
            if reason is not None:
                return Decision(False, f"{_predicate_name(predicate)}: {reason}")
        return Decision(True)

    def prejudge(self, coverage: float, key: TileKey) -> Decision | None:
        """Reject a tile from its mask coverage alone, when some rule can.

        Rules with a ``prejudge(coverage, key)`` method (:class:`CoverageBand`,
        :class:`GlomerulusOrSample`) can reject a tile before its image is read;
        :func:`glomseg.export_tiles` then skips reading it. ``None`` means the
        image is needed: call the filter with the full :class:`TileStats`. A
        tile rejected here is also rejected by the full filter, though the
        reason may name another failing rule.

        Examples
        --------
        >>> from glomseg.tiles._tiling import TileKey
        >>> TileFilter.seed_recipe().prejudge(0.02, TileKey("a", 0, 0))
        Decision(kept=False, reason='CoverageBand: coverage 0.02 outside [0.1, 0.9]')
        >>> TileFilter.seed_recipe().prejudge(0.5, TileKey("a", 0, 0)) is None
        True
        """
        for predicate in self.predicates:
            judge = getattr(predicate, "prejudge", None)
            if judge is None:
                continue
            reason = judge(coverage, key)
            if reason is not None:
                return Decision(False, f"{_predicate_name(predicate)}: {reason}")
        return None

    @classmethod
    def seed_recipe(cls, *, low: float = 0.10, high: float = 0.90) -> TileFilter:
        """The seed's filter: glomerulus coverage between 10 % and 90 %.

        Examples
        --------
        >>> TileFilter.seed_recipe()
        TileFilter(predicates=(CoverageBand(low=0.1, high=0.9),))
        """
        return cls(CoverageBand(low, high))

    @classmethod
    def winners_recipe(
        cls, *, background_share: float = 0.1, seed: int = 0, min_tissue: float = 0.015
    ) -> TileFilter:
        """Every tile with a glomerulus, plus a sampled share of background tiles with tissue.

        Parameters
        ----------
        background_share : float
            Expected share of the background tiles with tissue that are kept.
        seed : int
            Seed of the deterministic background sample.
        min_tissue : float
            Tissue fraction a background tile needs to be eligible; see
            :class:`MinTissue` for the default.

        Examples
        --------
        >>> TileFilter.winners_recipe(background_share=0.2, seed=7)
        TileFilter(predicates=(GlomerulusOrSample(background_share=0.2, seed=7,
                                                  min_tissue=0.015),))
        """
        return cls(
            GlomerulusOrSample(background_share=background_share, seed=seed, min_tissue=min_tissue)
        )
