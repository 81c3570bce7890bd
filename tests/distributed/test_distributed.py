"""Tests of many-slide runs on a real Dask LocalCluster (glomseg.distributed._distributed).

The cluster has two worker processes; the models are colour rules built by
functions of this module, which the workers import by name.
"""

from __future__ import annotations

import filecmp
import functools
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from glomseg import (
    PredictConfig,
    SlideMask,
    SlideSource,
    TileFilter,
    Tiler,
    evaluate_slides,
    export_tiles,
    predict_slide,
    predict_slides,
)
from glomseg.errors import SlideTaskError
from glomseg.io.synthetic import write_synthetic_slide
from glomseg.predict import write_submission_csv

distributed = pytest.importorskip("distributed")

CONFIG = PredictConfig(tile_size=64, downsample=2, chunk_size=128)


def _purple(batch: np.ndarray) -> np.ndarray:
    return (batch[..., 1] < 150).astype(np.float32)


def purple_model():
    """A model factory: the colour rule."""
    return _purple


def _kill_first_call(flag: str, batch: np.ndarray) -> np.ndarray:
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return _purple(batch)
    os._exit(1)  # the first call anywhere kills its worker process, mid-slide


def killer_model(flag: str):
    """A model factory whose predictor kills the first worker that calls it."""
    return functools.partial(_kill_first_call, flag)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # a free port: others may run a cluster too
        memory_limit="2GiB",
        silence_logs=40,
    )
    with cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    shapes = [(300, 400), (256, 520), (410, 300), (200, 200)]
    return [
        write_synthetic_slide(folder / f"slide{i}.tif", shape, tile=64, seed=i)
        for i, shape in enumerate(shapes)
    ]


@pytest.fixture(scope="module")
def serial(slides, tmp_path_factory):
    """The reference: predict_slide per slide, and the submission CSV from the masks."""
    out = tmp_path_factory.mktemp("serial")
    masks = {
        s.path.stem: predict_slide(
            s.path, _purple, out / f"{s.path.stem}.zarr", config=CONFIG, progress=False
        )
        for s in slides
    }
    write_submission_csv(out / "submission.csv", masks)
    return out


def _same_tree(left: Path, right: Path, ignore: tuple[str, ...] = ()) -> bool:
    """Whether two folders hold the same files, byte for byte (but the ``ignore`` names)."""
    compared = filecmp.dircmp(left, right, ignore=list(ignore))
    if compared.left_only or compared.right_only or compared.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, compared.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(left / d, right / d) for d in compared.common_dirs)


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".partial"))


def _check_like_serial(report, serial: Path, ids: list[str], *, moved: bool = False) -> None:
    """Masks, RLE and CSV as the serial run's; ``moved``: the slides were read from elsewhere."""
    for slide_id in ids:
        ours, theirs = report.out_dir / f"{slide_id}.zarr", serial / f"{slide_id}.zarr"
        # The metadata of a moved slide names its other path; the chunks must not differ.
        assert _same_tree(ours, theirs, ("zarr.json",) if moved else ()), slide_id
        if moved:
            assert SlideMask(ours).attributes["config"] == SlideMask(theirs).attributes["config"]
    assert report.submission is not None
    assert report.submission.read_bytes() == (serial / "submission.csv").read_bytes()
    assert _partials(report.out_dir) == []


def test_cluster_output_equals_serial_byte_for_byte(client, slides, serial, tmp_path):
    paths = [s.path for s in slides]
    report = predict_slides(
        paths, purple_model, tmp_path, config=CONFIG, client=client, progress=False
    )
    assert sorted(report.done) == sorted(s.path.stem for s in slides)
    assert all(o.worker and o.worker.startswith("tcp://") for o in report.slides.values())
    assert list(report.slides) == [s.path.stem for s in slides]  # in the order given
    _check_like_serial(report, serial, list(report.slides))
    for slide_id, outcome in report.slides.items():
        assert (
            outcome.rle.read_text().strip()
            == (serial / "submission.csv")
            .read_text()
            .split("\n")[1 + list(report.slides).index(slide_id)]
            .split(",", 1)[1]
        )


