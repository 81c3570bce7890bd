"""Train and run a U-Net on glomerulus tiles: :class:`GlomUNet` and its tf.data pipeline.

Everything that needs TensorFlow imports it lazily through :func:`_import_tf`, so
``import glomseg`` stays fast and works without the ``tf`` extra
(``pip install 'glomseg[tf]'``). :func:`split_tiles` is pure Python.

**Tile datasets.** :func:`make_datasets` reads the folder layout the tile exporter
writes: ``images/<tile_name>.png`` (RGB uint8), ``masks/<tile_name>.png``
(mode ``"L"``, values 0/1; any nonzero value counts as inside) and, optionally,
``manifest.csv`` (rows with ``kept == "1"`` are used). Without a manifest, images
and masks are paired by name and the slide id is parsed from the name with
:func:`glomseg.parse_tile_name`. A list of ``(image_path, mask_path, slide_id)``
works too.

**Splits.** The default split is by slide: all tiles of a slide land on the same
side, because overlapping tiles of one slide on both sides of a split leak pixels
into validation and inflate its Dice. ``split="tile"`` is available for a single
slide or when the tiles do not overlap.

**Normalisation.** The datasets yield ``float32`` images scaled to ``[0, 1]`` and
``float32`` masks of 0/1 with shape ``(h, w, 1)``. :meth:`GlomUNet.fit` and
:meth:`GlomUNet.predict` then apply the backbone's own preprocessing
(``segmentation_models.get_preprocessing(backbone)`` on ``255 * image``), so
images reach the network exactly as the pretrained encoder expects, in training
and in prediction alike.

**Dice.** :func:`dice_metric` is the TensorFlow twin of
:func:`glomseg._metrics.dice_coefficient`: masks thresholded at 0.5,
``2 |P & T| / (|P| + |T|)`` per image, 1 when both are empty, one value per image
(Keras averages them over the epoch, so the reported validation Dice is the mean
per-tile Dice). :func:`dice_loss` is ``1 - soft Dice`` per image with a smoothing
term of 1 pixel (:data:`LOSS_SMOOTH`), which keeps empty tiles from dividing by
zero; with ``smooth=0`` the soft Dice equals :func:`glomseg._metrics.soft_dice`.

**Reproducibility.** Building a :class:`GlomUNet` calls
``tf_keras.utils.set_random_seed(seed)`` (Python, NumPy and TensorFlow global
seeds), and the datasets shuffle and augment from their own ``seed``. Runs on the
same machine and software then start from identical weights and see identical
batches; bit-identical training additionally needs
``tf.config.experimental.enable_op_determinism()`` (slower, not set here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike, NDArray

from glomseg._export import read_manifest
from glomseg._files import atomic_path
from glomseg._tiling import parse_tile_name
from glomseg.errors import DatasetError, GlomsegError, PretrainedWeightsError, look_up_option

__all__ = [
    "LOSS_SMOOTH",
    "GlomUNet",
    "LossName",
    "ModelConfig",
    "PretrainedWeightsError",
    "SplitName",
    "TileRecord",
    "bce_dice_loss",
    "dice_loss",
    "dice_metric",
    "make_datasets",
    "split_tiles",
]

logger = logging.getLogger(__name__)

LossName = Literal["dice", "bce_dice"]
"""The training losses :class:`GlomUNet` offers."""

SplitName = Literal["slide", "tile"]
"""How :func:`split_tiles` separates training from validation tiles."""

TileRecord = tuple[str, str, str]
"""One tile: ``(image_path, mask_path, slide_id)``."""

LOSS_SMOOTH = 1.0
"""Smoothing term (in pixels) added to numerator and denominator of the soft Dice loss."""

_EPSILON = 1e-7  # probability clipping in the cross-entropy, as Keras does
_LOSSES: tuple[str, ...] = get_args(LossName)
_SPLITS: tuple[str, ...] = get_args(SplitName)
_Preprocess = Callable[[NDArray[np.float32]], NDArray[np.float32]]
_INSTALL_HINT = "GlomUNet needs TensorFlow and segmentation-models: pip install 'glomseg[tf]'"
_H5_LEGACY_WARNING = r".*HDF5 file.*legacy.*"


# --------------------------------------------------------------------------- imports


def _import_tf() -> tuple[Any, Any, Any]:
    """Import and return ``(tensorflow, tf_keras, segmentation_models)``.

    Sets ``TF_USE_LEGACY_KERAS=1`` and ``SM_FRAMEWORK=tf.keras`` (unless already
    set) before the imports, as segmentation-models 1.0.1 needs, quiets
    TensorFlow's C++ log, and swallows segmentation_models' import-time print.

    Raises
    ------
    ImportError
        If TensorFlow, tf-keras or segmentation-models is missing, with the
        command that installs them.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            # Old-style packages imported by the backbones (keras_applications,
            # efficientnet, image-classifiers) may use deprecated APIs.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            import segmentation_models as sm
            import tensorflow as tf
            import tf_keras as keras
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return tf, keras, sm


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a :class:`GlomUNet`; saved next to its weights as JSON.

    Parameters
    ----------
    backbone : str
        A ``segmentation_models`` backbone name, e.g. ``"resnet34"``,
        ``"resnet18"``, ``"efficientnetb0"``, ``"mobilenetv2"``.
    input_size : int
        Tile side in pixels, a positive multiple of 32.
    encoder_weights : str or None
        ``None`` (random), ``"imagenet"`` (from the local Keras cache only) or the
        path of a local ``.h5`` weights file.
    loss : {"dice", "bce_dice"}
        Soft Dice loss, or binary cross-entropy plus soft Dice.
    learning_rate : float
        Adam's learning rate, > 0.
    seed : int
        Global random seed set before the model is built.
    mixed_precision : bool
        Use ``mixed_float16`` when a GPU is present (ignored, with a warning, on CPU).
    bn_momentum : float or None
        Momentum of every BatchNormalization layer's moving statistics, in
        ``(0, 1)``. The default 0.9 (Keras uses 0.99) lets the inference-time
        statistics catch up within tens of steps, which short CPU runs and
        training from scratch need; None keeps the backbone's own.

    Examples
    --------
    >>> config = ModelConfig(backbone="resnet18", input_size=128)
    >>> ModelConfig.from_dict(config.to_dict()) == config
    True
    >>> ModelConfig(input_size=100)
    Traceback (most recent call last):
    ...
    ValueError: input_size must be a positive multiple of 32, got 100
    >>> ModelConfig(loss="bce_dcie")
    Traceback (most recent call last):
    ...
    ValueError: loss must be one of 'bce_dice', 'dice', got 'bce_dcie'; did you mean 'bce_dice'?
    """

    backbone: str = "resnet34"
    input_size: int = 256
    encoder_weights: str | None = None
    loss: LossName = "bce_dice"
    learning_rate: float = 1e-3
    seed: int = 0
    mixed_precision: bool = False
    bn_momentum: float | None = 0.9

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"backbone must be a non-empty string, got {self.backbone!r}")
        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {size!r}")
        if self.encoder_weights is not None and not isinstance(self.encoder_weights, str):
            raise TypeError(
                "encoder_weights must be None, 'imagenet' or a path string, "
                f"got {self.encoder_weights!r}"
            )
        look_up_option("loss", self.loss, _LOSSES)
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {rate!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.mixed_precision, bool):
            raise TypeError(f"mixed_precision must be a bool, got {self.mixed_precision!r}")
        momentum = self.bn_momentum
        if momentum is not None and (
            isinstance(momentum, bool)
            or not isinstance(momentum, int | float)
            or not 0 < momentum < 1
        ):
            raise ValueError(f"bn_momentum must be None or lie in (0, 1), got {momentum!r}")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild a configuration from :meth:`to_dict`'s output (unknown keys are an error)."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        return cls(**data)


def _config_path(path: Path) -> Path:
    """``model.h5`` -> ``model.h5.json``: where a model's configuration is saved."""
    return path.with_name(path.name + ".json")


