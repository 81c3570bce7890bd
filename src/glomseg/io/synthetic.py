"""Synthetic whole-slide images with glomerulus-like structures and their polygons.

The real HuBMAP slides are 1-5 GB each; these stand-ins have the same sizes and
TIFF layouts, tissue-like texture on white glass, and round glomerulus-like
structures whose outlines are written as HuBMAP/QuPath polygon JSON. Pixels are
a pure function of their slide coordinates, so a slide is rendered and written
tile by tile (or strip by strip) in bounded memory at any size.

Examples
--------
>>> from glomseg import SlideReader, Window
>>> from glomseg.io.synthetic import write_synthetic_slide
>>> slide = write_synthetic_slide(getfixture("tmp_path") / "s.tif", (600, 800), seed=1)
>>> slide.shape, slide.annotation_path.name, len(slide.glomeruli) > 0
((600, 800), 's.json', True)
>>> with SlideReader(slide.path) as reader:
...     reader.read(Window(0, 0, 2, 2)).shape
(2, 2, 3)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import tifffile

from glomseg.errors import look_up_option
from glomseg.io._files import atomic_path
from glomseg.io._window import Window

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["Glomerulus", "SyntheticSlide", "render", "write_synthetic_slide"]

Layout = Literal["interleaved", "planar", "pages", "series", "ome"]
Compression = Literal["none", "lzw", "deflate", "jpeg"]

LAYOUTS: tuple[str, ...] = ("interleaved", "planar", "pages", "series", "ome")
COMPRESSIONS: tuple[str, ...] = ("none", "lzw", "deflate", "jpeg")

_GLASS = np.array([243, 241, 246], dtype=np.float32)
_TISSUE = np.array([226, 168, 200], dtype=np.float32)
_NUCLEUS = np.array([118, 62, 150], dtype=np.float32)
_TUFT = np.array([196, 118, 178], dtype=np.float32)
_SPACE = np.array([238, 228, 238], dtype=np.float32)
#: Width in pixels of the pale Bowman's space ring around each glomerulus.
_RING = 6


@dataclass(frozen=True)
class Glomerulus:
    """A round synthetic glomerulus: centre ``(row, col)`` and ``radius`` in pixels."""

    row: float
    col: float
    radius: float

    def polygon(self, vertices: int = 48) -> list[list[float]]:
        """Its outline as a closed GeoJSON ring of ``[x, y]`` = ``[col, row]`` pairs."""
        angles = np.linspace(0.0, 2.0 * np.pi, vertices, endpoint=False)
        ring = [
            [
                round(self.col + self.radius * math.cos(a), 2),
                round(self.row + self.radius * math.sin(a), 2),
            ]
            for a in angles
        ]
        return [*ring, ring[0]]


@dataclass(frozen=True)
class SyntheticSlide:
    """A synthetic slide written to disk.

    Attributes
    ----------
    path : Path
        The TIFF file.
    annotation_path : Path
        The HuBMAP-format polygon JSON of its glomeruli.
    shape : (int, int)
        ``(height, width)`` in pixels.
    glomeruli : tuple of Glomerulus
        The structures drawn, the same as the polygons in the JSON.
    seed : int
        The seed the slide was made from; :func:`render` with it reproduces the pixels.
    """

    path: Path
    annotation_path: Path
    shape: tuple[int, int]
    glomeruli: tuple[Glomerulus, ...]
    seed: int


def _tissue_params(shape: tuple[int, int]) -> tuple[float, float, float, float]:
    h, w = shape
    return h / 2, w / 2, h * 0.42, w * 0.44


def _in_tissue(rows: NDArray[Any], cols: NDArray[Any], shape: tuple[int, int]) -> NDArray[Any]:
    cy, cx, ry, rx = _tissue_params(shape)
    theta = np.arctan2((rows - cy) / ry, (cols - cx) / rx)
    edge = 1.0 + 0.07 * np.sin(5 * theta) + 0.04 * np.cos(11 * theta + 1.0)
    inside: NDArray[np.bool_] = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 < edge**2
    return inside


def make_glomeruli(
    shape: tuple[int, int], *, count: int | None = None, seed: int = 0
) -> tuple[Glomerulus, ...]:
    """Place non-overlapping glomeruli inside the tissue of a slide of ``shape``.

    The default ``count`` gives about one glomerulus per 1.2 million tissue
    pixels, the density of the HuBMAP kidney slides at full resolution. Radii
    are 75-190 px (150-380 px across), scaled down for small slides.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    _, _, ry, rx = _tissue_params(shape)
    if count is None:
        count = max(1, round(math.pi * ry * rx / 1.2e6))
    scale = min(1.0, min(h, w) / 3000)
    r_min, r_max = max(4.0, 75 * scale), max(6.0, 190 * scale)
    placed: list[Glomerulus] = []
    centres = np.empty((0, 3))
    attempts = 0
    while len(placed) < count and attempts < count * 50:
        attempts += 1
        radius = float(rng.uniform(r_min, r_max))
        row, col = float(rng.uniform(0, h)), float(rng.uniform(0, w))
        if not bool(_in_tissue(np.array(row), np.array(col), shape)):
            continue
        if not (
            radius + _RING <= row < h - radius - _RING
            and radius + _RING <= col < w - radius - _RING
        ):
            continue
        if centres.size:
            gap = np.hypot(centres[:, 0] - row, centres[:, 1] - col) - centres[:, 2] - radius
            if (gap < 3 * _RING).any():
                continue
        placed.append(Glomerulus(round(row, 2), round(col, 2), round(radius, 2)))
        centres = np.vstack([centres, [row, col, radius]])
    return tuple(placed)


