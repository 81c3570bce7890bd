"""How TIFF pages store colour, and the conversion of their samples to ``uint8`` RGB.

:func:`page_color` reads a page's photometric interpretation, bits per sample,
sample format, extra samples and colour tables once, when a slide is opened, and
refuses with a :class:`~glomseg.errors.SlideReadError` what it cannot convert correctly;
:meth:`ColorModel.to_rgb8` then converts the raw samples of each window read.
See ``docs/tiff_support.rst`` for the table of what is converted and what refused.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from glomseg.errors import SlideReadError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__: list[str] = []

ColorKind = Literal["grey", "rgb", "palette", "cmyk", "lab", "ycbcr"]

#: New-style JPEG compressions: the decoder returns RGB for YCbCr pages.
JPEG_COMPRESSIONS = frozenset({7, 33007, 34892})
#: Photometric interpretations by TIFF code, for messages.
PHOTOMETRIC_NAMES = {
    0: "MINISWHITE",
    1: "MINISBLACK",
    2: "RGB",
    3: "PALETTE",
    4: "MASK (transparency mask)",
    5: "SEPARATED",
    6: "YCBCR",
    8: "CIELAB",
    9: "ICCLAB",
    10: "ITULAB",
    32803: "CFA (raw colour filter array)",
    32844: "LOGL",
    32845: "LOGLUV",
    34892: "LINEARRAW",
    51177: "DEPTH",
}
#: Colour samples of each supported photometric interpretation.
_COLOR_SAMPLES = {0: 1, 1: 1, 2: 3, 3: 1, 5: 4, 6: 3, 8: 3}
_KINDS: dict[int, ColorKind] = {0: "grey", 1: "grey", 2: "rgb", 3: "palette", 5: "cmyk", 8: "lab"}


@dataclass(frozen=True, eq=False)
class ColorModel:
    """How to turn the ``channels`` raw samples of a level into ``uint8`` RGB.

    ``color`` indexes the colour samples among the channels, ``alpha`` the
    alpha sample (composited over white; ``premultiplied`` for associated
    alpha); other channels (unspecified extra samples) are ignored. Integer
    samples span ``0 .. top`` (``2**bits - 1``), floats ``[0, 1]``.
    """

    kind: ColorKind
    channels: int
    dtype: np.dtype[Any]
    top: int
    color: tuple[int, ...]
    alpha: int | None = None
    premultiplied: bool = False
    invert: bool = False
    colormap: NDArray[np.uint8] | None = None
    ycbcr: tuple[float, ...] = ()
    name: str = field(default="", compare=False)

    @property
    def plain_rgb8(self) -> bool:
        """Whether the raw samples already are ``uint8`` RGB (no conversion at all)."""
        return (
            self.kind == "rgb"
            and self.channels == 3
            and self.alpha is None
            and self.dtype == np.uint8
            and self.top == 255
        )

    def describe(self) -> str:
        """A few words for the layout description; empty for plain RGB or grey."""
        words = {
            "grey": "min-is-white grey" if self.invert else "",
            "rgb": "",
            "palette": "palette",
            "cmyk": "CMYK",
            "lab": "CIELab",
            "ycbcr": "YCbCr",
        }[self.kind]
        parts = [words] if words else []
        if self.dtype.kind in "ui" and self.top != np.iinfo(self.dtype).max:
            parts.append(f"{int(self.top).bit_length()}-bit")
        if self.alpha is not None:
            parts.append("premultiplied alpha" if self.premultiplied else "alpha")
        return " ".join(parts)

    def to_rgb8(self, raw: NDArray[Any]) -> NDArray[np.uint8]:
        """Convert ``(h, w, channels)`` raw samples to ``(h, w, 3)`` ``uint8`` RGB."""
        if raw.ndim == 2:
            raw = raw[..., np.newaxis]
        if self.kind == "palette":
            assert self.colormap is not None
            rgb: NDArray[np.uint8] = self.colormap[raw[..., self.color[0]].astype(np.intp)]
            return rgb
        if self.kind == "lab":
            return _lab_to_rgb8(raw[..., list(self.color)])
        colors = raw if self.color == tuple(range(raw.shape[2])) else raw[..., list(self.color)]
        if self.kind == "cmyk":
            unit = _to_unit(colors, self.top)
            ink = (1.0 - unit[..., :3]) * (1.0 - unit[..., 3:4])
            return _round8(ink * 255.0)
        if self.kind == "ycbcr":
            return _ycbcr_to_rgb8(colors, self.ycbcr)
        values = _scale_to_uint8(colors, self.top, invert=self.invert)
        if self.kind == "grey":
            values = np.repeat(values, 3, axis=2)
        if self.alpha is None:
            return values
        alpha = _scale_to_uint8(raw[..., self.alpha : self.alpha + 1], self.top, invert=False)
        a = alpha.astype(np.uint16)
        if self.premultiplied:  # the colour is already multiplied by alpha
            over = np.minimum(values.astype(np.uint16) + (255 - a), 255)
            result: NDArray[np.uint8] = over.astype(np.uint8)
        else:
            blended = (values.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
            result = blended.astype(np.uint8)
        return result


def _round8(values: NDArray[np.floating[Any]]) -> NDArray[np.uint8]:
    rounded: NDArray[np.uint8] = np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    return rounded


def _to_unit(raw: NDArray[Any], top: int) -> NDArray[np.float64]:
    """Samples as float64 in ``[0, 1]``."""
    if raw.dtype.kind == "f":
        unit: NDArray[np.float64] = np.clip(np.nan_to_num(raw.astype(np.float64), nan=0.0), 0, 1)
        return unit
    if raw.dtype == np.bool_:
        return raw.astype(np.float64)
    scaled: NDArray[np.float64] = np.clip(raw, 0, top).astype(np.float64) / top
    return scaled


def _scale_to_uint8(raw: NDArray[Any], top: int, *, invert: bool) -> NDArray[np.uint8]:
    """Scale samples of ``0 .. top`` (floats ``[0, 1]``) to ``0 .. 255``, rounding to nearest."""
    dtype = raw.dtype
    if dtype == np.uint8 and top == 255:
        same: NDArray[np.uint8] = np.subtract(np.uint8(255), raw) if invert else raw
        return same
    if dtype == np.bool_:
        binary: NDArray[np.uint8] = (raw != invert).astype(np.uint8) * np.uint8(255)
        return binary
    if dtype.kind in "ui":
        values = np.clip(raw, 0, top).astype(np.float64)
        if invert:
            values = top - values
        return _round8(values * (255.0 / top))
    unit = np.clip(np.nan_to_num(raw.astype(np.float64), nan=0.0), 0.0, 1.0)
    return _round8((1.0 - unit if invert else unit) * 255.0)


def _ycbcr_to_rgb8(raw: NDArray[Any], params: tuple[float, ...]) -> NDArray[np.uint8]:
    """TIFF 6.0 section 21: YCbCr with luma coefficients and reference black/white to RGB."""
    luma_r, luma_g, luma_b, *ref = params
    values = raw.astype(np.float64)
    y = (values[..., 0] - ref[0]) * 255.0 / (ref[1] - ref[0])
    cb = (values[..., 1] - ref[2]) * 127.0 / (ref[3] - ref[2])
    cr = (values[..., 2] - ref[4]) * 127.0 / (ref[5] - ref[4])
    r = y + cr * (2 - 2 * luma_r)
    b = y + cb * (2 - 2 * luma_b)
    g = (y - luma_b * b - luma_r * r) / luma_g
    return _round8(np.stack([r, g, b], axis=-1))


_LAB_LOCK = threading.Lock()
_LAB_TRANSFORM: list[Any] = []


def _lab_to_rgb8(raw: NDArray[Any]) -> NDArray[np.uint8]:
    """8-bit CIELab (L 0-255, signed a and b) to sRGB with Little CMS (Pillow's ImageCms).

    The Lab white point is D50, as libtiff and Adobe assume when a file names none.
    """
    from PIL import Image, ImageCms

    with _LAB_LOCK:
        if not _LAB_TRANSFORM:
            _LAB_TRANSFORM.append(
                ImageCms.buildTransform(
                    ImageCms.createProfile("LAB"),
                    ImageCms.createProfile("sRGB"),
                    "LAB",
                    "RGB",
                    flags=ImageCms.Flags.NOCACHE,
                )
            )
        transform = _LAB_TRANSFORM[0]
    h, w = raw.shape[:2]
    data = np.ascontiguousarray(raw, dtype=np.uint8).tobytes()
    lab = Image.frombuffer("LAB", (w, h), data, "raw", "LAB", 0, 1)
    rgb: NDArray[np.uint8] = np.asarray(transform.apply(lab), dtype=np.uint8)
    return rgb.reshape(h, w, 3)


def _top(dtype: np.dtype[Any], bits: int) -> int:
    """The sample value of full intensity: ``2**bits - 1`` for integers, 1 otherwise."""
    if dtype.kind == "u":
        return (1 << min(bits, dtype.itemsize * 8)) - 1
    if dtype.kind == "i":
        return (1 << (min(bits, dtype.itemsize * 8) - 1)) - 1
    return 1


def _rationals(value: Any, count: int) -> tuple[float, ...] | None:
    """``count`` numbers from a RATIONAL tag value (flat numerator/denominator pairs)."""
    flat = [float(v) for v in np.asarray(value, dtype=np.float64).ravel()]
    if len(flat) == 2 * count:
        pairs = [(flat[2 * i], flat[2 * i + 1]) for i in range(count)]
        if any(den == 0 for _, den in pairs):
            return None
        return tuple(num / den for num, den in pairs)
    if len(flat) == count:
        return tuple(flat)
    return None


def page_color(page: Any, name: str) -> ColorModel:
    """The colour model of one TIFF page (its keyframe's tags), or :class:`SlideReadError`.

    ``name`` (the file and page) starts every message.
    """
    key = page.keyframe
    photometric = int(key.photometric)
    samples = int(key.samplesperpixel)
    compression = int(key.compression)
    dtype = np.dtype(key.dtype)
    bits_tag = key.bitspersample
    label = PHOTOMETRIC_NAMES.get(photometric, f"{photometric} (unknown)")

    def refuse(reason: str) -> SlideReadError:
        return SlideReadError(f"{name}: unsupported {reason}")

    if isinstance(bits_tag, tuple):
        if len(set(bits_tag)) != 1:
            raise refuse(f"bits per sample {bits_tag} (samples of different sizes)")
        bits_tag = bits_tag[0]
    bits = int(bits_tag)
    if dtype.kind not in "uifb":
        raise refuse(f"pixel type {dtype}")
    if photometric not in _COLOR_SAMPLES:
        raise refuse(
            f"photometric interpretation {label}: glomseg reads grey, RGB, palette, "
            "YCbCr, CMYK and CIELab images"
        )
    if compression == 6:
        raise refuse(
            "old-style JPEG compression (6), which the decoder cannot read; re-save the "
            "file with new-style JPEG (e.g. libtiff's `tiffcp -c jpeg`)"
        )
    subsampling = getattr(key, "subsampling", None)
    if (
        photometric == 6
        and subsampling not in (None, (1, 1))
        and (compression not in JPEG_COMPRESSIONS or key.planarconfig == 2)
    ):
        codec = _codec_name(compression)
        raise refuse(
            f"YCbCr with chroma subsampling {tuple(subsampling)} and {codec} compression: "
            "the decoder reads subsampled YCbCr only from JPEG"
        )
    n_color = _COLOR_SAMPLES[photometric]
    kind: ColorKind = _KINDS.get(photometric, "rgb")
    if photometric == 5:
        inkset = int(key.tags.valueof(332, 1))
        inks = int(key.tags.valueof(334, 4))
        if inkset != 1 or inks != 4:
            raise refuse(f"separated (ink) image with InkSet {inkset} and {inks} inks: not CMYK")
    if samples < n_color:
        raise refuse(f"layout: {samples} sample(s) per pixel, {label} needs {n_color}")
    jpeg = compression in JPEG_COMPRESSIONS
    if jpeg and photometric in (3, 5, 8):
        raise refuse(f"JPEG-compressed {label} image")
    if jpeg and photometric == 6 and key.planarconfig == 2:
        raise refuse("JPEG-compressed YCbCr in separate planes")
    if photometric == 6 and not jpeg:
        from tifffile import TIFF

        if compression in TIFF.IMAGE_COMPRESSIONS:
            raise refuse(f"YCbCr image with {_codec_name(compression)} compression")
        kind = "ycbcr"
    elif photometric == 6:
        kind = "rgb"  # the JPEG decoder converts YCbCr to RGB
    if kind in ("cmyk", "lab", "ycbcr", "palette") and dtype.kind not in "ub":
        raise refuse(f"{label} image of {dtype} samples")
    if kind in ("lab", "ycbcr") and (dtype != np.uint8 or bits != 8):
        raise refuse(f"{label} image with {bits} bits per sample (only 8 is supported)")
    if photometric == 0 and dtype.kind == "i":
        raise refuse(f"{label} image of signed {dtype} samples")

    color = tuple(range(n_color))
    alpha: int | None = None
    premultiplied = False
    extra = samples - n_color
    extras = tuple(int(e) for e in key.extrasamples)
    if extra:
        if extras and len(extras) != extra:
            raise SlideReadError(
                f"{name}: corrupt tags: {samples} samples per pixel, {label} uses {n_color}, "
                f"and ExtraSamples describes {len(extras)}"
            )
        alphas = [i for i, e in enumerate(extras) if e in (1, 2)]
        if photometric == 1 and samples == 3 and not alphas:
            # (3, H, W) / (H, W, 3) slides saved as MINISBLACK with 3 samples: R, G, B.
            kind, color = "rgb", (0, 1, 2)
        elif alphas:
            alpha = n_color + alphas[0]
            premultiplied = extras[alphas[0]] == 1
        elif not extras and ((photometric in (0, 1) and samples == 2) or samples == 4):
            alpha = n_color  # no ExtraSamples tag: the extra sample is alpha, as Pillow has it
        elif not extras or photometric in (0, 1):
            raise refuse(
                f"layout: {label} image with {extra} extra sample(s) that are not alpha "
                "(a multichannel image?)"
            )
        if alpha is not None and kind not in ("grey", "rgb"):
            raise refuse(f"{label} image with an alpha sample")
    colormap = None
    if kind == "palette":
        colormap = _palette(key.colormap, bits, name)
    ycbcr: tuple[float, ...] = ()
    if kind == "ycbcr":
        luma = _rationals(key.tags.valueof(529, (299, 1000, 587, 1000, 114, 1000)), 3)
        ref = _rationals(key.tags.valueof(532, (0, 1, 255, 1, 128, 1, 255, 1, 128, 1, 255, 1)), 6)
        if luma is None or ref is None or luma[1] == 0 or ref[0] == ref[1]:
            raise SlideReadError(f"{name}: corrupt YCbCrCoefficients or ReferenceBlackWhite tag")
        if ref[2] == ref[3] or ref[4] == ref[5]:
            raise SlideReadError(f"{name}: corrupt ReferenceBlackWhite tag {ref}")
        ycbcr = (*luma, *ref)
    return ColorModel(
        kind=kind,
        channels=samples,
        dtype=dtype,
        top=_top(dtype, bits),
        color=color,
        alpha=alpha,
        premultiplied=premultiplied,
        invert=photometric == 0,
        colormap=colormap,
        ycbcr=ycbcr,
        name=name,
    )


def stacked_color(pages: list[Any], names: list[str]) -> ColorModel:
    """The model of R, G and B stored as three single-sample MINISBLACK pages."""
    models = [page_color(page, n) for page, n in zip(pages, names, strict=True)]
    for model, n in zip(models, names, strict=True):
        if model.kind != "grey" or model.invert or model.channels != 1:
            raise SlideReadError(
                f"{n}: unsupported layout: one page per colour needs MINISBLACK pages of one "
                f"sample, this one is {model.describe() or model.kind} with {model.channels}"
            )
    first = models[0]
    if any(m.top != first.top for m in models):
        raise SlideReadError(f"{names[0]}: unsupported layout: colour pages of different depths")
    return ColorModel("rgb", 3, first.dtype, first.top, (0, 1, 2), name=names[0])


def _palette(colormap: Any, bits: int, name: str) -> NDArray[np.uint8]:
    """A TIFF colour map as an ``(entries, 3)`` ``uint8`` lookup table."""
    if colormap is None:
        raise SlideReadError(f"{name}: corrupt palette image: no ColorMap tag")
    table = np.asarray(colormap)
    if table.ndim != 2 or table.shape[0] != 3 or table.shape[1] < (1 << bits):
        raise SlideReadError(
            f"{name}: corrupt palette image: its colour map has shape {table.shape}, "
            f"{bits}-bit indices need (3, {1 << bits})"
        )
    table = table.astype(np.float64).T
    if table.max() > 255:  # 16-bit entries (the standard); libtiff also accepts 8-bit ones
        table = table * (255.0 / 65535.0)
    return np.ascontiguousarray(_round8(table))


def _codec_name(compression: int) -> str:
    import tifffile

    try:
        return str(tifffile.COMPRESSION(compression).name)
    except ValueError:
        return f"compression {compression}"


def plain_to_rgb8(pixels: NDArray[Any]) -> NDArray[np.uint8]:
    """Pixels of a plain image (grey, grey+alpha, RGB or RGBA; 8 or 16 bits) as RGB."""
    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    channels = pixels.shape[2]
    dtype = pixels.dtype
    top = int(np.iinfo(dtype).max)
    kind: Literal["grey", "rgb"] = "grey" if channels in (1, 2) else "rgb"
    color = (0,) if kind == "grey" else (0, 1, 2)
    alpha = channels - 1 if channels in (2, 4) else None
    return ColorModel(kind, channels, dtype, top, color, alpha).to_rgb8(pixels)
