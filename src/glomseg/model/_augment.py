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

**Stain transfer** re-colours a crop, with probability ``stain_transfer``, as if
another lab had stained it: the crop's optical density is unmixed into its two
stains (the training images' stain vectors, ``source_stain``, fitted with
:class:`glomseg.model.MacenkoNormalizer`) and a residual, and remixed with the stain
vectors of a target drawn from :data:`STAIN_BANK` (PAS, H&E, trichrome and silver
stains of the colour-deconvolution literature), each vector tilted by up to
``stain_tilt`` and each stain's amount scaled by a factor between
``1 / stain_amount`` and ``sqrt(stain_amount)`` (mostly paler, as most slides are
paler than the HuBMAP training slide), as the cross-lab
recipes of the HuBMAP competitions re-coloured their training images (Vahadane
et al. 2016). **Stain jitter** then works in haematoxylin-eosin-DAB space (Ruifrok
and Johnston's colour deconvolution, ``skimage.color.hed_from_rgb``), as Tellez et
al. (2018) proposed for histology: each stain's optical density is scaled by a
factor in ``[1 - hed, 1 + hed]`` and shifted by up to ``hed`` (in units of
natural-log optical density). **Colour** jitter then changes hue, saturation,
brightness, contrast and gamma; a crop turns **greyscale** with probability
``greyscale``; finally a gaussian **blur**, **JPEG** re-compression (with
probability ``jpeg``, quality 30-95) and gaussian **noise**. Masks are never
touched by anything but geometry.

TensorFlow is imported when :func:`augment_crop` runs, never at import.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["STAIN_BANK", "Augmentation", "StainMatrix", "augment_crop"]

_OD_FLOOR = 1e-6  # smallest intensity before taking the log, as skimage's rgb2hed does
_TRANSFER_FLOOR = 1 / 255  # the darkest intensity stain transfer reads, as uint8 holds it

#: Two unit optical-density vectors (RGB): the nuclear stain first, then the counterstain.
StainMatrix = tuple[tuple[float, float, float], tuple[float, float, float]]

#: Target stains of stain transfer, from G. Landini's colour-deconvolution vectors
#: (ImageJ "Colour Deconvolution", after Ruifrok and Johnston 2001) and the HuBMAP
#: training slide's own PAS; silver (Jones) is a grey-black density over a pink
#: counterstain. Rows are normalised to unit length where they are used.
STAIN_BANK: dict[str, StainMatrix] = {
    "pas-hubmap": ((0.5914, 0.7289, 0.3449), (0.2940, 0.9253, 0.2395)),
    "h-pas": ((0.644211, 0.716556, 0.266844), (0.175411, 0.972178, 0.154589)),
    "h-e": ((0.644211, 0.716556, 0.266844), (0.092789, 0.954111, 0.283111)),
    "masson-trichrome": ((0.7995107, 0.5913521, 0.10528667), (0.09997159, 0.73738605, 0.6680326)),
    "silver-jones": ((0.59, 0.60, 0.54), (0.10, 0.85, 0.52)),
    "alcian-blue-h": ((0.874622, 0.457711, 0.158256), (0.552556, 0.7544, 0.353744)),
}


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
    stain_transfer : float
        Probability, in ``[0, 1]``, that a crop is re-stained to a target of
        :data:`STAIN_BANK`; 0 turns stain transfer off.
    stain_tilt : float
        Largest change of each component of a target stain vector before it is
        normalised again, in ``[0, 0.5]``.
    stain_amount : float
        Each stain's amount is multiplied by ``exp(u)``, ``u`` uniform in
        ``[-log(stain_amount), log(stain_amount) / 2]``; in ``[1, 4]``.
    source_stain : pair of 3-vectors, optional
        The training images' stain vectors (nuclear stain first) that stain
        transfer unmixes with; None lets :meth:`glomseg.TrainingRecipe.fit` fit them
        on its training images (:class:`glomseg.model.MacenkoNormalizer`). Needed
        when ``stain_transfer > 0``.
    greyscale : float
        Probability, in ``[0, 1]``, that a crop is turned to grey.
    jpeg : float
        Probability, in ``[0, 1]``, that a crop is JPEG re-compressed at a random
        quality in ``[30, 95]``.

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
    >>> Augmentation.cross_lab().stain_transfer
    0.8
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
    stain_transfer: float = 0.0
    stain_tilt: float = 0.0
    stain_amount: float = 1.0
    source_stain: StainMatrix | None = None
    greyscale: float = 0.0
    jpeg: float = 0.0

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
        "stain_transfer": 1.0,
        "stain_tilt": 0.5,
        "greyscale": 1.0,
        "jpeg": 1.0,
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
        amount = self.stain_amount
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise TypeError(f"stain_amount must be a number, got {amount!r}")
        if not 1 <= amount <= 4:
            raise ValueError(f"stain_amount must be in [1, 4], got {amount!r}")
        object.__setattr__(self, "stain_amount", float(amount))
        if self.source_stain is not None:
            object.__setattr__(self, "source_stain", _unit_rows("source_stain", self.source_stain))

    @classmethod
    def none(cls) -> Augmentation:
        """No augmentation at all: crops pass unchanged."""
        off: dict[str, Any] = dict.fromkeys(cls._LIMITS, 0.0)
        return cls(flips=False, **off)

    @classmethod
    def cross_lab(cls, source_stain: StainMatrix | None = None) -> Augmentation:
        """Wide stain, colour and quality augmentation for a model meant for other labs' slides.

        Four crops in five are re-stained to a target of :data:`STAIN_BANK`
        (vectors tilted by up to 0.15, amounts from a third to 1.7 times); wider
        HED, hue, saturation, brightness, contrast and gamma jitter; one crop in
        ten grey, one in four JPEG re-compressed; blur up to sigma 1.5; zoom +-25 %.
        """
        return cls(
            hed=0.2,
            hue=0.08,
            saturation=0.4,
            brightness=0.15,
            contrast=0.3,
            gamma=0.3,
            blur=1.5,
            noise=0.03,
            stain_transfer=0.8,
            stain_tilt=0.15,
            stain_amount=3.0,
            source_stain=source_stain,
            greyscale=0.1,
            jpeg=0.25,
        )

    @classmethod
    def geometric(cls) -> Augmentation:
        """Flips, quarter turns, rotation and scale only; colours untouched."""
        defaults = cls()
        off: dict[str, Any] = dict.fromkeys(cls._LIMITS, 0.0)
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


def _unit_rows(name: str, matrix: object) -> StainMatrix:
    """``matrix`` as two unit 3-vectors that are not parallel, else raise naming it."""
    array = np.asarray(matrix, dtype=np.float64)
    if array.shape != (2, 3) or not np.isfinite(array).all():
        raise ValueError(f"{name} must be 2 rows of 3 finite numbers, got {matrix!r}")
    norms = np.linalg.norm(array, axis=1)
    if (norms < 1e-6).any() or (array < 0).any():
        raise ValueError(
            f"{name} rows must be non-zero, non-negative optical densities, got {matrix!r}"
        )
    rescale = np.abs(norms - 1) > 1e-9  # unit rows stay bit for bit, so a round trip is exact
    array[rescale] /= norms[rescale, None]
    if abs(float(array[0] @ array[1])) > 1 - 1e-4:
        raise ValueError(f"{name} rows must not be parallel, got {matrix!r}")
    (a, b, c), (d, e, f) = array.tolist()
    return ((a, b, c), (d, e, f))


def _bank() -> NDArray[np.float32]:
    """:data:`STAIN_BANK` as a ``(k, 2, 3)`` array of unit rows."""
    return np.array(
        [_unit_rows(name, matrix) for name, matrix in STAIN_BANK.items()], dtype=np.float32
    )


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
    c_in = c_out + (side - crop_size) // 2  # a whole-pixel offset, even where side - crop is odd
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


def _transfer(tf: Any, image: Any, aug: Augmentation, seed: Any) -> Any:
    """Unmix ``image`` with the source stains and remix it with a random target of the bank.

    The optical density is split exactly into the two source stains and a residual
    (along their cross product), so a target equal to the source with amounts 1
    gives the image back.
    """
    assert aug.source_stain is not None
    source = np.array(aug.source_stain, dtype=np.float64)
    basis = np.vstack([source, np.cross(source[0], source[1])])
    basis[2] /= np.linalg.norm(basis[2])
    unmix = np.linalg.inv(basis).astype(np.float32)
    bank = _bank()
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    which = tf.random.stateless_uniform([], seeds[0], 0, len(bank), dtype=tf.int32)
    target = tf.gather(tf.constant(bank), which)
    tilt = tf.random.stateless_uniform([2, 3], seeds[1], -aug.stain_tilt, aug.stain_tilt)
    target = tf.maximum(target + tilt, 1e-3)
    target = target / tf.norm(target, axis=1, keepdims=True)
    spread = math.log(aug.stain_amount)
    amounts = tf.exp(tf.random.stateless_uniform([2, 1], seeds[2], -spread, spread / 2))
    residual = tf.constant(basis[2:3].astype(np.float32))
    remix = tf.concat([target * amounts, residual], 0)
    density = -tf.math.log(tf.maximum(image, _TRANSFER_FLOOR))
    amounts_px = tf.linalg.matmul(tf.reshape(density, (-1, 3)), unmix)
    rgb = tf.exp(-tf.linalg.matmul(amounts_px, remix))
    out = tf.reshape(rgb, tf.shape(image))
    apply = tf.random.stateless_uniform([], seeds[3]) < aug.stain_transfer
    return tf.where(apply, tf.clip_by_value(out, 0.0, 1.0), image)


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
    """Stain, HSV, brightness, contrast, gamma, grey, blur, JPEG and noise on a ``[0, 1]`` image."""
    if aug.stain_transfer:
        if aug.source_stain is None:
            raise ValueError(
                "stain_transfer needs source_stain: the training images' stain vectors "
                "(TrainingRecipe.fit fits them; or MacenkoNormalizer.fit(images).stain_matrix)"
            )
        image = _transfer(tf, image, aug, seeds[8])
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
    if aug.greyscale:
        grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
        turn = tf.random.stateless_uniform([], seeds[9]) < aug.greyscale
        image = tf.where(turn, grey, image)
    if aug.blur:
        sigma = tf.random.stateless_uniform([], seeds[6], 0.0, aug.blur)
        image = _gaussian_blur(tf, image, sigma)
    if aug.jpeg:
        split = tf.random.experimental.stateless_split(seeds[10], num=2)
        compressed = tf.image.stateless_random_jpeg_quality(image, 30, 95, split[0])
        squeeze = tf.random.stateless_uniform([], split[1]) < aug.jpeg
        image = tf.where(squeeze, tf.reshape(compressed, tf.shape(image)), image)
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
    seed = tf.cast(seed, tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, num=12)
    # The cross-lab transforms draw from their own stream, so the others stay as they were.
    extra = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, 7919), num=3
    )
    seeds = tf.concat([seeds, tf.cast(extra, seeds.dtype)], 0)
    stacked = tf.concat([tf.cast(image, tf.float32) / 255.0, tf.cast(mask, tf.float32)], -1)
    crop = _geometry(tf, stacked, crop_size, augmentation, seeds[:4])
    image_out, mask_out = crop[..., :3], tf.cast(crop[..., 3:] > 0.5, tf.float32)
    image_out = _colour(tf, tf.clip_by_value(image_out, 0.0, 1.0), augmentation, seeds[4:])
    image_out = tf.ensure_shape(image_out, (crop_size, crop_size, 3))
    mask_out = tf.ensure_shape(mask_out, (crop_size, crop_size, 1))
    return image_out, mask_out
