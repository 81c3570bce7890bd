"""Train and run a U-Net on glomerulus tiles: :class:`GlomUNet` and its configuration.

Everything that needs TensorFlow imports it lazily (:mod:`glomseg.model._tf`), so
``import glomseg`` stays fast and works without the ``tf`` extra
(``pip install 'glomseg[tf]'``). Losses and the Dice metric live in
:mod:`glomseg.model._losses`, tile datasets in :mod:`glomseg.model._datasets`, crop sampling
and augmentation in :mod:`glomseg.model._sampling` and :mod:`glomseg.model._augment`.

**Preprocessing.** Datasets yield ``float32`` images in ``[0, 1]``;
:meth:`GlomUNet.fit` and :meth:`GlomUNet.predict` apply the backbone's own
preprocessing (``segmentation_models.get_preprocessing(backbone)`` on
``255 * image``), so images reach the network exactly as the pretrained encoder
expects, in training and in prediction alike.

**Physical scale.** A model records the pixel size of the images its network saw
(:attr:`ModelConfig.pixel_size_um`, micrometres per pixel) and the downsample
from its training images' full resolution (:attr:`ModelConfig.downsample`), so
prediction can resample any input to the scale the model learned.

**Optimisation.** :meth:`GlomUNet.fit` takes a learning-rate schedule (constant,
or cosine with linear warm-up) and an optional exponential moving average of the
weights (EMA, as the second-placed HuBMAP solution used); both depend on steps,
never on wall time.

**Reproducibility.** Building a :class:`GlomUNet` calls
``tf_keras.utils.set_random_seed(seed)`` (Python, NumPy and TensorFlow global
seeds), and the datasets shuffle and augment from their own ``seed``. Runs on the
same machine and software then start from identical weights and see identical
batches; bit-identical training additionally needs
``tf.config.experimental.enable_op_determinism()`` (slower, not set here).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike, NDArray

from glomseg.errors import ModelFileError, PretrainedWeightsError, look_up_option
from glomseg.model._backends import CompiledPredictor, cached_predictor, fingerprint_function
from glomseg.model._config import (
    DEFAULT_DECODER_FILTERS,
    ModelConfig,
    _parse_config,
    _read_config,
    _write_config,
    stain_dict,
)
from glomseg.model._losses import LossName, custom_objects
from glomseg.model._optim import compile_for_training, cosine_schedule, ema_callback
from glomseg.model._persist import (
    checkpoint_callback,
    load_optimizer_state,
    load_weights,
    read_config,
    write_model_file,
)
from glomseg.model._pretrained import ModelCard, read_pretrained
from glomseg.model._tf import import_tf as _import_tf
from glomseg.model._weights import load_encoder_weights, no_downloads

__all__ = ["GlomUNet", "ModelConfig", "PretrainedWeightsError", "ScheduleName"]

logger = logging.getLogger(__name__)

ScheduleName = Literal["constant", "cosine"]
"""Learning-rate schedules of :meth:`GlomUNet.fit`."""

_SCHEDULES: tuple[str, ...] = get_args(ScheduleName)
_Preprocess = Callable[[NDArray[np.float32]], NDArray[np.float32]]


# --------------------------------------------------------------------------- training


# --------------------------------------------------------------------------- model


class GlomUNet:
    """A ``segmentation_models`` U-Net for glomerulus masks, with Dice metrics.

    Parameters
    ----------
    backbone, input_size, encoder_weights, loss, learning_rate, seed, mixed_precision
        See :class:`ModelConfig`. ``encoder_weights`` may be ``None``,
        ``"imagenet"`` (never downloaded: the file must already be in the Keras
        cache ``~/.keras/models/``, else :class:`PretrainedWeightsError` names the
        file and its URL) or a path to a local ``.h5`` file (for example the
        ``*_no_top.h5`` ImageNet file, or any weights saved from a model of the
        same backbone), whose layers are loaded by name.
    bn_momentum, decoder_filters, pixel_size_um, downsample, min_confidence
        See :class:`ModelConfig`.
    stain : stain normaliser or dict, optional
        A normaliser fitted on the training images (e.g.
        :class:`glomseg.model.ReinhardNormalizer`), stored in the configuration;
        prediction applies it to its input (see :attr:`stain_normalizer`).

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
        decoder_filters: Sequence[int] = DEFAULT_DECODER_FILTERS,
        pixel_size_um: float | None = None,
        downsample: float | None = None,
        stain: Any = None,
        min_confidence: float | None = None,
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
            decoder_filters=tuple(decoder_filters),
            pixel_size_um=pixel_size_um,
            downsample=downsample,
            stain=stain_dict(stain),
            min_confidence=min_confidence,
        )
        self._config = config
        _, keras, _ = _import_tf()
        keras.utils.set_random_seed(config.seed)
        self._model = self._build(config)
        self._preprocess = self._preprocessing(config.backbone)
        self._card: ModelCard | None = None

    @classmethod
    def from_config(cls, config: ModelConfig) -> GlomUNet:
        """A new model (weights as the configuration says) from a :class:`ModelConfig`."""
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return cls(**values)

    @classmethod
    def pretrained(cls, name: str | None = None) -> GlomUNet:
        """The glomerulus model shipped with glomseg, loaded offline from package data.

        Its configuration carries its pixel size, input size, downsample and
        stain normaliser, so ``predict_slide(slide, GlomUNet.pretrained())`` and
        ``predict_image(image, GlomUNet.pretrained(), pixel_size_um=...)`` need
        no other argument. Its :attr:`card` says how it was trained and how good
        it is; ``docs/model_card.rst`` shows it.

        Parameters
        ----------
        name : str, optional
            One of :func:`glomseg.model.available_models`; default ``"glomeruli-pas"``.

        Returns
        -------
        GlomUNet

        Raises
        ------
        ValueError
            If there is no model of that name (the message lists the available ones).
        PretrainedWeightsError
            If the model's files are missing or corrupt.

        Examples
        --------
        >>> model = GlomUNet.pretrained()
        >>> model.card.name, model.config.input_size, model.config.pixel_size_um
        ('glomeruli-pas', 256, 1.96)
        >>> GlomUNet.pretrained("glomeruli-hne")
        Traceback (most recent call last):
        ...
        ValueError: no pretrained model named 'glomeruli-hne'; available: glomeruli-crosslab, ...
        """
        return load_pretrained(name)

    @property
    def card(self) -> ModelCard | None:
        """The :class:`glomseg.model.ModelCard` of a pretrained model, else None."""
        return self._card

    # ---- construction

    @staticmethod
    def _build(config: ModelConfig) -> Any:
        """The compiled network of ``config``, built under the global dtype policy."""
        tf, keras, sm = _import_tf()
        if config.backbone not in sm.Backbones.models_names():
            look_up_option("backbone", config.backbone, sm.Backbones.models_names())
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
            kwargs = {
                "input_shape": shape,
                "classes": 1,
                "activation": "sigmoid",
                "decoder_filters": config.decoder_filters,
            }
            if weights == "imagenet":
                with no_downloads(sm._KERAS_UTILS, config.backbone):
                    model = sm.Unet(config.backbone, encoder_weights="imagenet", **kwargs)
            else:
                model = sm.Unet(config.backbone, encoder_weights=None, **kwargs)
                if weights is not None:
                    load_encoder_weights(model, Path(weights))
            if config.bn_momentum is not None:
                for layer in model.layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.momentum = config.bn_momentum
            if use_mixed:
                output = keras.layers.Activation("linear", dtype="float32", name="probabilities")(
                    model.output
                )
                model = keras.Model(model.input, output, name=model.name)
            compile_for_training(keras, model, config.loss, config.learning_rate)
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
    def stain_normalizer(self) -> Any:
        """The stain normaliser stored with the model, or None."""
        if self._config.stain is None:
            return None
        from glomseg.model._stain import normalizer_from_dict

        return normalizer_from_dict(dict(self._config.stain))

    def set_stain_normalizer(self, normalizer: Any) -> None:
        """Store a stain normaliser with the model (None removes it).

        Prediction then applies it to every tile (see :func:`glomseg.predict_slide`),
        and :meth:`save` keeps it in the configuration. Use it for a model trained
        on normalised images, or to map another lab's images onto the colours a
        model was trained on (for the pretrained model, from the reference in its
        :attr:`card`).

        Parameters
        ----------
        normalizer : ReinhardNormalizer, MacenkoNormalizer, dict or None
            The normaliser, or its ``to_dict()``.
        """
        self._config = dataclasses.replace(self._config, stain=stain_dict(normalizer))

    def set_min_confidence(self, value: float | None) -> None:
        """Store the region confidence prediction applies by default (None: keep all regions).

        :func:`glomseg.predict_slide` and :func:`glomseg.predict_image` remove
        regions of the mask whose mean probability is below it, unless their
        :class:`glomseg.PredictConfig` sets ``min_confidence``; :meth:`save`
        keeps it in the configuration.
        """
        self._config = dataclasses.replace(self._config, min_confidence=value)

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
        schedule: ScheduleName = "constant",
        warmup_steps: int = 0,
        ema: float | None = None,
        learning_rate: float | None = None,
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
        schedule : {"constant", "cosine"}
            The learning rate: constant at ``config.learning_rate``, or a linear
            warm-up over ``warmup_steps`` from 1 % of it, then a cosine decay to
            1 % of it at the last of ``epochs * steps_per_epoch`` steps (which
            ``"cosine"`` needs). A cosine call starts the schedule and the
            optimizer afresh, and so does a constant call after a cosine one or
            with ``learning_rate``; otherwise a constant call goes on with the
            optimizer's state (as :meth:`load` restores it).
        warmup_steps : int
            Steps of linear warm-up of the cosine schedule, >= 0.
        ema : float or None
            Keep an exponential moving average of the weights with this momentum
            (e.g. 0.99), in ``(0, 1)``: it is what validation measures, what
            checkpoints save, and what the model holds when training ends.
            None (the default) trains the weights alone.
        learning_rate : float, optional
            The (peak) learning rate of this call, > 0, for a model trained on:
            fine-tuning a pretrained model usually wants less than it was trained
            with. Default ``config.learning_rate``; the config keeps its value.

        Returns
        -------
        dict of str to list of float
            Keras' history: ``loss``, ``dice_metric``, ``val_loss``,
            ``val_dice_metric`` per epoch.

        Raises
        ------
        ValueError
            If an option is out of range, or ``schedule="cosine"`` lacks
            ``steps_per_epoch``.
        """
        tf, keras, _ = _import_tf()
        look_up_option("schedule", schedule, _SCHEDULES)
        for name, value in (("epochs", epochs), ("warmup_steps", warmup_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if ema is not None and (
            isinstance(ema, bool) or not isinstance(ema, int | float) or not 0 < ema < 1
        ):
            raise ValueError(f"ema must be None or lie in (0, 1), got {ema!r}")
        peak = self._config.learning_rate if learning_rate is None else learning_rate
        if isinstance(peak, bool) or not isinstance(peak, int | float) or not peak > 0:
            raise ValueError(f"learning_rate must be a number > 0, got {learning_rate!r}")
        if schedule == "cosine":
            if steps_per_epoch is None:
                raise ValueError("schedule='cosine' needs steps_per_epoch (its length in steps)")
            total = epochs * steps_per_epoch
            rate = cosine_schedule(keras, float(peak), total, warmup_steps)
            compile_for_training(keras, self._model, self._config.loss, rate)
        elif learning_rate is not None or isinstance(
            getattr(self._model.optimizer, "_learning_rate", None),
            keras.optimizers.schedules.LearningRateSchedule,
        ):  # a schedule's step count runs on past its end, at 1 % of the peak
            compile_for_training(keras, self._model, self._config.loss, float(peak))
        monitor = "val_dice_metric" if validation is not None else "dice_metric"
        all_callbacks: list[Any] = []
        if ema is not None:  # first, so the callbacks after it see the average
            all_callbacks.append(ema_callback(keras, tf, float(ema)))
        if checkpoint_dir is not None:
            directory = Path(checkpoint_dir)
            directory.mkdir(parents=True, exist_ok=True)
            best = directory / "best.h5"
            all_callbacks.append(checkpoint_callback(keras, lambda: self.save(best), monitor))
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
        if batch_size is None:  # the predictor would take None as "all at once"
            raise ValueError("batch_size must be an integer >= 1, got None")
        return self.compiled("tensorflow", "float32")(np.asarray(images), batch_size=batch_size)

    def __call__(self, images: ArrayLike) -> NDArray[np.float32]:
        """Same as :meth:`predict`, so a model can serve as a stitching predictor."""
        return self.predict(images)

    def compiled(self, backend: str = "auto", precision: str = "auto") -> CompiledPredictor:
        """The model compiled for a CPU backend and precision, cached on the model.

        :func:`glomseg.predict_image`, :func:`glomseg.predict_slide` and
        :func:`glomseg.predict_slides` call it with
        :attr:`glomseg.PredictConfig.backend` and
        :attr:`~glomseg.PredictConfig.precision`; see :ref:`cpu-prediction`
        (installation docs) for what each one does and what ``"auto"`` picks.

        Parameters
        ----------
        backend : {"auto", "tensorflow", "openvino"}
        precision : {"auto", "float32", "bfloat16", "int8"}

        Returns
        -------
        CompiledPredictor
            Called like the model: uint8 tiles to probabilities. Compiled once
            per backend and precision; OpenVINO and bfloat16 predictors, which
            hold a copy of the weights, are compiled again when the weights
            have changed since (after :meth:`fit`, say). An int8 network made
            from other weights is never used (see :meth:`quantize_int8`).

        Raises
        ------
        glomseg.errors.BackendError
            If the backend is not installed (the message names the extra) or
            cannot run that precision on this CPU.
        """
        return cached_predictor(self, backend, precision)

    def _fingerprint(self) -> tuple[int, ...]:
        """The fingerprint of the network's weights now (see ``fingerprint_function``)."""
        fingerprint = self.__dict__.get("_fingerprint")
        if fingerprint is None:
            fingerprint = self.__dict__["_fingerprint"] = fingerprint_function(self._model)
        stamp: tuple[int, ...] = fingerprint()
        return stamp

    def quantize_int8(
        self, images: Sequence[ArrayLike], *, crops: int = 300, seed: int = 0
    ) -> None:
        """Make the model's int8 network for OpenVINO, calibrated on its training images.

        Afterwards ``PredictConfig(precision="int8")`` predicts with it on
        OpenVINO, about 1.7 times as fast as float32 on the CPU, until the
        weights change (training again makes the network stale: quantize again
        then). Its masks agree with float32's to a Dice of 0.99 or more on
        images like the calibration images, but less on another lab's
        (:doc:`/benchmarks`), so ``"auto"`` never picks it.
        :func:`~glomseg.model._pretrained.save_pretrained` folders keep it;
        ``glomeruli-crosslab`` ships one. See :mod:`glomseg.model._int8` for what stays
        in float32 and how the calibration crops are made.

        Parameters
        ----------
        images : sequence of array_like
            ``uint8`` RGB images at the model's scale, such as those it was trained on.
        crops : int
            Calibration crops (cross-lab augmented), > 0.
        seed : int
            The same seed and images give the same network.

        Raises
        ------
        glomseg.errors.BackendError
            If NNCF or OpenVINO is not installed (the message names the extra).
        ValueError
            If ``images`` is empty or not uint8 RGB, or ``crops`` < 1.
        """
        from glomseg.model._int8 import quantize

        self.__dict__["_int8"] = quantize(self, images, crops=crops, seed=seed)

    # ---- persistence

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the weights, optimizer state and configuration: data only, no code.

        ``path`` is one HDF5 file of arrays and strings (layout in
        :mod:`glomseg.model._persist`) that also holds the configuration; a copy
        of it is written to ``<path>.json`` for people to read. Both are written
        beside their final names and renamed into place, so a full disk or a
        killed process leaves the previous files, never half-written ones.

        Parameters
        ----------
        path : path
            Ends in ``.h5``.

        Returns
        -------
        pathlib.Path
            The model file.
        """
        target = Path(path)
        if target.suffix.lower() != ".h5":
            raise ValueError(
                f"path must end in .h5, got {target.name!r} (GlomUNet.save writes weights "
                "and configuration only; .keras archives are no longer written)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self._config.to_dict(), indent=2) + "\n"
        write_model_file(target, self._model, text)
        _write_config(self._config, target)
        return target

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, compile: bool = True, trust: bool = False
    ) -> GlomUNet:
        """Load a model saved by :meth:`save` (or a ``best.h5`` checkpoint of :meth:`fit`).

        The network is rebuilt from the configuration by glomseg's own code and
        the file's arrays are copied into it by layer name and shape: nothing in
        the file is run or deserialised, so a model file from someone else is as
        safe to load as an image. ``.h5`` files that earlier releases saved
        through Keras load the same way (their configuration is the
        ``<path>.json`` beside them).

        Parameters
        ----------
        path : path
            The ``.h5`` file. Its configuration is the one stored in it, else
            the ``<path>.json`` beside it.
        compile : bool
            Compile with the configuration's loss, Dice metric and Adam, and
            restore the saved optimizer state when it fits (to go on training);
            ``False`` skips the optimizer state.
        trust : bool
            Needed to load a ``.keras`` archive (from earlier releases): Keras
            rebuilds it from the Python classes its ``config.json`` names, which
            can run code, so load only a file you trust that way, then
            :meth:`save` it as ``.h5``.

        Returns
        -------
        GlomUNet

        Raises
        ------
        FileNotFoundError
            If the file, or the configuration of a file without one, is missing.
        ModelFileError
            If the file is not HDF5, its layers or shapes do not fit its
            configuration (the message names the first mismatch), or it is a
            ``.keras`` archive and ``trust`` is False.
        ValueError
            If the configuration is not a valid :class:`ModelConfig`.
        """
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"model file not found: {source}")
        if source.suffix.lower() == ".keras" and not trust:
            raise ModelFileError(
                f"{source}: a .keras archive is rebuilt from the classes its config.json "
                "names, which can run code; load it with trust=True only if you trust "
                "its origin, then re-save it with GlomUNet.save(...h5)"
            )
        stored = None if source.suffix.lower() == ".keras" else read_config(source)
        config = _read_config(source) if stored is None else _parse_config(source, stored)
        if source.suffix.lower() == ".keras":
            return cls._load_trusted(source, config, compile=compile)
        self = cls.from_config(dataclasses.replace(config, encoder_weights=None))
        load_weights(self._model, source)
        if compile:
            load_optimizer_state(self._model.optimizer, self._model.trainable_variables, source)
        self._config = config
        return self

    @classmethod
    def _load_trusted(cls, source: Path, config: ModelConfig, *, compile: bool) -> GlomUNet:
        """A ``.keras`` archive through Keras itself (``trust=True`` only)."""
        _, keras, _ = _import_tf()
        model = keras.models.load_model(
            str(source), custom_objects=custom_objects(), compile=compile, safe_mode=True
        )
        self = cls.__new__(cls)
        self._config = config
        self._model = model
        self._preprocess = cls._preprocessing(config.backbone)
        self._card = None
        return self

    def __repr__(self) -> str:
        c = self._config
        return (
            f"GlomUNet(backbone={c.backbone!r}, input_size={c.input_size}, "
            f"encoder_weights={c.encoder_weights!r}, loss={c.loss!r})"
        )


def load_pretrained(
    name: str | None = None, *, directory: str | os.PathLike[str] | None = None
) -> GlomUNet:
    """Load a pretrained model by name, offline (see :meth:`GlomUNet.pretrained`).

    Parameters
    ----------
    name : str, optional
        The model's name; default ``"glomeruli-pas"``.
    directory : path, optional
        The folder holding the models' folders; default those shipped in the package.

    Raises
    ------
    ValueError
        If no model of that name exists; the message lists those that do.
    PretrainedWeightsError
        If the model's files are missing, corrupt or do not fit its configuration.
    """
    files = read_pretrained(name, directory=directory)
    try:
        config = ModelConfig.from_dict(files.config)
    except (ValueError, TypeError) as error:
        raise PretrainedWeightsError(
            f"{files.folder}: not a valid pretrained model ({error})"
        ) from None
    model = GlomUNet.from_config(config)
    path = files.folder / "weights.npz"
    weights = model.keras_model.weights
    expected = [(w.name, tuple(w.shape)) for w in weights]
    got = [(n, tuple(a.shape)) for n, a in zip(files.names, files.arrays, strict=False)]
    if len(got) != len(expected) or any(g[1] != e[1] for g, e in zip(got, expected, strict=True)):
        raise PretrainedWeightsError(
            f"{path}: its {len(got)} arrays do not fit the {len(expected)} weights of "
            f"the model its config.json describes"
        )
    for weight, array in zip(weights, files.arrays, strict=True):
        weight.assign(array.astype(np.float32))
    model._card = files.card
    if files.int8 is not None:
        model.__dict__["_int8"] = files.int8
    return model
