"""Every writer leaves its complete output or none: on a full disk, and when killed mid-write.

The full disk is a small tmpfs mounted for the test where that is allowed (as
root), so the writers meet the real ``ENOSPC``; elsewhere the process's file-size
limit (``RLIMIT_FSIZE``) makes the same writes fail with ``EFBIG``. The kills are
real: a subprocess runs the writer and gets ``SIGKILL`` while its temporary
output exists; then the output is checked and the writer run again here.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glomseg import (
    PredictConfig,
    SlideMask,
    SlideSource,
    TileFilter,
    Tiler,
    export_tiles,
    predict_slide,
)
from glomseg.annotations import read_annotations, read_submission, write_submission
from glomseg.distributed import predict_slides
from glomseg.io.synthetic import write_synthetic_slide
from glomseg.tiles import read_manifest

HAS_TF = all(
    importlib.util.find_spec(name) is not None
    for name in ("tensorflow", "tf_keras", "segmentation_models")
)
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs the tf extra: pip install 'glomseg[tf]'")

CONFIG = PredictConfig(tile_size=64, downsample=2, chunk_size=128)
SRC = str(Path(__file__).parents[1] / "src")


def purple(batch: np.ndarray) -> np.ndarray:
    """A stand-in model: the colour rule."""
    return (batch[..., 1] < 150).astype(np.float32)


def _partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".partial"))


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".partial")
    }


# --------------------------------------------------------------------------- a full disk


class Disk:
    """A folder whose free space can be used up: a tmpfs, or the file-size limit."""

    def __init__(self, path: Path, tmpfs: bool) -> None:
        self.path = path
        self.tmpfs = tmpfs
        self._limit: tuple[int, int] | None = None
        self._handler: object = None

    @contextlib.contextmanager
    def full(self, leave: int = 0) -> Iterator[None]:
        """Inside: about ``leave`` bytes can still be written (per file, without a tmpfs)."""
        if self.tmpfs:
            reserve = self.path / "reserve"
            reserve.write_bytes(b"\0" * leave)
            ballast = self.path / "ballast"
            fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                for size in (1 << 20, 1 << 16, 1 << 12, 1 << 8, 1):  # until not a byte fits
                    with contextlib.suppress(OSError):
                        while os.write(fd, b"\0" * size):
                            pass
            finally:
                os.close(fd)
            reserve.unlink()
            try:
                yield
            finally:
                ballast.unlink()
        else:
            limits = resource.getrlimit(resource.RLIMIT_FSIZE)
            handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (leave, limits[1]))
            try:
                yield
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, limits)
                signal.signal(signal.SIGXFSZ, handler)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    path = tmp_path / "disk"
    path.mkdir()
    mounted = (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=96m", "glomseg-test", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield Disk(path, tmpfs=mounted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


def _chunk_room(disk: Disk) -> int:
    """Room for the first chunk of a mask on a tmpfs; none under a file-size limit, which is
    per file (and every chunk is smaller than a few kilobytes)."""
    return 4096 if disk.tmpfs else 0


def _no_space(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a full disk or the file-size limit."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG):
            return True
        if "No space left" in str(error) or "File too large" in str(error):
            return True
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return False


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return write_synthetic_slide(
        tmp_path_factory.mktemp("slide") / "s.tif", (600, 800), tile=64, seed=4
    )


def _blobs(shape: tuple[int, int] = (512, 768), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(120):
        r, c, radius = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(4, 14)
        mask |= (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
    return mask


def test_mask_writers_on_a_full_disk(disk: Disk) -> None:
    old, new = _blobs(seed=0), _blobs(seed=1)
    mask = SlideMask.from_array(old, disk.path / "m.zarr")
    mask.to_tiff(disk.path / "m.tif")
    mask.write_annotations(disk.path / "m.json")
    before = _files(disk.path)
    other = SlideMask.from_array(new, disk.path.parent / "other.zarr")
    with disk.full():
        for write in (
            lambda: SlideMask.from_array(new, disk.path / "m.zarr"),
            lambda: other.to_tiff(disk.path / "m.tif"),
            lambda: other.write_annotations(disk.path / "m.json"),
        ):
            with pytest.raises(Exception) as caught:  # noqa: PT011 - the cause is checked
                write()
            assert _no_space(caught.value), caught.value
    assert _files(disk.path) == before
    assert _partials(disk.path) == []
    np.testing.assert_array_equal(SlideMask(disk.path / "m.zarr").to_numpy(), old)
    # with room again, each write completes
    SlideMask.from_array(new, disk.path / "m.zarr")
    other.to_tiff(disk.path / "m.tif")
    assert len(other.write_annotations(disk.path / "m.json")) == len(
        read_annotations(disk.path / "m.json")
    )
    np.testing.assert_array_equal(np.asarray(Image.open(disk.path / "m.tif")) > 0, new)


def test_submission_on_a_full_disk(disk: Disk) -> None:
    path = disk.path / "submission.csv"
    write_submission(path, [("a", "1 2"), ("b", "")])
    before = path.read_bytes()
    long = " ".join(f"{10 * i + 1} 3" for i in range(20000))
    with disk.full(), pytest.raises(OSError, match=r"No space|too large") as caught:
        write_submission(path, [("a", long), ("b", long)])
    assert _no_space(caught.value)
    assert path.read_bytes() == before
    assert _partials(disk.path) == []
    write_submission(path, [("a", long)])
    assert read_submission(path) == {"a": long}


def test_predict_slide_on_a_full_disk(disk: Disk, slide) -> None:  # type: ignore[no-untyped-def]
    target = disk.path / "s.zarr"
    reference = predict_slide(slide.path, purple, target, config=CONFIG, progress=False)
    expected = reference.to_numpy()
    before = _files(disk.path)
    with disk.full(leave=_chunk_room(disk)), pytest.raises(Exception) as caught:  # noqa: PT011
        predict_slide(slide.path, purple, target, config=CONFIG, progress=False)
    assert _no_space(caught.value), caught.value
    assert _files(disk.path) == before
    assert _partials(disk.path) == []
    np.testing.assert_array_equal(SlideMask(target).to_numpy(), expected)


def test_predict_slides_on_a_full_disk(disk: Disk, slide) -> None:  # type: ignore[no-untyped-def]
    out = disk.path / "out"
    with disk.full(leave=_chunk_room(disk)):
        report = predict_slides([slide.path], _purple_factory, out, config=CONFIG, progress=False)
    assert list(report.failed) == ["s"]
    assert "No space left" in report.failed["s"].error or "too large" in report.failed["s"].error
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".partial")) == []
    report = predict_slides([slide.path], _purple_factory, out, config=CONFIG, progress=False)
    assert list(report.done) == ["s"]
    assert _partials(out) == []


def _purple_factory():  # type: ignore[no-untyped-def]
    return purple


def _export(slide, out: Path):  # type: ignore[no-untyped-def]
    return export_tiles(
        SlideSource("s", slide.path, slide.annotation_path),
        out,
        tiler=Tiler(128, 128, downsample=1),
        tile_filter=TileFilter(),  # every tile
        progress=False,
    )


def test_export_tiles_on_a_full_disk_then_resumed(disk: Disk, slide, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not disk.tmpfs:
        pytest.skip("needs a tmpfs (root): the file-size limit stops no tile, each is small")
    _export(slide, tmp_path / "reference")
    out = disk.path / "tiles"
    with disk.full(leave=96 * 1024), pytest.raises(Exception) as caught:  # noqa: PT011
        _export(slide, out)
    assert _no_space(caught.value), caught.value
    assert not (out / "manifest.csv").exists()
    written = [p for p in out.rglob("*.png") if not p.name.endswith(".partial")]
    assert written, "the disk filled before any tile: the test did not test resuming"
    for png in written:  # every tile under its name is whole
        Image.open(png).load()
    _export(slide, out)
    assert _files(out / "images") == _files(tmp_path / "reference" / "images")
    assert _files(out / "masks") == _files(tmp_path / "reference" / "masks")
    assert read_manifest(out) == read_manifest(tmp_path / "reference")
    assert _partials(out) == []


@needs_tf
def test_model_save_on_a_full_disk(disk: Disk) -> None:
    from glomseg import GlomUNet

    model = GlomUNet(backbone="resnet18", input_size=64, seed=0)
    path = model.save(disk.path / "model.h5")
    before = _files(disk.path)
    other = GlomUNet(backbone="resnet18", input_size=64, seed=1)
    with disk.full(leave=1 << 20), pytest.raises(Exception) as caught:  # noqa: PT011
        other.save(path)
    assert _no_space(caught.value), caught.value
    assert _files(disk.path) == before
    assert _partials(disk.path) == []
    tiles = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(GlomUNet.load(path).predict(tiles), model.predict(tiles))


# --------------------------------------------------------------------------- a killed writer


def _kill_mid_write(script: str, folder: Path, ready: Path | None = None) -> None:
    """Run ``script`` and SIGKILL it while a temporary output exists in ``folder``.

    With ``ready``, only once ``ready`` exists too (a first output completed).
    """
    code = f"import sys; sys.path.insert(0, {SRC!r})\n" + textwrap.dedent(script)
    with (
        tempfile.TemporaryFile() as log,
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        ) as process,
    ):
        deadline = time.monotonic() + 300
        try:
            while not ((ready is None or ready.exists()) and _partials(folder)):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    pytest.fail(f"the writer was not caught mid-write:\n{tail}")
                time.sleep(0.005)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL


def test_killed_mask_writers_leave_the_last_whole_output(tmp_path: Path) -> None:
    first = SlideMask.from_array(_blobs(), tmp_path / "first.zarr")
    expected = first.to_numpy()
    script = f"""
        from glomseg import SlideMask
        path = {str(tmp_path)!r}
        mask = SlideMask(path + "/first.zarr")
        for i in range(10**6):
            mask.to_tiff(path + "/m.tif")
            mask.write_annotations(path + "/m.json")
            SlideMask.from_array(mask.to_numpy(), path + "/m.zarr")
    """
    for name in ("m.tif", "m.json", "m.zarr"):
        _kill_mid_write(script, tmp_path, ready=tmp_path / name)
    assert _partials(tmp_path)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.tif")) > 0, expected)
    assert len(read_annotations(tmp_path / "m.json")) == len(first.polygons())
    np.testing.assert_array_equal(SlideMask(tmp_path / "m.zarr").to_numpy(), expected)
    # the next writes clear what the killed ones left
    first.to_tiff(tmp_path / "m.tif")
    first.write_annotations(tmp_path / "m.json")
    SlideMask.from_array(expected, tmp_path / "m.zarr")
    assert _partials(tmp_path) == []


def test_killed_submission_writer_leaves_the_last_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    script = f"""
        from glomseg.annotations import write_submission
        runs = " ".join(f"{{10 * i + 1}} 3" for i in range(200000))
        for i in range(10**6):
            write_submission({str(path)!r}, [("a", runs), ("b", str(i) + " 1")])
    """
    _kill_mid_write(script, tmp_path, ready=path)
    submission = read_submission(path)
    assert submission["a"].startswith("1 3 11 3")
    assert len(submission["a"].split()) == 400000
    write_submission(path, [("a", "1 1")])
    assert _partials(tmp_path) == []


def test_killed_predict_slide_is_redone_cleanly(tmp_path: Path, slide) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "s.zarr"
    script = f"""
        import time
        from glomseg import PredictConfig, predict_slide
        def slow(batch):
            time.sleep(0.05)
            return (batch[..., 1] < 150).astype("float32")
        config = PredictConfig(tile_size=64, downsample=2, chunk_size=128)
        predict_slide({str(slide.path)!r}, slow, {str(target)!r}, config=config, progress=False)
    """
    _kill_mid_write(script, tmp_path)
    assert not target.exists()
    assert _partials(tmp_path)
    mask = predict_slide(slide.path, purple, target, config=CONFIG, progress=False)
    reference = predict_slide(slide.path, purple, None, config=CONFIG, progress=False)
    np.testing.assert_array_equal(mask.to_numpy(), reference.to_numpy())
    assert _partials(tmp_path) == []


def test_killed_predict_slides_resumes(tmp_path: Path, slide) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    script = f"""
        import time
        from glomseg import PredictConfig
        from glomseg.distributed import predict_slides
        def slow(batch):
            time.sleep(0.05)
            return (batch[..., 1] < 150).astype("float32")
        def factory():
            return slow
        config = PredictConfig(tile_size=64, downsample=2, chunk_size=128)
        predict_slides([{str(slide.path)!r}], factory, {str(out)!r}, config=config, progress=False)
    """
    _kill_mid_write(script, tmp_path)
    assert not (out / "s.done.json").exists()
    assert not (out / "s.zarr").exists()
    report = predict_slides([slide.path], _purple_factory, out, config=CONFIG, progress=False)
    assert list(report.done) == ["s"]
    reference = predict_slide(slide.path, purple, None, config=CONFIG, progress=False)
    assert (out / "s.rle").read_text().strip() == reference.rle()
    assert json.loads((out / "s.done.json").read_text())["slide_id"] == "s"
    assert _partials(out) == []


def test_killed_export_tiles_resumes(tmp_path: Path, slide) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "tiles"
    script = f"""
        from glomseg import SlideSource, TileFilter, Tiler, export_tiles
        source = SlideSource("s", {str(slide.path)!r}, {str(slide.annotation_path)!r})
        for i in range(10**6):  # each run finds the last one's tiles done, until all are
            export_tiles(source, {str(out)!r}, tiler=Tiler(32, 16, downsample=1),
                         tile_filter=TileFilter(), progress=False)
            import shutil; shutil.rmtree({str(out)!r})
    """
    _kill_mid_write(script, tmp_path, ready=out / ".journal.csv")
    assert _partials(tmp_path)
    summary = export_tiles(
        SlideSource("s", slide.path, slide.annotation_path),
        out,
        tiler=Tiler(32, 16, downsample=1),
        tile_filter=TileFilter(),
        progress=False,
    )
    reference = tmp_path / "reference"
    export_tiles(
        SlideSource("s", slide.path, slide.annotation_path),
        reference,
        tiler=Tiler(32, 16, downsample=1),
        tile_filter=TileFilter(),
        progress=False,
    )
    assert summary.tiles == len(read_manifest(reference))
    assert read_manifest(out) == read_manifest(reference)
    assert _files(out / "images") == _files(reference / "images")
    assert _partials(out) == []


@needs_tf
def test_killed_model_save_leaves_the_last_whole_file(tmp_path: Path) -> None:
    from glomseg import GlomUNet

    path = tmp_path / "model.h5"
    script = f"""
        from glomseg import GlomUNet
        model = GlomUNet(backbone="resnet18", input_size=64, seed=0)
        for i in range(10**6):
            model.save({str(path)!r})
    """
    _kill_mid_write(script, tmp_path, ready=path)
    assert _partials(tmp_path)
    model = GlomUNet(backbone="resnet18", input_size=64, seed=0)
    tiles = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(GlomUNet.load(path).predict(tiles), model.predict(tiles))
    model.save(path)
    assert _partials(tmp_path) == []
