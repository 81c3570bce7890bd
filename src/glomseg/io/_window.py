"""The :class:`Window` value type and window arithmetic.

Windows are ``(row, col, height, width)`` in pixels, row-first like numpy arrays
(the opposite of rasterio's ``(col_off, row_off, width, height)``). A window may
start at a negative offset or extend past an array, for example near a slide
edge; :meth:`Window.clip` and :meth:`Window.intersection` bring it back inside.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from glomseg.errors import WindowError

__all__ = ["Window"]


def _as_int(name: str, value: object) -> int:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise WindowError(f"{name} must be an integer, got {value!r}") from None


@dataclass(frozen=True, slots=True)
class Window:
    """A rectangle of pixels: top-left ``(row, col)`` and size ``(height, width)``.

    Parameters
    ----------
    row, col : int
        Offset of the top-left pixel. May be negative (a window partly above or
        left of an array).
    height, width : int
        Size in pixels, both > 0.

    Raises
    ------
    WindowError
        If a value is not an integer, or ``height`` or ``width`` is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> w = Window(1, 2, height=2, width=3)
    >>> a = np.arange(30).reshape(5, 6)
    >>> a[w.to_slices()]
    array([[ 8,  9, 10],
           [14, 15, 16]])
    >>> w.row_stop, w.col_stop, w.shape
    (3, 5, (2, 3))
    >>> Window(0, 0, 0, 5)
    Traceback (most recent call last):
    ...
    glomseg.errors.WindowError: height must be > 0, got 0
    """

    row: int
    col: int
    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("row", "col", "height", "width"):
            value = _as_int(name, getattr(self, name))
            object.__setattr__(self, name, value)
        if self.height <= 0:
            raise WindowError(f"height must be > 0, got {self.height}")
        if self.width <= 0:
            raise WindowError(f"width must be > 0, got {self.width}")

    # -- derived values -------------------------------------------------
    @property
    def row_stop(self) -> int:
        """One past the last row (exclusive bound)."""
        return self.row + self.height

    @property
    def col_stop(self) -> int:
        """One past the last column (exclusive bound)."""
        return self.col + self.width

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    @property
    def size(self) -> int:
        """Number of pixels, ``height * width``."""
        return self.height * self.width

    # -- constructors ---------------------------------------------------
    @classmethod
    def from_bounds(cls, row_start: int, col_start: int, row_stop: int, col_stop: int) -> Window:
        """Make a window from its inclusive start and exclusive stop bounds.

        Examples
        --------
        >>> Window.from_bounds(10, 20, 15, 30)
        Window(row=10, col=20, height=5, width=10)
        """
        return cls(row_start, col_start, row_stop - row_start, col_stop - col_start)

    @classmethod
    def from_shape(cls, shape: tuple[int, ...]) -> Window:
        """The window covering a whole array of ``shape`` (its first two entries).

        Examples
        --------
        >>> Window.from_shape((480, 640, 3))
        Window(row=0, col=0, height=480, width=640)
        """
        if len(shape) < 2:
            raise WindowError(f"shape must have at least 2 entries, got {shape!r}")
        return cls(0, 0, shape[0], shape[1])

    # -- conversions ----------------------------------------------------
    def to_slices(self) -> tuple[slice, slice]:
        """Return ``(row_slice, col_slice)`` for indexing an array.

        Raises
        ------
        WindowError
            If the window starts at a negative offset (numpy would wrap around).
        """
        if self.row < 0 or self.col < 0:
            raise WindowError(
                f"cannot slice with a window at a negative offset: {self}; clip it first"
            )
        return slice(self.row, self.row_stop), slice(self.col, self.col_stop)

    # -- arithmetic -----------------------------------------------------
    def translate(self, drow: int, dcol: int) -> Window:
        """Shift the window by ``(drow, dcol)``.

        Examples
        --------
        >>> Window(5, 5, 2, 2).translate(-5, 1)
        Window(row=0, col=6, height=2, width=2)
        """
        return Window(self.row + drow, self.col + dcol, self.height, self.width)

    def relative_to(self, other: Window) -> Window:
        """Express this window in the coordinates of ``other``'s top-left corner.

        Examples
        --------
        >>> Window(12, 30, 4, 4).relative_to(Window(10, 20, 100, 100))
        Window(row=2, col=10, height=4, width=4)
        """
        return self.translate(-other.row, -other.col)

    def intersection(self, other: Window) -> Window | None:
        """The overlap of two windows, or ``None`` when they do not overlap.

        Examples
        --------
        >>> Window(0, 0, 10, 10).intersection(Window(5, 8, 10, 10))
        Window(row=5, col=8, height=5, width=2)
        >>> Window(0, 0, 10, 10).intersection(Window(10, 0, 5, 5)) is None
        True
        """
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1, c1 = min(self.row_stop, other.row_stop), min(self.col_stop, other.col_stop)
        if r1 <= r0 or c1 <= c0:
            return None
        return Window.from_bounds(r0, c0, r1, c1)

    def intersects(self, other: Window) -> bool:
        """Whether the two windows share at least one pixel."""
        return self.intersection(other) is not None

    def contains(self, other: Window) -> bool:
        """Whether ``other`` lies entirely inside this window."""
        return (
            self.row <= other.row
            and self.col <= other.col
            and other.row_stop <= self.row_stop
            and other.col_stop <= self.col_stop
        )

    def clip(self, shape: tuple[int, ...]) -> Window | None:
        """Clip to an array of ``shape``; ``None`` when nothing is left.

        Examples
        --------
        >>> Window(-2, 90, 10, 20).clip((100, 100))
        Window(row=0, col=90, height=8, width=10)
        """
        return self.intersection(Window.from_shape(shape))

    def expand(self, margin: int) -> Window:
        """Grow the window by ``margin`` pixels on every side (shrink if negative).

        Examples
        --------
        >>> Window(10, 10, 5, 5).expand(2)
        Window(row=8, col=8, height=9, width=9)
        """
        return Window(
            self.row - margin, self.col - margin, self.height + 2 * margin, self.width + 2 * margin
        )

    def downsample(self, factor: float) -> Window:
        """The smallest window of a grid ``factor`` times coarser that covers this one.

        Parameters
        ----------
        factor : float
            Downsample factor, > 0 (2 means half the rows and columns).

        Examples
        --------
        >>> Window(3, 4, 10, 10).downsample(2)
        Window(row=1, col=2, height=6, width=5)
        """
        if not factor > 0:
            raise WindowError(f"factor must be > 0, got {factor!r}")
        r0, c0 = math.floor(self.row / factor), math.floor(self.col / factor)
        r1, c1 = math.ceil(self.row_stop / factor), math.ceil(self.col_stop / factor)
        return Window.from_bounds(r0, c0, max(r1, r0 + 1), max(c1, c0 + 1))

    def upsample(self, factor: int) -> Window:
        """Map a window of a grid ``factor`` times coarser back to full resolution.

        Examples
        --------
        >>> Window(1, 2, 6, 5).upsample(2)
        Window(row=2, col=4, height=12, width=10)
        """
        f = _as_int("factor", factor)
        if f <= 0:
            raise WindowError(f"factor must be > 0, got {factor!r}")
        return Window(self.row * f, self.col * f, self.height * f, self.width * f)
