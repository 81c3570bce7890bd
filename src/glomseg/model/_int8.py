"""8-bit integer networks for OpenVINO: quantized once, kept with the model and its files.

OpenVINO's CPU plugin runs a network whose convolutions take 8-bit integers
about twice as fast as the float32 one, on CPUs without any special arithmetic
(see :doc:`/benchmarks`). :func:`quantize` makes such a network from a
:class:`~glomseg.GlomUNet` with NNCF's post-training quantization (the ``int8``
extra): activation ranges are measured on calibration crops of the model's
training images, each passed through the cross-lab augmentation
(:meth:`glomseg.Augmentation.cross_lab`), so that other stains' activations stay
in range. The first convolution and the last :data:`FLOAT_CONVOLUTIONS` stay in
float32: the network's input and its probabilities are where rounding costs the
mask most. That number was settled in an exploratory run on another lab's tiles
(AIDPATH; see :doc:`/benchmarks`, which says how little it carried over); masks on
the training tiles and their synthetic re-stainings agree with float32's at 0.99
or more with any of 0 to 6 kept, so they could not choose it.

An :class:`Int8Network` remembers the fingerprint of the float weights it was
quantized from (:func:`glomseg.model._backends.fingerprint_function`), so a model
trained since is never predicted with a stale one. Pretrained model folders
may hold one (``int8.xml``, ``int8.bin`` and ``int8.json``, written by
:func:`save_int8`); an OpenVINO IR file is a graph and its weights, data only.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from glomseg.errors import BackendError, PretrainedWeightsError
from glomseg.io._files import atomic_path, partial_path, remove_stale_partials

__all__ = [
    "FLOAT_CONVOLUTIONS",
    "INT8_HINT",
    "Int8Network",
    "quantize",
    "read_int8",
    "remove_int8",
    "save_int8",
]

INT8_HINT = "quantizing to int8 needs NNCF and OpenVINO: pip install 'glomseg[int8]'"

#: Convolutions at the network's end kept in float32 (the first one is kept too).
FLOAT_CONVOLUTIONS = 4

#: The files of an int8 network in a pretrained model's folder.
XML, BIN, META = "int8.xml", "int8.bin", "int8.json"


@dataclass(frozen=True)
class Int8Network:
    """An OpenVINO int8 network and the float weights it was quantized from.

    Attributes
    ----------
    network : openvino.Model or pathlib.Path
        The network, or the ``int8.xml`` file it is read from when first compiled.
    fingerprint : tuple of int
        The float weights' fingerprint when it was quantized.
    """

    network: Any
    fingerprint: tuple[int, ...]

    def load(self) -> Any:
        """The ``openvino.Model``, read from its file if it is one (on every call)."""
        if not isinstance(self.network, Path):
            return self.network
        import openvino as ov

        try:
            return ov.Core().read_model(self.network)
        except Exception as error:  # OpenVINO's reader raises its own RuntimeError types
            raise PretrainedWeightsError(
                f"{self.network}: not a readable int8 network ({type(error).__name__}: {error})"
            ) from None


def calibration_crops(
    images: Sequence[NDArray[np.uint8]],
    *,
    crop_size: int,
    count: int,
    seed: int,
) -> list[NDArray[np.uint8]]:
    """``count`` cross-lab augmented ``crop_size`` crops of ``images``, the same for a seed."""
    from glomseg.model._augment import Augmentation, augment_crop
    from glomseg.model._stain import MacenkoNormalizer
    from glomseg.model._tf import import_tf

    tf, _, _ = import_tf()
    source = MacenkoNormalizer.fit(list(images)).stain_matrix
    augmentation = Augmentation.cross_lab(source)
    region = augmentation.region_size(crop_size)
    rng = np.random.default_rng(seed)
    empty = tf.zeros((region, region, 1), tf.uint8)
    crops = []
    for index in range(count):
        image = images[int(rng.integers(len(images)))]
        padded = _at_least(image, region)
        row = int(rng.integers(padded.shape[0] - region + 1))
        col = int(rng.integers(padded.shape[1] - region + 1))
        crop, _ = augment_crop(
            tf,
            tf.constant(padded[row : row + region, col : col + region]),
            empty,
            tf.constant([seed, index], tf.int64),
            crop_size=crop_size,
            augmentation=augmentation,
        )
        crops.append(np.rint(crop.numpy() * 255.0).astype(np.uint8))
    return crops


def _at_least(image: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """``image`` padded with white glass to at least ``size`` a side."""
    rows, cols = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if not rows and not cols:
        return image
    return np.pad(image, ((0, rows), (0, cols), (0, 0)), constant_values=255)


def quantize(
    model: Any, images: Sequence[ArrayLike], *, crops: int = 300, seed: int = 0
) -> Int8Network:
    """Quantize ``model`` (a :class:`~glomseg.GlomUNet`) for OpenVINO, calibrated on ``images``.

    Parameters
    ----------
    model : GlomUNet
    images : sequence of array_like
        ``uint8`` RGB images at the model's scale (its training images).
    crops : int
        Calibration crops, > 0.
    seed : int
        Which crops and augmentations: the same seed gives the same network.

    Raises
    ------
    glomseg.errors.BackendError
        If NNCF or OpenVINO is not installed (naming the extra).
    ValueError
        If ``images`` is empty or not uint8 RGB, or ``crops`` < 1.
    """
    if isinstance(crops, bool) or not isinstance(crops, int) or crops < 1:
        raise ValueError(f"crops must be an integer >= 1, got {crops!r}")
    arrays = [np.asarray(image) for image in images]
    if not arrays:
        raise ValueError("images is empty: quantizing needs calibration images")
    for index, array in enumerate(arrays):
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(
                f"images[{index}] must be uint8 of shape (H, W, 3), "
                f"got {array.dtype} of shape {array.shape}"
            )
    try:
        import nncf
        import openvino as ov
    except ImportError as error:
        raise BackendError(INT8_HINT) from error
    fingerprint = model._fingerprint()
    size = model.config.input_size
    samples = [
        model.preprocess(crop[None])
        for crop in calibration_crops(arrays, crop_size=size, count=crops, seed=seed)
    ]
    network = ov.convert_model(model.keras_model)
    convolutions = [
        op.get_friendly_name()
        for op in network.get_ordered_ops()
        if op.get_type_name() == "Convolution"
    ]
    kept = convolutions[:1] + convolutions[-FLOAT_CONVOLUTIONS:]
    quantized = nncf.quantize(
        network,
        nncf.Dataset(samples),
        subset_size=len(samples),
        preset=nncf.QuantizationPreset.MIXED,
        ignored_scope=nncf.IgnoredScope(names=kept),
    )
    return Int8Network(quantized, fingerprint)


def save_int8(folder: str | os.PathLike[str], int8: Int8Network) -> None:
    """Write ``int8`` into ``folder`` as ``int8.xml``, ``int8.bin`` and ``int8.json``.

    The network is written into a temporary folder beside them (a killed
    writer's is removed by the next save) and its files are renamed into place,
    ``int8.json`` last: a folder without it holds no int8 network.
    """
    import openvino as ov

    target = Path(folder)
    (target / META).unlink(missing_ok=True)
    remove_stale_partials(target / XML)
    scratch = partial_path(target / XML)
    scratch.mkdir()
    try:
        ov.save_model(int8.load(), scratch / XML, compress_to_fp16=False)
        os.replace(scratch / BIN, target / BIN)
        os.replace(scratch / XML, target / XML)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with atomic_path(target / META) as tmp:
        meta = {"fingerprint": list(int8.fingerprint), "float_convolutions": FLOAT_CONVOLUTIONS}
        tmp.write_text(json.dumps(meta) + "\n", encoding="utf-8")


def remove_int8(folder: str | os.PathLike[str]) -> None:
    """Remove an int8 network from ``folder`` (its description first), if it holds one."""
    for name in (META, XML, BIN):
        (Path(folder) / name).unlink(missing_ok=True)


def read_int8(folder: str | os.PathLike[str]) -> Int8Network | None:
    """The int8 network in a pretrained model's ``folder``, or None if it has none.

    The network itself is read when first compiled (which needs OpenVINO).

    Raises
    ------
    PretrainedWeightsError
        If ``int8.json`` is corrupt or its network's files are missing.
    """
    path = Path(folder)
    meta = path / META
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
        fingerprint = tuple(int(value) for value in data["fingerprint"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise PretrainedWeightsError(f"{meta}: not a valid int8 description ({error})") from None
    for name in (XML, BIN):
        if not (path / name).is_file():
            raise PretrainedWeightsError(f"{path / name} is missing (named by {meta})")
    return Int8Network(path / XML, fingerprint)
