"""Benchmark glomseg.rle_encode against the public notebooks' encoder at whole-slide scale.

Usage::

    python benchmarks/bench_rle.py            # 31299 x 44066 mask (the baseline needs ~15 GB)
    python benchmarks/bench_rle.py --small    # 4x smaller per side, a few seconds

The mask is a real one: the glomerulus polygons of HuBMAP slide VAN0005-RK-8-2
(Kaggle b9a3865fc, copied in tests/data) rasterized into a 31299 x 44066 canvas,
stored as uint8 0/1 like the notebooks' masks. Each encoder runs in its own
subprocess, which loads the mask from a .npy file and reports wall time and its
extra peak memory (peak RSS during the call minus RSS before it). Both must give
the same string. Target: glomseg at least 2x faster with at most half the extra
peak memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ANNOTATIONS = (
    ROOT / "tests" / "data" / "slide_annotations" / "VAN0005-RK-8-2-PAS_FFPE_glom_annotations.json"
)
FULL_SHAPE = (31299, 44066)


def common_rle(img: np.ndarray) -> str:
    """The encoder of the public HuBMAP notebooks, verbatim."""
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def glomseg_rle(img: np.ndarray) -> str:
    from glomseg.annotations._rle import rle_encode

    return rle_encode(img)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _child(method: str, path: str) -> None:
    mask = np.load(path)
    encode = {"common": common_rle, "glomseg": glomseg_rle}[method]
    encode(mask[:64, :64])  # warm imports and code paths
    before = _rss_bytes()
    start = time.perf_counter()
    rle = encode(mask)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "extra_peak_bytes": max(0, peak - before),
                "sha256": hashlib.sha256(rle.encode()).hexdigest(),
                "runs": rle.count(" ") // 2 + 1 if rle else 0,
            }
        )
    )


def _make_mask(shape: tuple[int, int], downsample: int) -> np.ndarray:
    from glomseg.annotations._annotations import read_annotations
    from glomseg.annotations._rasterize import MaskRasterizer

    rasterizer = MaskRasterizer(read_annotations(ANNOTATIONS))
    return rasterizer.full_mask(shape, downsample=downsample).view(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="4x smaller per side")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "NPY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    downsample = 4 if args.small else 1
    start = time.perf_counter()
    mask = _make_mask(FULL_SHAPE, downsample)
    print(
        f"mask {mask.shape[0]} x {mask.shape[1]} uint8 ({mask.nbytes / 2**20:.0f} MiB), "
        f"{mask.mean() * 100:.2f}% foreground, made in {time.perf_counter() - start:.1f} s"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mask.npy"
        np.save(path, mask)
        del mask
        for method in ("glomseg", "common"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", method, str(path)],
                check=True,
                capture_output=True,
                text=True,
            )
            results[method] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[method]
            print(
                f"{method:>8}: {r['seconds']:7.2f} s, extra peak memory "
                f"{r['extra_peak_bytes'] / 2**20:8.1f} MiB, {r['runs']} runs"
            )
    ours, common = results["glomseg"], results["common"]
    same = ours["sha256"] == common["sha256"]
    speedup = common["seconds"] / ours["seconds"]
    memory = ours["extra_peak_bytes"] / max(1, common["extra_peak_bytes"])
    print(f"same output: {same}")
    print(f"speed-up: {speedup:.1f}x (target >= 2x)")
    print(f"extra peak memory ratio: {memory:.3f} (target <= 0.5)")
    if not (same and speedup >= 2 and memory <= 0.5):
        sys.exit("target missed")


if __name__ == "__main__":
    main()
