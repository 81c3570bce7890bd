"""The exceptions glomseg raises.

Every error derives from :class:`GlomsegError`, and each subclass also derives
from the builtin exception a caller would naturally catch, so ``except OSError``
around a slide read or ``except ValueError`` around a bad window both work.

Examples
--------
>>> from glomseg.errors import GlomsegError, WindowError
>>> issubclass(WindowError, ValueError) and issubclass(WindowError, GlomsegError)
True
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches
from typing import Any

__all__ = [
    "AnnotationError",
    "AnnotationWarning",
    "BackendError",
    "DatasetError",
    "GlomsegError",
    "ModelFileError",
    "PretrainedWeightsError",
    "RLEError",
    "SlideReadError",
    "SlideReadWarning",
    "SlideTaskError",
    "WindowError",
    "look_up_option",
]


class GlomsegError(Exception):
    """Root of every error raised by glomseg.

    Examples
    --------
    >>> from glomseg import SlideReader
    >>> try:
    ...     SlideReader("no/such/slide.tiff")
    ... except GlomsegError as error:
    ...     print(error)
    no/such/slide.tiff: no such file
    """


class SlideReadError(GlomsegError, OSError):
    """A slide cannot be opened or read: missing, not an image, truncated, corrupt, unsupported.

    Examples
    --------
    >>> issubclass(SlideReadError, OSError)
    True
    """


class AnnotationError(GlomsegError, ValueError):
    """An annotation file or geometry is malformed.

    Examples
    --------
    >>> from glomseg.annotations import parse_annotations
    >>> parse_annotations([{"type": "Feature", "geometry": {"type": "Point"}}], source="a.json")
    Traceback (most recent call last):
    ...
    glomseg.errors.AnnotationError: a.json: feature 0: ...
    """


class PretrainedWeightsError(GlomsegError, FileNotFoundError):
    """Pretrained encoder weights are not available locally and may not be downloaded.

    Examples
    --------
    >>> issubclass(PretrainedWeightsError, FileNotFoundError)
    True
    """


class AnnotationWarning(UserWarning):
    """An annotation was repaired, dropped, or lies (partly) outside its slide.

    Examples
    --------
    >>> import warnings
    >>> from glomseg.annotations import parse_annotations
    >>> bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [4, 4], [4, 0], [0, 4], [0, 0]]]}
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     repaired = parse_annotations([bowtie])
    >>> caught[0].category.__name__, repaired[0].geometry.is_valid
    ('AnnotationWarning', True)
    """


class SlideReadWarning(UserWarning):
    """A slide was read, but part of it has no data in the file and reads as background.

    Emitted once per tile or strip whose byte count is 0 (a writer that skipped
    empty tiles, or a damaged offset table), naming the file and the tile.

    Examples
    --------
    >>> issubclass(SlideReadWarning, UserWarning)
    True
    """


class WindowError(GlomsegError, ValueError):
    """A window is invalid, or lies outside the array or slide it is applied to.

    Examples
    --------
    >>> from glomseg import Window
    >>> Window(-1, 0, 2, 2).to_slices()
    Traceback (most recent call last):
    ...
    glomseg.errors.WindowError: cannot slice with a window at a negative offset: ...
    """


class DatasetError(GlomsegError, ValueError):
    """A tile dataset on disk is inconsistent with what is being written or read.

    Examples
    --------
    >>> from glomseg.tiles import read_manifest
    >>> read_manifest(getfixture("tmp_path"))
    Traceback (most recent call last):
    ...
    glomseg.errors.DatasetError: .../manifest.csv: no manifest; is ... a glomseg tile dataset?
    """


class SlideTaskError(GlomsegError, RuntimeError):
    """Some slides of a many-slide run failed; the others completed.

    Raised by :func:`glomseg.export_tiles` and :func:`glomseg.evaluate_slides`
    with a Dask ``client`` once every slide has finished, so that the work of
    the slides that succeeded is kept.

    Attributes
    ----------
    failures : dict of str to str
        Slide id to its error, ``"ErrorType: message"``.

    Examples
    --------
    >>> error = SlideTaskError({"a": "SlideReadError: a.tif: truncated"}, total=3)
    >>> print(error)
    1 of 3 slides failed: a (SlideReadError: a.tif: truncated)
    """

    def __init__(self, failures: dict[str, str], *, total: int) -> None:
        self.failures = dict(failures)
        self.total = total
        listed = "; ".join(f"{key} ({value})" for key, value in self.failures.items())
        super().__init__(f"{len(self.failures)} of {total} slides failed: {listed}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_slide_task_error, (self.failures, self.total))


def _slide_task_error(failures: dict[str, str], total: int) -> SlideTaskError:
    return SlideTaskError(failures, total=total)


class BackendError(GlomsegError, RuntimeError):
    """A prediction backend or precision this machine cannot run.

    Raised for ``backend="openvino"`` without OpenVINO installed (the message
    names the extra, ``pip install 'glomseg[openvino]'``), and for OpenVINO in
    bfloat16 on a CPU without native bfloat16 (see :class:`glomseg.PredictConfig`).
    """


class RLEError(GlomsegError, ValueError):
    """A run-length string, or a submission CSV of them, is malformed.

    Examples
    --------
    >>> from glomseg import rle_decode
    >>> rle_decode("1 2 9223372036854775807 3", (3, 3))
    Traceback (most recent call last):
    ...
    glomseg.errors.RLEError: malformed RLE: run 9223372036854775807 3 ends at pixel ...
    """


class ModelFileError(GlomsegError, ValueError):
    """A model file is not one glomseg can load as data, or does not fit its configuration.

    Raised by :meth:`glomseg.GlomUNet.load`, naming the file and the first
    mismatch; also when a format whose loading would run code from the file
    (a ``.keras`` archive) is loaded without ``trust=True``.
    """


def look_up_option(name: str, value: object, options: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``options``, else raise with a "did you mean" hint.

    Parameters
    ----------
    name : str
        The parameter name, used in the error message.
    value : object
        The value given by the caller.
    options : iterable of str
        The accepted values.

    Returns
    -------
    str
        ``value``, unchanged.

    Raises
    ------
    ValueError
        If ``value`` is not one of ``options``.

    Examples
    --------
    >>> look_up_option("edge", "shift", ["drop", "shift", "pad"])
    'shift'
    >>> look_up_option("edge", "shfit", ["drop", "shift", "pad"])
    Traceback (most recent call last):
    ...
    ValueError: edge must be one of 'drop', 'pad', 'shift', got 'shfit'; did you mean 'shift'?
    """
    choices = sorted(options)
    if isinstance(value, str) and value in choices:
        return value
    listed = ", ".join(repr(c) for c in choices)
    message = f"{name} must be one of {listed}, got {value!r}"
    if isinstance(value, str):
        close = get_close_matches(value, choices, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
    raise ValueError(message)
