"""A :class:`glomseg.GlomUNet`'s configuration: everything needed to rebuild it.

:class:`ModelConfig` is plain data. It is saved inside every model file and as
``<model file>.json`` beside it, which this module reads and writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glomseg.errors import look_up_option
from glomseg.io._files import atomic_path
from glomseg.model._losses import LOSSES, LossName

__all__ = ["DEFAULT_DECODER_FILTERS", "ModelConfig"]

DEFAULT_DECODER_FILTERS = (256, 128, 64, 32, 16)
"""segmentation_models' U-Net decoder widths, deepest first."""


def _positive_number(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


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
    loss : {"dice", "bce_dice", "bce_lovasz"}
        Soft Dice loss, binary cross-entropy plus soft Dice, or binary
        cross-entropy plus the Lovasz hinge.
    learning_rate : float
        Adam's (peak) learning rate, > 0.
    seed : int
        Global random seed set before the model is built.
    mixed_precision : bool
        Use ``mixed_float16`` when a GPU is present (ignored, with a warning, on CPU).
    bn_momentum : float or None
        Momentum of every BatchNormalization layer's moving statistics, in
        ``(0, 1)``. The default 0.9 (Keras uses 0.99) lets the inference-time
        statistics catch up within tens of steps, which short CPU runs, small
        batches and training from scratch need; None keeps the backbone's own.
    decoder_filters : tuple of int
        Widths of the five U-Net decoder blocks, deepest first; the default is
        segmentation_models' ``(256, 128, 64, 32, 16)``. Halving them makes a
        CPU training step about 1.6 times faster.
    pixel_size_um : float or None
        Micrometres per pixel of the images the network saw (after
        ``downsample``), or None if unknown. Prediction resamples its input to it.
    downsample : float or None
        The factor from the training images' full resolution to the network's
        input, or None if unknown; prediction uses it when the input's pixel size
        is unknown.
    stain : dict or None
        A stain normaliser fitted on the training images, as its ``to_dict()``
        (see :attr:`GlomUNet.stain_normalizer`), or None.
    min_confidence : float or None
        Prediction removes regions of the mask whose mean probability is below
        this (see :class:`glomseg.PredictConfig`), in ``[0, 1)``; None: keep all.

    Examples
    --------
    >>> config = ModelConfig(backbone="resnet18", input_size=128, pixel_size_um=1.96)
    >>> ModelConfig.from_dict(config.to_dict()) == config
    True
    >>> ModelConfig(input_size=100)
    Traceback (most recent call last):
    ...
    ValueError: input_size must be a positive multiple of 32, got 100
    >>> ModelConfig(loss="bce_dcie")
    Traceback (most recent call last):
    ...
    ValueError: loss must be one of 'bce_dice', 'bce_lovasz', 'dice', got 'bce_dcie'; did you ...
    """

    backbone: str = "resnet34"
    input_size: int = 256
    encoder_weights: str | None = None
    loss: LossName = "bce_dice"
    learning_rate: float = 1e-3
    seed: int = 0
    mixed_precision: bool = False
    bn_momentum: float | None = 0.9
    decoder_filters: tuple[int, ...] = DEFAULT_DECODER_FILTERS
    pixel_size_um: float | None = None
    downsample: float | None = None
    stain: Mapping[str, Any] | None = field(default=None, compare=True)
    min_confidence: float | None = None

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
        look_up_option("loss", self.loss, LOSSES)
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {rate!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.mixed_precision, bool):
            raise TypeError(f"mixed_precision must be a bool, got {self.mixed_precision!r}")
        filters = self.decoder_filters
        if (
            not isinstance(filters, tuple | list)
            or len(filters) != 5
            or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in filters)
        ):
            raise ValueError(f"decoder_filters must be 5 positive integers, got {filters!r}")
        object.__setattr__(self, "decoder_filters", tuple(filters))
        _positive_number("pixel_size_um", self.pixel_size_um, allow_none=True)
        _positive_number("downsample", self.downsample, allow_none=True)
        if self.stain is not None and not isinstance(self.stain, Mapping):
            raise TypeError(
                f"stain must be None or a dict (a normaliser's to_dict()), got {self.stain!r}"
            )
        if self.stain is not None:  # checked now, not at the first prediction
            from glomseg.model._stain import normalizer_from_dict

            try:
                normalizer_from_dict(self.stain)
            except (TypeError, ValueError, KeyError) as error:
                raise ValueError(f"stain is not a stain normaliser's to_dict(): {error}") from None
        confidence = self.min_confidence
        if confidence is not None and (
            isinstance(confidence, bool)
            or not isinstance(confidence, int | float)
            or not 0 <= confidence < 1
        ):
            raise ValueError(f"min_confidence must be None or in [0, 1), got {confidence!r}")
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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        return cls(**data)


def _config_path(path: Path) -> Path:
    """``model.h5`` -> ``model.h5.json``: where a model's configuration is saved."""
    return path.with_name(path.name + ".json")


def _parse_config(source: Path, data: object) -> ModelConfig:
    """``data`` (a configuration read for ``source``) as a :class:`ModelConfig`, else raise."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: not a GlomUNet configuration (not a JSON object)")
    try:
        return ModelConfig.from_dict(data)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source}: not a GlomUNet configuration ({error})") from None


def _read_config(model_file: Path) -> ModelConfig:
    """The configuration in ``<model_file>.json``, else raise naming it."""
    config_file = _config_path(model_file)
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found: GlomUNet.load needs the configuration that "
            "GlomUNet.save writes next to the model"
        )
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"{config_file}: not a GlomUNet configuration ({error})") from None
    return _parse_config(config_file, data)


def _write_config(config: ModelConfig, path: Path) -> None:
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    with atomic_path(_config_path(path), clean=True) as tmp:
        tmp.write_text(text, encoding="utf-8")


def stain_dict(stain: Any) -> dict[str, Any] | None:
    """A stain normaliser (or its ``to_dict()``) as a plain dict for :attr:`ModelConfig.stain`."""
    if stain is None or isinstance(stain, Mapping):
        return None if stain is None else dict(stain)
    to_dict = getattr(stain, "to_dict", None)
    if not callable(to_dict):
        raise TypeError(
            f"stain must be None, a stain normaliser or its to_dict(), got {type(stain).__name__}"
        )
    return dict(to_dict())
