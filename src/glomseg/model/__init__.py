"""The U-Net and its training: :class:`GlomUNet`, :class:`TrainingRecipe`, augmentation, stain.

:class:`GlomUNet` wraps a ``segmentation_models`` U-Net (TensorFlow is imported
on first use, never at import); :class:`TrainingRecipe` trains it step by step
from whole images with :class:`Augmentation`; stain normalisers
(:class:`ReinhardNormalizer`, :class:`MacenkoNormalizer`), losses, training
crops and ``tf.data`` datasets, and the pretrained models shipped as package
data (:meth:`GlomUNet.pretrained`, :class:`ModelCard`).

May import: :mod:`glomseg.io`, :mod:`glomseg.annotations`, :mod:`glomseg.tiles`
and :mod:`glomseg.errors`.
"""

from __future__ import annotations

from glomseg.model._augment import (
    STAIN_BANK,
    Augmentation,
    StainMatrix,
)
from glomseg.model._backends import (
    BACKENDS,
    PRECISIONS,
    BackendName,
    CompiledPredictor,
    PrecisionName,
    cpu_bfloat16,
    openvino_available,
    resolve_backend,
)
from glomseg.model._datasets import (
    SplitName,
    TileRecord,
    make_datasets,
    read_records,
    split_tiles,
)
from glomseg.model._losses import (
    LOSS_SMOOTH,
    LossName,
    bce_dice_loss,
    bce_lovasz_loss,
    dice_loss,
    dice_metric,
    lovasz_hinge_loss,
)
from glomseg.model._model import (
    GlomUNet,
    ModelConfig,
    ScheduleName,
    load_pretrained,
)
from glomseg.model._pretrained import (
    ModelCard,
    PretrainedFiles,
    available_models,
    read_pretrained,
)
from glomseg.model._recipe import TrainingRecipe
from glomseg.model._sampling import (
    CropSampler,
    load_training_images,
    make_crop_dataset,
)
from glomseg.model._stain import (
    MIN_STAIN_PIXELS,
    MacenkoNormalizer,
    ReinhardNormalizer,
    StainMethod,
    StainNormalizer,
    fit_stain_normalizer,
    normalizer_from_dict,
)

__all__ = [
    "Augmentation",
    "BACKENDS",
    "BackendName",
    "CompiledPredictor",
    "CropSampler",
    "GlomUNet",
    "LOSS_SMOOTH",
    "LossName",
    "MIN_STAIN_PIXELS",
    "MacenkoNormalizer",
    "ModelCard",
    "ModelConfig",
    "PRECISIONS",
    "PrecisionName",
    "PretrainedFiles",
    "ReinhardNormalizer",
    "STAIN_BANK",
    "ScheduleName",
    "SplitName",
    "StainMatrix",
    "StainMethod",
    "StainNormalizer",
    "TileRecord",
    "TrainingRecipe",
    "available_models",
    "bce_dice_loss",
    "bce_lovasz_loss",
    "cpu_bfloat16",
    "dice_loss",
    "dice_metric",
    "fit_stain_normalizer",
    "load_pretrained",
    "load_training_images",
    "lovasz_hinge_loss",
    "make_crop_dataset",
    "make_datasets",
    "normalizer_from_dict",
    "openvino_available",
    "read_pretrained",
    "read_records",
    "resolve_backend",
    "split_tiles",
]
