"""Tile a slide into a grid of windows: :class:`Tiler`, :class:`Tile` and tile names.

Everything here is pure: a :class:`Tiler` takes a slide *shape* and returns
:class:`Tile` values whose :attr:`Tile.window` a reader (for example
:meth:`glomseg.SlideReader.read`) or an in-memory array can then be sliced with.

**Sizes and the downsample factor.**
``tile_size`` and ``stride`` are in **output pixels**, the pixels the model sees
after downsampling by ``downsample``. A tile of 512 at ``downsample=2`` covers
1024 x 1024 full-resolution pixels and is resampled to 512 x 512; the grid steps
by ``stride * downsample`` full-resolution pixels. Each :class:`Tile` carries its
full-resolution :attr:`~Tile.window` and its :attr:`~Tile.out_shape`, so reading a
tile is ``reader.read(tile.window, out_shape=tile.out_shape)``.

**Edge policies.**
Along each axis of ``n`` full-resolution pixels, with full-resolution tile size
``T = tile_size * downsample`` and step ``S = stride * downsample``:

``"drop"``
    patchify's semantics: only tiles that fit wholly inside the slide, at
    ``0, S, 2S, ...``; a partial tile at the right or bottom edge is left out.
    Count: ``floor((n - T) / S) + 1`` if ``n >= T``, else ``0``.
``"shift"``
    as ``"drop"``, plus one more tile when pixels remain, moved back so it ends
    exactly at the slide edge (origin ``n - T``); every pixel is covered and every
    tile lies inside the slide. Count: ``ceil(max(n - T, 0) / S) + 1``. A slide
    smaller than one tile cannot hold it: its single tile starts at 0 and extends
    past the edge, as with ``"pad"``.
``"pad"``
    tiles at ``0, S, 2S, ...`` until the slide is covered; the last one may
    extend past the edge and keeps its full size (the reader pads it). Count:
    ``ceil(max(n - T, 0) / S) + 1``, the same as ``"shift"``.

``"shift"`` and ``"pad"`` require ``stride <= tile_size``, so that the tiles cover
the slide without gaps.

**Tile names.**
:func:`tile_name` gives ``f"{slide_id}__r{row:03d}_c{col:03d}"`` and
:func:`parse_tile_name` reverses it, for any slide id that is a non-empty string
without path separators or whitespace.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
from numpy.typing import NDArray

from glomseg.errors import look_up_option
from glomseg.io._window import Window

__all__ = [
    "EdgePolicy",
    "Tile",
    "TileKey",
    "Tiler",
    "parse_tile_name",
    "patchify_tiles",
    "tile_name",
]

EdgePolicy = Literal["drop", "shift", "pad"]
"""How a :class:`Tiler` treats the partial tiles at the right and bottom edges."""

_EDGES: tuple[str, ...] = get_args(EdgePolicy)


def _positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` >= ``minimum``, else raise a message naming it."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        relation = "> 0" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {relation}, got {number}")
    return int(number)


def _slide_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Check a slide shape and return its ``(height, width)``."""
    if len(shape) < 2:
        raise ValueError(f"shape must have at least 2 entries (rows, cols), got {shape!r}")
    return (
        _positive_int("shape[0]", shape[0]),
        _positive_int("shape[1]", shape[1]),
    )


