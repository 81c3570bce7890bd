"""How a :class:`~glomseg.GlomUNet` runs on the CPU: TensorFlow or OpenVINO, in any precision.

:meth:`GlomUNet.compiled <glomseg.GlomUNet.compiled>` returns a
:class:`CompiledPredictor`, a callable ``(n, t, t, 3) uint8 -> (n, t, t)``
probabilities that :func:`glomseg.predict_image`, :func:`glomseg.predict_slide`
and :func:`glomseg.predict_slides` pick by :attr:`glomseg.PredictConfig.backend`
and :attr:`~glomseg.PredictConfig.precision`:

``backend``
    ``"tensorflow"`` runs the Keras network through one traced ``tf.function``
    (not ``Model.predict``, which builds a dataset on every call);
    ``"openvino"`` converts it once with OpenVINO (the ``openvino`` extra,
    ``pip install 'glomseg[openvino]'``) and runs it with OpenVINO's CPU plugin;
    ``"auto"`` (the default) is OpenVINO where it is installed and TensorFlow
    sees no GPU, else TensorFlow.
``precision``
    ``"float32"``, or ``"bfloat16"`` (weights and activations rounded to
    bfloat16, sums in float32): TensorFlow's ``mixed_bfloat16`` policy, or
    OpenVINO's ``bf16`` inference precision. ``"auto"`` (the default) is
    bfloat16 where the CPU computes it natively (AVX-512 BF16 or AMX, see
    :func:`cpu_bfloat16`), else float32. OpenVINO cannot run bfloat16 on a CPU
    without it (:class:`~glomseg.errors.BackendError`); TensorFlow emulates it there, slowly,
    which is only good for checking masks. ``"int8"`` runs the model's int8
    network on OpenVINO (see :mod:`glomseg.model._int8`): ``glomeruli-crosslab``
    ships one, and :meth:`GlomUNet.quantize_int8 <glomseg.GlomUNet.quantize_int8>`
    makes one for a model of one's own. ``"auto"`` never picks it: its masks
    agree with float32's less well on another lab's slides (see :doc:`/benchmarks`).

A compiled predictor is cached on its model, one per backend and precision, so
a worker converts its model once. OpenVINO and bfloat16 predictors hold a copy
of the weights: the cache checks a fingerprint of the Keras weights on every
:meth:`GlomUNet.compiled <glomseg.GlomUNet.compiled>` call and recompiles when
training has changed them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from glomseg.errors import BackendError, look_up_option

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BackendName",
    "CompiledPredictor",
    "PrecisionName",
    "cpu_bfloat16",
    "openvino_available",
    "resolve_backend",
]

logger = logging.getLogger(__name__)

BackendName = Literal["auto", "tensorflow", "openvino"]
"""Where a :class:`~glomseg.GlomUNet` runs: see :ref:`cpu-prediction`."""

PrecisionName = Literal["auto", "float32", "bfloat16", "int8"]
"""The arithmetic it runs in: see :ref:`cpu-prediction`."""

BACKENDS: tuple[str, ...] = get_args(BackendName)
PRECISIONS: tuple[str, ...] = get_args(PrecisionName)

OPENVINO_HINT = "backend='openvino' needs OpenVINO: pip install 'glomseg[openvino]'"

#: CPU flags (Linux ``/proc/cpuinfo``) of native bfloat16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def openvino_available() -> bool:
    """Whether OpenVINO can be imported (the ``openvino`` extra), without importing it."""
    return importlib.util.find_spec("openvino") is not None


@functools.cache
def cpu_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX).

    Read from the CPU flags in ``/proc/cpuinfo`` (Linux); where that file
    cannot be read, from OpenVINO's CPU capabilities when OpenVINO is
    installed, else False.

    Parameters
    ----------
    cpuinfo : str, optional
        Another file to read the flags from (for tests).

    Examples
    --------
    >>> isinstance(cpu_bfloat16(), bool)
    True
    """
    path = Path(cpuinfo if cpuinfo is not None else "/proc/cpuinfo")
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = None
    if text is not None:
        for line in text.splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                return any(flag in flags for flag in BF16_FLAGS)
        return False
    if cpuinfo is None and openvino_available():
        import openvino as ov

        capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return "BF16" in capabilities
    return False


