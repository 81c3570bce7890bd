from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import box
from shapely.ops import unary_union

from glomseg import MaskRasterizer, SlideReader, TileFilter, Tiler, read_annotations
from glomseg.errors import DatasetError, SlideReadError
from glomseg.io.synthetic import write_synthetic_slide
from glomseg.tiles import TileKey, TileStats, parse_tile_name
from glomseg.tiles._export import MANIFEST_COLUMNS, SlideSource, export_tiles, read_manifest

SAMPLE = Path(__file__).parents[2] / "examples" / "data" / "sample"
REAL = ["van0013_train_17", "van0013_train_306", "van0013_train_323"]  # three layouts


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "tiles"
    sources = [SlideSource.from_path(SAMPLE / f"{name}.tif") for name in REAL]
    summary = export_tiles(
        sources,
        out,
        tiler=Tiler(200, 100, edge="shift", downsample=2),
        tile_filter=TileFilter(),
        progress=False,
    )
    return out, sources, summary


def test_real_tiles_masks_match_the_polygons(real_dataset):
    out, sources, summary = real_dataset
    rows = read_manifest(out)
    assert summary.tiles == len(rows) == 3 * 5 * 7  # 1200x1600 at 400-px windows every 200 px
    assert summary.kept == len(rows)
    polygons = {
        s.slide_id: unary_union([a.geometry for a in read_annotations(s.annotations)])
        for s in sources
    }
    checked = 0
    for row in rows:
        r, c, h, w = (int(row[k]) for k in ("row", "col", "height", "width"))
        # GeoJSON is (x, y) = (col, row): the window as a shapely box
        exact = polygons[row["slide"]].intersection(box(c, r, c + w, r + h)).area / (h * w)
        mask = np.asarray(Image.open(out / row["mask"]))
        assert mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        assert mask.mean() == pytest.approx(float(row["coverage"]), abs=1e-6)
        assert float(row["coverage"]) == pytest.approx(exact, abs=0.01)
        checked += exact > 0
    assert checked > 20  # the real sample has glomeruli in most windows


def test_real_tile_image_and_mask_are_the_same_window(real_dataset):
    out, sources, _ = real_dataset
    by_id = {s.slide_id: s for s in sources}
    for row in read_manifest(out)[::7]:
        source = by_id[row["slide"]]
        key = parse_tile_name(Path(row["image"]).stem)
        assert key == TileKey(row["slide"], int(row["grid_row"]), int(row["grid_col"]))
        assert Path(row["mask"]).stem == Path(row["image"]).stem
        from glomseg import Window

        window = Window(*(int(row[k]) for k in ("row", "col", "height", "width")))
        with SlideReader(source.slide) as reader:
            expected_image = reader.read(window, out_shape=(200, 200))
        expected_mask = MaskRasterizer(read_annotations(source.annotations)).rasterize(
            window, downsample=2
        )
        np.testing.assert_array_equal(np.asarray(Image.open(out / row["image"])), expected_image)
        np.testing.assert_array_equal(np.asarray(Image.open(out / row["mask"])), expected_mask)