def _write_config(config: ModelConfig, path: Path) -> None:
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    with atomic_path(_config_path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- Dice in TF


def _per_image_sums(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """``(sum(p t), sum(p) + sum(t))`` per image, in float32."""
    import tensorflow as tf

    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    axes = tf.range(1, tf.rank(y_pred))
    inter = tf.reduce_sum(y_true * y_pred, axis=axes)
    total = tf.reduce_sum(y_true, axis=axes) + tf.reduce_sum(y_pred, axis=axes)
    return inter, total


def _soft_dice(y_true: Any, y_pred: Any, smooth: float = 0.0) -> Any:
    """Soft Dice per image, ``(2 sum(p t) + s) / (sum(p) + sum(t) + s)``, 1 when both are 0."""
    import tensorflow as tf

    inter, total = _per_image_sums(y_true, y_pred)
    denominator = total + smooth
    safe = tf.where(denominator > 0, denominator, tf.ones_like(denominator))
    return tf.where(denominator > 0, (2.0 * inter + smooth) / safe, tf.ones_like(denominator))


def dice_metric(y_true: Any, y_pred: Any) -> Any:
    """Dice of the masks thresholded at 0.5, one value per image (the Keras metric).

    The TensorFlow twin of :func:`glomseg._metrics.dice_coefficient`:
    ``2 |P & T| / (|P| + |T|)`` with ``P = y_pred > 0.5`` and ``T = y_true > 0.5``,
    and 1 when both masks are empty.

    Parameters
    ----------
    y_true, y_pred : tf.Tensor
        Batches of shape ``(n, h, w[, 1])``: masks of 0/1 and probabilities.

    Returns
    -------
    tf.Tensor
        float32, shape ``(n,)``.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.zeros((2, 4, 4, 1), dtype=np.float32)
    >>> truth[0, :2] = 1  # image 0: 8 glomerulus pixels; image 1: none
    >>> pred = np.full((2, 4, 4, 1), 0.9, dtype=np.float32)
    >>> pred[1] = 0.1  # image 1 predicted empty too
    >>> [round(float(d), 3) for d in dice_metric(truth, pred)]  # 2 * 8 / (16 + 8), and 1
    [0.667, 1.0]
    """
    import tensorflow as tf

    truth = tf.cast(tf.cast(y_true, tf.float32) > 0.5, tf.float32)
    pred = tf.cast(tf.cast(y_pred, tf.float32) > 0.5, tf.float32)
    return _soft_dice(truth, pred, 0.0)


def dice_loss(y_true: Any, y_pred: Any) -> Any:
    """``1 - soft Dice`` per image, smoothed by :data:`LOSS_SMOOTH` (the Keras loss).

    Parameters
    ----------
    y_true, y_pred : tf.Tensor
        Batches of shape ``(n, h, w, 1)``: masks of 0/1 and probabilities.

    Returns
    -------
    tf.Tensor
        float32, shape ``(n,)``, in ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.ones((1, 4, 4, 1), dtype=np.float32)
    >>> float(dice_loss(truth, truth)[0]), round(float(dice_loss(truth, 1 - truth)[0]), 3)
    (0.0, 0.941)
    """
    return 1.0 - _soft_dice(y_true, y_pred, LOSS_SMOOTH)


def bce_dice_loss(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy (mean over pixels) plus :func:`dice_loss`, per image.

    Parameters
    ----------
    y_true, y_pred : tf.Tensor
        Batches of shape ``(n, h, w, 1)``: masks of 0/1 and probabilities.

    Returns
    -------
    tf.Tensor
        float32, shape ``(n,)``.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.zeros((1, 4, 4, 1), dtype=np.float32)
    >>> truth[0, :2] = 1
    >>> good, bad = truth * 0.98 + 0.01, 1 - truth
    >>> bool(bce_dice_loss(truth, good)[0] < bce_dice_loss(truth, bad)[0])
    True
    """
    import tensorflow as tf

    truth = tf.cast(y_true, tf.float32)
    pred = tf.clip_by_value(tf.cast(y_pred, tf.float32), _EPSILON, 1.0 - _EPSILON)
    bce = -(truth * tf.math.log(pred) + (1.0 - truth) * tf.math.log(1.0 - pred))
    bce = tf.reduce_mean(bce, axis=tf.range(1, tf.rank(bce)))
    return bce + dice_loss(truth, pred)


def _custom_objects() -> dict[str, Callable[..., Any]]:
    return {"dice_metric": dice_metric, "dice_loss": dice_loss, "bce_dice_loss": bce_dice_loss}


# --------------------------------------------------------------------------- data


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


def _records(source: str | os.PathLike[str] | Sequence[TileRecord]) -> list[TileRecord]:
    """The ``(image, mask, slide)`` triples of a tile folder or an explicit list."""
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
    >>> from glomseg.synthetic import write_synthetic_slide
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
    records = _records(source)
    if validation is None:
        train, val = split_tiles(
            records, split=split, validation_fraction=validation_fraction, seed=seed
        )
    else:
        train, val = records, _records(validation)
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


# --------------------------------------------------------------------------- weights


def _keras_cache_candidates(fname: str, cache_subdir: str, cache_dir: str | None) -> list[Path]:
    """Where ``tf_keras.utils.get_file`` looks for an already downloaded file."""
    base = Path(os.path.expanduser(cache_dir or os.path.join("~", ".keras")))
    return [base / cache_subdir / fname, Path("/tmp/.keras") / cache_subdir / fname]


def _file_matches_hash(path: Path, file_hash: str, algorithm: str) -> bool:
    """Whether ``path`` has the hash ``get_file`` would check (md5 or sha256, as Keras picks)."""
    if algorithm == "auto":
        algorithm = "sha256" if len(file_hash) == 64 else "md5"
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == file_hash


@contextlib.contextmanager
def _no_downloads(utils: Any, backbone: str) -> Iterator[None]:
    """Let ``utils.get_file`` return cached files only; a missing file raises our error."""
    original = utils.get_file

    def cached_only(fname: str | None = None, origin: str | None = None, **kwargs: Any) -> Any:
        name = fname or (origin or "").rsplit("/", 1)[-1]
        subdir = kwargs.get("cache_subdir", "datasets")
        candidates = _keras_cache_candidates(name, subdir, kwargs.get("cache_dir"))
        found = next((path for path in candidates if path.is_file()), None)
        if found is not None:
            # Return the cached file ourselves: the real get_file looks in one cache
            # folder only and re-downloads a file whose hash does not match.
            file_hash = kwargs.get("file_hash")
            algorithm = str(kwargs.get("hash_algorithm", "auto"))
            if file_hash is None and kwargs.get("md5_hash") is not None:
                file_hash, algorithm = kwargs["md5_hash"], "md5"
            if file_hash and not _file_matches_hash(found, str(file_hash), algorithm):
                raise PretrainedWeightsError(
                    f"the cached {backbone} weights file {found} is incomplete or corrupt (its "
                    f"hash differs from {file_hash}); delete it, download {name} from {origin} "
                    f"again and pass encoder_weights='/path/to/{name}'"
                )
            return str(found)
        raise PretrainedWeightsError(
            f"encoder_weights='imagenet' needs the pretrained {backbone} weights file, which "
            f"cannot be downloaded here: download {name} from {origin} on a machine with "
            f"network access and pass encoder_weights='/path/to/{name}' "
            f"(or place it in {candidates[0].parent}/)"
        )

    utils.get_file = cached_only
    try:
        yield
    finally:
        utils.get_file = original


def _h5_layer_names(path: Path) -> set[str]:
    import h5py  # type: ignore[import-untyped]

    with h5py.File(path, "r") as handle:
        group: Any = handle
        if "layer_names" not in group.attrs and "model_weights" in group:
            group = group["model_weights"]
        names = group.attrs.get("layer_names", [])
        return {n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names}


def _load_encoder_weights(model: Any, path: Path) -> int:
    """Load the layers of ``model`` whose names appear in the ``.h5`` file ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"encoder_weights file not found: {path}")
    try:
        in_file = _h5_layer_names(path)
    except OSError as error:
        raise GlomsegError(f"encoder_weights must be a Keras .h5 weights file: {path}") from error
    matching = sum(1 for layer in model.layers if layer.name in in_file and layer.weights)
    if matching == 0:
        raise GlomsegError(
            f"no layer of {path} matches this model's layer names; is it a weights file of "
            "the same backbone (e.g. <backbone>_imagenet_1000_no_top.h5)?"
        )
    model.load_weights(str(path), by_name=True, skip_mismatch=True)
    logger.info("loaded %d layers' weights from %s", matching, path)
    return matching


# --------------------------------------------------------------------------- model


class GlomUNet:
    """A ``segmentation_models`` U-Net for glomerulus masks, with Dice metrics.

    Parameters
    ----------
    backbone, input_size, encoder_weights, loss, learning_rate, seed, mixed_precision, bn_momentum
        See :class:`ModelConfig`. ``encoder_weights`` may be ``None``,
        ``"imagenet"`` (never downloaded: the file must already be in the Keras
        cache ``~/.keras/models/``, else :class:`PretrainedWeightsError` names the
        file and its URL) or a path to a local ``.h5`` file (for example the
        ``*_no_top.h5`` ImageNet file, or any weights saved from a model of the
        same backbone), whose layers are loaded by name.

    Raises
    ------
    ImportError
        If the ``tf`` extra is not installed.
    PretrainedWeightsError
        If ``encoder_weights="imagenet"`` and the file is not cached.

    Notes
    -----
    The model outputs sigmoid probabilities ``(n, s, s, 1)``, is compiled with
    Adam, the chosen loss and :func:`dice_metric` (logged as ``dice_metric`` /
    ``val_dice_metric``). ``mixed_precision=True`` uses ``mixed_float16`` with a
    float32 output layer when a GPU is present; on CPU it logs a warning and stays
    float32.

    Examples
    --------
    >>> import numpy as np
    >>> model = GlomUNet(backbone="resnet18", input_size=64)
    >>> probs = model.predict(np.zeros((2, 64, 64, 3), dtype=np.uint8))
    >>> probs.shape, probs.dtype, bool(((probs >= 0) & (probs <= 1)).all())
    ((2, 64, 64), dtype('float32'), True)
    >>> model.config.backbone
    'resnet18'
    """

    def __init__(
        self,
        *,
        backbone: str = "resnet34",
        input_size: int = 256,
        encoder_weights: str | os.PathLike[str] | None = None,
        loss: LossName = "bce_dice",
        learning_rate: float = 1e-3,
        seed: int = 0,
        mixed_precision: bool = False,
        bn_momentum: float | None = 0.9,
    ) -> None:
        weights = os.fspath(encoder_weights) if encoder_weights is not None else None
        config = ModelConfig(
            backbone=backbone,
            input_size=input_size,
            encoder_weights=weights,
            loss=loss,
            learning_rate=learning_rate,
            seed=seed,
            mixed_precision=mixed_precision,
            bn_momentum=bn_momentum,
        )
        self._config = config
        self._model = self._build(config)
        self._preprocess = self._preprocessing(config.backbone)

    # ---- construction

    @staticmethod
    def _build(config: ModelConfig) -> Any:
        tf, keras, sm = _import_tf()
        if config.backbone not in sm.Backbones.models_names():
            look_up_option("backbone", config.backbone, sm.Backbones.models_names())
        keras.utils.set_random_seed(config.seed)
        use_mixed = False
        if config.mixed_precision:
            if tf.config.list_physical_devices("GPU"):
                use_mixed = True
            else:
                logger.warning("mixed_precision=True needs a GPU; none found, staying float32")
        previous = keras.mixed_precision.global_policy()
        if use_mixed:
            keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            shape = (config.input_size, config.input_size, 3)
            weights = config.encoder_weights
            kwargs = {"input_shape": shape, "classes": 1, "activation": "sigmoid"}
            if weights == "imagenet":
                with _no_downloads(sm._KERAS_UTILS, config.backbone):
                    model = sm.Unet(config.backbone, encoder_weights="imagenet", **kwargs)
            else:
                model = sm.Unet(config.backbone, encoder_weights=None, **kwargs)
                if weights is not None:
                    _load_encoder_weights(model, Path(weights))
            if config.bn_momentum is not None:
                for layer in model.layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.momentum = config.bn_momentum
            if use_mixed:
                output = keras.layers.Activation("linear", dtype="float32", name="probabilities")(
                    model.output
                )
                model = keras.Model(model.input, output, name=model.name)
            loss = bce_dice_loss if config.loss == "bce_dice" else dice_loss
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
                loss=loss,
                metrics=[dice_metric],
            )
        finally:
            keras.mixed_precision.set_global_policy(previous)
        return model

    @staticmethod
    def _preprocessing(
        backbone: str,
    ) -> Callable[[NDArray[np.float32]], NDArray[np.float32]] | None:
        """The backbone's input preprocessing on ``0..255`` floats, or None if it is identity."""
        _, _, sm = _import_tf()
        function = sm.get_preprocessing(backbone)
        probe = np.array([[[[3.0, 100.0, 250.0]]]], dtype=np.float32)
        if np.array_equal(function(probe.copy()), probe):
            return None

        def apply(images: NDArray[np.float32]) -> NDArray[np.float32]:
            return np.asarray(function(np.array(images, dtype=np.float32)), dtype=np.float32)

        return apply

    # ---- properties

    @property
    def config(self) -> ModelConfig:
        """The model's :class:`ModelConfig`."""
        return self._config

    @property
    def keras_model(self) -> Any:
        """The underlying compiled ``tf_keras.Model``."""
        return self._model

    # ---- data

    def _prepare(self, dataset: Any) -> Any:
        """Map ``[0, 1]`` images to the backbone's input range, in a tf.data pipeline."""
        tf, _, _ = _import_tf()
        apply = self._preprocess

        def prepare(images: Any, masks: Any) -> tuple[Any, Any]:
            scaled = tf.cast(images, tf.float32) * 255.0
            if apply is not None:
                out = tf.numpy_function(apply, [scaled], tf.float32, stateful=False)
                out.set_shape(scaled.shape)
                scaled = out
            return scaled, masks

        return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)

    def preprocess(self, images: ArrayLike) -> NDArray[np.float32]:
        """Images as the network takes them: uint8 ``0..255`` or floats in ``[0, 1]``.

        Parameters
        ----------
        images : array_like
            ``(n, h, w, 3)`` (or one ``(h, w, 3)`` image): ``uint8``, or floats
            already scaled to ``[0, 1]`` as :func:`make_datasets` yields them.

        Returns
        -------
        ndarray of float32
            ``(n, h, w, 3)``, after the backbone's preprocessing.

        Raises
        ------
        ValueError
            If the shape is wrong, or float images hold values outside ``[0, 1]`` or NaN.
        TypeError
            If the dtype is neither uint8 nor float.
        """
        array = np.asarray(images)
        if array.ndim == 3:
            array = array[np.newaxis]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"images must have shape (n, h, w, 3), got {array.shape}")
        if array.dtype == np.uint8:
            scaled = array.astype(np.float32)
        elif array.dtype.kind == "f":
            if array.size and not (array.min() >= 0.0 and array.max() <= 1.0):
                raise ValueError(
                    "float images must lie in [0, 1] (and not be NaN), got values in "
                    f"[{array.min()}, {array.max()}]; pass uint8 0..255 images, or divide by 255"
                )
            scaled = array.astype(np.float32) * np.float32(255.0)
        else:
            raise TypeError(f"images must be uint8 or float in [0, 1], got dtype {array.dtype}")
        return scaled if self._preprocess is None else self._preprocess(scaled)

    # ---- training and prediction

    def fit(
        self,
        train: Any,
        validation: Any = None,
        *,
        epochs: int,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        patience: int | None = 10,
        callbacks: Sequence[Any] = (),
        verbose: int = 0,
    ) -> dict[str, list[float]]:
        """Train on ``(images, masks)`` batches as :func:`make_datasets` yields them.

        Parameters
        ----------
        train, validation : tf.data.Dataset
            Batches of float32 images in ``[0, 1]`` and 0/1 masks ``(n, h, w, 1)``.
            ``validation`` may be None (then callbacks monitor the training Dice).
        epochs : int
            Epochs to run (early stopping may end sooner).
        steps_per_epoch : int, optional
            Batches per epoch; when given, ``train`` is repeated indefinitely.
            Default: one pass over ``train``.
        validation_steps : int, optional
            Validation batches per epoch; default one full pass.
        checkpoint_dir : path, optional
            If given: ``best.h5`` (+ ``best.h5.json``, loadable with :meth:`load`)
            keeps the weights of the epoch with the best validation Dice, and
            ``log.csv`` logs every epoch.
        patience : int or None
            Epochs without improvement of the validation Dice before stopping
            early, which restores the best epoch's weights; None disables early
            stopping. A run that completes all ``epochs`` keeps its last weights
            (the best ones are in ``checkpoint_dir/best.h5``).
        callbacks : sequence of keras callbacks
            Extra callbacks.
        verbose : int
            Keras' verbosity; 0 (the default) prints nothing.

        Returns
        -------
        dict of str to list of float
            Keras' history: ``loss``, ``dice_metric``, ``val_loss``,
            ``val_dice_metric`` per epoch.
        """
        _, keras, _ = _import_tf()
        monitor = "val_dice_metric" if validation is not None else "dice_metric"
        all_callbacks: list[Any] = []
        if checkpoint_dir is not None:
            directory = Path(checkpoint_dir)
            directory.mkdir(parents=True, exist_ok=True)
            best = directory / "best.h5"
            _write_config(self._config, best)
            all_callbacks.append(
                keras.callbacks.ModelCheckpoint(
                    str(best), monitor=monitor, mode="max", save_best_only=True
                )
            )
            all_callbacks.append(keras.callbacks.CSVLogger(str(directory / "log.csv")))
        if patience is not None:
            all_callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor=monitor, mode="max", patience=patience, restore_best_weights=True
                )
            )
        all_callbacks.extend(callbacks)
        data = self._prepare(train)
        if steps_per_epoch is not None:
            data = data.repeat()
        val_data = self._prepare(validation) if validation is not None else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_H5_LEGACY_WARNING, category=UserWarning)
            history = self._model.fit(
                data,
                validation_data=val_data,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                validation_steps=validation_steps,
                callbacks=all_callbacks,
                verbose=verbose,
            )
        return {key: [float(v) for v in values] for key, values in history.history.items()}

    def evaluate(self, dataset: Any) -> dict[str, float]:
        """Loss and Dice (mean per tile) over a dataset like :func:`make_datasets`' validation."""
        result = self._model.evaluate(self._prepare(dataset), verbose=0, return_dict=True)
        return {key: float(value) for key, value in result.items()}

    def predict(self, images: ArrayLike, *, batch_size: int = 8) -> NDArray[np.float32]:
        """Glomerulus probabilities for a batch of tiles.

        Parameters
        ----------
        images : array_like
            ``(n, s, s, 3)`` with ``s`` the model's ``input_size``: uint8, or
            floats in ``[0, 1]``.
        batch_size : int
            Tiles per forward pass.

        Returns
        -------
        ndarray of float32
            ``(n, s, s)`` probabilities in ``[0, 1]`` (``n`` may be 0).

        Raises
        ------
        ValueError
            If the images are not ``(n, s, s, 3)``, or float images are not in ``[0, 1]``.
        TypeError
            If the dtype is neither uint8 nor float.
        """
        batch = self.preprocess(images)
        size = self._config.input_size
        if batch.shape[1:3] != (size, size):
            raise ValueError(
                f"images must be {size} x {size} (the model's input_size), "
                f"got {batch.shape[1]} x {batch.shape[2]}"
            )
        if not len(batch):
            return np.zeros((0, size, size), dtype=np.float32)
        probs = self._model.predict(batch, batch_size=batch_size, verbose=0)
        return np.asarray(probs, dtype=np.float32)[..., 0]

    def __call__(self, images: ArrayLike) -> NDArray[np.float32]:
        """Same as :meth:`predict`, so a model can serve as a stitching predictor."""
        return self.predict(images)

    # ---- persistence

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the model (``.h5`` or ``.keras``) and its configuration (``<path>.json``).

        Parameters
        ----------
        path : path
            Ends in ``.h5`` (HDF5, with the optimizer state) or ``.keras``
            (Keras v3 zip format).

        Returns
        -------
        pathlib.Path
            The model file.
        """
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in (".h5", ".keras"):
            raise ValueError(f"path must end in .h5 or .keras, got {target.name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_H5_LEGACY_WARNING, category=UserWarning)
            self._model.save(str(target))
        _write_config(self._config, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, compile: bool = True) -> GlomUNet:
        """Load a model saved by :meth:`save` (or a ``best.h5`` checkpoint of :meth:`fit`).

        Parameters
        ----------
        path : path
            The ``.h5`` or ``.keras`` file; its ``<path>.json`` configuration must
            lie next to it.
        compile : bool
            Restore the loss, metrics and optimizer state too (needed to go on
            training); ``False`` loads faster for prediction only.

        Returns
        -------
        GlomUNet
        """
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"model file not found: {source}")
        config_file = _config_path(source)
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{config_file} not found: GlomUNet.load needs the configuration that "
                "GlomUNet.save writes next to the model"
            )
        try:
            config = ModelConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
            raise ValueError(f"{config_file}: not a GlomUNet configuration ({error})") from None
        _, keras, _ = _import_tf()
        model = keras.models.load_model(
            str(source), custom_objects=_custom_objects(), compile=compile
        )
        self = cls.__new__(cls)
        self._config = config
        self._model = model
        self._preprocess = cls._preprocessing(config.backbone)
        return self

    def __repr__(self) -> str:
        c = self._config
        return (
            f"GlomUNet(backbone={c.backbone!r}, input_size={c.input_size}, "
            f"encoder_weights={c.encoder_weights!r}, loss={c.loss!r})"
        )