def _axis_origins(n: int, size: int, step: int, edge: str) -> list[int]:
    """Tile origins along one axis of ``n`` pixels (all values full-resolution)."""
    if edge == "drop":
        if n < size:
            return []
        return [i * step for i in range((n - size) // step + 1)]
    count = -(-max(n - size, 0) // step) + 1
    origins = [i * step for i in range(count)]
    if edge == "shift" and n >= size:
        origins[-1] = n - size
    return origins


class TileKey(NamedTuple):
    """The identity of a tile: its slide and its grid position.

    A plain tuple ``(slide_id, grid_row, grid_col)``, as returned by
    :func:`parse_tile_name` and passed to the tile filters.

    Examples
    --------
    >>> key = TileKey("26dc41664", 3, 7)
    >>> key.slide_id, tuple(key)
    ('26dc41664', ('26dc41664', 3, 7))
    >>> key.name
    '26dc41664__r003_c007'
    """

    slide_id: str
    grid_row: int
    grid_col: int

    @property
    def name(self) -> str:
        """The tile's name, :func:`tile_name` of this key."""
        return tile_name(self.slide_id, self.grid_row, self.grid_col)


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile of a :class:`Tiler` grid.

    Parameters
    ----------
    grid_row, grid_col : int
        Position in the grid, from 0 at the top-left tile.
    window : Window
        The tile's region in **full-resolution** slide pixels. It may extend past
        the slide (edge policy ``"pad"``); readers pad the outside part.
    out_shape : (int, int)
        ``(height, width)`` of the tile after downsampling, the size the model
        sees. ``window.shape`` is ``out_shape`` times :attr:`downsample`.

    Raises
    ------
    ValueError
        If a grid index is negative, or ``window.shape`` is not the same whole
        multiple of ``out_shape`` on both axes.

    Examples
    --------
    >>> from glomseg import Window
    >>> tile = Tile(1, 2, Window(1024, 2048, 1024, 1024), out_shape=(512, 512))
    >>> tile.origin, tile.downsample
    ((1024, 2048), 2)
    >>> tile.name("VAN0013-LK-202-96")
    'VAN0013-LK-202-96__r001_c002'
    """

    grid_row: int
    grid_col: int
    window: Window
    out_shape: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid_row", _positive_int("grid_row", self.grid_row, minimum=0))
        object.__setattr__(self, "grid_col", _positive_int("grid_col", self.grid_col, minimum=0))
        if not isinstance(self.window, Window):
            raise TypeError(f"window must be a glomseg.Window, got {type(self.window).__name__}")
        if len(self.out_shape) != 2:
            raise ValueError(f"out_shape must be (height, width), got {self.out_shape!r}")
        out = (
            _positive_int("out_shape[0]", self.out_shape[0]),
            _positive_int("out_shape[1]", self.out_shape[1]),
        )
        object.__setattr__(self, "out_shape", out)
        height, width = self.window.shape
        factor = height // out[0]
        if factor * out[0] != height or factor * out[1] != width:
            raise ValueError(
                f"window shape {self.window.shape} must be the same whole multiple of "
                f"out_shape {out} on both axes"
            )

    @property
    def origin(self) -> tuple[int, int]:
        """``(row, col)`` of the tile's top-left pixel, in full-resolution pixels."""
        return (self.window.row, self.window.col)

    @property
    def downsample(self) -> int:
        """The downsample factor, ``window.height // out_shape[0]``."""
        return self.window.height // self.out_shape[0]

    def key(self, slide_id: str) -> TileKey:
        """The tile's :class:`TileKey` on slide ``slide_id``."""
        return TileKey(slide_id, self.grid_row, self.grid_col)

    def name(self, slide_id: str) -> str:
        """The tile's name on slide ``slide_id``, see :func:`tile_name`."""
        return tile_name(slide_id, self.grid_row, self.grid_col)


@dataclass(frozen=True, slots=True)
class Tiler:
    """A regular grid of square tiles over a slide.

    Parameters
    ----------
    tile_size : int
        Side of a tile in output pixels (after downsampling), > 0. The seed
        used 4000 at full resolution.
    stride : int, optional
        Step between tile origins in output pixels, > 0; default ``tile_size``
        (no overlap). The seed used 2000. After construction it holds an int.
    edge : {"drop", "shift", "pad"}
        What to do with partial tiles at the right and bottom edges; see the
        module documentation. Default ``"drop"``, patchify's behaviour.
    downsample : int
        Whole downsample factor, >= 1. A tile covers ``tile_size * downsample``
        full-resolution pixels per side, and origins step by
        ``stride * downsample``.

    Raises
    ------
    ValueError
        If a size is not positive, ``edge`` is unknown, or ``stride >
        tile_size`` with ``edge="shift"`` or ``"pad"`` (which would leave gaps).
    TypeError
        If a size is not an integer.

    Examples
    --------
    The seed's grid: 4000-pixel tiles every 2000 pixels.

    >>> seed = Tiler(4000, 2000)
    >>> seed.grid_shape((9000, 12500))
    (3, 5)
    >>> Tiler(4000, 2000, edge="shift").grid_shape((9000, 12500))
    (4, 6)
    >>> Tiler(4000, 2000, edge="shift").tiles((9000, 12500))[-1]
    Tile(grid_row=3, grid_col=5, window=Window(row=5000, col=8500, height=4000, width=4000),
         out_shape=(4000, 4000))

    At ``downsample=2`` a 512 tile covers 1024 full-resolution pixels:

    >>> t = Tiler(512, 256, edge="pad", downsample=2).tiles((1500, 1100))
    >>> len(t), t[-1].window, t[-1].out_shape
    (4, Window(row=512, col=512, height=1024, width=1024), (512, 512))

    >>> Tiler(0)
    Traceback (most recent call last):
    ...
    ValueError: tile_size must be > 0, got 0
    >>> Tiler(256, edge="shfit")
    Traceback (most recent call last):
    ...
    ValueError: edge must be one of 'drop', 'pad', 'shift', got 'shfit'; did you mean 'shift'?
    """

    tile_size: int
    stride: int | None = None
    _: KW_ONLY
    edge: EdgePolicy = "drop"
    downsample: int = 1

    def __post_init__(self) -> None:
        tile_size = _positive_int("tile_size", self.tile_size)
        stride = tile_size if self.stride is None else _positive_int("stride", self.stride)
        look_up_option("edge", self.edge, _EDGES)
        downsample = _positive_int("downsample", self.downsample)
        if self.edge != "drop" and stride > tile_size:
            raise ValueError(
                f"stride must be <= tile_size with edge={self.edge!r} (tiles must cover the "
                f"slide), got stride={stride}, tile_size={tile_size}"
            )
        object.__setattr__(self, "tile_size", tile_size)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "downsample", downsample)

    # -- full-resolution sizes -------------------------------------------
    @property
    def full_tile_size(self) -> int:
        """Side of a tile in full-resolution pixels, ``tile_size * downsample``.

        Examples
        --------
        >>> Tiler(512, downsample=2).full_tile_size
        1024
        """
        return self.tile_size * self.downsample

    @property
    def full_stride(self) -> int:
        """Step between origins in full-resolution pixels, ``stride * downsample``.

        Examples
        --------
        >>> Tiler(512, 384, downsample=2).full_stride
        768
        """
        stride = self.tile_size if self.stride is None else self.stride
        return stride * self.downsample

    # -- the grid ----------------------------------------------------------
    def _origins(self, shape: tuple[int, ...]) -> tuple[list[int], list[int]]:
        height, width = _slide_shape(shape)
        size, step = self.full_tile_size, self.full_stride
        return (
            _axis_origins(height, size, step, self.edge),
            _axis_origins(width, size, step, self.edge),
        )

    def grid_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """``(n_rows, n_cols)`` of the grid over a slide of full-resolution ``shape``.

        Parameters
        ----------
        shape : tuple of int
            ``(height, width[, ...])`` of the slide in full-resolution pixels;
            extra entries (channels) are ignored.

        Returns
        -------
        (int, int)
            Tiles per column and per row. Under ``"drop"`` either may be 0.

        Examples
        --------
        >>> Tiler(100, 50).grid_shape((260, 99, 3))
        (4, 0)
        """
        rows, cols = self._origins(shape)
        return (len(rows), len(cols))

    def count(self, shape: tuple[int, ...]) -> int:
        """Number of tiles over a slide of full-resolution ``shape``.

        Examples
        --------
        >>> Tiler(4000, 2000).count((31299, 44066))
        294
        """
        n_rows, n_cols = self.grid_shape(shape)
        return n_rows * n_cols

    def iter_tiles(self, shape: tuple[int, ...]) -> Iterator[Tile]:
        """Yield the tiles over a slide of full-resolution ``shape``, row by row.

        Examples
        --------
        >>> [t.origin for t in Tiler(2, edge="shift").iter_tiles((3, 4))]
        [(0, 0), (0, 2), (1, 0), (1, 2)]
        """
        rows, cols = self._origins(shape)
        size = self.full_tile_size
        out_shape = (self.tile_size, self.tile_size)
        for i, row in enumerate(rows):
            for j, col in enumerate(cols):
                yield Tile(i, j, Window(row, col, size, size), out_shape)

    def tiles(self, shape: tuple[int, ...]) -> list[Tile]:
        """The tiles over a slide of full-resolution ``shape``, row by row.

        Parameters
        ----------
        shape : tuple of int
            ``(height, width[, ...])`` of the slide in full-resolution pixels.

        Returns
        -------
        list of Tile
            ``count(shape)`` tiles in row-major grid order.

        Examples
        --------
        >>> [t.window.to_slices() for t in Tiler(2).tiles((2, 5))]
        [(slice(0, 2, None), slice(0, 2, None)), (slice(0, 2, None), slice(2, 4, None))]
        """
        return list(self.iter_tiles(shape))


def patchify_tiles(image: NDArray[Any], tiler: Tiler) -> NDArray[Any]:
    """The ``"drop"`` grid of an in-memory array, through :func:`patchify.patchify`.

    Equivalent to slicing ``image[tile.window.to_slices()]`` for every tile of
    ``tiler.tiles(image.shape)``, but as one strided view without copying.

    Parameters
    ----------
    image : numpy.ndarray
        A full-resolution ``(H, W)`` mask or ``(H, W, C)`` image.
    tiler : Tiler
        Must use ``edge="drop"``, patchify's only policy.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_rows, n_cols, T, T)`` or ``(n_rows, n_cols, T, T, C)`` with
        ``T = tiler.full_tile_size``; entry ``[i, j]`` is grid tile ``(i, j)``.
        Patches are at **full resolution**: resample each to ``tile.out_shape``
        when ``tiler.downsample > 1``. The result is a read-only view of
        ``image``; copy it before writing. When the image is smaller than one
        tile the grid is empty (a 0 in the first two axes).

    Raises
    ------
    ValueError
        If ``tiler.edge`` is not ``"drop"`` or ``image`` is not 2-D or 3-D.
    ImportError
        If patchify is not installed: it is the optional ``patchify`` extra
        (``pip install 'glomseg[patchify]'``), because patchify 0.2.3 pins
        ``numpy<2``. Nothing else in glomseg needs it: :meth:`Tiler.tiles` and
        ``image[tile.window.to_slices()]`` give the same tiles on any numpy.

    Examples
    --------
    With the ``patchify`` extra installed:

    >>> import numpy as np
    >>> image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    >>> patches = patchify_tiles(image, Tiler(4, 2))  # doctest: +SKIP
    >>> patches.shape  # doctest: +SKIP
    (1, 2, 4, 4, 3)
    >>> tile = Tiler(4, 2).tiles(image.shape)[1]
    >>> bool((patches[tile.grid_row, tile.grid_col] == image[tile.window.to_slices()]).all())
    ... # doctest: +SKIP
    True
    """
    if tiler.edge != "drop":
        raise ValueError(
            f"patchify_tiles supports edge='drop' only, got edge={tiler.edge!r}; "
            "slice image[tile.window.to_slices()] for the other policies"
        )
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be 2-D (H, W) or 3-D (H, W, C), got shape {image.shape}")
    try:
        import patchify
    except ImportError:
        raise ImportError(
            "patchify_tiles needs patchify, which pins numpy<2: pip install "
            "'glomseg[patchify]' (in an environment with numpy 1.x), or take the same tiles "
            "on any numpy with Tiler.tiles(shape) and image[tile.window.to_slices()]"
        ) from None
    size, step = tiler.full_tile_size, tiler.full_stride
    n_rows, n_cols = tiler.grid_shape(image.shape)
    patch_shape: tuple[int, ...] = (size, size, *image.shape[2:])
    if n_rows == 0 or n_cols == 0:
        empty = np.empty((n_rows, n_cols, *patch_shape), dtype=image.dtype)
        empty.flags.writeable = False
        return empty
    patches: NDArray[Any] = patchify.patchify(image, patch_shape, step=step)
    if image.ndim == 3:
        # patchify keeps a grid axis of length 1 for the channels.
        patches = patches[:, :, 0]
    view = patches.view()
    view.flags.writeable = False
    return view


_NAME = re.compile(r"(?P<slide>.+)__r(?P<row>[0-9]+)_c(?P<col>[0-9]+)", re.DOTALL)
_FORBIDDEN = re.compile(r"[\s/\\]")


def _check_slide_id(slide_id: object) -> str:
    if not isinstance(slide_id, str):
        raise TypeError(f"slide_id must be a str, got {type(slide_id).__name__}")
    if not slide_id:
        raise ValueError("slide_id must not be empty")
    if _FORBIDDEN.search(slide_id) is not None:
        raise ValueError(
            f"slide_id must not contain whitespace or path separators, got {slide_id!r}"
        )
    return slide_id


def tile_name(slide_id: str, grid_row: int, grid_col: int) -> str:
    r"""The name of tile ``(grid_row, grid_col)`` of slide ``slide_id``.

    The format is ``f"{slide_id}__r{grid_row:03d}_c{grid_col:03d}"`` (more digits
    when an index exceeds 999); :func:`parse_tile_name` reverses it. Slide ids may
    contain underscores, dashes and dots.

    Parameters
    ----------
    slide_id : str
        Non-empty, without whitespace or path separators (``/``, ``\``), since
        names become file names.
    grid_row, grid_col : int
        Grid position, >= 0.

    Returns
    -------
    str
        The tile's name, without a file extension.

    Raises
    ------
    ValueError
        If ``slide_id`` is empty or contains a forbidden character, or an index
        is negative.

    Examples
    --------
    >>> tile_name("VAN0013-LK-202-96", 3, 12)
    'VAN0013-LK-202-96__r003_c012'
    >>> tile_name("van0013_train_17", 0, 1000)
    'van0013_train_17__r000_c1000'
    >>> tile_name("a/b", 0, 0)
    Traceback (most recent call last):
    ...
    ValueError: slide_id must not contain whitespace or path separators, got 'a/b'
    """
    slide = _check_slide_id(slide_id)
    row = _positive_int("grid_row", grid_row, minimum=0)
    col = _positive_int("grid_col", grid_col, minimum=0)
    return f"{slide}__r{row:03d}_c{col:03d}"


def parse_tile_name(name: str) -> TileKey:
    """Split a name made by :func:`tile_name` back into its slide id and grid position.

    Parameters
    ----------
    name : str
        A tile name, without a file extension (use :attr:`pathlib.Path.stem`).

    Returns
    -------
    TileKey
        ``(slide_id, grid_row, grid_col)``.

    Raises
    ------
    ValueError
        If ``name`` is not exactly what :func:`tile_name` would make.

    Examples
    --------
    >>> parse_tile_name("van0013_train_17__r004_c011")
    TileKey(slide_id='van0013_train_17', grid_row=4, grid_col=11)
    >>> parse_tile_name("26dc41664_r4_c11")
    Traceback (most recent call last):
    ...
    ValueError: not a tile name (expected '<slide_id>__r<row>_c<col>'): '26dc41664_r4_c11'
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"not a tile name (expected '<slide_id>__r<row>_c<col>'): {name!r}")
    key = TileKey(match["slide"], int(match["row"]), int(match["col"]))
    try:
        canonical = tile_name(*key)
    except ValueError as error:
        raise ValueError(f"not a tile name: {name!r}: {error}") from None
    if canonical != name:
        raise ValueError(f"not a canonical tile name: {name!r} (expected {canonical!r})")
    return key
