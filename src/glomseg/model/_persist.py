"""Model files as data: a :class:`glomseg.GlomUNet`'s weights and configuration, never code.

:meth:`glomseg.GlomUNet.save` writes one HDF5 file that holds arrays and strings
only:

- the attribute ``glomseg_config``: the model's :class:`glomseg.model.ModelConfig`
  as JSON (the same text as the ``<file>.json`` written beside it);
- the group ``model_weights``: one group per layer that has weights, named by the
  layer, its attribute ``weight_names`` listing the arrays in the layer's order
  (the layout Keras' own ``.h5`` files use, so files that earlier glomseg
  releases saved through Keras read the same way);
- the group ``optimizer_weights``: Adam's state, when the optimizer has any.

Loading rebuilds the network from the configuration with glomseg's own code and
copies arrays into it, layer by layer by name and shape; it never reads Keras'
``model_config`` or ``training_config`` attributes, so nothing in the file is
deserialised into a layer, a function or an object. A file whose layers or
shapes do not fit the configuration is refused with a
:class:`glomseg.errors.ModelFileError` naming the file and the first mismatch,
before any array is read in full. The file is written beside its final name and
renamed into place (:func:`glomseg.io._files.atomic_path`), so a full disk or a
killed process leaves the previous file, never half a new one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from glomseg.errors import ModelFileError
from glomseg.io._files import atomic_path

__all__ = [
    "FORMAT",
    "checkpoint_callback",
    "load_optimizer_state",
    "load_weights",
    "read_config",
    "write_model_file",
]

logger = logging.getLogger(__name__)

FORMAT = "glomseg-weights/1"
"""The value of a saved file's ``glomseg_format`` attribute."""

_FORMAT_ATTR = "glomseg_format"
_CONFIG_ATTR = "glomseg_config"
_WEIGHTS = "model_weights"
_OPTIMIZER = "optimizer_weights"
_MAX_CONFIG_CHARS = 1_000_000


def _h5py() -> Any:
    import h5py  # type: ignore[import-untyped]

    return h5py


def _open(path: Path) -> Any:
    """``path`` opened read-only as HDF5, else :class:`ModelFileError` naming it."""
    try:
        return _h5py().File(path, "r")
    except OSError as error:
        raise ModelFileError(f"{path}: not an HDF5 model file ({error})") from None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | np.bytes_) else str(value)


def _names(path: Path, group: Any, attribute: str) -> list[str]:
    """The strings of ``group.attrs[attribute]`` (empty if absent), else raise naming the file."""
    raw = group.attrs.get(attribute)
    if raw is None:
        return []
    values = np.atleast_1d(np.asarray(raw))
    if not values.size:  # Keras writes an empty float array for a layer without weights
        return []
    if values.dtype.kind not in "SUO":
        raise ModelFileError(f"{path}: {group.name} attribute {attribute!r} is not a list of names")
    try:
        return [_text(value) for value in values.tolist()]
    except UnicodeDecodeError:
        raise ModelFileError(f"{path}: {group.name} attribute {attribute!r} is not UTF-8") from None


def _dataset(path: Path, group: Any, name: str) -> Any:
    """The numeric dataset ``group[name]``, else raise naming the file."""
    try:
        item = group[name]
    except (KeyError, ValueError):
        raise ModelFileError(
            f"{path}: {group.name} names {name!r}, which it does not hold"
        ) from None
    if not isinstance(item, _h5py().Dataset) or item.dtype.kind not in "fiu":
        raise ModelFileError(f"{path}: {item.name} is not an array of numbers")
    return item


def write_model_file(path: Path, keras_model: Any, config_json: str) -> None:
    """Write ``keras_model``'s weights, optimizer state and ``config_json`` atomically."""
    h5py = _h5py()
    layers = [layer for layer in keras_model.layers if layer.weights]
    optimizer = getattr(keras_model, "optimizer", None)
    state = list(getattr(optimizer, "variables", None) or [])
    with atomic_path(path, clean=True) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs[_FORMAT_ATTR] = FORMAT
        handle.attrs[_CONFIG_ATTR] = config_json
        weights = handle.create_group(_WEIGHTS)
        weights.attrs["layer_names"] = [layer.name.encode("utf-8") for layer in layers]
        for layer in layers:
            group = weights.create_group(layer.name)
            names = [variable.name for variable in layer.weights]
            group.attrs["weight_names"] = [name.encode("utf-8") for name in names]
            for name, variable in zip(names, layer.weights, strict=True):
                group.create_dataset(name, data=np.asarray(variable.numpy()))
        if len(state) > 1:  # more than the step counter: the optimizer has been built
            group = handle.create_group(_OPTIMIZER)
            names = [f"{index}:{variable.name}" for index, variable in enumerate(state)]
            group.attrs["weight_names"] = [name.encode("utf-8") for name in names]
            for name, variable in zip(names, state, strict=True):
                group.create_dataset(name, data=np.asarray(variable.numpy()))


