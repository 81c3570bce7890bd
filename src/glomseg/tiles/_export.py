"""Build a tile dataset from slides and their polygons: step 1 of the pipeline.

For each slide: windows from a :class:`~glomseg.Tiler` -> image read and
area-resampled by the :class:`~glomseg.SlideReader`, mask rasterized straight
onto the output grid by the :class:`~glomseg.MaskRasterizer` -> statistics and a
:class:`~glomseg.TileFilter` decision -> image and mask files plus a manifest.

The dataset on disk::

    out_dir/
        dataset.json      what made it (tiler, filter, formats): a rerun must match
        manifest.csv      one row per tile, kept or not, with the reason
        images/<name>.png RGB uint8 (or .jpg)
        masks/<name>.png  single channel uint8, 0 = background, 1 = glomerulus
        .journal.csv      tiles finished so far, so an interrupted run can resume

``<name>`` is :func:`~glomseg.tiles.tile_name` ``(slide_id, grid_row, grid_col)``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from glomseg.annotations._annotations import (
    annotations_outside,
    clip_to_slide,
    read_annotations,
)
from glomseg.annotations._rasterize import MaskRasterizer
from glomseg.errors import DatasetError, look_up_option
from glomseg.io._files import remove_stale_partials_in, write_bytes_atomic
from glomseg.io._reader import SlideReader
from glomseg.io._row_stream import default_workers
from glomseg.tiles._filtering import TileFilter, tile_stats
from glomseg.tiles._tiling import Tile, Tiler, tile_name

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "MANIFEST_COLUMNS",
    "ExportSummary",
    "SlideSource",
    "export_tiles",
    "read_manifest",
]

logger = logging.getLogger(__name__)

ImageFormat = Literal["png", "jpg"]

#: Columns of ``manifest.csv``: full-resolution window (``row``, ``col``,
#: ``height``, ``width``), output size, statistics, decision and file paths
#: relative to the dataset folder (empty for rejected tiles). ``tissue`` is
#: empty when the filter rejected the tile from its mask alone, without
#: reading its image (see :meth:`TileFilter.prejudge`).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "slide",
    "grid_row",
    "grid_col",
    "row",
    "col",
    "height",
    "width",
    "out_height",
    "out_width",
    "downsample",
    "coverage",
    "tissue",
    "kept",
    "reason",
    "image",
    "mask",
)
_FORMAT = "glomseg-tiles"
_FORMAT_VERSION = 1
_JOURNAL = ".journal.csv"


@dataclass(frozen=True)
class SlideSource:
    """A slide to tile: its id, its image file and its polygon JSON.

    Parameters
    ----------
    slide_id : str
        Names the slide's tiles; no whitespace or path separators.
    slide : path
        The slide image (any layout :class:`~glomseg.SlideReader` opens).
    annotations : path, optional
        HuBMAP/QuPath polygon JSON; ``None`` gives empty masks.

    Examples
    --------
    >>> SlideSource.from_path("data/26dc41664.tiff", annotations=None).slide_id
    '26dc41664'
    """

    slide_id: str
    slide: Path
    annotations: Path | None = None

    def __post_init__(self) -> None:
        tile_name(self.slide_id, 0, 0)  # validates the id
        object.__setattr__(self, "slide", Path(self.slide))
        if self.annotations is not None:
            object.__setattr__(self, "annotations", Path(self.annotations))

    @classmethod
    def from_path(
        cls,
        slide: str | os.PathLike[str],
        *,
        annotations: str | os.PathLike[str] | Literal["auto"] | None = "auto",
        slide_id: str | None = None,
    ) -> SlideSource:
        """A source named after the slide file's stem, with ``<stem>.json`` beside it.

        ``annotations="auto"`` takes ``<slide>.json`` when it exists, else none.
        """
        path = Path(slide)
        if annotations == "auto":
            candidate = path.with_suffix(".json")
            found: Path | None = candidate if candidate.exists() else None
        else:
            found = None if annotations is None else Path(annotations)
        return cls(slide_id or path.name.split(".")[0], path, found)


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_tiles` did.

    Attributes
    ----------
    out_dir : Path
        The dataset folder.
    manifest : Path
        Its ``manifest.csv``.
    tiles : int
        Tiles in the manifest (kept or rejected), over all slides ever exported there.
    kept : int
        Of those, kept (with image and mask files).
    reused : int
        Tiles of this run found finished by an earlier run and not redone.
    per_slide : dict
        ``slide_id -> (tiles, kept)`` for the slides of this run.

    Examples
    --------
    >>> from glomseg import Tiler, TileFilter
    >>> from glomseg.io.synthetic import write_synthetic_slide
    >>> tmp = getfixture("tmp_path")
    >>> slide = write_synthetic_slide(tmp / "a.tif", (256, 384), tile=64)
    >>> summary = export_tiles(SlideSource.from_path(slide.path), tmp / "d",
    ...                        tiler=Tiler(128), tile_filter=TileFilter(), progress=False)
    >>> summary.per_slide, summary.reused
    ({'a': (6, 6)}, 0)
    >>> export_tiles(SlideSource.from_path(slide.path), tmp / "d", tiler=Tiler(128),
    ...              tile_filter=TileFilter(), progress=False).reused  # a rerun redoes nothing
    6
    """

    out_dir: Path
    manifest: Path
    tiles: int
    kept: int
    reused: int
    per_slide: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs; picklable."""

    out_dir: Path
    tiler: Tiler
    tile_filter: TileFilter
    image_format: str
    classes: tuple[str, ...] | None
    stain_normalizer: Any = None


def export_tiles(
    sources: SlideSource | Iterable[SlideSource],
    out_dir: str | os.PathLike[str],
    *,
    tiler: Tiler,
    tile_filter: TileFilter | None = None,
    image_format: ImageFormat = "png",
    classes: Iterable[str] | None = None,
    processes: int = 1,
    progress: bool = True,
    allow_outside: bool = False,
    stain_normalizer: Any = None,
    client: Any = None,
    threads: int | None = None,
) -> ExportSummary:
    """Tile slides into image/mask pairs, filter them, and write a dataset folder.

    Parameters
    ----------
    sources : SlideSource or iterable of SlideSource
        The slides, each with its polygon JSON.
    out_dir : path
        The dataset folder (see the module docs for its layout). Created if
        needed; if it already holds a dataset, that dataset must have been made
        with the same settings, and the run resumes it.
    tiler : Tiler
        Tile grid, edge policy and downsample. The seed's recipe is
        ``Tiler(400, 200, downsample=10)``: 4000-px windows every 2000 px,
        saved at 400 x 400.
    tile_filter : TileFilter, optional
        Which tiles to keep; default :meth:`TileFilter.seed_recipe` (glomerulus
        coverage 10-90 %).
    image_format : {"png", "jpg"}
        Image files; masks are always PNG.
    classes : iterable of str, optional
        Only polygons of these classification names make the mask (e.g.
        ``["glomerulus"]``); default all.
    processes : int
        Worker processes; each opens its own readers. 1 runs in this process.
    threads : int, optional
        With one process, tiles of a grid row read, rasterized and encoded at
        once, >= 1; default the machine's cores. The dataset does not depend on it.
    progress : bool
        Show a progress bar.
    allow_outside : bool
        Accept polygon files with polygons outside their slide (clipped to it);
        by default that is an error, as it usually means the JSON belongs to
        another slide or the slide has the wrong size.
    stain_normalizer : object, optional
        Pass each kept image tile through ``stain_normalizer.transform(image)``
        (``uint8`` RGB in and out) before it is written; masks, statistics and
        filtering use the tile as read. Its ``to_dict()`` (or, without one, its
        class name) is recorded in ``dataset.json``, so resuming with another
        normaliser, or none, is refused. It must pickle when ``processes > 1``
        or with a ``client``.
    client : dask.distributed.Client, optional
        Export one slide per task on this client's cluster instead of
        ``processes``; the slides and ``out_dir`` must be on a file system the
        workers share. This process keeps the journal and writes the manifest,
        so the dataset is the same as without a client.

    Returns
    -------
    ExportSummary

    Raises
    ------
    SlideReadError
        If a slide cannot be read (before anything is written).
    AnnotationError
        If a polygon file is malformed (before anything is written).
    DatasetError
        If ``out_dir`` holds another dataset or unrelated files, slide ids
        repeat, or polygons lie outside their slide.
    SlideTaskError
        With a client, when slides failed: raised once every slide has ended.
        The tiles of the other slides are journaled, so a rerun resumes.

    Notes
    -----
    Images are area-averaged to the output size by the reader; masks are
    rasterized directly on the output grid with the pixel-centre rule, so they
    hold only 0 and 1 (no interpolated values), and the coverage in the
    manifest is measured on that grid. Every file is written to a temporary
    name and renamed, and each finished tile is journaled at once: an
    interrupted run leaves no partial file, and a rerun skips what is done and
    completes the manifest. The result does not depend on ``processes``.

    Examples
    --------
    >>> from glomseg import Tiler, TileFilter
    >>> from glomseg.io.synthetic import write_synthetic_slide
    >>> tmp = getfixture("tmp_path")
    >>> slide = write_synthetic_slide(tmp / "s1.tif", (512, 512), tile=128, seed=1)
    >>> summary = export_tiles(SlideSource.from_path(slide.path), tmp / "tiles",
    ...                        tiler=Tiler(128, 64, downsample=2),
    ...                        tile_filter=TileFilter(), progress=False)
    >>> summary.tiles, summary.kept
    (9, 9)
    >>> sorted(p.name for p in (tmp / "tiles").iterdir() if not p.name.startswith("."))
    ['dataset.json', 'images', 'manifest.csv', 'masks']
    """
    items = [sources] if isinstance(sources, SlideSource) else list(sources)
    out = Path(out_dir)
    look_up_option("image_format", image_format, ("png", "jpg"))
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if threads is None:
        threads = default_workers()
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if client is not None:
        from glomseg.io._tasks import _check_client

        _check_client(client)
        if processes != 1:
            raise ValueError("give processes or a client, not both")
    if stain_normalizer is not None and not callable(getattr(stain_normalizer, "transform", None)):
        raise TypeError(
            "stain_normalizer must have a transform(image) method, "
            f"got {type(stain_normalizer).__name__}"
        )
    ids = [s.slide_id for s in items]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise DatasetError(f"slide ids must be unique, repeated: {', '.join(repeated)}")
    job = _Job(
        out,
        tiler,
        tile_filter if tile_filter is not None else TileFilter.seed_recipe(),
        image_format,
        tuple(sorted(classes)) if classes is not None else None,
        stain_normalizer,
    )
    # Check every input before writing anything.
    plans: list[tuple[SlideSource, list[Tile]]] = []
    for source in items:
        with SlideReader(source.slide) as reader:
            shape = reader.shape
        if source.annotations is not None:
            annotations = read_annotations(source.annotations, classes=job.classes)
            outside = annotations_outside(annotations, shape)
            if outside and not allow_outside:
                raise DatasetError(
                    f"{source.annotations}: {len(outside)} of {len(annotations)} polygons "
                    f"lie outside slide {source.slide} of shape {shape} (first: feature "
                    f"{outside[0]}); is it the right file? Pass allow_outside=True to clip them"
                )
        plans.append((source, tiler.tiles(shape)))
    _prepare_folder(out, job)

    journal = _read_journal(out)
    done = {key for key, row in journal.items() if _finished(out, row)}
    todo = [
        (source, [t for t in tiles if (source.slide_id, t.grid_row, t.grid_col) not in done])
        for source, tiles in plans
    ]
    reused = sum(len(tiles) for _, tiles in plans) - sum(len(t) for _, t in todo)
    tasks = [(source, row) for source, tiles in todo for row in _by_grid_row(tiles)]
    total = sum(len(row) for _, row in tasks)
    logger.info("exporting %d tiles (%d already done) to %s", total, reused, out)

    with (out / _JOURNAL).open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, MANIFEST_COLUMNS)
        if handle.tell() == 0:
            writer.writeheader()
        for records in _run(tasks, job, processes, progress, total, client, threads):
            for record in records:
                writer.writerow(record)
                journal[(record["slide"], int(record["grid_row"]), int(record["grid_col"]))] = (
                    record
                )
            handle.flush()
            os.fsync(handle.fileno())

    manifest = out / "manifest.csv"
    rows = [journal[key] for key in sorted(journal)]
    write_bytes_atomic(manifest, _manifest_text(rows).encode("utf-8"), clean=True)
    per_slide = {}
    for source, tiles in plans:
        own = [journal[(source.slide_id, t.grid_row, t.grid_col)] for t in tiles]
        per_slide[source.slide_id] = (len(own), sum(r["kept"] == "1" for r in own))
    return ExportSummary(
        out,
        manifest,
        tiles=len(rows),
        kept=sum(r["kept"] == "1" for r in rows),
        reused=reused,
        per_slide=per_slide,
    )


def read_manifest(out_dir: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read a dataset's ``manifest.csv`` as a list of rows (column name -> text).

    Raises
    ------
    DatasetError
        If the folder has no manifest or its columns are not :data:`MANIFEST_COLUMNS`.

    Examples
    --------
    >>> from glomseg import Tiler, TileFilter
    >>> from glomseg.io.synthetic import write_synthetic_slide
    >>> tmp = getfixture("tmp_path")
    >>> slide = write_synthetic_slide(tmp / "a.tif", (256, 256), tile=64, seed=3)
    >>> _ = export_tiles(SlideSource.from_path(slide.path), tmp / "d", tiler=Tiler(128),
    ...                  progress=False)  # the seed's filter: coverage 10-90 %
    >>> row = read_manifest(tmp / "d")[0]
    >>> row["slide"], row["grid_row"], row["kept"], row["reason"][:24]
    ('a', '0', '0', 'CoverageBand: coverage 0')
    """
    path = Path(out_dir) / "manifest.csv"
    if not path.exists():
        raise DatasetError(f"{path}: no manifest; is {out_dir} a glomseg tile dataset?")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise DatasetError(f"{path}: unexpected columns {reader.fieldnames}")
        return list(reader)


