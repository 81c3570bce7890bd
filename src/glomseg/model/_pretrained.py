"""Glomerulus models shipped inside the package, usable offline: :class:`ModelCard` and loading.

A pretrained model is a folder of package data, ``glomseg/model/pretrained/<name>/``:

- ``config.json``: its :class:`glomseg.model.ModelConfig` (backbone, input size, pixel
  size, downsample, stain normaliser);
- ``weights.npz``: every weight of the network, in the order of
  ``keras_model.weights``, stored as float16 (half the size; predictions differ
  from float32 weights by well under a thousandth of a probability) and loaded
  as float32;
- ``card.json``: its :class:`ModelCard`: training data and licence, recipe,
  validation Dice on whole images it never saw, speed and known limits.

Nothing is ever downloaded. :func:`save_pretrained` writes such a folder
(``benchmarks/build_pretrained.py`` builds the shipped one from the data).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from glomseg.errors import GlomsegError, PretrainedWeightsError
from glomseg.io._files import atomic_path
from glomseg.model._int8 import Int8Network, read_int8, remove_int8, save_int8

__all__ = [
    "DEFAULT_MODEL",
    "MODELS_DIR",
    "ModelCard",
    "PretrainedFiles",
    "available_models",
    "read_pretrained",
    "save_pretrained",
]

MODELS_DIR = Path(__file__).resolve().parent / "pretrained"
"""Where the shipped models live (package data)."""

DEFAULT_MODEL = "glomeruli-pas"
"""The name :meth:`glomseg.GlomUNet.pretrained` loads by default."""


@dataclass(frozen=True)
class ModelCard:
    """What a pretrained model is, how it was made and how good it is.

    Attributes
    ----------
    name : str
        The model's name, as :meth:`glomseg.GlomUNet.pretrained` takes it.
    summary : str
        One paragraph: what it segments, in what images.
    training_data : str
        The images and annotations it learned from, and their source.
    licence : str
        Licence and attribution of the training data.
    stain : str
        The stain(s) it saw, and what to do for others.
    pixel_size_um : float
        Micrometres per pixel of the network's input.
    input_size : int
        Tile side of the network's input.
    recipe : dict
        The :class:`glomseg.TrainingRecipe` it was trained with (seed included).
    validation : dict
        Dice on whole images it never trained on: ``images``, ``mean`` (per
        image) and ``pooled`` (over all pixels), with and without flip TTA.
    speed : dict
        Measured prediction speed (e.g. ``cpu_mpx_per_s``: megapixels of slide
        at its full resolution per second) and the machine it was measured on.
    size_mb : float
        Size of the weights file in megabytes.
    limits : tuple of str
        Known limits.
    stain_reference : dict
        Stain normalisers fitted on the training images, by method
        (``"reinhard"``, ``"macenko"``), as their ``to_dict()``: the colours the
        model knows. To predict another lab's images, pass one to
        :meth:`glomseg.GlomUNet.set_stain_normalizer` (see
        :func:`glomseg.model.normalizer_from_dict`).

    Examples
    --------
    >>> card = ModelCard(name="m", summary="s", training_data="t", licence="l", stain="PAS",
    ...                  pixel_size_um=1.96, input_size=256)
    >>> ModelCard.from_dict(card.to_dict()) == card
    True
    >>> print(card.to_markdown().splitlines()[0])
    # Model card: m
    """

    name: str
    summary: str
    training_data: str
    licence: str
    stain: str
    pixel_size_um: float
    input_size: int
    recipe: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)
    size_mb: float = 0.0
    limits: tuple[str, ...] = ()
    stain_reference: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limits", tuple(self.limits))

    def to_dict(self) -> dict[str, Any]:
        """The card as a JSON-serialisable dict."""
        data = dataclasses.asdict(self)
        data["limits"] = list(self.limits)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Rebuild a card from :meth:`to_dict`'s output."""
        return cls(**data)

    def to_markdown(self) -> str:
        """The card as Markdown, for a README or a notebook."""
        lines = [f"# Model card: {self.name}", "", self.summary, ""]
        lines += [f"- **Training data**: {self.training_data}", f"- **Licence**: {self.licence}"]
        lines += [
            f"- **Stain**: {self.stain}",
            f"- **Input**: {self.input_size} px tiles at {self.pixel_size_um:g} um/px",
            f"- **Weights**: {self.size_mb:.1f} MB",
        ]
        if self.validation:
            lines.append(f"- **Validation**: {json.dumps(self.validation)}")
        if self.speed:
            lines.append(f"- **Speed**: {json.dumps(self.speed)}")
        if self.recipe:
            lines.append(f"- **Recipe**: {json.dumps(self.recipe)}")
        lines += ["", "Known limits:", ""] + [f"- {limit}" for limit in self.limits]
        return "\n".join(lines) + "\n"