def read_config(path: Path) -> dict[str, Any] | None:
    """The configuration stored in a model file, or None for a file without one.

    Raises
    ------
    ModelFileError
        If ``path`` is not HDF5, or its stored configuration is not a JSON object.
    """
    with _open(path) as handle:
        raw = handle.attrs.get(_CONFIG_ATTR)
        if raw is None:
            return None
        text = _text(raw)
    if len(text) > _MAX_CONFIG_CHARS:
        raise ModelFileError(f"{path}: its configuration is {len(text)} characters, not a config")
    try:
        config = json.loads(text)
    except ValueError as error:
        raise ModelFileError(f"{path}: its configuration is not JSON ({error})") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: its configuration is not a JSON object")
    return config


def load_weights(keras_model: Any, path: Path) -> None:
    """Copy the arrays of ``path`` into ``keras_model``, layer by layer by name and shape.

    Every layer of the model that has weights must be in the file with as many
    arrays of the same shapes, and the file may hold no other layer with
    weights; the first mismatch is raised before any array is read in full.
    """
    with _open(path) as handle:
        group = handle.get(_WEIGHTS, handle)  # a whole Keras model, or only its weights
        saved: dict[str, list[Any]] = {}
        for layer_name in _names(path, group, "layer_names"):
            try:
                layer_group = group[layer_name]
            except (KeyError, ValueError):
                raise ModelFileError(
                    f"{path}: lists layer {layer_name!r} but does not hold it"
                ) from None
            names = _names(path, layer_group, "weight_names")
            if names:
                saved[layer_name] = [_dataset(path, layer_group, name) for name in names]
        plan: list[tuple[Any, Any]] = []
        for layer in keras_model.layers:
            if not layer.weights:
                continue
            arrays = saved.pop(layer.name, None)
            if arrays is None:
                raise ModelFileError(
                    f"{path}: has no weights for layer {layer.name!r} of the model "
                    "its configuration describes"
                )
            if len(arrays) != len(layer.weights):
                raise ModelFileError(
                    f"{path}: layer {layer.name!r} has {len(arrays)} arrays; the model "
                    f"its configuration describes has {len(layer.weights)}"
                )
            for variable, array in zip(layer.weights, arrays, strict=True):
                if tuple(array.shape) != tuple(variable.shape):
                    raise ModelFileError(
                        f"{path}: {array.name} has shape {tuple(array.shape)}; the model its "
                        f"configuration describes needs {tuple(variable.shape)}"
                    )
                plan.append((variable, array))
        if saved:
            raise ModelFileError(
                f"{path}: layer {next(iter(saved))!r} is not in the model its configuration "
                "describes"
            )
        for variable, array in plan:
            variable.assign(np.asarray(array[()]).astype(_dtype(variable)))


def _dtype(variable: Any) -> Any:
    dtype = variable.dtype
    return np.dtype(getattr(dtype, "as_numpy_dtype", dtype))


def load_optimizer_state(optimizer: Any, variables: list[Any], path: Path) -> bool:
    """Restore the optimizer state saved in ``path``; False (and a warning) if it does not fit.

    The state is matched by order and shape, as Keras does; a file without one
    leaves the optimizer fresh.
    """
    with _open(path) as handle:
        if _OPTIMIZER not in handle:
            return False
        group = handle[_OPTIMIZER]
        arrays = [_dataset(path, group, name) for name in _names(path, group, "weight_names")]
        optimizer.build(variables)
        state = list(optimizer.variables)
        shapes = [tuple(a.shape) for a in arrays]
        if shapes != [tuple(v.shape) for v in state]:
            logger.warning(
                "%s: its optimizer state does not fit the model; training starts with a "
                "fresh optimizer",
                path,
            )
            return False
        for variable, array in zip(state, arrays, strict=True):
            variable.assign(np.asarray(array[()]).astype(_dtype(variable)))
    return True


def checkpoint_callback(keras: Any, save: Callable[[], object], monitor: str) -> Any:
    """A callback calling ``save()`` at the end of each epoch whose ``monitor`` beats the best."""

    class BestCheckpoint(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.best = -np.inf

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            value = (logs or {}).get(monitor)
            if value is None:
                logger.warning("checkpoint: %s is not logged; nothing saved", monitor)
                return
            if value > self.best:
                self.best = float(value)
                save()

    return BestCheckpoint()