def test_local_run_equals_serial(slides, serial, tmp_path):
    report = predict_slides(
        [s.path for s in slides], purple_model, tmp_path, config=CONFIG, progress=False
    )
    assert {o.worker for o in report.slides.values()} == {"local"}
    _check_like_serial(report, serial, list(report.slides))


def test_worker_killed_mid_slide_run_completes_with_same_bytes(client, slides, serial, tmp_path):
    flag = tmp_path / "killed"
    out = tmp_path / "out"
    model = functools.partial(killer_model, str(flag))
    report = predict_slides(
        [s.path for s in slides], model, out, config=CONFIG, client=client, progress=False
    )
    assert flag.exists(), "no worker was killed: the test did not test anything"
    assert report.failed == {}
    _check_like_serial(report, serial, list(report.slides))


def test_failing_slide_is_reported_and_others_finish_then_rerun_skips(
    client, slides, serial, tmp_path
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    paths = []
    for s in slides:
        target = inputs / s.path.name
        target.write_bytes(s.path.read_bytes())
        paths.append(target)
    broken = paths[1]
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 3])  # truncated
    out = tmp_path / "out"

    report = predict_slides(paths, purple_model, out, config=CONFIG, client=client, progress=False)
    assert list(report.failed) == ["slide1"]
    assert "SlideReadError" in report.failed["slide1"].error
    assert str(broken) in report.failed["slide1"].error
    assert sorted(report.done) == ["slide0", "slide2", "slide3"]
    assert report.submission is None
    assert not (out / "submission.csv").exists()
    assert not (out / "slide1.zarr").exists()
    assert not (out / "slide1.done.json").exists()
    assert _partials(out) == []
    with pytest.raises(SlideTaskError, match="1 of 4 slides failed: slide1"):
        report.raise_on_failure()

    broken.write_bytes(good)  # fixed: the rerun does only that slide
    before = {p: p.stat().st_mtime_ns for p in out.glob("slide0*")}
    again = predict_slides(paths, purple_model, out, config=CONFIG, client=client, progress=False)
    assert list(again.done) == ["slide1"]
    assert sorted(again.skipped) == ["slide0", "slide2", "slide3"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("slide0*")} == before
    _check_like_serial(again, serial, list(again.slides), moved=True)


def test_rerun_with_other_settings_is_refused_unless_overwrite(slides, tmp_path):
    paths = [slides[3].path]
    predict_slides(paths, purple_model, tmp_path, config=CONFIG, progress=False)
    other = PredictConfig(tile_size=64, downsample=2, chunk_size=128, threshold=0.7)
    with pytest.raises(ValueError, match=r"another model, other settings.*slide3"):
        predict_slides(paths, purple_model, tmp_path, config=other, progress=False)
    report = predict_slides(
        paths, purple_model, tmp_path, config=other, overwrite=True, progress=False
    )
    assert list(report.done) == ["slide3"]


def test_another_file_under_a_done_slide_id_is_not_taken_for_it(slides, tmp_path):
    slide = tmp_path / "s.tif"
    slide.write_bytes(slides[2].path.read_bytes())
    out = tmp_path / "out"
    predict_slides([slide], purple_model, out, config=CONFIG, progress=False)
    slide.write_bytes(slides[3].path.read_bytes())  # rescanned: same id, other pixels
    with pytest.raises(ValueError, match=r"another file of the same slide id \(s\)"):
        predict_slides([slide], purple_model, out, config=CONFIG, progress=False)
    report = predict_slides(
        [slide], purple_model, out, config=CONFIG, overwrite=True, progress=False
    )
    assert list(report.done) == ["s"]


def test_a_redone_slide_loses_its_earlier_ome_tiff(slides, tmp_path):
    paths = [slides[3].path]
    predict_slides(paths, purple_model, tmp_path, config=CONFIG, ome_tiff=True, progress=False)
    assert (tmp_path / "slide3.ome.tif").is_file()
    other = replace(CONFIG, threshold=0.7)
    predict_slides(paths, purple_model, tmp_path, config=other, overwrite=True, progress=False)
    assert not (tmp_path / "slide3.ome.tif").exists()  # it was the other run's mask


