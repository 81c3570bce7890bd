"""Many slides on a Dask cluster: one task per slide, resumable, each output written atomically.

:func:`predict_slides` runs :func:`glomseg.predict_slide` over many slides, on
a ``dask.distributed`` client when one is given (a ``LocalCluster`` on one
machine, dask-jobqueue on HPC, dask-kubernetes) or in this process otherwise.
For each slide ``<id>`` it writes, under ``out_dir``::

    <id>.zarr        the full-resolution mask (a SlideMask)
    <id>.rle         its Kaggle run-length encoding, one line
    <id>.ome.tif     with ``ome_tiff=True``: the mask as a pyramidal OME-TIFF for viewers
    <id>.done.json   what made it (model, config); written last, so it marks the slide done

and at the end ``submission.csv`` for all slides, streamed from the ``.rle``
files one slide at a time. Every file is built under a temporary name and
renamed into place: a worker killed in the middle of a slide leaves no output
of that slide, only a hidden ``.partial`` that the slide's next attempt
removes. A rerun skips the slides already done with the same model and
settings.

The model reaches a worker as a name or a path, never as pickled weights:
each worker process loads it once, on its first slide, and keeps it for the
next ones (see :func:`predict_slides`).

The helpers here also run :func:`glomseg.export_tiles` and
:func:`glomseg.evaluate_slides` slide by slide on a client. Dask is imported
only when a client is given; ``import glomseg`` never imports it.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from glomseg.annotations._rle import write_submission
from glomseg.errors import SlideReadError
from glomseg.io._files import write_bytes_atomic
from glomseg.io._tasks import _check_client, _run_tasks
from glomseg.predict._predict import predict_slide
from glomseg.predict._predict_config import PredictConfig, PredictionStats
from glomseg.predict._stitch import Predictor

__all__ = ["ModelSource", "SlideOutcome", "SlidesReport", "predict_slides"]

logger = logging.getLogger(__name__)

ModelSource = str | os.PathLike[str] | Callable[[], Predictor]
"""A model a worker can load by itself: a :meth:`glomseg.GlomUNet.pretrained` name,
the path of a model saved by :meth:`glomseg.GlomUNet.save`, or a picklable
function of no arguments that returns a predictor."""

Status = Literal["done", "skipped", "failed"]

#: Characters a slide id may not hold: it names files and a submission row.
_BAD_ID = re.compile(r'[\\/,"\r\n\x00]')
#: Version of the ``<id>.done.json`` record.
_RECORD_VERSION = 2


@dataclass(frozen=True)
class SlideOutcome:
    """What became of one slide of :func:`predict_slides`.

    Attributes
    ----------
    slide_id : str
        The slide's id (the file stem unless given).
    status : {"done", "skipped", "failed"}
        Predicted in this run, found done by an earlier run, or failed.
    mask, rle : Path or None
        The ``<id>.zarr`` mask and ``<id>.rle`` file (``None`` when failed).
    error : str or None
        ``"ErrorType: message"`` of a failed slide.
    seconds : float
        Wall seconds of the slide's task (0 when skipped).
    worker : str or None
        The address of the Dask worker that ran it, ``"local"`` without a client.
    stats : PredictionStats or None
        Where the slide's time went (see :class:`glomseg.predict.PredictionStats`).
    """

    slide_id: str
    status: Status
    mask: Path | None = None
    rle: Path | None = None
    error: str | None = None
    seconds: float = 0.0
    worker: str | None = None
    stats: PredictionStats | None = None


@dataclass(frozen=True)
class SlidesReport:
    """The outcome of :func:`predict_slides`, slide by slide.

    Attributes
    ----------
    out_dir : Path
        The output folder.
    slides : dict of str to SlideOutcome
        In the order the slides were given.
    submission : Path or None
        The submission CSV over all slides; ``None`` when a slide failed (a
        submission with missing rows would be wrong) or when none was asked for.
    wall_s : float
        Wall seconds of the whole run.
    """

    out_dir: Path
    slides: dict[str, SlideOutcome] = field(default_factory=dict)
    submission: Path | None = None
    wall_s: float = 0.0

    def _with(self, status: Status) -> dict[str, SlideOutcome]:
        return {key: o for key, o in self.slides.items() if o.status == status}

    @property
    def done(self) -> dict[str, SlideOutcome]:
        """Slides predicted in this run."""
        return self._with("done")

    @property
    def skipped(self) -> dict[str, SlideOutcome]:
        """Slides found done by an earlier run."""
        return self._with("skipped")

    @property
    def failed(self) -> dict[str, SlideOutcome]:
        """Slides that failed, with their errors."""
        return self._with("failed")

    @property
    def masks(self) -> dict[str, Path]:
        """Slide id to mask folder, for every slide that has one."""
        return {key: o.mask for key, o in self.slides.items() if o.mask is not None}

    def raise_on_failure(self) -> None:
        """Raise :class:`glomseg.errors.SlideTaskError` if any slide failed."""
        from glomseg.errors import SlideTaskError

        failed = self.failed
        if failed:
            raise SlideTaskError(
                {key: o.error or "failed" for key, o in failed.items()}, total=len(self.slides)
            )


# -- inputs ----------------------------------------------------------------------------------


def _slide_ids(
    slides: Mapping[str, str | os.PathLike[str]] | Iterable[str | os.PathLike[str]],
) -> dict[str, Path]:
    """Slide id to path: the mapping as given, or each file's stem (as :class:`SlideSource`).

    Raises
    ------
    ValueError
        If there are no slides, an id repeats, or an id cannot name a file and a
        submission row.
    """
    if isinstance(slides, Mapping):
        pairs = [(str(key), Path(value)) for key, value in slides.items()]
    elif isinstance(slides, str | os.PathLike):
        raise TypeError("slides must be a list of paths or a mapping of id to path, not one path")
    else:
        pairs = [(Path(p).name.split(".")[0], Path(p)) for p in slides]
    if not pairs:
        raise ValueError("no slides given")
    ids = [key for key, _ in pairs]
    repeated = sorted({key for key in ids if ids.count(key) > 1})
    if repeated:
        raise ValueError(f"slide ids must be unique, repeated: {', '.join(repeated)}")
    for key in ids:
        if not key or key != key.strip() or key.startswith(".") or _BAD_ID.search(key):
            raise ValueError(
                f"slide id {key!r} cannot name files and a submission row: it must be "
                'non-empty, not start with a dot, and hold no / \\ , " or line break'
            )
    return dict(pairs)


def _describe_model(model: object) -> str:
    """A stable description of a :data:`ModelSource`, recorded with each slide's output.

    Two sources that may give different models are described differently: a
    file by its path, size and modification time (a model saved again over it
    is another model); a function by its name and a digest of its code, its
    defaults, the values its closure holds and the plain values (strings,
    numbers, paths) of the globals it names, files among them by their size and
    time too. Each process also keeps its loaded models under this description.
    """
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        return _describe_value(path) if path.exists() else f"pretrained:{model}"
    if isinstance(model, functools.partial):
        args = ", ".join(
            [_describe_value(a) for a in model.args]
            + [f"{k}={_describe_value(v)}" for k, v in model.keywords.items()]
        )
        return f"partial({_describe_model(model.func)}, {args})"
    name = getattr(model, "__qualname__", None) or type(model).__qualname__
    described = f"{getattr(model, '__module__', '?')}.{name}"
    if inspect.isfunction(model):
        described += f" [{_function_digest(model, 0)}]"
    elif not inspect.isbuiltin(model) and not isinstance(model, type):
        described += f" {_describe_value(model)}"  # a callable object: its state's repr
    return described


#: Memory addresses in reprs: they differ from process to process.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
#: The globals a model function names whose values count in its description.
_PLAIN = (str, bytes, int, float, os.PathLike)


def _describe_value(value: object, depth: int = 0) -> str:
    """A value a model source depends on: a file by path, size and time, else its repr."""
    if isinstance(value, str | os.PathLike):
        try:
            path = Path(value)
            if path.is_file():
                stat = path.stat()
                return f"file:{path.resolve()} ({stat.st_size} bytes, {stat.st_mtime_ns} ns)"
        except (OSError, ValueError):  # not a path this system can name
            pass
    if inspect.isfunction(value) and depth < 3:  # a function its closure or defaults hold
        return f"{value.__qualname__}[{_function_digest(value, depth + 1)}]"
    return _ADDRESS.sub("", repr(value))


def _function_digest(function: Any, depth: int) -> str:
    """A digest of a function's code, defaults, closure values and plain globals."""
    parts: list[str] = []
    _code_parts(function.__code__, function.__globals__, parts, depth)
    parts += [_describe_value(d, depth) for d in function.__defaults__ or ()]
    parts += [_describe_value(_cell(c), depth) for c in function.__closure__ or ()]
    return hashlib.sha256("\n".join(parts).encode("utf-8", "replace")).hexdigest()[:16]


