"""A training recipe that learns glomeruli on a CPU: :class:`TrainingRecipe`.

The recipe is a frozen value: the model (backbone, decoder widths, crop size), the
data (resolution, glomerulus-centred share of crops, augmentation) and the
optimisation (steps, batch, peak learning rate, cosine schedule with warm-up,
EMA of the weights, loss). :meth:`TrainingRecipe.train` runs it on whole
training images held in memory (see :func:`glomseg.load_training_images`) for a
fixed number of optimiser steps, so its result depends on the seed and the
steps, never on how fast the machine is.

Its defaults are what the training benchmark (``benchmarks/bench_training.py``)
measured on 2 CPU cores: a ResNet-18 U-Net with half-width decoder on 256-pixel
crops at about 2 um per pixel, half of them centred on a glomerulus, with flips,
quarter turns, rotation, zoom, stain, colour, blur and noise augmentation;
BCE + Dice loss; Adam at 1e-3 with 5 % linear warm-up and cosine decay; EMA 0.99.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from glomseg.errors import look_up_option
from glomseg.model._augment import Augmentation
from glomseg.model._losses import LOSSES, LossName

__all__ = ["TrainingRecipe"]

logger = logging.getLogger(__name__)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")


@dataclass(frozen=True)
class TrainingRecipe:
    """How to train a :class:`glomseg.GlomUNet` from whole images, step by step.

    Parameters
    ----------
    backbone : str
        segmentation_models backbone.
    decoder_filters : tuple of int
        The U-Net decoder widths, deepest first.
    crop_size : int
        Side of the training crops and of the model's input, a multiple of 32.
    steps : int
        Optimiser steps, > 0.
    batch_size : int
        Crops per step, > 0.
    learning_rate : float
        Peak learning rate of Adam.
    warmup : float
        Share of ``steps`` with a linear warm-up, in ``[0, 0.5]``.
    ema : float or None
        Momentum of the exponential moving average of the weights, or None.
    loss : {"dice", "bce_dice", "bce_lovasz"}
        The training loss.
    glomerulus_fraction : float
        Share of crops centred on a glomerulus pixel (the rest on tissue).
    augmentation : Augmentation
        The augmentation of every crop.
    seed : int
        The seed of the weights, the crops and the augmentation.
    bn_momentum : float
        Batch-norm momentum (0.9 keeps the statistics current at batch 8).

    Examples
    --------
    >>> recipe = TrainingRecipe(steps=600)
    >>> recipe.warmup_steps, recipe.crops
    (30, 4800)
    >>> TrainingRecipe.from_dict(recipe.to_dict()) == recipe
    True
    >>> TrainingRecipe(crop_size=250)
    Traceback (most recent call last):
    ...
    ValueError: crop_size must be a positive multiple of 32, got 250
    """

    backbone: str = "resnet18"
    decoder_filters: tuple[int, ...] = (128, 64, 32, 16, 8)
    crop_size: int = 256
    steps: int = 1200
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup: float = 0.05
    ema: float | None = 0.99
    loss: LossName = "bce_dice"
    glomerulus_fraction: float = 0.5
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 0
    bn_momentum: float = 0.9

    def __post_init__(self) -> None:
        size = self.crop_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 32:
            raise ValueError(f"crop_size must be a positive multiple of 32, got {size!r}")
        _check_int("steps", self.steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("seed", self.seed, 0)
        _check_number("learning_rate", self.learning_rate, 1e-8, 1.0)
        _check_number("warmup", self.warmup, 0.0, 0.5)
        _check_number("glomerulus_fraction", self.glomerulus_fraction, 0.0, 1.0)
        _check_number("bn_momentum", self.bn_momentum, 1e-6, 1 - 1e-6)
        if self.ema is not None:
            _check_number("ema", self.ema, 1e-6, 1 - 1e-6)
        look_up_option("loss", self.loss, LOSSES)
        if not isinstance(self.augmentation, Augmentation):
            raise TypeError(f"augmentation must be an Augmentation, got {self.augmentation!r}")
        object.__setattr__(self, "decoder_filters", tuple(self.decoder_filters))

    @property
    def warmup_steps(self) -> int:
        """Steps of linear warm-up."""
        return round(self.warmup * self.steps)

    @property
    def crops(self) -> int:
        """Crops the model sees in all, ``steps * batch_size``."""
        return self.steps * self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a JSON-serialisable dict."""
        return json.loads(json.dumps(dataclasses.asdict(self)))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingRecipe:
        """Rebuild a recipe from :meth:`to_dict`'s output."""
        values = dict(data)
        values["augmentation"] = Augmentation(**values.get("augmentation", {}))
        return cls(**values)

    def build(
        self,
        *,
        pixel_size_um: float | None = None,
        downsample: float | None = None,
        stain: Any = None,
        encoder_weights: str | None = None,
    ) -> Any:
        """A new, untrained :class:`glomseg.GlomUNet` of this recipe.

        Parameters
        ----------
        pixel_size_um : float, optional
            Micrometres per pixel of the training images, recorded in the model.
        downsample : float, optional
            Factor from the images' source resolution to the training images, recorded.
        stain : stain normaliser, optional
            Recorded with the model; :meth:`fit` applies it to the training images.
        encoder_weights : str, optional
            A local ``.h5`` file of encoder weights (see :class:`glomseg.GlomUNet`).
        """
        from glomseg.model._model import GlomUNet

        return GlomUNet(
            backbone=self.backbone,
            input_size=self.crop_size,
            encoder_weights=encoder_weights,
            loss=self.loss,
            learning_rate=self.learning_rate,
            seed=self.seed,
            bn_momentum=self.bn_momentum,
            decoder_filters=self.decoder_filters,
            pixel_size_um=pixel_size_um,
            downsample=downsample,
            stain=stain,
        )

    def fit(
        self,
        model: Any,
        images: Sequence[NDArray[np.uint8]],
        masks: Sequence[NDArray[Any]],
        *,
        steps_per_epoch: int | None = None,
        callbacks: Sequence[Any] = (),
        verbose: int = 0,
    ) -> Any:
        """Train ``model`` on whole images for :attr:`steps` steps.

        Parameters
        ----------
        model : GlomUNet
            Usually from :meth:`build`; its ``input_size`` is the crop size.
        images, masks : sequences of ndarray
            Training images (``uint8`` ``(H, W, 3)``) and their masks at the
            training resolution (for example from
            :func:`glomseg.load_training_images`). The model's stain normaliser,
            if it has one, is applied to the images first.
        steps_per_epoch : int, optional
            Steps between Keras epoch ends (where ``callbacks`` report);
            default all steps in one epoch. Must divide :attr:`steps`.
        callbacks : sequence of keras callbacks
            Called as Keras does; at each epoch end the model holds the EMA
            weights when :attr:`ema` is set.
        verbose : int
            Keras' verbosity.

        Returns
        -------
        GlomUNet
            ``model``, trained (holding the averaged weights when :attr:`ema` is set).
        """
        from glomseg.model._sampling import CropSampler, make_crop_dataset

        if self.crop_size < model.config.input_size:
            raise ValueError(
                f"crop_size {self.crop_size} is smaller than the model's input_size "
                f"{model.config.input_size}, the size training crops are cut at: use "
                f"TrainingRecipe(crop_size={model.config.input_size}, ...)"
            )
        per_epoch = self.steps if steps_per_epoch is None else steps_per_epoch
        _check_int("steps_per_epoch", per_epoch, 1)
        if self.steps % per_epoch:
            raise ValueError(f"steps_per_epoch {per_epoch} must divide steps {self.steps}")
        stain = model.stain_normalizer
        if stain is not None:
            images = [stain.transform(image) for image in images]
        augmentation = self.augmentation
        if augmentation.stain_transfer and augmentation.source_stain is None:
            from glomseg.model._stain import MacenkoNormalizer

            source = MacenkoNormalizer.fit(images).stain_matrix
            augmentation = augmentation.replace(source_stain=source)
            logger.info("stain transfer unmixes with the training images' stains %s", source)
        sampler = CropSampler(
            images,
            masks,
            region_size=augmentation.region_size(self.crop_size),
            glomerulus_fraction=self.glomerulus_fraction,
            seed=self.seed,
        )
        data = make_crop_dataset(
            sampler,
            crop_size=model.config.input_size,
            batch_size=self.batch_size,
            augmentation=augmentation,
        )
        logger.info("training for %d steps on %d images", self.steps, len(images))
        model.fit(
            data,
            epochs=self.steps // per_epoch,
            steps_per_epoch=per_epoch,
            patience=None,
            schedule="cosine",
            warmup_steps=self.warmup_steps,
            ema=self.ema,
            learning_rate=self.learning_rate,
            callbacks=callbacks,
            verbose=verbose,
        )
        return model

    def train(
        self,
        images: Sequence[NDArray[np.uint8]],
        masks: Sequence[NDArray[Any]],
        *,
        pixel_size_um: float | None = None,
        downsample: float | None = None,
        stain: Any = None,
        encoder_weights: str | None = None,
    ) -> Any:
        """:meth:`build` a model and :meth:`fit` it: the whole recipe in one call.

        Parameters
        ----------
        images, masks : sequences of ndarray
            See :meth:`fit`.
        pixel_size_um, downsample, stain, encoder_weights
            See :meth:`build`.

        Returns
        -------
        GlomUNet
            The trained model.
        """
        model = self.build(
            pixel_size_um=pixel_size_um,
            downsample=downsample,
            stain=stain,
            encoder_weights=encoder_weights,
        )
        return self.fit(model, images, masks)
