"""Benchmark MaskRasterizer on the largest real annotation file, at full slide size.

Usage::

    python benchmarks/bench_rasterize.py            # full resolution
    python benchmarks/bench_rasterize.py --small    # 4x downsample

The file is the largest of the 20 HuBMAP glomerulus files in tests/data
(VAN0016-LK-202-89, Kaggle 4ef6695ce, 492 polygons). Its slide size is not in
slide_sizes.csv, so the canvas is the polygons' extent (printed); a file whose
slide size is known uses it. Two modes, each in its own subprocess:

* ``whole``: one ``full_mask`` of the slide (one byte a pixel);
* ``windowed``: 4096 x 4096 windows one after another (the tiling use), counting pixels.

Each prints wall time, peak RSS and extra peak RSS over the process before
rasterizing; both must count the same pixels.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "slide_annotations"
WINDOW = 4096


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _slide_size(path: Path) -> tuple[tuple[int, int], str]:
    from glomseg.annotations._annotations import read_annotations

    with (DATA / "slide_sizes.csv").open(newline="") as handle:
        sizes = {
            r["image_file"].split(".")[0]: (int(r["height_pixels"]), int(r["width_pixels"]))
            for r in csv.DictReader(handle)
        }
    with (DATA / "VAN_to_kaggle2021.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            van = row["van_slide"].split("(")[0]
            if path.name.startswith(van) and row["kaggle_id"] in sizes:
                return sizes[row["kaggle_id"]], f"slide_sizes.csv ({row['kaggle_id']})"
    bounds = [a.geometry.bounds for a in read_annotations(path)]
    height = math.ceil(max(b[3] for b in bounds)) + 1
    width = math.ceil(max(b[2] for b in bounds)) + 1
    return (height, width), "polygon extent (size not in slide_sizes.csv)"


def _child(mode: str, path: str, height: int, width: int, downsample: int) -> None:
    from glomseg.annotations._annotations import read_annotations
    from glomseg.annotations._rasterize import MaskRasterizer
    from glomseg.io._window import Window

    start = time.perf_counter()
    rasterizer = MaskRasterizer(read_annotations(path))
    build = time.perf_counter() - start
    rasterizer.rasterize((8, 8))  # warm GDAL
    before = _rss_bytes()
    start = time.perf_counter()
    if mode == "whole":
        pixels = int(np.count_nonzero(rasterizer.full_mask((height, width), downsample=downsample)))
    else:
        pixels = 0
        for row in range(0, height, WINDOW):
            for col in range(0, width, WINDOW):
                window = Window(row, col, min(WINDOW, height - row), min(WINDOW, width - col))
                mask = rasterizer.rasterize(window, downsample=downsample)
                pixels += int(np.count_nonzero(mask))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "build_seconds": build,
                "peak_rss": peak,
                "extra_peak": max(0, peak - before),
                "pixels": pixels,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="rasterize at 4x downsample")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, path, h, w, d = args.child
        _child(mode, path, int(h), int(w), int(d))
        return

    path = max(DATA.glob("*.json"), key=lambda p: p.stat().st_size)
    (height, width), origin = _slide_size(path)
    downsample = 4 if args.small else 1
    # Whole multiples of the downsample, so that the windows' grids line up with the whole's.
    height, width = height - height % downsample, width - width % downsample
    print(f"{path.name}: slide {height} x {width} from {origin}; downsample {downsample}")
    counts = {}
    for mode in ("windowed", "whole"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                mode,
                str(path),
                str(height),
                str(width),
                str(downsample),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        counts[mode] = r["pixels"]
        print(
            f"{mode:>9}: {r['seconds']:6.2f} s (index built in {r['build_seconds']:.2f} s), "
            f"peak RSS {r['peak_rss'] / 2**20:7.0f} MiB, extra {r['extra_peak'] / 2**20:7.0f} MiB, "
            f"{r['pixels']} mask pixels"
        )
    print(f"same pixel count: {counts['windowed'] == counts['whole']}")


if __name__ == "__main__":
    main()