def _code_parts(code: Any, names: Mapping[str, Any], parts: list[str], depth: int = 0) -> None:
    parts.append(code.co_code.hex())
    for const in code.co_consts:
        if inspect.iscode(const):
            _code_parts(const, names, parts, depth)
        else:
            parts.append(_describe_value(const, depth))
    for name in code.co_names:
        value = names.get(name)
        if isinstance(value, _PLAIN) and not isinstance(value, bool):
            parts.append(f"{name}={_describe_value(value, depth)}")


def _cell(cell: Any) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # a cell not yet filled
        return None


def _check_model_source(model: object) -> None:
    if isinstance(model, str | os.PathLike):
        return
    if hasattr(model, "config") and hasattr(model, "save"):
        raise TypeError(
            "predict_slides takes a model each worker can load by itself, not a loaded "
            "model: pass GlomUNet.save(path)'s path, a GlomUNet.pretrained name, or a "
            "function of no arguments that returns the model"
        )
    if not callable(model):
        raise TypeError(
            f"model must be a pretrained name, a path or a function, got {type(model).__name__}"
        )
    try:
        inspect.signature(model).bind()
    except TypeError:
        raise TypeError(
            "a model function must take no arguments and return the predictor (it is "
            "called once per worker); wrap a predictor p as `lambda: p` only when it is "
            "small, or pass a saved model's path"
        ) from None
    except ValueError:  # no signature (a builtin): let the call decide
        pass