def _hash_noise(
    rows: NDArray[np.uint32], cols: NDArray[np.uint32], seed: int
) -> NDArray[np.uint32]:
    """Deterministic per-pixel pseudo-random integers in ``[0, 2**32)``."""
    with np.errstate(over="ignore"):
        x = (
            rows * np.uint32(0x9E3779B1)
            ^ cols * np.uint32(0x85EBCA77)
            ^ np.uint32(seed * 2654435761 % 2**32)
        )
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x2C1B3C6D)
        x ^= x >> np.uint32(12)
    return x


def render(
    window: Window, shape: tuple[int, int], glomeruli: tuple[Glomerulus, ...], *, seed: int = 0
) -> NDArray[np.uint8]:
    """Render the pixels of ``window`` of a synthetic slide as ``uint8`` RGB.

    Pixels depend only on their slide coordinates, ``shape``, ``glomeruli`` and
    ``seed``, so any tiling of the slide renders the same image.

    Examples
    --------
    >>> g = make_glomeruli((300, 300), count=2, seed=0)
    >>> whole = render(Window(0, 0, 300, 300), (300, 300), g)
    >>> part = render(Window(100, 50, 20, 30), (300, 300), g)
    >>> bool((whole[100:120, 50:80] == part).all())
    True
    """
    rows = np.arange(window.row, window.row_stop, dtype=np.float32)[:, None]
    cols = np.arange(window.col, window.col_stop, dtype=np.float32)[None, :]
    tissue = _in_tissue(rows, cols, shape)
    urows = np.arange(window.row, window.row_stop, dtype=np.uint32)[:, None]
    ucols = np.arange(window.col, window.col_stop, dtype=np.uint32)[None, :]
    noise = _hash_noise(urows, ucols, seed)
    grain = (noise & np.uint32(0xFF)).astype(np.float32) / 255.0 - 0.5
    nuclei = (noise >> np.uint32(24)) < 10
    shade = 1.0 + 0.05 * np.sin(rows / 97.0 + seed) + 0.05 * np.cos(cols / 131.0 - seed)
    image = np.empty((*window.shape, 3), dtype=np.float32)
    image[...] = np.where(tissue[..., None], _TISSUE * shade[..., None], _GLASS)
    image += (grain * 14.0)[..., None]
    tissue_nuclei = tissue & nuclei
    image[tissue_nuclei] = _NUCLEUS
    near = [
        g
        for g in glomeruli
        if g.row + g.radius + _RING >= window.row
        and g.row - g.radius - _RING < window.row_stop
        and g.col + g.radius + _RING >= window.col
        and g.col - g.radius - _RING < window.col_stop
    ]
    for g in near:
        r0 = max(window.row, math.floor(g.row - g.radius - _RING))
        r1 = min(window.row_stop, math.ceil(g.row + g.radius + _RING) + 1)
        c0 = max(window.col, math.floor(g.col - g.radius - _RING))
        c1 = min(window.col_stop, math.ceil(g.col + g.radius + _RING) + 1)
        if r1 <= r0 or c1 <= c0:
            continue
        sub = (slice(r0 - window.row, r1 - window.row), slice(c0 - window.col, c1 - window.col))
        dist = np.hypot(rows[sub[0]] - g.row, cols[:, sub[1]] - g.col)
        region = image[sub]
        ring = (dist >= g.radius) & (dist < g.radius + _RING)
        tuft = dist < g.radius - 2
        region[ring] = _SPACE
        tuft_color = _TUFT + (grain[sub] * 20.0)[..., None]
        region[tuft] = tuft_color[tuft]
        dense = tuft & ((noise[sub] >> np.uint32(24)) < 40)
        region[dense] = _NUCLEUS
    return np.clip(image, 0, 255).astype(np.uint8)


