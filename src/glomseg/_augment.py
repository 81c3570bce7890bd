"""Seeded training augmentation in TensorFlow: geometry, stain, colour, blur and noise.

:class:`Augmentation` says how strong each transform is (0 or False turns it
off); :func:`augment_crop` applies them to one training crop inside a ``tf.data``
pipeline, drawing every random number from a stateless seed, so the same seed
always gives the same crop.

**Geometry** is one resampling (bilinear, reflecting at the border) of image and
mask together: a flip and a quarter turn (the 8 symmetries of the square), a
small rotation and a random scale, about the crop's centre. The mask is resampled
like the image and thresholded at 0.5, so it stays aligned with the image pixel
for pixel; without rotation and scale the transform moves whole pixels and
changes no value. The source region must be larger than the crop to rotate and
zoom out without reflecting (:meth:`Augmentation.region_size`).

**Stain** jitter works in haematoxylin-eosin-DAB space (Ruifrok and Johnston's
colour deconvolution, ``skimage.color.hed_from_rgb``), as Tellez et al. (2018)
proposed for histology: each stain's optical density is scaled by a factor in
``[1 - hed, 1 + hed]`` and shifted by up to ``hed`` (in units of natural-log
optical density). **Colour** jitter then changes hue, saturation, brightness,
contrast and gamma; finally a gaussian **blur** and gaussian **noise**. Masks are
never touched by anything but geometry.

TensorFlow is imported when :func:`augment_crop` runs, never at import.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Augmentation", "augment_crop"]

_OD_FLOOR = 1e-6  # smallest intensity before taking the log, as skimage's rgb2hed does


@dataclass(frozen=True)
class Augmentation:
    """How strongly training crops are augmented; 0 (or False) turns a transform off.

    Parameters
    ----------
    flips : bool
        Random flips and quarter turns (the 8 symmetries of a square).
    rotation : float
        Largest extra rotation, in degrees, in ``[0, 45]``.
    scale : float
        Random zoom: the crop covers ``1 + u`` times the source's side, ``u``
        uniform in ``[-scale, scale]``; in ``[0, 0.5]``.
    hed : float
        Stain jitter strength in ``[0, 1]``: each of the haematoxylin, eosin
        and DAB densities is multiplied by a factor in ``[1 - hed, 1 + hed]`` and
        shifted by up to ``hed``.
    hue : float
        Largest hue shift, a fraction of the colour wheel, in ``[0, 0.5]``.
    saturation, brightness, contrast : float
        Largest relative change of saturation and contrast (factors in
        ``[1 - x, 1 + x]``), and largest brightness shift (``[0, 1]`` scale), each
        in ``[0, 1]``.
    gamma : float
        Gamma is ``exp(u)``, ``u`` uniform in ``[-gamma, gamma]``; in ``[0, 1]``.
    blur : float
        Largest gaussian blur sigma in pixels (sigma uniform in ``[0, blur]``),
        in ``[0, 3]``.
    noise : float
        Largest standard deviation of additive gaussian noise (``[0, 1]``
        scale), in ``[0, 0.2]``.

    Examples
    --------
    >>> Augmentation().region_size(256)  # the source crop that rotation and zoom need
    394
    >>> Augmentation.none().region_size(256)
    256
    >>> Augmentation(rotation=90)
    Traceback (most recent call last):
    ...
    ValueError: rotation must be in [0, 45], got 90
    """

    flips: bool = True
    rotation: float = 15.0
    scale: float = 0.25
    hed: float = 0.05
    hue: float = 0.03
    saturation: float = 0.2
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2
    blur: float = 1.0
    noise: float = 0.02

    _LIMITS = {  # noqa: RUF012 - a class constant, not a field
        "rotation": 45.0,
        "scale": 0.5,
        "hed": 1.0,
        "hue": 0.5,
        "saturation": 1.0,
        "brightness": 1.0,
        "contrast": 1.0,
        "gamma": 1.0,
        "blur": 3.0,
        "noise": 0.2,
    }

    def __post_init__(self) -> None:
        if not isinstance(self.flips, bool):
            raise TypeError(f"flips must be a bool, got {self.flips!r}")
        for name, top in self._LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not 0 <= value <= top:
                raise ValueError(f"{name} must be in [0, {top:g}], got {value!r}")
            object.__setattr__(self, name, float(value))

    @classmethod
    def none(cls) -> Augmentation:
        """No augmentation at all: crops pass unchanged."""
        return cls(flips=False, **dict.fromkeys(cls._LIMITS, 0.0))

    @classmethod
    def geometric(cls) -> Augmentation:
        """Flips, quarter turns, rotation and scale only; colours untouched."""
        defaults = cls()
        off = dict.fromkeys(cls._LIMITS, 0.0)
        off.update(rotation=defaults.rotation, scale=defaults.scale)
        return cls(flips=True, **off)

    def replace(self, **changes: Any) -> Augmentation:
        """A copy with some strengths changed."""
        return dataclasses.replace(self, **changes)

    def region_size(self, crop_size: int) -> int:
        """Side of the source region a ``crop_size`` crop needs: room to rotate and zoom out."""
        angle = math.radians(self.rotation)
        span = (1.0 + self.scale) * (abs(math.cos(angle)) + abs(math.sin(angle)))
        side = crop_size if span <= 1.0 else math.ceil(crop_size * span) + 2
        return side + side % 2  # even, like the crop, so quarter turns keep pixel centres


def _hed_matrices() -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    from skimage.color import hed_from_rgb, rgb_from_hed

    return hed_from_rgb.astype(np.float32), rgb_from_hed.astype(np.float32)


def _geometry(tf: Any, region: Any, crop_size: int, aug: Augmentation, seeds: Any) -> Any:
    """Rotate, flip and zoom ``region`` ``(R, R, C)`` about its centre into a crop."""
    side = tf.cast(tf.shape(region)[0], tf.float32)
    quarter = tf.constant(0, tf.int32)
    flip = tf.constant(1.0)
    if aug.flips:
        quarter = tf.random.stateless_uniform([], seeds[0], 0, 4, dtype=tf.int32)
        flip = tf.where(tf.random.stateless_uniform([], seeds[1]) < 0.5, -1.0, 1.0)
    angle = tf.random.stateless_uniform(
        [], seeds[2], -math.radians(aug.rotation), math.radians(aug.rotation)
    )
    zoom = tf.random.stateless_uniform([], seeds[3], 1.0 - aug.scale, 1.0 + aug.scale)
    # The quarter turn as an exact integer matrix, so pure symmetries move whole pixels.
    cos_q = tf.gather(tf.constant([1.0, 0.0, -1.0, 0.0]), quarter)
    sin_q = tf.gather(tf.constant([0.0, 1.0, 0.0, -1.0]), quarter)
    if aug.rotation:
        cos_a, sin_a = tf.cos(angle), tf.sin(angle)
        cos_t, sin_t = cos_q * cos_a - sin_q * sin_a, sin_q * cos_a + cos_q * sin_a
    else:
        cos_t, sin_t = cos_q, sin_q
    if not aug.scale:
        zoom = tf.constant(1.0)
    # Output (x, y) -> input centre + zoom * R(theta) * diag(flip, 1) * (output - centre).
    a0, a1 = zoom * cos_t * flip, -zoom * sin_t
    b0, b1 = zoom * sin_t * flip, zoom * cos_t
    c_out = (crop_size - 1) / 2.0
    c_in = (side - 1.0) / 2.0
    transform = tf.stack(
        [
            a0,
            a1,
            c_in - a0 * c_out - a1 * c_out,
            b0,
            b1,
            c_in - b0 * c_out - b1 * c_out,
            0.0,
            0.0,
        ]
    )
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=region[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.constant([crop_size, crop_size], tf.int32),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    return out[0]


def _stain(tf: Any, image: Any, strength: float, seed: Any) -> Any:
    """Scale and shift each stain's optical density in HED space."""
    hed_from_rgb, rgb_from_hed = _hed_matrices()
    split = tf.random.experimental.stateless_split(seed, num=2)
    alpha = tf.random.stateless_uniform([3], split[0], 1.0 - strength, 1.0 + strength)
    beta = tf.random.stateless_uniform([3], split[1], -strength, strength)
    density = -tf.math.log(tf.maximum(image, _OD_FLOOR))
    stains = tf.linalg.matmul(tf.reshape(density, (-1, 3)), hed_from_rgb)
    stains = stains * alpha + beta
    rgb = tf.exp(-tf.linalg.matmul(stains, rgb_from_hed))
    return tf.reshape(rgb, tf.shape(image))


