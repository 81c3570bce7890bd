"""Weights loaded offline: encoder weights files, never downloaded.

``encoder_weights="imagenet"`` in segmentation_models downloads a file from the
internet; :func:`no_downloads` lets it use only a file already in the Keras cache
and otherwise raises :class:`glomseg.errors.PretrainedWeightsError` naming the file and
where to get it. :func:`load_encoder_weights` loads a local ``.h5`` file's layers by
name.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glomseg.errors import GlomsegError, PretrainedWeightsError

__all__ = ["load_encoder_weights", "no_downloads"]

logger = logging.getLogger(__name__)


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
def no_downloads(utils: Any, backbone: str) -> Iterator[None]:
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


def load_encoder_weights(model: Any, path: Path) -> int:
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
