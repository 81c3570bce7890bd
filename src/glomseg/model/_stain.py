"""Stain normalisation of RGB histology: :class:`ReinhardNormalizer`, :class:`MacenkoNormalizer`.

Labs, scanners and staining runs colour PAS and H&E differently, and a model
trained on one lab's colours fails on another's. A normalizer holds a *target*'s
statistics, fitted once on one image or pooled over several, and maps any
*source* image onto them: :class:`ReinhardNormalizer` matches the L*a*b* channel
means and spreads (Reinhard et al. 2001); :class:`MacenkoNormalizer` unmixes two
stains in optical density, rescales them and remixes with the target's stains
(Macenko et al. 2009). Normalizers are frozen and JSON-serialisable
(``to_dict``, :func:`normalizer_from_dict`), so the target used in training can
be saved beside the model. All is vectorised float32 numpy: a 512 x 512 tile
takes a few tens of milliseconds. For stain *augmentation*, use the HED
deconvolution of :data:`skimage.color.hed_from_rgb` and :data:`~skimage.color.rgb_from_hed`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, fields
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from glomseg.errors import look_up_option
from glomseg.io._tissue import tissue_pixels

__all__ = [
    "MIN_STAIN_PIXELS",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "StainMethod",
    "StainNormalizer",
    "fit_stain_normalizer",
    "normalizer_from_dict",
]

StainMethod = Literal["reinhard", "macenko"]

#: Fewest usable pixels (tissue for Reinhard, stained for Macenko) to fit or transform with.
MIN_STAIN_PIXELS = 100

Images: TypeAlias = NDArray[np.uint8] | Sequence[NDArray[np.uint8]]

# sRGB (D65, 2 degree observer) <-> CIE L*a*b*, the same constants as skimage.color.
_SRGB = np.arange(256, dtype=np.float64) / 255
_LINEAR_FROM_UINT8 = np.where(
    _SRGB > 0.04045, ((_SRGB + 0.055) / 1.055) ** 2.4, _SRGB / 12.92
).astype(np.float32)
_XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = np.array([0.95047, 1.0, 1.08883])
_XYZN_FROM_LINEAR_T = (_XYZ_FROM_RGB / _WHITE[:, None]).T.astype(np.float32)
_LINEAR_FROM_XYZN_T = (np.linalg.inv(_XYZ_FROM_RGB) * _WHITE).T.astype(np.float32)
_LAB_FROM_F = np.array([[0, 500, 0], [116, -500, 200], [0, 0, -200]], dtype=np.float32)
_F_FROM_LAB = np.linalg.inv(_LAB_FROM_F.astype(np.float64))
_L_OFFSET = np.array([16.0, 0.0, 0.0])


def _rgb_to_lab(image: NDArray[np.uint8]) -> NDArray[np.float32]:
    """``(h, w, 3)`` uint8 sRGB to ``(h * w, 3)`` float32 L*a*b*, as skimage.color.rgb2lab."""
    xyz = _LINEAR_FROM_UINT8[image.reshape(-1, 3)] @ _XYZN_FROM_LINEAR_T
    small = xyz <= 0.008856
    f = np.power(xyz, np.float32(1 / 3))
    f[small] = 7.787 * xyz[small] + np.float32(16 / 116)
    lab: NDArray[np.float32] = f @ _LAB_FROM_F
    lab[:, 0] -= 16
    return lab


def _lab_to_rgb(
    lab: NDArray[np.float32], scale: NDArray[np.float64], offset: NDArray[np.float64]
) -> NDArray[np.uint8]:
    """``(n, 3)`` L*a*b* ``* scale + offset`` to uint8 sRGB, as skimage.color.lab2rgb then rounded.

    As there, Z < 0 is set to 0 and the result clipped; the affine map is folded
    into the first matrix product.
    """
    matrix = (scale[:, None] * _F_FROM_LAB).astype(np.float32)
    f = lab @ matrix
    f += ((offset + _L_OFFSET) @ _F_FROM_LAB).astype(np.float32)
    np.maximum(f[:, 2], 0, out=f[:, 2])
    small = f <= 0.2068966
    xyz = f * f
    xyz *= f
    xyz[small] = (f[small] - np.float32(16 / 116)) / np.float32(7.787)
    rgb = xyz @ _LINEAR_FROM_XYZN_T
    small = rgb <= 0.0031308
    linear_part = rgb[small] * np.float32(12.92 * 255)
    np.maximum(rgb, 0.0031308, out=rgb)
    np.power(rgb, np.float32(1 / 2.4), out=rgb)
    rgb *= np.float32(1.055 * 255)
    rgb -= np.float32(0.055 * 255)
    rgb[small] = linear_part
    return _to_uint8(rgb)


def _to_uint8(values: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Clip to [0, 255] and round to the nearest integer, in place."""
    np.clip(values, 0, 255, out=values)
    return np.rint(values, out=values).astype(np.uint8)