# -- the per-worker model cache ----------------------------------------------------------------

#: Models loaded in this process, by :func:`_describe_model` key.
_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def _load_model(model: ModelSource) -> Any:
    """The predictor of ``model``, loaded once per process and then reused."""
    key = _describe_model(model)
    with _MODELS_LOCK:
        if key not in _MODELS:
            if isinstance(model, str | os.PathLike):
                from glomseg.model._model import GlomUNet

                path = Path(model)
                loaded: Any = (
                    GlomUNet.load(path, compile=False)
                    if path.exists()
                    else GlomUNet.pretrained(str(model))
                )
            else:
                loaded = model()
            if not callable(loaded):
                raise TypeError(
                    f"the model function returned {type(loaded).__name__}, not a predictor"
                )
            _MODELS[key] = loaded
            logger.info("loaded model %s in process %d", key, os.getpid())
        return _MODELS[key]


#: Whether :func:`_restore_malloc` has run in this process.
_MALLOC_SET = False
#: glibc's ``mallopt`` parameters and the values set on Dask workers: the largest
#: mmap threshold glibc's adaptive rule would reach on 64-bit, and a trim threshold
#: that keeps a few pieces of freed memory for reuse.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 2**20
_TRIM_THRESHOLD = 128 * 2**20


def _restore_malloc() -> None:
    """Let freed arrays be reused on a Dask worker, as in a plain process (glibc only).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which turns
    off glibc's adaptive mmap threshold: every array over 128 KiB is then mapped
    and unmapped anew, and a slide takes twice as long (see the benchmarks). This
    sets the thresholds glibc's adaptive rule would reach, once per process.
    """
    global _MALLOC_SET
    if _MALLOC_SET:
        return
    _MALLOC_SET = True
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    except (OSError, AttributeError):  # not glibc: nothing to undo
        return
    logger.debug("set glibc's mmap and trim thresholds in process %d", os.getpid())


