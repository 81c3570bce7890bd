"""Training crops drawn anew at every step: :class:`CropSampler` and :func:`make_crop_dataset`.

A fixed grid of tiles shows the model the same few hundred images every epoch, and
most of them hold no glomerulus. A :class:`CropSampler` instead holds whole
training images (slides read at the training resolution, or large exported
tiles) and their masks in memory, and draws crop ``i`` of a run from the seed and
``i`` alone:

- with probability ``glomerulus_fraction`` the crop is centred on a glomerulus
  pixel drawn uniformly from all glomerulus pixels of all images (so large
  glomeruli and glomerulus-rich images are seen in proportion to their area; an
  image with more than 200 000 is drawn in proportion to all of them and centred
  on one of a uniform subsample of 200 000);
- otherwise on a tissue pixel (HSV saturation above ``saturation_threshold``, the
  rule of :func:`glomseg.io.tissue_pixels`), so background crops show tissue, not
  glass.

The crop's source region is clamped into its image where the image is large
enough, and padded with white glass (mask 0) where it is not.
:func:`make_crop_dataset` turns the draws into an endless ``tf.data`` pipeline
with :func:`glomseg.model._augment.augment_crop` on top: step ``k`` of a run always sees
the same batch, whatever the machine's speed.

Sampling is numpy; TensorFlow is imported only by :func:`make_crop_dataset`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from glomseg.errors import DatasetError
from glomseg.io._tissue import tissue_pixels
from glomseg.model._augment import Augmentation, augment_crop

__all__ = ["CropSampler", "load_training_images", "make_crop_dataset"]

logger = logging.getLogger(__name__)

#: At most this many candidate centres are kept per image and kind (a uniform subsample).
_MAX_CENTRES = 200_000


class CropSampler:
    """Draw training regions centred on glomeruli or on tissue, deterministically by index.

    Parameters
    ----------
    images : sequence of ndarray
        ``uint8`` RGB images ``(H, W, 3)`` at the training resolution.
    masks : sequence of ndarray
        Their glomerulus masks, ``bool`` (or 0/1) ``(H, W)``.
    region_size : int
        Side of the square regions drawn, > 0 (for augmentation, larger than
        the crop: see :meth:`glomseg.Augmentation.region_size`).
    glomerulus_fraction : float
        Share of regions centred on a glomerulus pixel, in ``[0, 1]``; the rest
        are centred on tissue.
    seed : int
        The run's seed: region ``i`` depends on ``(seed, i)`` only.
    saturation_threshold : int
        The tissue rule of :func:`glomseg.io.tissue_pixels`, 0-255.

    Raises
    ------
    DatasetError
        If there are no images, shapes disagree, or no image has a glomerulus
        while ``glomerulus_fraction > 0``.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.full((100, 120, 3), 255, np.uint8)
    >>> image[20:80, 30:90] = (180, 60, 150)  # tissue
    >>> mask = np.zeros((100, 120), bool)
    >>> mask[40:50, 50:60] = True  # a glomerulus
    >>> sampler = CropSampler([image], [mask], region_size=32, glomerulus_fraction=1.0)
    >>> region, region_mask = sampler.sample(0)
    >>> region.shape, region_mask.shape, bool(region_mask[16, 16])  # centred on the glomerulus
    ((32, 32, 3), (32, 32, 1), True)
    >>> np.array_equal(sampler.sample(7)[0], sampler.sample(7)[0])  # same index, same region
    True
    """

    def __init__(
        self,
        images: Sequence[NDArray[np.uint8]],
        masks: Sequence[NDArray[Any]],
        *,
        region_size: int,
        glomerulus_fraction: float = 0.5,
        seed: int = 0,
        saturation_threshold: int = 40,
    ) -> None:
        if isinstance(region_size, bool) or not isinstance(region_size, int) or region_size <= 0:
            raise ValueError(f"region_size must be > 0, got {region_size!r}")
        fraction = glomerulus_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise TypeError(f"glomerulus_fraction must be a number, got {fraction!r}")
        if not 0 <= fraction <= 1:
            raise ValueError(f"glomerulus_fraction must be in [0, 1], got {fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if len(images) != len(masks):
            raise DatasetError(f"got {len(images)} images but {len(masks)} masks")
        if not images:
            raise DatasetError("a CropSampler needs at least one image")
        self.region_size = region_size
        self.glomerulus_fraction = float(fraction)
        self.seed = seed
        self.images: list[NDArray[np.uint8]] = []
        self.masks: list[NDArray[np.uint8]] = []
        glom: list[tuple[NDArray[np.int64], int]] = []
        tissue: list[tuple[NDArray[np.int64], int]] = []
        rng = np.random.default_rng([seed, 2**31])
        for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
            image = np.asarray(image)
            mask = np.asarray(mask)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise DatasetError(
                    f"image {index} must be uint8 (H, W, 3), got {image.dtype} {image.shape}"
                )
            if mask.shape != image.shape[:2]:
                raise DatasetError(
                    f"mask {index} has shape {mask.shape}, its image {image.shape[:2]}"
                )
            self.images.append(image)
            self.masks.append(
                (mask != 0).view(np.uint8)
                if mask.dtype == np.bool_
                else (mask != 0).astype(np.uint8)
            )
            found = np.flatnonzero(mask)
            glom.append((_subsample(found, rng), len(found)))
            found = np.flatnonzero(tissue_pixels(image, saturation_threshold=saturation_threshold))
            tissue.append((_subsample(found, rng), len(found)))
        self._glom = _Centres(glom)
        self._tissue = _Centres(tissue)
        if self._glom.total == 0 and self.glomerulus_fraction > 0:
            raise DatasetError(
                "no image has a glomerulus pixel; use glomerulus_fraction=0 for background only"
            )
        if self._tissue.total == 0:  # all glass: centre anywhere
            self._tissue = _Centres([(_anywhere(m.size, rng), m.size) for m in self.masks])
        logger.info(
            "crop sampler: %d images, %d glomerulus and %d tissue centres",
            len(self.images),
            self._glom.total,
            self._tissue.total,
        )

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        """Region ``index`` of this sampler's run.

        Returns
        -------
        (image, mask) : two ndarray
            ``uint8`` ``(R, R, 3)`` and ``uint8`` ``(R, R, 1)`` of 0/1, ``R =
            region_size``.
        """
        rng = np.random.default_rng([self.seed, int(index)])
        centres = self._glom if rng.random() < self.glomerulus_fraction else self._tissue
        image_index, flat = centres.draw(rng)
        image, mask = self.images[image_index], self.masks[image_index]
        row, col = divmod(int(flat), image.shape[1])
        return _cut(image, mask, row, col, self.region_size)


class _Centres:
    """Candidate centres (flat pixel indices) of several images, drawn uniformly over all.

    Each image comes with its centres (at most :data:`_MAX_CENTRES`, a uniform
    subsample) and how many it has in all: an image is drawn in proportion to
    the latter, so a subsample does not make a large image rarer.
    """

    def __init__(self, per_image: list[tuple[NDArray[np.int64], int]]) -> None:
        self.per_image = [centres for centres, _ in per_image]
        self.counts = [count for _, count in per_image]
        self.cumulative = np.cumsum(self.counts)
        self.total = int(self.cumulative[-1]) if len(self.cumulative) else 0

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        k = int(rng.integers(self.total))
        image = int(np.searchsorted(self.cumulative, k, side="right"))
        before = int(self.cumulative[image - 1]) if image else 0
        centres = self.per_image[image]
        return image, int(centres[(k - before) * len(centres) // self.counts[image]])


def _anywhere(size: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """Up to :data:`_MAX_CENTRES` of ``range(size)``, without making the whole range."""
    if size <= _MAX_CENTRES:
        return np.arange(size, dtype=np.int64)
    return np.sort(rng.choice(size, _MAX_CENTRES, replace=False)).astype(np.int64)


def _subsample(indices: NDArray[np.int64], rng: np.random.Generator) -> NDArray[np.int64]:
    if len(indices) <= _MAX_CENTRES:
        return indices.astype(np.int64)
    return np.sort(rng.choice(indices, _MAX_CENTRES, replace=False)).astype(np.int64)


def _cut(
    image: NDArray[np.uint8], mask: NDArray[np.uint8], row: int, col: int, size: int
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """The ``size`` square centred near ``(row, col)``, clamped into the image where it fits."""
    h, w = mask.shape
    top = _clamp(row - size // 2, h, size)
    left = _clamp(col - size // 2, w, size)
    out_image = np.full((size, size, 3), 255, dtype=np.uint8)
    out_mask = np.zeros((size, size, 1), dtype=np.uint8)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + size, h), min(left + size, w)
    out_image[r0 - top : r1 - top, c0 - left : c1 - left] = image[r0:r1, c0:c1]
    out_mask[r0 - top : r1 - top, c0 - left : c1 - left, 0] = mask[r0:r1, c0:c1]
    return out_image, out_mask


def _clamp(start: int, length: int, size: int) -> int:
    if length >= size:
        return min(max(start, 0), length - size)
    return start  # smaller than the region: keep it centred, pad around


def load_training_images(
    sources: Iterable[Any], *, downsample: float = 1
) -> tuple[list[NDArray[np.uint8]], list[NDArray[np.bool_]]]:
    """Read whole slides and rasterize their masks at a training resolution.

    Parameters
    ----------
    sources : iterable of SlideSource
        Slides with their annotation files (:class:`glomseg.SlideSource`); each
        is read whole at ``downsample``, so this suits tiles and small slides,
        or large slides at a large downsample.
    downsample : float
        Factor from full resolution, > 0; images are area-averaged and masks
        rasterized on the same grid by the pixel-centre rule.

    Returns
    -------
    (images, masks) : two lists
        ``uint8`` ``(h, w, 3)`` images and ``bool`` ``(h, w)`` masks.

    Raises
    ------
    DatasetError
        If a source has no annotation file.
    """
    from glomseg.annotations._annotations import read_annotations
    from glomseg.annotations._rasterize import MaskRasterizer
    from glomseg.io._reader import SlideReader

    images: list[NDArray[np.uint8]] = []
    masks: list[NDArray[np.bool_]] = []
    for source in sources:
        if source.annotations is None:
            raise DatasetError(f"{source.slide}: a training slide needs its annotation file")
        with SlideReader(os.fspath(source.slide)) as reader:
            image = reader.read(downsample=downsample) if downsample != 1 else reader.read()
            rasterizer = MaskRasterizer(read_annotations(source.annotations))
            mask = rasterizer.rasterize(reader.shape, downsample=downsample)
        if mask.shape != image.shape[:2]:  # pragma: no cover - both round the same way
            raise DatasetError(f"{source.slide}: mask {mask.shape} != image {image.shape[:2]}")
        images.append(image)
        masks.append(mask)
    return images, masks


def make_crop_dataset(
    sampler: CropSampler,
    *,
    crop_size: int,
    batch_size: int = 8,
    augmentation: Augmentation | None = None,
    start: int = 0,
) -> Any:
    """An endless ``tf.data`` pipeline of augmented training crops, batch ``k`` fixed by the seed.

    Parameters
    ----------
    sampler : CropSampler
        Where regions come from; its ``region_size`` must be at least
        ``augmentation.region_size(crop_size)``.
    crop_size : int
        Side of the crops the model sees, > 0.
    batch_size : int
        Crops per batch, > 0.
    augmentation : Augmentation, optional
        Default :class:`Augmentation()`; :meth:`Augmentation.none` for none.
    start : int
        Index of the first crop, >= 0 (to resume a run where it stopped).

    Returns
    -------
    tf.data.Dataset
        Endless batches of ``(images, masks)``: ``float32`` ``(n, s, s, 3)`` in
        ``[0, 1]`` and ``float32`` ``(n, s, s, 1)`` of 0/1, as
        :meth:`glomseg.GlomUNet.fit` takes them (give it ``steps_per_epoch``).

    Examples
    --------
    >>> import numpy as np
    >>> image = np.full((64, 64, 3), (200, 90, 160), np.uint8)
    >>> mask = np.zeros((64, 64), bool)
    >>> mask[20:40, 20:40] = True
    >>> sampler = CropSampler([image], [mask], region_size=48, seed=1)
    >>> data = make_crop_dataset(sampler, crop_size=32, batch_size=4,
    ...                          augmentation=Augmentation(rotation=5, scale=0.1))
    >>> images, masks = next(iter(data))
    >>> tuple(images.shape), tuple(masks.shape)
    ((4, 32, 32, 3), (4, 32, 32, 1))
    """
    from glomseg.model._tf import import_tf

    tf, _, _ = import_tf()
    aug = Augmentation() if augmentation is None else augmentation
    for name, value, minimum in (
        ("crop_size", crop_size, 1),
        ("batch_size", batch_size, 1),
        ("start", start, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    needed = aug.region_size(crop_size)
    if sampler.region_size < needed:
        raise ValueError(
            f"the sampler's region_size {sampler.region_size} is smaller than the "
            f"{needed} px this augmentation needs for {crop_size} px crops"
        )
    side = sampler.region_size

    def draw(index: Any) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        return sampler.sample(int(index))

    def load(index: Any) -> tuple[Any, Any, Any]:
        image, mask = tf.numpy_function(draw, [index], (tf.uint8, tf.uint8), stateful=False)
        image = tf.ensure_shape(image, (side, side, 3))
        mask = tf.ensure_shape(mask, (side, side, 1))
        seed = tf.stack([tf.constant(sampler.seed, tf.int64), index])
        return image, mask, seed

    def transform(image: Any, mask: Any, seed: Any) -> tuple[Any, Any]:
        return augment_crop(tf, image, mask, seed, crop_size=crop_size, augmentation=aug)

    data = tf.data.Dataset.range(start, 2**62)
    data = data.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    data = data.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return data.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