def resolve_backend(
    backend: str = "auto", precision: str = "auto", *, gpu: bool = False, int8: bool = False
) -> tuple[str, str]:
    """The backend and precision that ``"auto"`` stands for on this machine.

    Parameters
    ----------
    backend : {"auto", "tensorflow", "openvino"}
    precision : {"auto", "float32", "bfloat16", "int8"}
    gpu : bool
        TensorFlow sees a GPU: then ``"auto"`` is TensorFlow in float32, which
        runs there (the model's own ``mixed_precision`` applies).
    int8 : bool
        The model has an int8 network for its current weights, which
        ``precision="int8"`` needs (``"auto"`` never picks int8).

    Returns
    -------
    (str, str)
        Neither is ``"auto"``.

    Raises
    ------
    ValueError
        If a name is not one of those.
    glomseg.errors.BackendError
        If ``backend="openvino"`` and OpenVINO is not installed (naming the
        extra), OpenVINO is asked for bfloat16 on a CPU without it, or int8 is
        asked of TensorFlow or of a model without an int8 network.

    Examples
    --------
    >>> resolve_backend("tensorflow", "float32")
    ('tensorflow', 'float32')
    >>> resolve_backend("auto")[0] in ("tensorflow", "openvino")
    True
    >>> resolve_backend("tensorflow", "int8", int8=True)
    Traceback (most recent call last):
    ...
    glomseg.errors.BackendError: precision='int8' runs on OpenVINO only: backend='openvino' ...
    """
    look_up_option("backend", backend, BACKENDS)
    look_up_option("precision", precision, PRECISIONS)
    if precision == "int8":
        if backend == "tensorflow":
            raise BackendError(
                "precision='int8' runs on OpenVINO only: backend='openvino' (or 'auto'), "
                "pip install 'glomseg[openvino]'"
            )
        if not openvino_available():
            raise BackendError(OPENVINO_HINT.replace("backend='openvino'", "precision='int8'"))
        if not int8:
            raise BackendError(
                "this model has no int8 network for its current weights (it was trained "
                "since, or never quantized): model.quantize_int8(images) makes one "
                "(pip install 'glomseg[int8]'), or use precision='float32'"
            )
        return "openvino", "int8"
    if backend == "auto":
        backend = "openvino" if openvino_available() and not gpu else "tensorflow"
    elif backend == "openvino" and not openvino_available():
        raise BackendError(OPENVINO_HINT)
    if precision == "auto":
        precision = "bfloat16" if cpu_bfloat16() and not gpu else "float32"
    elif precision == "bfloat16" and backend == "openvino" and not cpu_bfloat16():
        raise BackendError(
            "OpenVINO runs bfloat16 only on CPUs with AVX-512 BF16 or AMX, and this one has "
            "neither: use precision='float32' (or 'auto'), or backend='tensorflow', which "
            "emulates bfloat16 slowly"
        )
    return backend, precision


def fingerprint_function(network: Any) -> Callable[[], tuple[int, ...]]:
    """A function that summarises a Keras network's weights, to tell when training changed them.

    Per variable, the sum of its values' bit patterns as 64-bit integers:
    exact and independent of the order TensorFlow adds them in (the same weights
    always give the same fingerprint), read in place rather than copied out with
    ``get_weights`` (about a third of the time).
    """
    from glomseg.model._tf import import_tf

    tf, _, _ = import_tf()

    def bits(variable: Any) -> Any:
        value = tf.convert_to_tensor(variable)
        width = {2: tf.int16, 4: tf.int32, 8: tf.int64}[value.dtype.size]
        return tf.reduce_sum(tf.cast(tf.bitcast(value, width), tf.int64))

    summarise = tf.function(lambda: tf.stack([bits(v) for v in network.weights]))

    def fingerprint() -> tuple[int, ...]:
        return tuple(int(x) for x in summarise().numpy())

    return fingerprint