# -- the folder ---------------------------------------------------------------------


def _identity(job: _Job) -> dict[str, Any]:
    identity = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "tiler": asdict(job.tiler),
        "filter": repr(job.tile_filter),
        "image_format": job.image_format,
        "mask_values": [0, 1],
        "classes": list(job.classes) if job.classes is not None else None,
    }
    if job.stain_normalizer is not None:  # absent, not null, so older datasets still resume
        identity["stain_normalizer"] = _describe_normalizer(job.stain_normalizer)
    return identity


def _describe_normalizer(normalizer: Any) -> Any:
    """The normaliser's ``to_dict()`` as JSON reads it back, else its class name."""
    to_dict = getattr(normalizer, "to_dict", None)
    if not callable(to_dict):
        kind = type(normalizer)
        return {"class": f"{kind.__module__}.{kind.__qualname__}"}

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray | np.generic):
            return value.tolist()
        raise TypeError(
            f"stain_normalizer.to_dict() must be JSON-serialisable, got {type(value).__name__}"
        )

    return json.loads(json.dumps(to_dict(), default=plain))


def _prepare_folder(out: Path, job: _Job) -> None:
    identity = _identity(job)
    marker = out / "dataset.json"
    if marker.exists():
        try:
            existing = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{marker}: unreadable dataset description ({exc})") from exc
        if existing != identity:
            changed = sorted(
                k for k in identity.keys() | existing.keys() if identity.get(k) != existing.get(k)
            )
            details = "; ".join(
                f"{k}: {existing.get(k)!r} there, {identity.get(k)!r} now" for k in changed
            )
            raise DatasetError(
                f"{out} holds a tile dataset made with other settings ({details}); "
                "use another folder"
            )
    elif out.exists() and any(out.iterdir()):
        raise DatasetError(
            f"{out} is not empty and holds no glomseg tile dataset (no dataset.json); "
            "use an empty or new folder"
        )
    for folder in (out / "images", out / "masks"):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_partials_in(folder)  # tiles of a run that was killed mid-write
    if not marker.exists():
        write_bytes_atomic(marker, (json.dumps(identity, indent=2) + "\n").encode("utf-8"))