# -- validation ------------------------------------------------------------------
def _check_image(image: object, name: str = "image") -> NDArray[np.uint8]:
    """Return ``image`` as a uint8 ``(h, w, 3)`` array, else raise a message naming it."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 RGB, got dtype {array.dtype}")
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{name} must have shape (h, w, 3), got {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    return array


def _images(images: Images) -> list[NDArray[np.uint8]]:
    """One image, a ``(n, h, w, 3)`` stack or a sequence of images, as a checked list."""
    if isinstance(images, np.ndarray) and images.ndim != 4:
        return [_check_image(images)]
    items = list(images)
    if not items:
        raise ValueError("images must hold at least one image, got none")
    return [_check_image(item, f"images[{index}]") for index, item in enumerate(items)]


def _number(name: str, value: object, *, low: float = -math.inf, above: bool = False) -> float:
    """``value`` as a finite float >= ``low`` (> ``low`` if ``above``), else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < low or (above and number == low):
        bound = f"> {low:g}" if above else f">= {low:g}"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return number


def _numbers(name: str, values: object, size: int, **limits: Any) -> tuple[float, ...]:
    """``values`` as a tuple of ``size`` checked floats (see :func:`_number`)."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
        raise TypeError(f"{name} must be a sequence of {size} numbers, got {values!r}")
    if len(values) != size:
        raise ValueError(f"{name} must hold {size} numbers, got {len(values)}: {values!r}")
    return tuple(_number(f"{name}[{i}]", value, **limits) for i, value in enumerate(values))


def _to_dict(method: str, normalizer: object) -> dict[str, Any]:
    """``{"method": method, field: value, ...}`` with tuples as lists, as JSON has them."""
    data: dict[str, Any] = {"method": method}
    for field in fields(normalizer):  # type: ignore[arg-type]
        value = getattr(normalizer, field.name)
        data[field.name] = _lists(value) if isinstance(value, tuple) else value
    return data


def _lists(value: tuple[Any, ...]) -> list[Any]:
    """Nested tuples as nested lists."""
    return [_lists(item) if isinstance(item, tuple) else item for item in value]


# -- Reinhard --------------------------------------------------------------------
def _lab_sample(
    image: NDArray[np.uint8], tissue_only: bool
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """All the image's L*a*b* pixels, and those its statistics are computed from."""
    lab = _rgb_to_lab(image)
    return lab, lab[tissue_pixels(image).reshape(-1)] if tissue_only else lab