class CompiledPredictor:
    """A :class:`~glomseg.GlomUNet` compiled for one backend and precision.

    Call it like the model: ``(n, t, t, 3)`` uint8 tiles (``t`` the model's
    input size) to ``(n, t, t)`` float32 probabilities. Its ``config`` and
    ``stain_normalizer`` are the model's, so prediction takes the scale, region
    filter and normaliser from it as from the model. Make one with
    :meth:`GlomUNet.compiled <glomseg.GlomUNet.compiled>`.

    Attributes
    ----------
    backend : str
        ``"tensorflow"`` or ``"openvino"``.
    precision : str
        ``"float32"``, ``"bfloat16"`` or ``"int8"``.
    """

    def __init__(
        self,
        model: Any,
        backend: str,
        precision: str,
        run: Callable[[NDArray[np.float32]], NDArray[Any]],
    ) -> None:
        self._model = model
        self.backend = backend
        self.precision = precision
        self._run = run

    @property
    def config(self) -> Any:
        """The model's :class:`~glomseg.ModelConfig`."""
        return self._model.config

    @property
    def stain_normalizer(self) -> Any:
        """The model's stain normaliser, or None."""
        return self._model.stain_normalizer

    def __call__(
        self, images: NDArray[Any], /, *, batch_size: int | None = None
    ) -> NDArray[np.float32]:
        """Probabilities of ``images``, run ``batch_size`` at a time (default: all at once)."""
        batch = self._model.preprocess(images)
        size = self._model.config.input_size
        if batch.shape[1:3] != (size, size):
            raise ValueError(
                f"images must be {size} x {size} (the model's input_size), "
                f"got {batch.shape[1]} x {batch.shape[2]}"
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not len(batch):
            return np.zeros((0, size, size), dtype=np.float32)
        step = batch_size or len(batch)
        parts = [
            np.asarray(self._run(np.ascontiguousarray(batch[i : i + step])))
            for i in range(0, len(batch), step)
        ]
        return np.asarray(np.concatenate(parts).reshape(batch.shape[:3]), dtype=np.float32)

    def __repr__(self) -> str:
        return f"CompiledPredictor(backend={self.backend!r}, precision={self.precision!r})"


def cached_predictor(model: Any, backend: str, precision: str) -> CompiledPredictor:
    """``model.compiled(backend, precision)``: compiled once, kept on the model, never stale.

    The cache lives in the model's ``__dict__`` (``_compiled``), one predictor
    per resolved backend and precision, stamped with the weights' fingerprint
    when the predictor holds a copy of them (and, in int8, with the int8 network
    it was compiled from: quantizing again compiles again). Where ``"auto"`` chose OpenVINO and
    it cannot compile the network, TensorFlow is used (and remembered for these
    weights) with a warning. Threads that share a model wait for one another here,
    so a network is compiled once, and the process-wide Keras dtype policy that
    a bfloat16 build sets for a moment is never seen by another build.
    """
    with _COMPILING:
        return _cached_predictor(model, backend, precision)


_COMPILING = threading.RLock()


def _cached_predictor(model: Any, backend: str, precision: str) -> CompiledPredictor:
    from glomseg.model._tf import import_tf

    tf, _, _ = import_tf()
    gpu = bool(tf.config.list_physical_devices("GPU"))
    chosen = backend == "auto"
    state = model.__dict__
    int8 = state.get("_int8") if precision == "int8" else None
    stamp = None if int8 is None else model._fingerprint()
    int8_ready = int8 is not None and int8.fingerprint == stamp
    backend, precision = resolve_backend(backend, precision, gpu=gpu, int8=int8_ready)
    cache: dict[tuple[str, str], tuple[Any, CompiledPredictor, Any]]
    cache = state.setdefault("_compiled", {})
    if (backend, precision) == ("tensorflow", "float32"):
        stamp = None  # runs the Keras network itself, whatever its weights
    elif stamp is None:  # the others hold a copy of the weights
        stamp = model._fingerprint()
    source = int8 if int8_ready else None  # int8 compiles a copy of this network, too
    hit = cache.get((backend, precision))
    if hit is not None and hit[0] == stamp and hit[2] is source:
        return hit[1]
    if chosen and state.get("_openvino_failed") == (precision, stamp):
        return cached_predictor(model, "tensorflow", precision)
    try:
        predictor = compile_model(model, backend, precision, source)
    except BackendError as error:
        if not (chosen and backend == "openvino") or precision == "int8":
            raise
        # "auto" chose OpenVINO, which cannot run this network: TensorFlow can (and
        # is used for these weights from now on, without trying OpenVINO again).
        logger.warning("%s; predicting with TensorFlow instead", error)
        state["_openvino_failed"] = (precision, stamp)
        return cached_predictor(model, "tensorflow", precision)
    cache[(backend, precision)] = (stamp, predictor, source)
    return predictor


def compile_model(model: Any, backend: str, precision: str, int8: Any = None) -> CompiledPredictor:
    """Compile ``model`` (a :class:`~glomseg.GlomUNet`) for a resolved backend and precision.

    ``int8`` is the model's :class:`~glomseg.model._int8.Int8Network`, for
    precision ``"int8"``.

    Raises
    ------
    glomseg.errors.BackendError
        If OpenVINO cannot convert or compile the network (the message says why).
    """
    if backend == "openvino":
        try:
            run = _openvino_run(model, precision, int8)
        except BackendError:
            raise
        except Exception as error:  # OpenVINO's conversion and plugin errors have no common type
            instead = "precision='float32'" if precision == "int8" else "backend='tensorflow'"
            raise BackendError(
                f"OpenVINO could not compile the model ({type(error).__name__}: {error}); "
                f"use {instead}"
            ) from error
        return CompiledPredictor(model, backend, precision, run)
    return CompiledPredictor(model, backend, precision, _tensorflow_run(model, precision))


def _tensorflow_run(model: Any, precision: str) -> Callable[[NDArray[np.float32]], Any]:
    from glomseg.model._tf import import_tf

    tf, keras, _ = import_tf()
    network = model.keras_model
    if precision == "bfloat16":
        network = _rebuilt(model, keras, "mixed_bfloat16")
    shape = (None, *network.input_shape[1:])
    spec = tf.TensorSpec(shape, tf.float32)

    def probabilities(images: Any) -> Any:
        return tf.cast(network(images, training=False), tf.float32)

    forward = tf.function(probabilities, input_signature=[spec])  # traced once

    def run(batch: NDArray[np.float32]) -> Any:
        return forward(tf.constant(batch)).numpy()

    return run


def _rebuilt(model: Any, keras: Any, policy: str) -> Any:
    """The model's network built again under a Keras dtype policy, with its weights."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:  # the weights are copied below: the encoder's initial ones are never read
        network = type(model)._build(dataclasses.replace(model.config, encoder_weights=None))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    network.set_weights(model.keras_model.get_weights())
    return network


def _openvino_run(
    model: Any, precision: str, int8: Any = None
) -> Callable[[NDArray[np.float32]], Any]:
    """OpenVINO's CPU plugin in throughput mode: each batch split across its parallel streams.

    In int8, the int8 network's float32 layers stay float32 on every CPU.
    """
    try:
        import openvino as ov
    except ImportError as error:
        raise BackendError(OPENVINO_HINT) from error
    if precision == "int8":
        if int8 is None:
            raise BackendError("precision='int8' needs the model's int8 network")
        converted = int8.load()
    else:
        converted = ov.convert_model(model.keras_model)
    options = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
        "PERFORMANCE_HINT": "THROUGHPUT",
    }
    compiled = ov.Core().compile_model(converted, "CPU", options)
    streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    local = threading.local()  # a queue of requests serves one thread at a time

    def run(batch: NDArray[np.float32]) -> Any:
        queue = getattr(local, "queue", None)
        if queue is None:
            queue = local.queue = ov.AsyncInferQueue(compiled, streams)
        bounds = np.linspace(0, len(batch), min(streams, len(batch)) + 1).round().astype(int)
        parts: list[Any] = [None] * (len(bounds) - 1)

        def done(request: Any, index: int) -> None:
            parts[index] = request.get_output_tensor(0).data.copy()  # the request is reused

        queue.set_callback(done)
        for index, (start, stop) in enumerate(itertools.pairwise(bounds)):
            queue.start_async({0: batch[start:stop]}, index)
        queue.wait_all()
        return np.concatenate(parts)

    return run