def _gaussian_blur(tf: Any, image: Any, sigma: Any) -> Any:
    radius = 4
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(x / tf.maximum(sigma, 1e-3)))
    kernel = kernel / tf.reduce_sum(kernel)
    rows = tf.tile(tf.reshape(kernel, (-1, 1, 1, 1)), (1, 1, 3, 1))
    cols = tf.tile(tf.reshape(kernel, (1, -1, 1, 1)), (1, 1, 3, 1))
    padded = tf.pad(
        image[tf.newaxis], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT"
    )
    out = tf.nn.depthwise_conv2d(padded, rows, (1, 1, 1, 1), "VALID")
    out = tf.nn.depthwise_conv2d(out, cols, (1, 1, 1, 1), "VALID")
    return out[0]


def _colour(tf: Any, image: Any, aug: Augmentation, seeds: Any) -> Any:
    """Stain, HSV, brightness, contrast, gamma, blur and noise on a ``[0, 1]`` image."""
    if aug.hed:
        image = tf.clip_by_value(_stain(tf, image, aug.hed, seeds[0]), 0.0, 1.0)
    if aug.hue:
        image = tf.image.stateless_random_hue(image, aug.hue, seeds[1])
    if aug.saturation:
        image = tf.image.stateless_random_saturation(
            image, 1.0 - aug.saturation, 1.0 + aug.saturation, seeds[2]
        )
    if aug.brightness:
        image = tf.image.stateless_random_brightness(image, aug.brightness, seeds[3])
    if aug.contrast:
        image = tf.image.stateless_random_contrast(
            image, 1.0 - aug.contrast, 1.0 + aug.contrast, seeds[4]
        )
    image = tf.clip_by_value(image, 0.0, 1.0)
    if aug.gamma:
        log_gamma = tf.random.stateless_uniform([], seeds[5], -aug.gamma, aug.gamma)
        image = tf.pow(image, tf.exp(log_gamma))
    if aug.blur:
        sigma = tf.random.stateless_uniform([], seeds[6], 0.0, aug.blur)
        image = _gaussian_blur(tf, image, sigma)
    if aug.noise:
        split = tf.random.experimental.stateless_split(seeds[7], num=2)
        std = tf.random.stateless_uniform([], split[0], 0.0, aug.noise)
        image = image + std * tf.random.stateless_normal(tf.shape(image), split[1])
    return tf.clip_by_value(image, 0.0, 1.0)