def _read_journal(out: Path) -> dict[tuple[str, int, int], dict[str, str]]:
    """Finished tiles of earlier runs; a torn last line (a crash mid-write) is ignored."""
    path = out / _JOURNAL
    rows: dict[tuple[str, int, int], dict[str, str]] = {}
    if not path.exists():
        return rows
    with path.open("r+b") as raw:
        data = raw.read()
        if data and not data.endswith(b"\n"):
            # Drop the torn tail so that the next record starts on a line of its own.
            raw.truncate(data.rfind(b"\n") + 1)
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if None in row or any(v is None for v in row.values()) or row["kept"] not in ("0", "1"):
                continue
            try:
                key = (row["slide"], int(row["grid_row"]), int(row["grid_col"]))
            except ValueError:
                continue
            rows[key] = row
    return rows


def _finished(out: Path, row: dict[str, str]) -> bool:
    if row["kept"] != "1":
        return True
    return (out / row["image"]).is_file() and (out / row["mask"]).is_file()


def _manifest_text(rows: Sequence[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# -- the work -----------------------------------------------------------------------


def _by_grid_row(tiles: list[Tile]) -> Iterator[list[Tile]]:
    """Group tiles by grid row: a worker reads a row's overlapping windows in order."""
    row: list[Tile] = []
    for tile in tiles:
        if row and tile.grid_row != row[0].grid_row:
            yield row
            row = []
        row.append(tile)
    if row:
        yield row


def _run(
    tasks: list[tuple[SlideSource, list[Tile]]],
    job: _Job,
    processes: int,
    progress: bool,
    total: int,
    client: Any = None,
    threads: int = 1,
) -> Iterator[list[dict[str, str]]]:
    from tqdm import tqdm

    with tqdm(total=total, disable=not progress, unit="tile", desc="tiles") as bar:
        if client is not None:
            yield from _run_on_client(tasks, job, client, bar)
            return
        if processes == 1 or len(tasks) <= 1:
            # One process: tiles of a row are read, rasterized and encoded by threads
            # (the decoders, numpy and zlib release the GIL), written in order.
            threaded = ThreadPoolExecutor(threads) if threads > 1 else None
            try:
                for source, tiles in tasks:
                    records = _export_row(job, source, tiles, threaded)
                    bar.update(len(records))
                    yield records
            finally:
                if threaded is not None:
                    threaded.shutdown()
                _close_state()
            return
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes) as pool:
            arguments = [(job, source, tiles) for source, tiles in tasks]
            for records in pool.imap(_export_row_star, arguments):
                bar.update(len(records))
                yield records


def _run_on_client(
    tasks: list[tuple[SlideSource, list[Tile]]], job: _Job, client: Any, bar: Any
) -> Iterator[list[dict[str, str]]]:
    """One task per slide on a Dask client; failures are raised once every slide has ended."""
    from glomseg.errors import SlideTaskError
    from glomseg.io._tasks import _run_tasks

    per_slide: dict[str, tuple[_Job, SlideSource, list[list[Tile]]]] = {}
    for source, tiles in tasks:
        per_slide.setdefault(source.slide_id, (job, source, []))[2].append(tiles)
    failures: dict[str, str] = {}
    for slide_id, records, error in _run_tasks(
        _export_slide, per_slide, client=client, progress=False, desc="export"
    ):
        if error is not None:
            failures[slide_id] = f"{type(error).__name__}: {error}"
            logger.warning("slide %s failed: %s", slide_id, failures[slide_id])
            continue
        bar.update(len(records))
        yield records
    if failures:
        raise SlideTaskError(failures, total=len(per_slide))


#: Per-process open slides: slide id -> (reader, rasterizer).
_STATE: dict[str, tuple[SlideReader, MaskRasterizer]] = {}


def _close_state() -> None:
    for reader, _ in _STATE.values():
        reader.close()
    _STATE.clear()


def _open(job: _Job, source: SlideSource) -> tuple[SlideReader, MaskRasterizer]:
    if source.slide_id not in _STATE:
        # One slide open at a time per process keeps memory to one reader's cache.
        _close_state()
        _STATE[source.slide_id] = _open_slide(job, source)
    return _STATE[source.slide_id]


def _open_slide(job: _Job, source: SlideSource) -> tuple[SlideReader, MaskRasterizer]:
    annotations = (
        read_annotations(source.annotations, classes=job.classes)
        if source.annotations is not None
        else []
    )
    with SlideReader(source.slide, cache_bytes=0) as probe:
        cache = _cache_for(probe.shape, probe.segment_shape, job.tiler)
        # allow_outside: no mask past the slide's edge, where a padded tile's image is fill.
        annotations = clip_to_slide(annotations, probe.shape)
    return SlideReader(source.slide, cache_bytes=cache), MaskRasterizer(annotations)


def _export_slide(job: _Job, source: SlideSource, rows: list[list[Tile]]) -> list[dict[str, str]]:
    """A cluster task: every tile of one slide, with a reader of its own (workers have threads)."""
    reader, rasterizer = _open_slide(job, source)
    with reader:
        return [
            _export_tile(job, source, reader, rasterizer, tile) for tiles in rows for tile in tiles
        ]


def _cache_for(shape: tuple[int, int], segment: tuple[int, int], tiler: Tiler) -> int:
    """Cache bytes that hold every segment one window and its right neighbour touch.

    A worker reads a grid row of windows left to right, so this decodes each
    tile or strip of the row once: about 90 MB for the seed's 4000-px windows in
    512-px tiles, and the whole band, about 540 MB, for a 44066-px-wide striped slide.
    """
    size, stride = tiler.full_tile_size, tiler.full_stride
    rows = min(shape[0], size + segment[0])
    cols = min(shape[1], size + stride + segment[1])
    return rows * cols * 3


def _export_row_star(args: tuple[_Job, SlideSource, list[Tile]]) -> list[dict[str, str]]:
    return _export_row(*args)


def _export_row(
    job: _Job, source: SlideSource, tiles: list[Tile], pool: ThreadPoolExecutor | None = None
) -> list[dict[str, str]]:
    """Export a grid row's tiles, in order; with a pool, several tiles at once (one reader)."""
    reader, rasterizer = _open(job, source)
    if pool is None or len(tiles) < 2:
        return [_export_tile(job, source, reader, rasterizer, tile) for tile in tiles]
    return list(pool.map(lambda tile: _export_tile(job, source, reader, rasterizer, tile), tiles))


def _export_tile(
    job: _Job,
    source: SlideSource,
    reader: SlideReader,
    rasterizer: MaskRasterizer,
    tile: Tile,
) -> dict[str, str]:
    mask = rasterizer.rasterize(tile.window, downsample=job.tiler.downsample)
    if mask.shape != tile.out_shape:  # pragma: no cover - guarded by Tiler's sizes
        raise DatasetError(f"mask of {tile} is {mask.shape}, expected {tile.out_shape}")
    key = tile.key(source.slide_id)
    coverage = float(np.count_nonzero(mask)) / mask.size
    tissue = ""
    decision = job.tile_filter.prejudge(coverage, key)
    if decision is None:  # the filter needs the image
        image = reader.read(tile.window, out_shape=tile.out_shape)
        stats = tile_stats(image, mask)
        decision = job.tile_filter(stats, key)
        coverage, tissue = stats.coverage, f"{stats.tissue:.6f}"
    name = key.name
    image_rel = mask_rel = ""
    if decision.kept:
        image_rel = f"images/{name}.{job.image_format}"
        mask_rel = f"masks/{name}.png"
        if job.stain_normalizer is not None:
            image = _normalise(job.stain_normalizer, image)
        write_bytes_atomic(job.out_dir / mask_rel, _encode(mask.astype(np.uint8), "png"))
        write_bytes_atomic(job.out_dir / image_rel, _encode(image, job.image_format))
    window = tile.window
    return {
        "slide": source.slide_id,
        "grid_row": str(tile.grid_row),
        "grid_col": str(tile.grid_col),
        "row": str(window.row),
        "col": str(window.col),
        "height": str(window.height),
        "width": str(window.width),
        "out_height": str(tile.out_shape[0]),
        "out_width": str(tile.out_shape[1]),
        "downsample": str(job.tiler.downsample),
        "coverage": f"{coverage:.6f}",
        "tissue": tissue,
        "kept": "1" if decision.kept else "0",
        "reason": decision.reason,
        "image": image_rel,
        "mask": mask_rel,
    }


def _normalise(normalizer: Any, image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    out = np.asarray(normalizer.transform(image))
    if out.dtype != np.uint8 or out.shape != image.shape:
        raise ValueError(
            f"stain_normalizer.transform must return uint8 of shape {image.shape}, "
            f"got {out.dtype} of shape {out.shape}"
        )
    return out


def _encode(array: NDArray[np.uint8], image_format: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(array).save(buffer, format="PNG", compress_level=3)
    else:
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()