def test_model_sources_that_may_differ_are_described_apart(tmp_path):
    from glomseg.distributed._distributed import _describe_model

    def loader(name):
        return lambda: name  # stands for GlomUNet.load(name)

    first, second = (lambda: "v1.h5"), (lambda: "v2.h5")
    assert _describe_model(first) != _describe_model(second)  # both "<lambda>" by name
    assert _describe_model(loader("a")) != _describe_model(loader("b"))  # closures
    assert _describe_model(purple_model) == _describe_model(purple_model)  # stable
    saved = tmp_path / "model.h5"
    saved.write_bytes(b"weights 1")
    before = _describe_model(saved)
    assert before == _describe_model(str(saved))
    saved.write_bytes(b"weights 2, trained longer")  # saved again over the same path
    assert _describe_model(saved) != before
    assert _describe_model(functools.partial(loader, saved)) != _describe_model(
        functools.partial(loader, tmp_path / "other.h5")
    )


def test_done_key_leaves_out_how_fast_but_not_what():
    from glomseg.distributed._distributed import _run_key

    key = _run_key("glomeruli-pas", CONFIG, 0.5, True)
    fast = replace(CONFIG, backend="openvino", precision="bfloat16", workers=3)
    assert _run_key("glomeruli-pas", fast, 0.5, True) == key
    assert _run_key("glomeruli-pas", replace(CONFIG, threshold=0.7), 0.5, True) != key
    int8 = replace(CONFIG, precision="int8")  # masks beyond float32's tolerance: not the same run
    assert _run_key("glomeruli-crosslab", int8, 0.5, True) != _run_key(
        "glomeruli-crosslab", CONFIG, 0.5, True
    )


def test_bad_arguments_are_refused_before_any_work(slides, tmp_path):
    paths = [s.path for s in slides]
    with pytest.raises(TypeError, match="no arguments"):
        predict_slides(paths, _purple, tmp_path, config=CONFIG, progress=False)
    with pytest.raises(ValueError, match="repeated: slide0"):
        predict_slides([paths[0], paths[0]], purple_model, tmp_path, progress=False)
    with pytest.raises(ValueError, match="cannot name files"):
        predict_slides({"a/b": paths[0]}, purple_model, tmp_path, progress=False)
    with pytest.raises(TypeError, match=r"dask\.distributed\.Client"):
        predict_slides(paths, purple_model, tmp_path, client=object(), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_slides_on_cluster_equals_serial(client, slides, serial):
    pairs = {s.path.stem: (serial / f"{s.path.stem}.zarr", s.annotation_path) for s in slides}
    local = evaluate_slides(pairs, window=100)
    remote = evaluate_slides(pairs, window=100, client=client)
    assert remote == local
    assert 0 < local.mean < 1


def test_evaluate_slides_on_cluster_reports_every_failure(client, slides, serial, tmp_path):
    pairs = {s.path.stem: (serial / f"{s.path.stem}.zarr", s.annotation_path) for s in slides}
    pairs["slide2"] = (tmp_path / "missing.zarr", slides[2].annotation_path)
    with pytest.raises(SlideTaskError, match="1 of 4 slides failed: slide2") as caught:
        evaluate_slides(pairs, client=client)
    assert "missing.zarr" in caught.value.failures["slide2"]


def test_export_tiles_on_cluster_equals_serial(client, slides, tmp_path):
    sources = [SlideSource.from_path(s.path) for s in slides]
    tiler = Tiler(64, 48, downsample=2)
    local = export_tiles(
        sources, tmp_path / "local", tiler=tiler, tile_filter=TileFilter(), progress=False
    )
    remote = export_tiles(
        sources,
        tmp_path / "remote",
        tiler=tiler,
        tile_filter=TileFilter(),
        client=client,
        progress=False,
    )
    assert (remote.tiles, remote.kept, remote.per_slide) == (
        local.tiles,
        local.kept,
        local.per_slide,
    )
    assert local.kept > 0
    assert _same_tree(tmp_path / "local" / "images", tmp_path / "remote" / "images")
    assert _same_tree(tmp_path / "local" / "masks", tmp_path / "remote" / "masks")
    assert (tmp_path / "local" / "manifest.csv").read_bytes() == (
        tmp_path / "remote" / "manifest.csv"
    ).read_bytes()
    with pytest.raises(ValueError, match="not both"):
        export_tiles(sources, tmp_path / "x", tiler=tiler, client=client, processes=2)