def augment_crop(
    tf: Any, image: Any, mask: Any, seed: Any, *, crop_size: int, augmentation: Augmentation
) -> tuple[Any, Any]:
    """Augment one training region into a crop, inside a ``tf.data`` map.

    Parameters
    ----------
    tf : module
        TensorFlow.
    image : tf.Tensor
        ``uint8`` ``(R, R, 3)``: the source region, at least
        ``augmentation.region_size(crop_size)`` a side, centred on the crop.
    mask : tf.Tensor
        ``uint8`` ``(R, R, 1)`` of 0/1.
    seed : tf.Tensor
        Stateless seed, ``int64`` shape ``(2,)``: the same seed gives the same crop.
    crop_size : int
        Side of the output crop.
    augmentation : Augmentation
        The transforms and their strengths.

    Returns
    -------
    (image, mask) : two tf.Tensor
        ``float32`` ``(crop_size, crop_size, 3)`` in ``[0, 1]`` and ``float32``
        ``(crop_size, crop_size, 1)`` of 0/1.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=12)
    stacked = tf.concat([tf.cast(image, tf.float32) / 255.0, tf.cast(mask, tf.float32)], -1)
    crop = _geometry(tf, stacked, crop_size, augmentation, seeds[:4])
    image_out, mask_out = crop[..., :3], tf.cast(crop[..., 3:] > 0.5, tf.float32)
    image_out = _colour(tf, tf.clip_by_value(image_out, 0.0, 1.0), augmentation, seeds[4:])
    image_out = tf.ensure_shape(image_out, (crop_size, crop_size, 3))
    mask_out = tf.ensure_shape(mask_out, (crop_size, crop_size, 1))
    return image_out, mask_out