def available_models(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the pretrained models in ``directory`` (default: those shipped).

    Examples
    --------
    >>> "glomeruli-pas" in available_models()
    True
    """
    root = MODELS_DIR if directory is None else Path(directory)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


@dataclass(frozen=True)
class PretrainedFiles:
    """What a pretrained model folder holds, read and checked as data (no model is built).

    Attributes
    ----------
    folder : pathlib.Path
        The model's folder.
    config : dict
        ``config.json``: the :class:`glomseg.model.ModelConfig` as a dict.
    card : ModelCard
        ``card.json``.
    names : list of str
        The stored weights' names, in the model's order.
    arrays : list of numpy.ndarray
        The stored weights (float16), one per name.
    int8 : Int8Network or None
        The model's int8 network for OpenVINO, if the folder holds one.
    """

    folder: Path
    config: dict[str, Any]
    card: ModelCard
    names: list[str]
    arrays: list[NDArray[np.float16]]
    int8: Int8Network | None = None


def read_pretrained(
    name: str | None = None, *, directory: str | os.PathLike[str] | None = None
) -> PretrainedFiles:
    """Read a pretrained model's files by name, offline, as data: no model is built.

    Raises
    ------
    ValueError
        If no model of that name exists; the message lists those that do.
    PretrainedWeightsError
        If the model's files are missing or corrupt.
    """
    root = MODELS_DIR if directory is None else Path(directory)
    chosen = DEFAULT_MODEL if name is None else name
    names = available_models(root)
    if chosen not in names:
        raise ValueError(
            f"no pretrained model named {chosen!r}; available: {', '.join(names) or 'none'}"
        )
    folder = root / chosen
    config = _read_json(folder / "config.json")
    try:
        card = ModelCard.from_dict(_read_json(folder / "card.json"))
    except (ValueError, TypeError) as error:
        raise PretrainedWeightsError(f"{folder}: not a valid pretrained model ({error})") from None
    path = folder / "weights.npz"
    try:
        with np.load(path) as stored:
            names_stored = [str(n) for n in stored["names"]]
            arrays = [stored[f"w{i:04d}"] for i in range(len(names_stored))]
    except (OSError, KeyError, ValueError) as error:
        raise PretrainedWeightsError(f"{path}: cannot read the weights ({error})") from None
    return PretrainedFiles(folder, config, card, names_stored, arrays, read_int8(folder))


def save_pretrained(model: Any, directory: str | os.PathLike[str], card: ModelCard) -> Path:
    """Write a :class:`glomseg.GlomUNet` as a pretrained model folder: config, weights, card.

    With the model's int8 network too (:meth:`glomseg.GlomUNet.quantize_int8`),
    if it has one for its current weights. The weights are stored as float16, so
    the network is kept only if it was made from weights that float16 holds
    exactly (a model loaded from such a folder); otherwise a warning says so and
    the folder has none.

    Returns
    -------
    pathlib.Path
        The folder.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    weights = model.keras_model.weights
    values = [w.numpy() for w in weights]
    arrays = {f"w{i:04d}": v.astype(np.float16) for i, v in enumerate(values)}
    for (key, array), weight, value in zip(arrays.items(), weights, values, strict=True):
        if not np.isfinite(array).all():
            raise GlomsegError(
                f"weight {weight.name} ({key}) does not fit float16: values up to "
                f"{float(np.abs(value).max()):g}"
            )
    names = np.array([w.name for w in weights])
    with atomic_path(folder / "weights.npz") as tmp, tmp.open("wb") as handle:
        np.savez_compressed(handle, names=names, **arrays)
    size_mb = (folder / "weights.npz").stat().st_size / 1e6
    card = dataclasses.replace(card, size_mb=round(size_mb, 1))
    _write_json(folder / "config.json", model.config.to_dict())
    _write_json(folder / "card.json", card.to_dict())
    int8 = model.__dict__.get("_int8")
    if int8 is not None and int8.fingerprint != model._fingerprint():
        int8 = None  # made from other weights: stale
    if int8 is not None and any(
        not np.array_equal(a.astype(np.float32), v)
        for a, v in zip(arrays.values(), values, strict=True)
    ):
        warnings.warn(
            f"{folder}: the model's int8 network is not saved: it was made from float32 "
            "weights that the folder's float16 storage rounds, so it would not fit the "
            "weights loaded from it. Load the folder (load_pretrained), quantize_int8 "
            "that model and save it again.",
            stacklevel=2,
        )
        int8 = None
    if int8 is not None:
        save_int8(folder, int8)
    else:
        remove_int8(folder)
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PretrainedWeightsError(f"{path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PretrainedWeightsError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise PretrainedWeightsError(f"{path}: expected a JSON object")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