def _worker_name() -> str:
    try:
        from distributed import get_worker
    except ImportError:
        return "local"
    try:
        return str(get_worker().address)
    except ValueError:  # not inside a worker
        return "local"


# -- the per-slide task -------------------------------------------------------------------------


def _outputs(out_dir: Path, slide_id: str) -> tuple[Path, Path, Path]:
    return (
        out_dir / f"{slide_id}.zarr",
        out_dir / f"{slide_id}.rle",
        out_dir / f"{slide_id}.done.json",
    )


def _ome_path(out_dir: Path, slide_id: str) -> Path:
    return out_dir / f"{slide_id}.ome.tif"


def _run_key(
    model: ModelSource, config: PredictConfig, pixel_size_um: float | None, stain: bool
) -> dict[str, Any]:
    settings = asdict(config)
    # How fast, not what: the masks do not depend on the threads, and every backend and
    # precision but int8 gives float32's masks to the tolerance the docs state (so slides
    # done before these settings existed, or on another machine's "auto", still count).
    # int8's masks differ more on other labs' slides: a run in int8 is a run of its own.
    for name in ("workers", "backend", "precision"):
        settings.pop(name)
    if config.precision == "int8":
        settings["precision"] = "int8"
    return {
        "model": _describe_model(model),
        "config": settings,
        "pixel_size_um": pixel_size_um,
        "stain": stain,
    }


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _is_done(
    out_dir: Path, slide_id: str, key: dict[str, Any], *, ome_tiff: bool = False
) -> bool | None:
    """True when done with ``key``; False when not done; None when done with another key."""
    mask, rle, done = _outputs(out_dir, slide_id)
    record = _read_record(done)
    if record is None or not (mask.is_dir() and rle.is_file()):
        return False
    if record.get("version") != _RECORD_VERSION:  # an older record says less: redo the slide
        return False
    if record.get("key") != json.loads(json.dumps(key)):
        return None
    return not ome_tiff or _ome_path(out_dir, slide_id).is_file()