def _convert(rgb: NDArray[np.uint8], channels: int, dtype: np.dtype[Any]) -> NDArray[Any]:
    """Turn rendered RGB into the stored channels and pixel type."""
    out: NDArray[np.uint8]
    if channels == 1:
        out = rgb.mean(axis=2, keepdims=True).round().astype(np.uint8)
    elif channels == 4:
        alpha = np.full((*rgb.shape[:2], 1), 255, dtype=np.uint8)
        out = np.concatenate([rgb, alpha], axis=2)
    else:
        out = rgb
    if dtype == np.uint16:
        wide: NDArray[np.uint16] = out.astype(np.uint16) * np.uint16(257)
        return wide
    return out


def annotation_features(glomeruli: tuple[Glomerulus, ...]) -> list[dict[str, Any]]:
    """The glomeruli as HuBMAP/QuPath GeoJSON Features (a bare list, like the real files)."""
    return [
        {
            "type": "Feature",
            "id": "PathAnnotationObject",
            "geometry": {"type": "Polygon", "coordinates": [g.polygon()]},
            "properties": {
                "classification": {"name": "glomerulus", "colorRGB": -3140401},
                "isLocked": False,
                "measurements": [],
            },
        }
        for g in glomeruli
    ]


def write_synthetic_slide(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    *,
    layout: Layout = "interleaved",
    tile: int | None = 512,
    rows_per_strip: int = 64,
    compression: Compression = "none",
    levels: int = 1,
    channels: int = 3,
    dtype: str | np.dtype[Any] = "uint8",
    bigtiff: bool | None = None,
    glomeruli: tuple[Glomerulus, ...] | None = None,
    seed: int = 0,
    annotation_path: str | os.PathLike[str] | None = None,
) -> SyntheticSlide:
    """Write a synthetic slide TIFF, tile by tile, and its glomerulus polygon JSON.

    Parameters
    ----------
    path : str or os.PathLike
        The TIFF to write.
    shape : (int, int)
        ``(height, width)`` of the slide.
    layout : {"interleaved", "planar", "pages", "series", "ome"}
        How colours are stored: ``"interleaved"`` ``(H, W, 3)`` in one page;
        ``"planar"`` ``(3, H, W)`` in one page (planar configuration
        "separate"); ``"pages"`` one page per colour in one series;
        ``"series"`` one page per colour, each its own series (GDAL shows
        these as subdatasets); ``"ome"`` an OME-TIFF of axes ``TZCYX`` and
        shape ``(1, 1, 3, H, W)`` with one page per colour.
    tile : int or None
        Square tile size (a multiple of 16), or ``None`` for strips.
    rows_per_strip : int
        Rows per strip when ``tile`` is ``None``.
    compression : {"none", "lzw", "deflate", "jpeg"}
        Codec of the segments; JPEG needs ``tile`` and ``uint8``.
    levels : int
        Number of resolution levels; each extra level halves the previous one
        (stored as SubIFDs; tiled files only).
    channels : {1, 3, 4}
        Grayscale, RGB or RGBA (``"interleaved"`` only for 1 and 4).
    dtype : {"uint8", "uint16"}
        Stored pixel type; ``uint16`` values are ``uint8 * 257``.
    bigtiff : bool, optional
        Force BigTIFF; by default used when the data exceeds 4 GB.
    glomeruli : tuple of Glomerulus, optional
        Structures to draw; default :func:`make_glomeruli` of ``shape`` and ``seed``.
    seed : int
        Seed of the texture and the default glomeruli.
    annotation_path : str or os.PathLike, optional
        Where the polygon JSON goes; default ``path`` with suffix ``.json``.

    Returns
    -------
    SyntheticSlide
        Where everything went, and what was drawn.
    """
    look_up_option("layout", layout, LAYOUTS)
    look_up_option("compression", compression, COMPRESSIONS)
    height, width = (int(shape[0]), int(shape[1]))
    if height <= 0 or width <= 0:
        raise ValueError(f"shape must be positive, got {shape!r}")
    if channels not in (1, 3, 4):
        raise ValueError(f"channels must be 1, 3 or 4, got {channels}")
    if channels != 3 and layout != "interleaved":
        raise ValueError(f"channels={channels} needs layout='interleaved', got {layout!r}")
    np_dtype = np.dtype(dtype)
    if np_dtype not in (np.uint8, np.uint16):
        raise ValueError(f"dtype must be uint8 or uint16, got {np_dtype}")
    if tile is not None and (tile <= 0 or tile % 16):
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if rows_per_strip <= 0:
        raise ValueError(f"rows_per_strip must be > 0, got {rows_per_strip}")
    if compression == "jpeg" and (tile is None or np_dtype != np.uint8):
        raise ValueError("compression='jpeg' needs a tile size and dtype uint8")
    if levels < 1 or (levels > 1 and (tile is None or layout in ("pages", "series"))):
        raise ValueError(
            "levels must be >= 1, and > 1 only for tiled 'interleaved', 'planar' or 'ome' "
            f"files, got {levels}"
        )
    path = Path(path)
    annotation_path = Path(annotation_path) if annotation_path else path.with_suffix(".json")
    if glomeruli is None:
        glomeruli = make_glomeruli((height, width), seed=seed)
    if bigtiff is None:
        bigtiff = _needs_bigtiff((height, width), tile, levels, channels * np_dtype.itemsize)

    def pixels(window: Window, factor: int) -> NDArray[Any]:
        """Stored pixels ``(h, w, c)`` of a window of the level reduced by ``factor``."""
        full = window.upsample(factor)
        inside = full.clip((height, width))
        assert inside is not None
        rgb = render(inside, (height, width), glomeruli, seed=seed)
        if factor > 1:
            h, w = window.shape
            padded = np.pad(
                rgb,
                ((0, h * factor - rgb.shape[0]), (0, w * factor - rgb.shape[1]), (0, 0)),
                mode="edge",
            )
            rgb = padded.reshape(h, factor, w, factor, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        return _convert(rgb, channels, np_dtype)

    codec = {"none": None, "lzw": "lzw", "deflate": "zlib", "jpeg": "jpeg"}[compression]
    photometric = (
        "rgb" if channels in (3, 4) and layout in ("interleaved", "planar") else "minisblack"
    )
    extrasamples = ("unassalpha",) if channels == 4 else None
    with atomic_path(path) as tmp, atomic_path(annotation_path) as annotation_tmp:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=layout == "ome") as tw:
            level_shapes = [
                (math.ceil(height / 2**k), math.ceil(width / 2**k)) for k in range(levels)
            ]
            common: dict[str, Any] = {
                "dtype": np_dtype,
                "compression": codec,
                "photometric": photometric,
            }
            if tile is not None:
                common["tile"] = (tile, tile)
            else:
                common["rowsperstrip"] = rows_per_strip
            if extrasamples:
                common["extrasamples"] = extrasamples
            for k, (lh, lw) in enumerate(level_shapes):
                factor = 2**k
                extra: dict[str, Any] = {}
                if k == 0 and levels > 1:
                    extra["subifds"] = levels - 1
                if k > 0:
                    extra["subfiletype"] = 1
                if layout == "interleaved":
                    stored = (lh, lw, channels) if channels > 1 else (lh, lw)
                    data = _segments((lh, lw), tile, rows_per_strip, codec, factor, pixels, None)
                    tw.write(
                        data,
                        shape=stored,
                        metadata=None if k or levels > 1 else {},
                        **common,
                        **extra,
                    )
                elif layout == "planar":
                    data = _segments(
                        (lh, lw), tile, rows_per_strip, codec, factor, pixels, (0, 1, 2)
                    )
                    tw.write(
                        data,
                        shape=(3, lh, lw),
                        planarconfig="separate",
                        metadata=None if k or levels > 1 else {},
                        **common,
                        **extra,
                    )
                elif layout in ("pages", "ome"):
                    data = _segments(
                        (lh, lw), tile, rows_per_strip, codec, factor, pixels, (0, 1, 2)
                    )
                    if layout == "ome":
                        tw.write(
                            data,
                            shape=(1, 1, 3, lh, lw),
                            metadata={"axes": "TZCYX"} if k == 0 else None,
                            **common,
                            **extra,
                        )
                    else:
                        tw.write(data, shape=(3, lh, lw), metadata=None, **common, **extra)
                else:  # "series": one shaped series per colour
                    for c in range(3):
                        data = _segments(
                            (lh, lw), tile, rows_per_strip, codec, factor, pixels, (c,)
                        )
                        tw.write(data, shape=(lh, lw), metadata={}, **common)
        annotation_tmp.write_text(json.dumps(annotation_features(glomeruli), indent=1))
    return SyntheticSlide(path, annotation_path, (height, width), glomeruli, seed)