def _sums(sample: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-channel sums and sums of squares of ``(n, 3)`` values, in float64."""
    channels = sample.T.astype(np.float64)  # contiguous rows: fast, pairwise sums
    return channels.sum(axis=1), np.einsum("ij,ij->i", channels, channels)


def _mean_std(count: int, total: NDArray[np.float64], squares: NDArray[np.float64]) -> Any:
    """Means and (population) standard deviations from :func:`_sums`."""
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean * mean, 0.0))


@dataclass(frozen=True, slots=True)
class ReinhardNormalizer:
    """Reinhard colour transfer: match the L*a*b* channel means and spreads to a target's.

    Each pixel's channel ``x`` becomes ``(x - mean_src) / std_src * std_tgt +
    mean_tgt`` in CIE L*a*b* (D65), where the source statistics come from the
    image being transformed; a channel with no spread in the source maps to the
    target mean. Out-of-gamut results are clipped to sRGB.

    Parameters
    ----------
    means, stds : tuple of 3 float
        The target's L*, a*, b* means and standard deviations (stds >= 0).
    tissue_only : bool
        Compute the source statistics (and, in :meth:`fit`, the target's) from
        tissue pixels only, by the rule of :func:`~glomseg.io.tissue_pixels` (HSV
        saturation > 40 of 255), which ignores both white glass and black
        padding; every pixel is transformed. An image with fewer than
        :data:`MIN_STAIN_PIXELS` such pixels (bare glass) is returned unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> target = rng.integers(60, 200, (32, 32, 3), dtype=np.uint8)
    >>> normalizer = ReinhardNormalizer.fit(target)
    >>> [round(m, 1) for m in normalizer.means]
    [54.9, 3.0, 2.4]
    >>> source = (target * 0.8).astype(np.uint8)
    >>> out = normalizer.transform(source)
    >>> out.dtype, out.shape, bool(np.abs(out - target.astype(int)).mean() < 2)
    (dtype('uint8'), (32, 32, 3), True)
    >>> ReinhardNormalizer(means=(50, 0, 0), stds=(10, 5, -1))
    Traceback (most recent call last):
    ...
    ValueError: stds[2] must be finite and >= 0, got -1
    """

    means: tuple[float, float, float]
    stds: tuple[float, float, float]
    _: KW_ONLY
    tissue_only: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "means", _numbers("means", self.means, 3))
        object.__setattr__(self, "stds", _numbers("stds", self.stds, 3, low=0.0))
        if not isinstance(self.tissue_only, bool | np.bool_):
            raise TypeError(f"tissue_only must be a bool, got {self.tissue_only!r}")
        object.__setattr__(self, "tissue_only", bool(self.tissue_only))

    @classmethod
    def fit(cls, images: Images, *, tissue_only: bool = True) -> ReinhardNormalizer:
        """Target statistics of one image or pooled over the pixels of several.

        Raises
        ------
        TypeError, ValueError
            If an image is not uint8 ``(h, w, 3)``, or the images hold fewer than
            :data:`MIN_STAIN_PIXELS` (tissue) pixels in all.
        """
        count, total, squares = 0, np.zeros(3), np.zeros(3)
        for image in _images(images):
            sample = _lab_sample(image, tissue_only)[1]
            sums = _sums(sample)
            count, total, squares = count + len(sample), total + sums[0], squares + sums[1]
        if count < MIN_STAIN_PIXELS:
            kind = "tissue pixels (HSV saturation > 40)" if tissue_only else "pixels"
            raise ValueError(
                f"images show {count} {kind}, too few to fit a Reinhard normalizer "
                f"(need >= {MIN_STAIN_PIXELS}); are they blank glass?"
            )
        mean, std = _mean_std(count, total, squares)
        return cls(tuple(mean.tolist()), tuple(std.tolist()), tissue_only=tissue_only)

    def transform(self, image: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """Return ``image`` (uint8 ``(h, w, 3)``) recoloured to the target's statistics."""
        image = _check_image(image)
        lab, sample = _lab_sample(image, self.tissue_only)
        if len(sample) < MIN_STAIN_PIXELS:
            return image.copy()
        mean, std = _mean_std(len(sample), *_sums(sample))
        scale = np.divide(self.stds, std, out=np.zeros(3), where=std > 1e-6)
        offset = np.asarray(self.means) - mean * scale
        return _lab_to_rgb(lab, scale, offset).reshape(image.shape)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict, ``"method": "reinhard"``; see :func:`normalizer_from_dict`."""
        return _to_dict("reinhard", self)


# -- Macenko ---------------------------------------------------------------------
def _optical_density(
    image: NDArray[np.uint8], io: float, beta: float
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """``(h * w, 3)`` optical density ``-log((I + 1) / io)``, and where it is >= beta throughout."""
    table = (-np.log((np.arange(256) + 1.0) / io)).astype(np.float32)
    density: NDArray[np.float32] = table[image.reshape(-1, 3)]
    cutoff = np.count_nonzero(table >= beta)  # the table decreases: a prefix is >= beta
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    stained: NDArray[np.bool_] = np.maximum(np.maximum(r, g), b).reshape(-1) < cutoff
    return density, stained


def _macenko_estimate(
    density: NDArray[np.float32], stained_pixels: NDArray[np.bool_], alpha: float
) -> tuple[NDArray[np.float64], NDArray[np.float32]] | None:
    """Stain matrix (H row, E row) and the pixels' concentrations, or None if too few stained."""
    stained = density[stained_pixels]
    if len(stained) < MIN_STAIN_PIXELS:
        return None
    centred = stained.T.astype(np.float64)
    centred -= centred.mean(axis=1, keepdims=True)
    covariance = centred @ centred.T / (len(stained) - 1)
    plane = np.linalg.eigh(covariance)[1][:, 1:3]  # the two largest eigenvectors
    projected = stained @ plane.astype(np.float32)
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [alpha, 100 - alpha])
    v_low = plane @ np.array([math.cos(low), math.sin(low)])
    v_high = plane @ np.array([math.cos(high), math.sin(high)])
    # Hematoxylin absorbs more red: its vector has the larger first (red) component.
    stains = np.stack([v_low, v_high] if v_low[0] > v_high[0] else [v_high, v_low])
    if abs(float(stains[0] @ stains[1])) > 1 - 1e-6:
        return None
    concentrations = density @ np.linalg.pinv(stains).astype(np.float32)
    return stains, concentrations


def _check_macenko_options(io: float, alpha: float, beta: float) -> tuple[float, float, float]:
    """Check ``io``, ``alpha`` and ``beta`` and return them as floats."""
    alpha = _number("alpha", alpha, low=0.0)
    if alpha >= 50:
        raise ValueError(f"alpha must be < 50 (a percentile from each end), got {alpha!r}")
    return _number("io", io, low=0.0, above=True), alpha, _number("beta", beta, low=0.0)


@dataclass(frozen=True, slots=True)
class MacenkoNormalizer:
    """Macenko stain normalisation: unmix two stains, rescale, remix with the target's stains.

    The optical density of a pixel is ``OD = -log((I + 1) / io)``. Pixels with
    ``OD < beta`` in any channel (glass) are dropped; the rest are projected on
    the plane of the two largest eigenvectors of their covariance, and the stain
    vectors are the directions at the ``alpha`` and ``100 - alpha`` percentiles
    of their angle there; the one with the larger red OD is hematoxylin, listed
    first. Concentrations are solved by least squares for every pixel, and their
    99th percentiles are the maximum concentrations. :meth:`transform` scales the
    source's concentrations to the target's maxima and reconstructs
    ``io * exp(-C @ stain_matrix) - 1`` (the exact inverse of the OD above; the
    common implementations omit the ``- 1``), rounded to uint8. This follows
    Macenko et al. 2009 and its usual numpy port (``torchstain``, ``HEnorm_python``).

    Parameters
    ----------
    stain_matrix : tuple of 2 tuples of 3 float
        Unit OD vectors of hematoxylin (first row) and eosin or PAS (second), RGB order.
    max_concentrations : tuple of 2 float
        The target's 99th-percentile concentrations of the two stains, > 0.
    io : float
        Transmitted light intensity (the brightness of glass), > 0; default 240.
    alpha : float
        Percentile, in [0, 50), of the robust angle extremes; default 1.
    beta : float
        OD threshold below which a pixel counts as glass, >= 0; default 0.15.

    Notes
    -----
    :meth:`transform` returns an image with fewer than :data:`MIN_STAIN_PIXELS`
    stained pixels (an all-glass tile) unchanged, so prediction over a whole
    slide never fails on background; :meth:`fit` raises instead.

    Examples
    --------
    >>> import numpy as np
    >>> reference = MacenkoNormalizer.reference()
    >>> reference.max_concentrations
    (1.9705, 1.0308)
    >>> rng = np.random.default_rng(0)
    >>> density = rng.uniform(0, 1.5, (64 * 64, 2)) @ np.array(reference.stain_matrix)
    >>> image = np.rint(240 * np.exp(-density) - 1).clip(0, 255).astype(np.uint8)
    >>> image = image.reshape(64, 64, 3)
    >>> fitted = MacenkoNormalizer.fit(image)
    >>> np.round(fitted.stain_matrix, 2)
    array([[0.56, 0.72, 0.41],
           [0.23, 0.8 , 0.56]])
    >>> out = fitted.transform(image)
    >>> bool(np.abs(out - image.astype(int)).max() <= 2)
    True
    >>> blank = np.full((64, 64, 3), 245, dtype=np.uint8)
    >>> bool((fitted.transform(blank) == blank).all())
    True
    """

    stain_matrix: tuple[tuple[float, float, float], tuple[float, float, float]]
    max_concentrations: tuple[float, float]
    _: KW_ONLY
    io: float = 240.0
    alpha: float = 1.0
    beta: float = 0.15

    def __post_init__(self) -> None:
        matrix = self.stain_matrix
        if isinstance(matrix, str) or not isinstance(matrix, Sequence | np.ndarray):
            raise TypeError(f"stain_matrix must be 2 rows of 3 numbers, got {matrix!r}")
        if len(matrix) != 2:
            raise ValueError(f"stain_matrix must have 2 rows (H, E), got {len(matrix)}")
        rows = tuple(_numbers(f"stain_matrix[{i}]", row, 3) for i, row in enumerate(matrix))
        norms = [math.hypot(*row) for row in rows]
        if any(abs(norm - 1) > 1e-3 for norm in norms):
            raise ValueError(f"stain_matrix rows must be unit vectors, got norms {norms}")
        if abs(sum(h * e for h, e in zip(*rows, strict=True))) > 1 - 1e-6:
            raise ValueError(f"stain_matrix rows must not be parallel, got {rows}")
        object.__setattr__(self, "stain_matrix", rows)
        maxima = _numbers("max_concentrations", self.max_concentrations, 2, low=0.0, above=True)
        object.__setattr__(self, "max_concentrations", maxima)
        io, alpha, beta = _check_macenko_options(self.io, self.alpha, self.beta)
        object.__setattr__(self, "io", io)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "beta", beta)

    @classmethod
    def reference(cls) -> MacenkoNormalizer:
        """The H&E target most Macenko implementations ship as their default."""
        return cls(((0.5626, 0.7201, 0.4062), (0.2159, 0.8012, 0.5581)), (1.9705, 1.0308))

    @classmethod
    def fit(
        cls, images: Images, *, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15
    ) -> MacenkoNormalizer:
        """Target stain matrix and maximum concentrations of one image or of several, pooled.

        Raises
        ------
        TypeError, ValueError
            If an image is not uint8 ``(h, w, 3)``, an option is out of range, or
            the images hold fewer than :data:`MIN_STAIN_PIXELS` stained pixels.
        """
        io, alpha, beta = _check_macenko_options(io, alpha, beta)
        parts = [_optical_density(image, io, beta) for image in _images(images)]
        density = np.concatenate([part[0] for part in parts])
        stained_pixels = np.concatenate([part[1] for part in parts])
        estimate = _macenko_estimate(density, stained_pixels, alpha)
        if estimate is None:
            stained = np.count_nonzero(stained_pixels)
            raise ValueError(
                f"images show {stained} stained pixels (optical density >= beta={beta:g} in "
                f"every channel), too few or too uniform to fit a Macenko normalizer "
                f"(need >= {MIN_STAIN_PIXELS}); are they blank glass?"
            )
        stains, concentrations = estimate
        maxima = np.percentile(concentrations, 99, axis=0)
        if not (maxima > 0).all():
            raise ValueError(f"images give non-positive maximum concentrations {maxima.tolist()}")
        h, e = (stains / np.linalg.norm(stains, axis=1, keepdims=True)).tolist()
        high_h, high_e = maxima.tolist()
        matrix = ((h[0], h[1], h[2]), (e[0], e[1], e[2]))
        return cls(matrix, (high_h, high_e), io=io, alpha=alpha, beta=beta)

    def transform(self, image: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """Return ``image`` (uint8 ``(h, w, 3)``) restained with the target's stains.

        An image with too few stained pixels to estimate its stains is returned
        unchanged (a copy).
        """
        image = _check_image(image)
        estimate = _macenko_estimate(*_optical_density(image, self.io, self.beta), self.alpha)
        if estimate is None:
            return image.copy()
        concentrations = estimate[1]
        maxima = np.percentile(concentrations, 99, axis=0)
        if not (maxima > 0).all():
            return image.copy()
        concentrations *= (np.asarray(self.max_concentrations) / maxima).astype(np.float32)
        density = concentrations @ np.asarray(self.stain_matrix, dtype=np.float32)
        restained = np.exp(np.negative(density, out=density), out=density)
        restained *= np.float32(self.io)
        restained -= np.float32(1)
        return _to_uint8(restained).reshape(image.shape)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict, ``"method": "macenko"``; see :func:`normalizer_from_dict`."""
        return _to_dict("macenko", self)


StainNormalizer: TypeAlias = ReinhardNormalizer | MacenkoNormalizer
_CLASSES: dict[str, type[StainNormalizer]] = {
    "reinhard": ReinhardNormalizer,
    "macenko": MacenkoNormalizer,
}


def normalizer_from_dict(data: Mapping[str, Any]) -> StainNormalizer:
    """Rebuild a normalizer from its :meth:`~ReinhardNormalizer.to_dict` form.

    Raises
    ------
    ValueError
        If ``"method"`` is unknown (with a "did you mean") or keys are missing or unknown.

    Examples
    --------
    >>> normalizer = MacenkoNormalizer.reference()
    >>> normalizer_from_dict(normalizer.to_dict()) == normalizer
    True
    >>> normalizer_from_dict({"method": "macenco"})
    Traceback (most recent call last):
    ...
    ValueError: method must be one of 'macenko', 'reinhard', got 'macenco'; did you mean 'macenko'?
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a mapping, got {type(data).__name__}")
    cls = _CLASSES[look_up_option("method", data.get("method"), _CLASSES)]
    options = {key: value for key, value in data.items() if key != "method"}
    names = {field.name for field in fields(cls)}
    required = {field.name for field in fields(cls) if field.kw_only is False}
    if missing := sorted(required - options.keys()):
        raise ValueError(f"{cls.__name__} data is missing {missing}")
    if unknown := sorted(options.keys() - names):
        raise ValueError(f"{cls.__name__} data has unknown keys {unknown}")
    return cls(**options)


def fit_stain_normalizer(method: StainMethod, images: Images, **options: Any) -> StainNormalizer:
    """Fit a normalizer by name: ``"reinhard"`` or ``"macenko"``; ``options`` go to its ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.random.default_rng(0).integers(60, 200, (16, 16, 3), dtype=np.uint8)
    >>> type(fit_stain_normalizer("reinhard", [image], tissue_only=False)).__name__
    'ReinhardNormalizer'
    """
    method = look_up_option("method", method, _CLASSES)  # type: ignore[assignment]
    return _CLASSES[method].fit(images, **options)
