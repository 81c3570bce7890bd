"""Tile datasets for :class:`glomseg.GlomUNet`: reading, splitting and ``tf.data`` pipelines.

:func:`make_datasets` reads the folder layout the tile exporter writes:
``images/<tile_name>.png`` (RGB uint8), ``masks/<tile_name>.png`` (mode ``"L"``,
values 0/1; any nonzero value counts as inside) and, optionally,
``manifest.csv`` (rows with ``kept == "1"`` are used). Without a manifest, images
and masks are paired by name and the slide id is parsed from the name with
:func:`glomseg.tiles.parse_tile_name`. A list of ``(image_path, mask_path, slide_id)``
works too. :func:`split_tiles` is pure Python.

**Splits.** The default split is by slide: all tiles of a slide land on the same
side, because overlapping tiles of one slide on both sides of a split leak pixels
into validation and inflate its Dice. ``split="tile"`` is available for a single
slide or when the tiles do not overlap.

**Normalisation.** The datasets yield ``float32`` images scaled to ``[0, 1]`` and
``float32`` masks of 0/1 with shape ``(h, w, 1)``; :class:`glomseg.GlomUNet`
applies the backbone's own preprocessing.

For training crops drawn anew every step from larger images, with stain and
geometric augmentation, see :func:`glomseg.model.make_crop_dataset`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from glomseg.errors import DatasetError, look_up_option
from glomseg.model._tf import import_tf as _import_tf
from glomseg.tiles._export import read_manifest
from glomseg.tiles._tiling import parse_tile_name

__all__ = ["SplitName", "TileRecord", "make_datasets", "read_records", "split_tiles"]

SplitName = Literal["slide", "tile"]
"""How :func:`split_tiles` separates training from validation tiles."""

TileRecord = tuple[str, str, str]
"""One tile: ``(image_path, mask_path, slide_id)``."""

_SPLITS: tuple[str, ...] = get_args(SplitName)

logger = logging.getLogger(__name__)


def _read_manifest(root: Path) -> list[TileRecord]:
    records: list[TileRecord] = []
    for line, row in enumerate(read_manifest(root), start=2):
        if row["kept"] != "1":
            continue
        if not row["image"] or not row["mask"]:
            raise DatasetError(
                f"{root / 'manifest.csv'}:{line}: a kept tile needs image and mask paths"
            )
        records.append((str(root / row["image"]), str(root / row["mask"]), row["slide"]))
    return records


def _pair_folders(root: Path) -> list[TileRecord]:
    images, masks = root / "images", root / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise DatasetError(
            f"{root} is not a tile dataset: it needs manifest.csv, or images/ and masks/ folders"
        )
    records: list[TileRecord] = []
    for image in sorted(images.glob("*.png")):
        mask = masks / image.name
        if not mask.is_file():
            raise DatasetError(f"image {image} has no mask {mask}")
        try:
            slide = parse_tile_name(image.stem).slide_id
        except ValueError as error:
            raise DatasetError(f"{image}: {error}") from None
        records.append((str(image), str(mask), slide))
    return records


def read_records(source: str | os.PathLike[str] | Sequence[TileRecord]) -> list[TileRecord]:
    """The ``(image, mask, slide)`` triples of a tile folder or an explicit list.

    Parameters
    ----------
    source : path or sequence of (image_path, mask_path, slide_id)
        A tile folder (``manifest.csv`` if present, else ``images/`` and
        ``masks/`` paired by name) or the tiles themselves.

    Returns
    -------
    list of (image_path, mask_path, slide_id)

    Raises
    ------
    DatasetError
        If the folder is not a tile dataset or holds no tiles.
    """
    if isinstance(source, str | os.PathLike):
        root = Path(source)
        if not root.is_dir():
            raise DatasetError(f"tile dataset folder not found: {root}")
        has_manifest = (root / "manifest.csv").is_file()
        records = _read_manifest(root) if has_manifest else _pair_folders(root)
    else:
        records = []
        for item in source:
            if len(item) != 3:
                raise DatasetError(f"expected (image_path, mask_path, slide_id), got {item!r}")
            records.append((str(item[0]), str(item[1]), str(item[2])))
    if not records:
        raise DatasetError(f"no tiles found in {source!r}")
    return records


def split_tiles(
    records: Sequence[TileRecord],
    *,
    split: SplitName = "slide",
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[TileRecord], list[TileRecord]]:
    """Split tiles into training and validation, by slide (default) or by tile.

    Parameters
    ----------
    records : sequence of (image_path, mask_path, slide_id)
        The tiles.
    split : {"slide", "tile"}
        ``"slide"`` keeps all tiles of a slide on one side: whole slides, drawn in
        a seeded random order, go to validation until it holds at least
        ``validation_fraction`` of the tiles (at least one slide, never all).
        ``"tile"`` draws ``round(validation_fraction * n)`` tiles (at least 1).
    validation_fraction : float
        In ``(0, 1)``.
    seed : int
        Seed of the random order.

    Returns
    -------
    (train, validation) : two lists of records
        Disjoint; together they hold every record, each in its input order.

    Raises
    ------
    DatasetError
        If there are too few tiles, or only one slide for ``split="slide"``.
    ValueError
        If ``split`` or ``validation_fraction`` is invalid.

    Examples
    --------
    >>> tiles = [(f"{s}{i}.png", f"{s}{i}_m.png", s) for s in "abcde" for i in range(2)]
    >>> train, val = split_tiles(tiles, validation_fraction=0.2)
    >>> len(train), len(val), len({r[2] for r in val} & {r[2] for r in train})
    (8, 2, 0)
    >>> split_tiles(tiles[:2])
    Traceback (most recent call last):
    ...
    glomseg.errors.DatasetError: split='slide' needs tiles of at least 2 slides, got 1 ...
    """
    look_up_option("split", split, _SPLITS)
    fraction = validation_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {fraction!r}")
    records = list(records)
    rng = random.Random(seed)
    if split == "tile":
        if len(records) < 2:
            raise DatasetError(f"split='tile' needs at least 2 tiles, got {len(records)}")
        n_val = min(len(records) - 1, max(1, round(fraction * len(records))))
        chosen = set(rng.sample(range(len(records)), n_val))
        val = [r for i, r in enumerate(records) if i in chosen]
        train = [r for i, r in enumerate(records) if i not in chosen]
        return train, val
    counts: dict[str, int] = {}
    for record in records:
        counts[record[2]] = counts.get(record[2], 0) + 1
    slides = sorted(counts)
    if len(slides) < 2:
        raise DatasetError(
            f"split='slide' needs tiles of at least 2 slides, got {len(slides)} "
            f"({slides}); use split='tile' for a single slide"
        )
    rng.shuffle(slides)
    target = fraction * len(records)
    val_slides: set[str] = set()
    held = 0
    for slide in slides[:-1]:
        if held >= target:
            break
        val_slides.add(slide)
        held += counts[slide]
    train = [r for r in records if r[2] not in val_slides]
    val = [r for r in records if r[2] in val_slides]
    return train, val


def _load_tile(tf: Any, image_path: Any, mask_path: Any, size: int | None) -> tuple[Any, Any]:
    """Decode one tile: uint8 image ``(h, w, 3)`` and uint8 0/1 mask ``(h, w, 1)``."""
    image = tf.io.decode_png(tf.io.read_file(image_path), channels=3)
    mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
    mask = tf.cast(mask > 0, tf.uint8)
    if size is not None:
        image = tf.cast(
            tf.clip_by_value(tf.round(tf.image.resize(image, (size, size))), 0, 255), tf.uint8
        )
        mask = tf.image.resize(mask, (size, size), method="nearest")
        image.set_shape((size, size, 3))
        mask.set_shape((size, size, 1))
    return image, mask


def _augment(tf: Any, image: Any, mask: Any, seed: Any) -> tuple[Any, Any]:
    """Flips, 90-degree rotations (image and mask alike), then colour jitter (image only)."""
    seeds = tf.random.experimental.stateless_split(seed, num=7)
    stacked = tf.concat([image, mask], axis=-1)
    stacked = tf.image.stateless_random_flip_left_right(stacked, seeds[0])
    stacked = tf.image.stateless_random_flip_up_down(stacked, seeds[1])
    turns = tf.random.stateless_uniform([], seeds[2], minval=0, maxval=4, dtype=tf.int32)
    stacked = tf.image.rot90(stacked, turns)
    image, mask = stacked[..., :3], stacked[..., 3:]
    image = tf.image.stateless_random_brightness(image, 0.1, seeds[3])
    image = tf.image.stateless_random_contrast(image, 0.8, 1.2, seeds[4])
    image = tf.image.stateless_random_saturation(tf.clip_by_value(image, 0, 1), 0.8, 1.2, seeds[5])
    image = tf.image.stateless_random_hue(image, 0.04, seeds[6])
    return tf.clip_by_value(image, 0.0, 1.0), mask


@contextlib.contextmanager
def _own_seeds_only() -> Iterator[None]:
    """Let seeded tf.data ops (shuffle, random) depend on their own ``seed`` only.

    TensorFlow combines an op's seed with the global seed, which building a
    :class:`GlomUNet` sets; without this, the order and augmentation of a dataset
    would depend on which models were built before it. The seeds are those of a
    fresh process without a global seed; the global seed is left as it was.
    """
    from tensorflow.python.eager import context

    ctx = context.context()
    if not hasattr(ctx, "_seed"):  # a TensorFlow whose internals differ: no-op
        yield
        return
    saved = ctx._seed
    ctx._seed = None
    try:
        yield
    finally:
        ctx._seed = saved


def _dataset(
    records: Sequence[TileRecord],
    *,
    batch_size: int,
    augment: bool,
    shuffle: bool,
    seed: int,
    input_size: int | None,
) -> Any:
    tf, _, _ = _import_tf()
    images = [r[0] for r in records]
    masks = [r[1] for r in records]
    ds = tf.data.Dataset.from_tensor_slices((images, masks))
    ds = ds.map(
        lambda i, m: _load_tile(tf, i, m, input_size), num_parallel_calls=tf.data.AUTOTUNE
    ).cache()
    if shuffle:
        with _own_seeds_only():
            ds = ds.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)

    def scale(image: Any, mask: Any) -> tuple[Any, Any]:
        return tf.cast(image, tf.float32) / 255.0, tf.cast(mask, tf.float32)

    ds = ds.map(scale, num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        with _own_seeds_only():
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda pair, s: _augment(tf, pair[0], pair[1], s),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def make_datasets(
    source: str | os.PathLike[str] | Sequence[TileRecord],
    *,
    split: SplitName = "slide",
    validation_fraction: float = 0.2,
    batch_size: int = 8,
    augment: bool = True,
    seed: int = 0,
    input_size: int | None = None,
    validation: str | os.PathLike[str] | Sequence[TileRecord] | None = None,
) -> tuple[Any, Any]:
    """Training and validation ``tf.data`` datasets from a tile folder or a list of tiles.

    Parameters
    ----------
    source : path or sequence of (image_path, mask_path, slide_id)
        A tile folder (``manifest.csv`` if present, else ``images/`` and
        ``masks/`` paired by name) or the tiles themselves.
    split : {"slide", "tile"}
        How to split, see :func:`split_tiles`. Ignored when ``validation`` is given.
    validation_fraction : float
        Share of tiles for validation, in ``(0, 1)``.
    batch_size : int
        Tiles per batch, > 0.
    augment : bool
        Random flips, 90-degree rotations and brightness/contrast/saturation/hue
        jitter on the training set; never on the validation set.
    seed : int
        Seed of the split, the shuffle order and the augmentation.
    input_size : int, optional
        Resize every tile to ``input_size`` x ``input_size`` (images bilinear,
        masks nearest); by default tiles keep their size (all must be equal).
    validation : path or sequence of records, optional
        An explicit validation set; then ``source`` is used whole for training.

    Returns
    -------
    (train, validation) : two ``tf.data.Dataset``
        Batches of ``(images, masks)``: ``float32`` ``(n, h, w, 3)`` in ``[0, 1]``
        and ``float32`` ``(n, h, w, 1)`` of 0/1. The training set is reshuffled
        every epoch; the validation set is in a fixed order. Decoded tiles are
        cached in memory.

    Raises
    ------
    DatasetError
        If the folder is not a tile dataset or the split is impossible.

    Examples
    --------
    >>> from glomseg import SlideSource, TileFilter, Tiler, export_tiles
    >>> from glomseg.io.synthetic import write_synthetic_slide
    >>> tmp = getfixture("tmp_path")
    >>> sources = [SlideSource.from_path(write_synthetic_slide(
    ...     tmp / f"s{i}.tif", (256, 256), tile=64, seed=i).path) for i in range(3)]
    >>> _ = export_tiles(sources, tmp / "tiles", tiler=Tiler(64), tile_filter=TileFilter(),
    ...                  progress=False)
    >>> train, validation = make_datasets(tmp / "tiles", batch_size=4, validation_fraction=0.3)
    >>> images, masks = next(iter(train))
    >>> tuple(images.shape), tuple(masks.shape), str(images.dtype)
    ((4, 64, 64, 3), (4, 64, 64, 1), "<dtype: 'float32'>")
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size!r}")
    if input_size is not None and (
        isinstance(input_size, bool) or not isinstance(input_size, int) or input_size <= 0
    ):
        raise ValueError(f"input_size must be > 0, got {input_size!r}")
    records = read_records(source)
    if validation is None:
        train, val = split_tiles(
            records, split=split, validation_fraction=validation_fraction, seed=seed
        )
    else:
        train, val = records, read_records(validation)
    logger.info("tile datasets: %d training and %d validation tiles", len(train), len(val))
    train_ds = _dataset(
        train,
        batch_size=batch_size,
        augment=augment,
        shuffle=True,
        seed=seed,
        input_size=input_size,
    )
    val_ds = _dataset(
        val, batch_size=batch_size, augment=False, shuffle=False, seed=seed, input_size=input_size
    )
    return train_ds, val_ds