def _needs_bigtiff(shape: tuple[int, int], tile: int | None, levels: int, pixel_bytes: int) -> bool:
    """Whether every level, padded to whole tiles, nears a classic TIFF's 4 GiB.

    >>> _needs_bigtiff((31299, 44066), 512, 1, 3), _needs_bigtiff((31299, 44066), 512, 2, 3)
    (False, True)
    """
    step = tile or 1
    stored = 0
    for k in range(levels):
        h, w = (math.ceil(side / 2**k) for side in shape)
        stored += math.ceil(h / step) * step * math.ceil(w / step) * step
    return stored * pixel_bytes > 2**32 - 2**25


def _segments(
    shape: tuple[int, int],
    tile: int | None,
    rows_per_strip: int,
    codec: str | None,
    factor: int,
    pixels: Any,
    planes: tuple[int, ...] | None,
) -> Iterator[Any]:
    """Yield tiles (arrays) or encoded strips (bytes), plane by plane when ``planes`` is given."""
    height, width = shape
    for plane in planes if planes is not None else (None,):
        if tile is not None:
            for r in range(0, height, tile):
                for c in range(0, width, tile):
                    window = Window.from_bounds(r, c, min(r + tile, height), min(c + tile, width))
                    data = _plane(pixels(window, factor), plane)
                    pad = [(0, tile - window.height), (0, tile - window.width)]
                    pad += [(0, 0)] * (data.ndim - 2)
                    yield np.pad(data, pad)
        else:
            for r in range(0, height, rows_per_strip):
                window = Window.from_bounds(r, 0, min(r + rows_per_strip, height), width)
                data = _plane(pixels(window, factor), plane)
                yield _encode_strip(np.ascontiguousarray(data), codec)


def _plane(data: NDArray[Any], plane: int | None) -> NDArray[Any]:
    """Select one colour plane, or drop the channel axis of single-channel data."""
    if plane is not None:
        return data[..., plane]
    return data[..., 0] if data.shape[2] == 1 else data


def _encode_strip(data: NDArray[Any], codec: str | None) -> bytes:
    import imagecodecs

    raw = data.tobytes()
    if codec is None:
        return raw
    if codec == "lzw":
        return bytes(imagecodecs.lzw_encode(raw))
    if codec == "zlib":
        return bytes(imagecodecs.zlib_encode(raw))
    raise ValueError(f"striped files cannot use compression {codec!r}")  # pragma: no cover
