"""Benchmark whole-slide prediction: glomseg's pipeline against a naive loop.

A synthetic slide of the size of the largest-but-one HuBMAP slide (31299 x 44066,
tiled 512, uncompressed: 4.1 GB) is predicted twice, each run in its own
subprocess so that its peak RSS is its own:

``pipeline``
    :func:`glomseg.predict_slide`: band reads in a reader thread, background
    tiles skipped, blended stitching in a band of memory, a writer thread
    streaming the mask to a zarr store on disk.
``naive``
    The seed's approach: for every tile of the same grid, read it
    (``SlideReader.read(window, out_shape=...)``), predict, and paste the
    thresholded, upsampled prediction into a full-size in-memory mask.

The predictor stands in for a GPU model: it sleeps ``--latency`` seconds per tile
(a GPU computing while the Python thread waits, with the GIL released), then
computes a cheap colour rule with numpy (a few ms per batch). Its own time is
measured around each call, so "overhead" is everything else: reading,
stitching, writing and idle waits.

Targets: overhead (wall time minus predictor time) under 20 % of the
predictor's time, and peak RSS under 2 GB.

Usage::

    python benchmarks/bench_predict.py                  # the full-size run (minutes)
    python benchmarks/bench_predict.py --shape 6000 8000 --latency 0.01   # a quick one
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORK = Path(os.environ.get("GLOMSEG_BENCH_DIR", "/tmp/glomseg-bench"))


class SleepPredictor:
    """A stand-in for a GPU model: ``latency`` s of (GIL-free) waiting per tile + a colour rule."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.seconds = 0.0
        self.tiles = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        begin = time.perf_counter()
        time.sleep(self.latency * len(batch))
        green = batch[..., 1]
        hit = ((green > 90) & (green < 142)).astype(np.float32)
        n, h, w = hit.shape
        cell = 8 if h % 8 == 0 and w % 8 == 0 else 1
        coarse = hit.reshape(n, h // cell, cell, w // cell, cell).mean(axis=(2, 4))
        probs = np.repeat(np.repeat(coarse, cell, axis=1), cell, axis=2)
        self.seconds += time.perf_counter() - begin
        self.tiles += n
        return probs


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def ensure_slide(shape: tuple[int, int]) -> Path:
    from glomseg.synthetic import write_synthetic_slide

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"synthetic-{shape[0]}x{shape[1]}-tiled.tif"
    if not path.exists():
        print(f"writing {path} (tiled 512, uncompressed) ...", flush=True)
        begin = time.perf_counter()
        write_synthetic_slide(path, shape, tile=512, compression="none", seed=0)
        print(f"  {time.perf_counter() - begin:.0f} s", flush=True)
    return path


def run_pipeline(args: argparse.Namespace) -> dict[str, float]:
    from glomseg import PredictConfig, predict_slide

    predictor = SleepPredictor(args.latency)
    config = PredictConfig(
        tile_size=args.tile,
        stride=args.stride,
        downsample=args.downsample,
        batch_size=args.batch,
        blending="gaussian",
    )
    out_dir = Path(tempfile.mkdtemp(prefix="bench-predict-", dir=WORK))
    try:
        begin = time.perf_counter()
        mask = predict_slide(
            args.slide, predictor, out_dir / "mask.zarr", config=config, progress=False
        )
        wall = time.perf_counter() - begin
        stats = mask.stats
        assert stats is not None
        rss_predict = peak_rss_mb()
        begin = time.perf_counter()
        rle = mask.rle()
        rle_s = time.perf_counter() - begin
        begin = time.perf_counter()
        mask.to_tiff(out_dir / "mask.tif")
        tiff_s = time.perf_counter() - begin
        result = {
            "wall_s": wall,
            "predict_s": stats.predict_s,
            "read_s": stats.read_s,
            "read_wait_s": stats.read_wait_s,
            "stitch_s": stats.stitch_s,
            "write_s": stats.write_s,
            "write_wait_s": stats.write_wait_s,
            "tiles": stats.tiles,
            "predicted": stats.predicted,
            "skipped": stats.skipped,
            "peak_rss_mb": rss_predict,
            "rle_s": rle_s,
            "rle_chars": len(rle),
            "tiff_s": tiff_s,
            "peak_rss_with_exports_mb": peak_rss_mb(),
        }
        if args.dice:
            from glomseg import evaluate_slide

            begin = time.perf_counter()
            result["dice"] = evaluate_slide(mask, Path(args.slide).with_suffix(".json")).dice
            result["dice_s"] = time.perf_counter() - begin
        return result
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def run_naive(args: argparse.Namespace) -> dict[str, float]:
    from glomseg import SlideReader, Tiler

    predictor = SleepPredictor(args.latency)
    ds, threshold = args.downsample, 0.5
    read_s = paste_s = 0.0
    begin_all = time.perf_counter()
    with SlideReader(args.slide) as reader:
        h, w = reader.shape
        full = np.zeros((h, w), dtype=bool)  # the full-size mask in memory
        tiles = Tiler(args.tile, args.stride, edge="shift", downsample=ds).tiles((h, w))
        for start in range(0, len(tiles), args.batch):
            group = tiles[start : start + args.batch]
            begin = time.perf_counter()
            images = np.stack([reader.read(t.window, out_shape=t.out_shape) for t in group])
            read_s += time.perf_counter() - begin
            probs = predictor(images)
            begin = time.perf_counter()
            for tile, p in zip(group, probs, strict=True):
                block = np.repeat(np.repeat(p > threshold, ds, axis=0), ds, axis=1)
                inside = tile.window.clip((h, w))
                assert inside is not None
                rows, cols = inside.relative_to(tile.window).to_slices()
                full[inside.to_slices()] = block[rows, cols]
            paste_s += time.perf_counter() - begin
    wall = time.perf_counter() - begin_all
    return {
        "wall_s": wall,
        "predict_s": predictor.seconds,
        "read_s": read_s,
        "read_wait_s": read_s,
        "stitch_s": paste_s,
        "write_s": 0.0,
        "write_wait_s": 0.0,
        "tiles": len(tiles),
        "predicted": predictor.tiles,
        "skipped": 0,
        "peak_rss_mb": peak_rss_mb(),
        "mask_pixels": float(np.count_nonzero(full)),
    }


def child(args: argparse.Namespace) -> None:
    result = run_pipeline(args) if args.child == "pipeline" else run_naive(args)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(kind: str, args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--slide",
        str(args.slide),
        "--tile",
        str(args.tile),
        "--stride",
        str(args.stride),
        "--downsample",
        str(args.downsample),
        "--batch",
        str(args.batch),
        "--latency",
        str(args.latency),
    ]
    if args.dice:
        command.append("--dice")
    print(f"running {kind} ...", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
        raise SystemExit(f"{kind} failed with code {done.returncode}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT ") :]))


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print()
    print(
        f"slide {args.shape[0]} x {args.shape[1]}, tile {args.tile} stride {args.stride} at "
        f"downsample {args.downsample}, batch {args.batch}, predictor latency "
        f"{args.latency * 1000:.0f} ms/tile (sleep) + numpy colour rule"
    )
    rows = [
        ("tiles in grid", "tiles", "{:.0f}"),
        ("tiles predicted", "predicted", "{:.0f}"),
        ("tiles skipped (glass)", "skipped", "{:.0f}"),
        ("wall time [s]", "wall_s", "{:.1f}"),
        ("  predictor [s]", "predict_s", "{:.1f}"),
        ("  read, busy [s]", "read_s", "{:.1f}"),
        ("  read, predictor idle [s]", "read_wait_s", "{:.1f}"),
        ("  stitch, busy [s]", "stitch_s", "{:.1f}"),
        ("  write, busy [s]", "write_s", "{:.1f}"),
        ("  write, predictor blocked [s]", "write_wait_s", "{:.1f}"),
        ("overhead = wall - predictor [s]", "overhead_s", "{:.1f}"),
        ("overhead / predictor", "overhead_ratio", "{:.1%}"),
        ("peak RSS [MB]", "peak_rss_mb", "{:.0f}"),
    ]
    for r in results.values():
        r["overhead_s"] = r["wall_s"] - r["predict_s"]
        r["overhead_ratio"] = r["overhead_s"] / r["predict_s"]
    names = list(results)
    print(f"{'':34s}" + "".join(f"{n:>12s}" for n in names))
    for label, key, fmt in rows:
        print(f"{label:34s}" + "".join(f"{fmt.format(results[n][key]):>12s}" for n in names))
    p = results["pipeline"]
    print()
    print(
        f"pipeline exports (not in the targets): RLE {p['rle_s']:.1f} s "
        f"({p['rle_chars'] / 1e6:.1f} M chars), TIFF {p['tiff_s']:.1f} s, "
        f"peak RSS with exports {p['peak_rss_with_exports_mb']:.0f} MB"
    )
    if "dice" in p:
        print(f"pipeline Dice against the slide's polygons: {p['dice']:.4f} ({p['dice_s']:.0f} s)")
    ok_overhead = p["overhead_ratio"] < 0.20
    ok_rss = p["peak_rss_mb"] < 2048
    print(
        f"target overhead < 20 % of predictor time: {'MET' if ok_overhead else 'NOT MET'} "
        f"({p['overhead_ratio']:.1%})"
    )
    print(f"target peak RSS < 2 GB: {'MET' if ok_rss else 'NOT MET'} ({p['peak_rss_mb']:.0f} MB)")
    if "naive" in results:
        n = results["naive"]
        print(
            f"speed-up over the naive loop: {n['wall_s'] / p['wall_s']:.2f}x wall time, "
            f"{n['peak_rss_mb'] / p['peak_rss_mb']:.1f}x less peak memory"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(31299, 44066))
    parser.add_argument("--slide", type=Path, default=None)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--stride", type=int, default=384)
    parser.add_argument("--downsample", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.03, help="seconds per tile")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--dice", action="store_true", help="also score the pipeline's mask")
    parser.add_argument("--child", choices=("pipeline", "naive"), default=None)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    args.slide = args.slide or ensure_slide(tuple(args.shape))
    results = {"pipeline": spawn("pipeline", args)}
    if not args.skip_naive:
        results["naive"] = spawn("naive", args)
    report(results, args)


if __name__ == "__main__":
    main()