def test_manifest_and_dataset_description(real_dataset):
    out, _, _ = real_dataset
    with (out / "manifest.csv").open() as handle:
        assert tuple(next(csv.reader(handle))) == MANIFEST_COLUMNS
    description = json.loads((out / "dataset.json").read_text())
    assert description["tiler"] == {
        "tile_size": 200,
        "stride": 100,
        "edge": "shift",
        "downsample": 2,
    }
    assert description["mask_values"] == [0, 1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("syn")
    return [
        write_synthetic_slide(folder / f"s{i}.tif", (900, 1100), tile=128, seed=i) for i in range(2)
    ]


def _sources(slides):
    return [SlideSource.from_path(s.path) for s in slides]


def test_seed_recipe_keeps_only_the_coverage_band(synthetic, tmp_path):
    summary = export_tiles(
        _sources(synthetic), tmp_path / "d", tiler=Tiler(100, 50, downsample=2), progress=False
    )
    rows = read_manifest(tmp_path / "d")
    assert summary.tiles == len(rows) == 2 * 8 * 10
    for row in rows:
        kept = 0.10 <= float(row["coverage"]) <= 0.90
        assert row["kept"] == ("1" if kept else "0")
        assert (row["image"] != "") == kept
        if not kept:
            assert row["reason"].startswith("CoverageBand: coverage")
    kept_files = sorted(p.name for p in (tmp_path / "d" / "images").iterdir())
    assert kept_files == sorted(Path(r["image"]).name for r in rows if r["kept"] == "1")
    assert summary.kept == len(kept_files) > 0


@pytest.mark.parametrize(("processes", "threads"), [(2, None), (1, 4)])
def test_processes_and_threads_give_the_same_dataset(synthetic, tmp_path, processes, threads):
    kwargs = {
        "tiler": Tiler(96, 64, edge="pad", downsample=3),
        "progress": False,
        "tile_filter": TileFilter.winners_recipe(background_share=0.3, seed=4),
    }
    export_tiles(_sources(synthetic), tmp_path / "one", processes=1, threads=1, **kwargs)
    export_tiles(
        _sources(synthetic), tmp_path / "two", processes=processes, threads=threads, **kwargs
    )
    assert (tmp_path / "one" / "manifest.csv").read_bytes() == (
        tmp_path / "two" / "manifest.csv"
    ).read_bytes()
    for folder in ("images", "masks"):
        names = sorted(p.name for p in (tmp_path / "one" / folder).iterdir())
        assert names
        assert names == sorted(p.name for p in (tmp_path / "two" / folder).iterdir())
        for name in names:
            assert (tmp_path / "one" / folder / name).read_bytes() == (
                tmp_path / "two" / folder / name
            ).read_bytes()


_FAIL_AFTER: list[int] = []


@dataclass(frozen=True)
class _Flaky:
    """Keeps everything, but raises after a set number of calls (a simulated crash)."""

    def __call__(self, stats: TileStats, key: TileKey, /) -> str | None:
        if _FAIL_AFTER:
            _FAIL_AFTER[0] -= 1
            if _FAIL_AFTER[0] < 0:
                raise RuntimeError("simulated crash")
        return None


def test_interrupted_run_resumes_to_the_same_result(synthetic, tmp_path):
    kwargs = {
        "tiler": Tiler(100, 100, downsample=2),
        "progress": False,
        "tile_filter": TileFilter(_Flaky()),
    }
    clean = export_tiles(_sources(synthetic), tmp_path / "clean", **kwargs)

    _FAIL_AFTER[:] = [23]
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            export_tiles(_sources(synthetic), tmp_path / "crash", **kwargs)
    finally:
        _FAIL_AFTER.clear()
    crashed = tmp_path / "crash"
    assert not (crashed / "manifest.csv").exists()
    assert not [p for p in crashed.rglob("*") if p.name.endswith(".partial")]
    # a torn journal line and a lost image, as after a power cut
    with (crashed / ".journal.csv").open("a") as handle:
        handle.write("s1,3,")
    next((crashed / "images").iterdir()).unlink()

    resumed = export_tiles(_sources(synthetic), crashed, **kwargs)
    assert 0 < resumed.reused < clean.tiles
    assert (crashed / "manifest.csv").read_bytes() == (
        tmp_path / "clean" / "manifest.csv"
    ).read_bytes()
    assert sorted(p.name for p in (crashed / "images").iterdir()) == sorted(
        p.name for p in (tmp_path / "clean" / "images").iterdir()
    )
    again = export_tiles(_sources(synthetic), crashed, **kwargs)
    assert again.reused == clean.tiles


def test_folder_with_another_dataset_is_refused(synthetic, tmp_path):
    export_tiles(_sources(synthetic[:1]), tmp_path / "d", tiler=Tiler(100), progress=False)
    before = sorted(p.name for p in (tmp_path / "d" / "images").iterdir())
    with pytest.raises(DatasetError, match=r"other settings .*tiler"):
        export_tiles(_sources(synthetic[:1]), tmp_path / "d", tiler=Tiler(120), progress=False)
    assert sorted(p.name for p in (tmp_path / "d" / "images").iterdir()) == before


def test_unrelated_folder_is_refused(synthetic, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty and holds no glomseg tile dataset"):
        export_tiles(_sources(synthetic), tmp_path / "d", tiler=Tiler(100), progress=False)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["notes.txt"]


def test_unreadable_slide_writes_nothing(synthetic, tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    sources = [*_sources(synthetic), SlideSource("broken", broken)]
    with pytest.raises(SlideReadError, match=r"broken\.tif"):
        export_tiles(sources, tmp_path / "d", tiler=Tiler(100), progress=False)
    assert not (tmp_path / "d").exists()


def test_polygons_outside_the_slide_are_an_error(synthetic, tmp_path):
    # the annotations of a bigger slide, given to a small one
    big = write_synthetic_slide(tmp_path / "big.tif", (3000, 3000), tile=256, seed=9)
    small = SlideSource("small", synthetic[0].path, big.annotation_path)
    with pytest.raises(DatasetError, match=r"big\.json: \d+ of \d+ polygons lie outside"):
        export_tiles(small, tmp_path / "d", tiler=Tiler(100), progress=False)
    assert not (tmp_path / "d").exists()
    summary = export_tiles(
        small, tmp_path / "d", tiler=Tiler(100), progress=False, allow_outside=True
    )
    assert summary.tiles == 9 * 11


def test_allowed_outside_polygons_are_clipped_to_the_slide(tmp_path):
    import tifffile

    from glomseg import write_annotations

    slide = tmp_path / "s.tif"
    tifffile.imwrite(slide, np.full((120, 150, 3), 200, np.uint8), photometric="rgb")
    polygons = tmp_path / "s.json"
    write_annotations(polygons, [box(120, 20, 180, 60)])  # x 120-180 on a 150-px-wide slide
    out = tmp_path / "d"
    export_tiles(
        SlideSource("s", slide, polygons),
        out,
        tiler=Tiler(100, edge="pad"),
        progress=False,
        allow_outside=True,
    )
    edge = next(r for r in read_manifest(out) if (r["row"], r["col"]) == ("0", "100"))
    mask = np.asarray(Image.open(out / edge["mask"]))  # columns 100-199; the slide ends at 150
    assert mask[20:60, 20:50].all()  # inside the slide: the polygon
    assert not mask[:, 50:].any()  # past its edge: white fill, never glomerulus
    # rows 20-60 (centres on the edge count) by slide columns 120-149
    assert float(edge["coverage"]) == pytest.approx(41 * 30 / 100**2)


def test_bad_arguments(synthetic, tmp_path):
    sources = _sources(synthetic)
    with pytest.raises(DatasetError, match="repeated: s0"):
        export_tiles([sources[0], sources[0]], tmp_path / "d", tiler=Tiler(100))
    with pytest.raises(ValueError, match="did you mean 'jpg'"):
        export_tiles(sources, tmp_path / "d", tiler=Tiler(100), image_format="jpeg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="processes must be >= 1, got 0"):
        export_tiles(sources, tmp_path / "d", tiler=Tiler(100), processes=0)
    with pytest.raises(ValueError, match="threads must be an int >= 1, got 0"):
        export_tiles(sources, tmp_path / "d", tiler=Tiler(100), threads=0)
    with pytest.raises(ValueError, match="slide"):
        SlideSource("has space", synthetic[0].path)
    with pytest.raises(DatasetError, match="no manifest"):
        read_manifest(tmp_path)


def test_jpg_images_and_class_selection(tmp_path):
    source = tmp_path / "t.tif"
    shutil.copy(SAMPLE / "van0013_train_17.tif", source)
    features = json.loads((SAMPLE / "van0013_train_17.json").read_text())
    for feature in features[:2]:
        feature["properties"]["classification"]["name"] = "Cortex"
    (tmp_path / "t.json").write_text(json.dumps(features))
    kwargs = {"tiler": Tiler(300, downsample=4), "tile_filter": TileFilter(), "progress": False}
    export_tiles(SlideSource.from_path(source), tmp_path / "all", image_format="jpg", **kwargs)
    export_tiles(SlideSource.from_path(source), tmp_path / "glom", classes=["glomerulus"], **kwargs)
    assert (tmp_path / "all" / "images" / "t__r000_c000.jpg").exists()
    total_all = sum(float(r["coverage"]) for r in read_manifest(tmp_path / "all"))
    total_glom = sum(float(r["coverage"]) for r in read_manifest(tmp_path / "glom"))
    assert 0 < total_glom < total_all


def test_tiles_rejected_by_their_mask_are_never_read(synthetic, tmp_path, monkeypatch):
    reads = []
    original = SlideReader.read

    def counting(self, window=None, **kwargs):
        reads.append(window)
        return original(self, window, **kwargs)

    monkeypatch.setattr(SlideReader, "read", counting)
    export_tiles(
        _sources(synthetic), tmp_path / "d", tiler=Tiler(100, 50, downsample=2), progress=False
    )
    rows = read_manifest(tmp_path / "d")
    measured = [r for r in rows if r["tissue"] != ""]
    # only tiles inside the coverage band need their image
    assert len(reads) == len(measured) == sum(r["kept"] == "1" for r in rows) > 0
    assert all(0.10 <= float(r["coverage"]) <= 0.90 for r in measured)


class _Invert:
    """A fake stain normaliser: inverts colours; ``to_dict`` names its setting."""

    def __init__(self, strength: float = 1.0) -> None:
        self.strength = strength

    def transform(self, image: np.ndarray) -> np.ndarray:
        return (255 - image).astype(np.uint8)

    def to_dict(self) -> dict[str, object]:
        return {"kind": "invert", "strength": np.float64(self.strength), "target": np.eye(2)}


def test_stain_normaliser_is_applied_to_images_and_recorded(synthetic, tmp_path):
    kwargs = {
        "tiler": Tiler(100, 100, downsample=2),
        "tile_filter": TileFilter(),
        "progress": False,
    }
    export_tiles(_sources(synthetic[:1]), tmp_path / "raw", **kwargs)
    export_tiles(_sources(synthetic[:1]), tmp_path / "d", stain_normalizer=_Invert(), **kwargs)
    assert "stain_normalizer" not in json.loads((tmp_path / "raw" / "dataset.json").read_text())
    description = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert description["stain_normalizer"] == {
        "kind": "invert",
        "strength": 1.0,
        "target": [[1.0, 0.0], [0.0, 1.0]],
    }
    names = sorted(p.name for p in (tmp_path / "d" / "images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "raw" / "images").iterdir())
    assert names
    for name in names:
        raw = np.asarray(Image.open(tmp_path / "raw" / "images" / name))
        normalised = np.asarray(Image.open(tmp_path / "d" / "images" / name))
        np.testing.assert_array_equal(normalised, 255 - raw)
        mask = Path("masks") / name
        assert (tmp_path / "d" / mask).read_bytes() == (tmp_path / "raw" / mask).read_bytes()
    # the same normaliser resumes; another one, or none, is refused
    again = export_tiles(
        _sources(synthetic[:1]), tmp_path / "d", stain_normalizer=_Invert(), **kwargs
    )
    assert again.reused == again.tiles
    with pytest.raises(DatasetError, match=r"other settings \(stain_normalizer: .*strength"):
        export_tiles(
            _sources(synthetic[:1]), tmp_path / "d", stain_normalizer=_Invert(0.5), **kwargs
        )
    with pytest.raises(DatasetError, match="stain_normalizer"):
        export_tiles(_sources(synthetic[:1]), tmp_path / "d", **kwargs)
    with pytest.raises(DatasetError, match="stain_normalizer"):
        export_tiles(
            _sources(synthetic[:1]), tmp_path / "raw", stain_normalizer=_Invert(), **kwargs
        )


def test_a_bad_stain_normaliser_is_reported(synthetic, tmp_path):
    with pytest.raises(TypeError, match="stain_normalizer must have a transform"):
        export_tiles(
            _sources(synthetic[:1]), tmp_path / "d", tiler=Tiler(100), stain_normalizer=object()
        )
    assert not (tmp_path / "d").exists()


def test_a_journal_row_without_a_verdict_is_not_taken_as_finished(synthetic, tmp_path):
    from glomseg.tiles._export import _read_journal

    out = tmp_path / "d"
    export_tiles(_sources(synthetic[:1]), out, tiler=Tiler(100), progress=False)
    path = out / ".journal.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    first = (rows[0]["slide"], int(rows[0]["grid_row"]), int(rows[0]["grid_col"]))
    assert first in _read_journal(out)
    for verdict in ("", "01"):  # a torn or garbled record: "" and "01" are in "01"
        rows[0]["kept"] = verdict
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        assert first not in _read_journal(out)