def _remove_partials(out_dir: Path, slide_id: str) -> None:
    """Remove what an earlier, killed attempt at this slide left half-written."""
    for path in (*_outputs(out_dir, slide_id), _ome_path(out_dir, slide_id)):
        for stale in out_dir.glob(f".{glob.escape(path.name)}.*.partial"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _predict_one(
    slide_id: str,
    slide: Path,
    model: ModelSource,
    out_dir: Path,
    config: PredictConfig,
    pixel_size_um: float | None,
    stain: bool,
    key: dict[str, Any],
    ome_tiff: bool = False,
) -> SlideOutcome:
    """Predict one slide and write its outputs; errors come back in the outcome."""
    begin = time.perf_counter()
    worker = _worker_name()
    if worker != "local":
        _restore_malloc()
    mask_path, rle_path, done_path = _outputs(out_dir, slide_id)
    try:
        _remove_partials(out_dir, slide_id)
        done_path.unlink(missing_ok=True)  # a slide redone is not done until it is
        _ome_path(out_dir, slide_id).unlink(missing_ok=True)  # nor is an earlier run's OME-TIFF
        predictor = _load_model(model)
        mask = predict_slide(
            slide,
            predictor,
            mask_path,
            config=config,
            pixel_size_um=pixel_size_um,
            stain=stain,
            progress=False,
        )
        write_bytes_atomic(rle_path, (mask.rle() + "\n").encode("ascii"))
        if ome_tiff:
            mask.to_ome_tiff(_ome_path(out_dir, slide_id))
        stats = mask.stats
        record = {
            "version": _RECORD_VERSION,
            "slide_id": slide_id,
            "slide": str(slide),
            "shape": list(mask.shape),
            "key": key,
            "stats": None if stats is None else asdict(stats),
        }
        write_bytes_atomic(done_path, json.dumps(record, indent=1).encode("utf-8"))
    except Exception as error:  # reported, so that the other slides complete
        logger.debug("slide %s failed:\n%s", slide_id, traceback.format_exc())
        return SlideOutcome(
            slide_id,
            "failed",
            error=f"{type(error).__name__}: {error}",
            seconds=time.perf_counter() - begin,
            worker=worker,
        )
    return SlideOutcome(
        slide_id,
        "done",
        mask=mask_path,
        rle=rle_path,
        seconds=time.perf_counter() - begin,
        worker=worker,
        stats=stats,
    )


# -- predict_slides ------------------------------------------------------------------------------


def predict_slides(
    slides: Mapping[str, str | os.PathLike[str]] | Iterable[str | os.PathLike[str]],
    model: ModelSource,
    out_dir: str | os.PathLike[str],
    *,
    config: PredictConfig | None = None,
    client: Any = None,
    pixel_size_um: float | None = None,
    stain: bool = True,
    resources: Mapping[str, float] | None = None,
    submission: str | None = "submission.csv",
    overwrite: bool = False,
    progress: bool = True,
    ome_tiff: bool = False,
) -> SlidesReport:
    """Predict many slides, one task per slide, locally or on a Dask cluster.

    Each slide goes through :func:`glomseg.predict_slide` and leaves
    ``<id>.zarr``, ``<id>.rle`` and ``<id>.done.json`` under ``out_dir`` (see
    the module documentation); at the end the submission CSV is streamed from
    the ``.rle`` files, so no two masks are ever in memory together.

    Parameters
    ----------
    slides : iterable of paths, or mapping of id to path
        The slides; without ids, a slide's id is its file name up to the first
        dot (as :meth:`glomseg.SlideSource.from_path`). With a client, the paths
        must be readable from every worker (a shared file system).
    model : str, path or function
        A :meth:`glomseg.GlomUNet.pretrained` name, the path of a model saved by
        :meth:`glomseg.GlomUNet.save`, or a picklable function of no arguments
        that returns a predictor. Each worker process loads it once, on its
        first slide, and reuses it: weights are never sent through the scheduler.
    out_dir : path
        The output folder, created if needed; with a client, shared by the workers.
    config : PredictConfig, optional
        Prediction settings, the same for every slide.
    client : dask.distributed.Client, optional
        Run on this client's cluster, one task per slide. Default: in this
        process, one slide after the other.
    pixel_size_um : float, optional
        Pixel size of every slide; default each slide's metadata.
    stain : bool
        Apply the model's stain normaliser (see :func:`glomseg.predict_slide`).
    resources : mapping, optional
        Dask worker resources each task needs, e.g. ``{"GPU": 1}`` so that a
        worker started with ``--resources GPU=1`` runs one slide at a time.
    submission : str, optional
        File name, under ``out_dir``, of the submission CSV written when every
        slide is done; ``None`` writes none.
    overwrite : bool
        Redo slides done by an earlier run with another model or settings;
        by default that is an error, so that one folder never mixes two runs.
    progress : bool
        Show a progress bar of slides (and the dashboard link of the client).
    ome_tiff : bool
        Also write each mask as ``<id>.ome.tif``, a pyramidal OME-TIFF with the
        slide's pixel size that QuPath and napari open
        (:meth:`glomseg.SlideMask.to_ome_tiff`). A slide done before without
        one is redone.

    Returns
    -------
    SlidesReport
        Per slide: done, skipped (done before) or failed with its error. A
        failed slide does not stop the others; :meth:`SlidesReport.raise_on_failure`
        raises for it.

    Raises
    ------
    ValueError
        If slide ids repeat or cannot name files, or ``out_dir`` holds slides done
        with another model or settings and ``overwrite`` is False.
    TypeError
        If ``model`` is a loaded model or a function that takes arguments.

    Notes
    -----
    On a Dask worker started with ``MALLOC_TRIM_THRESHOLD_`` (Dask's nanny sets
    it to 65536), the first task sets glibc's mmap threshold to 32 MiB and its
    trim threshold to 128 MiB for that process, the values glibc's own adaptive
    rule reaches: with Dask's setting every large array is mapped and unmapped
    anew, and a slide took twice as long.

    Examples
    --------
    >>> import numpy as np
    >>> from glomseg.io.synthetic import write_synthetic_slide
    >>> tmp = getfixture("tmp_path")
    >>> paths = [write_synthetic_slide(tmp / f"s{i}.tif", (200, 300), seed=i).path for i in (1, 2)]
    >>> config = PredictConfig(tile_size=64, downsample=2)
    >>> def purple_rule():  # a function that returns the predictor
    ...     return lambda batch: (batch[..., 1] < 150).astype(np.float32)
    >>> report = predict_slides(paths, purple_rule, tmp / "out", config=config, progress=False)
    >>> sorted(report.done), report.submission.name
    (['s1', 's2'], 'submission.csv')
    >>> sorted(predict_slides(paths, purple_rule, tmp / "out", config=config,
    ...                       progress=False).skipped)  # a rerun redoes nothing
    ['s1', 's2']
    """
    wall = time.perf_counter()
    paths = _slide_ids(slides)
    _check_model_source(model)
    cfg = PredictConfig() if config is None else config
    if not isinstance(cfg, PredictConfig):
        raise TypeError(f"config must be a PredictConfig, got {type(cfg).__name__}")
    if client is not None:
        _check_client(client)
    if submission is not None and (not submission or Path(submission).name != submission):
        raise ValueError(f"submission must be a file name, got {submission!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = _run_key(model, cfg, pixel_size_um, stain)

    outcomes: dict[str, SlideOutcome] = {}
    todo: dict[str, tuple[Any, ...]] = {}
    other = []
    for slide_id, path in paths.items():
        slide_key = {**key, "slide": _describe_value(path)}
        state = _is_done(out, slide_id, slide_key, ome_tiff=ome_tiff)
        if state is None and not overwrite:
            other.append(slide_id)
        elif state:
            mask, rle, _ = _outputs(out, slide_id)
            outcomes[slide_id] = SlideOutcome(slide_id, "skipped", mask=mask, rle=rle)
        else:
            args = (slide_id, path, model, out, cfg, pixel_size_um, stain, slide_key, ome_tiff)
            todo[slide_id] = args
    if other:
        raise ValueError(
            f"{out} holds slides done with another model, other settings or another file "
            f"of the same slide id ({', '.join(other[:5])}"
            f"{', ...' if len(other) > 5 else ''}); pass overwrite=True to redo them, or "
            "use another folder"
        )
    logger.info("predicting %d slides (%d done before) into %s", len(todo), len(outcomes), out)
    for slide_id, result, error in _run_tasks(
        _predict_one, todo, client=client, resources=resources, progress=progress, desc="predict"
    ):
        if error is not None:
            result = SlideOutcome(slide_id, "failed", error=f"{type(error).__name__}: {error}")
        outcomes[slide_id] = result
        if result.status == "failed":
            logger.warning("slide %s failed: %s", slide_id, result.error)
    ordered = {slide_id: outcomes[slide_id] for slide_id in paths}
    csv_path = None
    if submission is not None:
        if any(o.status == "failed" for o in ordered.values()):
            logger.warning("not writing %s: some slides failed", submission)
        else:
            csv_path = _write_submission(out / submission, ordered)
    return SlidesReport(out, ordered, csv_path, time.perf_counter() - wall)


def _write_submission(path: Path, outcomes: Mapping[str, SlideOutcome]) -> Path:
    """The submission CSV, reading one slide's RLE file at a time."""

    def rows() -> Iterator[tuple[str, str]]:
        for slide_id, outcome in outcomes.items():
            assert outcome.rle is not None
            rle = outcome.rle.read_text(encoding="ascii").strip()
            if rle and not rle.replace(" ", "").isdigit():
                raise SlideReadError(f"{outcome.rle}: not a run-length encoding")
            yield slide_id, rle

    write_submission(path, rows())
    return path
