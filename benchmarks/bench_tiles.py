"""Benchmark step 1, the tile dataset: glomseg's export against the naive way.

A synthetic slide of a real HuBMAP size (31299 x 44066 by default, with the real
slides' glomerulus density: about 0.5 per million pixels, 2-3 % coverage), 4000 x
4000 windows every 2000 px, resized to 400 x 400 and saved as PNG, with two filters:

- ``seed``: keep tiles whose glomerulus coverage is 10-90 % (the seed's recipe;
  at real densities it keeps almost nothing, so glomseg reads almost no image);
- ``any``: keep every tile with any glomerulus (so both methods resize and save
  the images of most tiles).

- naive: ``tifffile.imread`` of the whole slide, a whole-slide mask drawn with
  ``skimage.draw.polygon``, ``patchify`` of both, coverage per patch, resize of
  the kept ones with ``skimage.transform.resize`` (as the seed pipeline does).
- glomseg: :func:`glomseg.export_tiles` with ``Tiler(400, 200, downsample=10)``
  and the seed filter, with 1 and 2 processes.

Each method runs in its own subprocess; the parent samples the resident memory of
that subprocess and its children every 50 ms, and prints wall time and peak RSS
side by side with the ratios. Run::

    python benchmarks/bench_tiles.py            # 31299 x 44066, a few minutes
    python benchmarks/bench_tiles.py --small    # 6000 x 8000, quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            with open(f"/proc/{current}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total


def run_measured(args: list[str]) -> tuple[dict[str, object], float]:
    """Run a child, sampling its process tree's RSS; return its JSON line and the peak."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"child {args[2:]} failed with exit code {process.returncode}")
    return json.loads(stdout.strip().splitlines()[-1]), peak / 2**20


def _keep(coverage: float, recipe: str) -> bool:
    return coverage > 0 if recipe == "any" else 0.10 <= coverage <= 0.90


def child_naive(slide: Path, annotations: Path, out: Path, recipe: str) -> dict[str, object]:
    import numpy as np
    import tifffile
    from patchify import patchify
    from PIL import Image
    from skimage.draw import polygon

    start = time.perf_counter()
    image = tifffile.imread(slide)
    if image.shape[0] == 3:
        image = np.moveaxis(image, 0, -1)
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    for feature in json.loads(annotations.read_text()):
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        rr, cc = polygon(ring[:, 1], ring[:, 0], shape=mask.shape)
        mask[rr, cc] = 1
    images = patchify(image, (4000, 4000, 3), step=2000)
    masks = patchify(mask, (4000, 4000), step=2000)
    kept = 0
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    for i in range(masks.shape[0]):
        for j in range(masks.shape[1]):
            coverage = masks[i, j].mean()
            if _keep(coverage, recipe):
                # Pillow's box filter: a fast area average, like cv2.INTER_AREA
                small = Image.fromarray(images[i, j, 0]).resize((400, 400), Image.Resampling.BOX)
                small_mask = Image.fromarray(masks[i, j]).resize(
                    (400, 400), Image.Resampling.NEAREST
                )
                small.save(out / "images" / f"{i}_{j}.png")
                small_mask.save(out / "masks" / f"{i}_{j}.png")
                kept += 1
    return {
        "seconds": time.perf_counter() - start,
        "tiles": int(masks.shape[0] * masks.shape[1]),
        "kept": kept,
    }


def child_glomseg(
    slide: Path, annotations: Path, out: Path, recipe: str, processes: int
) -> dict[str, object]:
    from glomseg import SlideSource, TileFilter, Tiler, export_tiles
    from glomseg.tiles import GlomerulusOrSample

    if recipe == "any":
        tile_filter = TileFilter(GlomerulusOrSample(background_share=0.0))
    else:
        tile_filter = TileFilter.seed_recipe()

    start = time.perf_counter()
    summary = export_tiles(
        SlideSource("slide", slide, annotations),
        out,
        tiler=Tiler(400, 200, downsample=10),
        tile_filter=tile_filter,
        processes=processes,
        progress=False,
    )
    return {"seconds": time.perf_counter() - start, "tiles": summary.tiles, "kept": summary.kept}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=2, default=(31299, 44066), metavar=("H", "W"))
    parser.add_argument("--small", action="store_true", help="use a 6000 x 8000 slide")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "glomseg-bench"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, slide, annotations, out, recipe, *rest = args.child
        if method == "naive":
            result = child_naive(Path(slide), Path(annotations), Path(out), recipe)
        else:
            result = child_glomseg(Path(slide), Path(annotations), Path(out), recipe, int(rest[0]))
        print(json.dumps(result))
        return

    from glomseg.io.synthetic import write_synthetic_slide

    shape = (6000, 8000) if args.small else tuple(args.shape)
    args.workdir.mkdir(parents=True, exist_ok=True)
    slide = args.workdir / f"synthetic-{shape[0]}x{shape[1]}-tiled.tif"
    annotations = slide.with_suffix(".json")
    if not (slide.exists() and annotations.exists()):
        start = time.perf_counter()
        write_synthetic_slide(slide, shape, tile=512)
        print(f"wrote {slide} in {time.perf_counter() - start:.1f} s")
    n_glomeruli = len(json.loads(annotations.read_text()))
    print(f"slide {shape[0]} x {shape[1]} (tiled 512, uncompressed), {n_glomeruli} glomeruli")
    print("4000 x 4000 windows every 2000 px, saved at 400 x 400\n")

    for recipe in ("seed", "any"):
        _compare(recipe, slide, annotations, args.workdir)


def _compare(recipe: str, slide: Path, annotations: Path, workdir: Path) -> None:
    results = {}
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        runs = {"naive": ["naive"], "glomseg x1": ["glomseg", "1"], "glomseg x2": ["glomseg", "2"]}
        for label, spec in runs.items():
            out = Path(scratch) / label.replace(" ", "_")
            child = [
                sys.executable,
                __file__,
                "--child",
                spec[0],
                str(slide),
                str(annotations),
                str(out),
                recipe,
                *spec[1:],
            ]
            result, peak = run_measured(child)
            results[label] = (float(result["seconds"]), peak, result["tiles"], result["kept"])

    naive_s, naive_mb = results["naive"][:2]
    print(f"filter {recipe!r}")
    print(
        f"{'method':<12} {'wall s':>8} {'peak RSS MB':>12} {'tiles':>6} {'kept':>5}"
        f" {'time ratio':>11} {'RSS ratio':>10}"
    )
    for label, (seconds, peak, tiles, kept) in results.items():
        print(
            f"{label:<12} {seconds:8.1f} {peak:12.0f} {tiles:>6} {kept:>5}"
            f" {seconds / naive_s:11.2f} {peak / naive_mb:10.2f}"
        )
    best_s, best_mb = results["glomseg x2"][:2]
    print("targets: peak RSS at most a quarter of the naive way's, faster with 2 processes")
    print(
        f"  peak RSS ratio {best_mb / naive_mb:.2f} (<= 0.25): "
        f"{'met' if best_mb <= naive_mb / 4 else 'NOT met'}"
    )
    print(f"  time ratio {best_s / naive_s:.2f} (< 1): {'met' if best_s < naive_s else 'NOT met'}")
    if results["naive"][3] != results["glomseg x1"][3]:
        print(
            f"  note: kept counts differ (naive {results['naive'][3]}, glomseg "
            f"{results['glomseg x1'][3]}): coverage is measured at 4000 px there, at 400 px here"
        )
    print()


if __name__ == "__main__":
    main()
