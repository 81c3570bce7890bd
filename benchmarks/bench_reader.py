"""Benchmark glomseg's windowed SlideReader against reading the whole slide with tifffile.

What it measures
----------------
For a synthetic slide of the real HuBMAP size (31299 x 44066 RGB, about 4.1 GB of
pixels), written once in two layouts -- tiled (512 x 512 tiles) and striped (64 rows
per strip), both uncompressed -- it reads every 4000 x 4000 window at stride 2000
(the windows patchify keeps: ``row`` in ``range(0, H - 4000 + 1, 2000)`` and ``col``
likewise, edges that do not fit are dropped) in two ways:

``glomseg``
    ``SlideReader(path).read(Window(row, col, 4000, 4000))`` for each window.
``naive``
    ``tifffile.imread(path)`` of the whole slide, then slicing each window out of
    it, as the public HuBMAP notebooks and the seed pipeline do.

Each method runs in its own fresh subprocess, so its peak resident memory (the
process's ``VmHWM``) is its own. Both compute the same checksum of every window
(the integer sum of its first channel), so no read can be skipped and the two
methods must agree; the script fails if they do not. Wall time covers opening the
file and reading every window, not interpreter start-up. Before the measurements
the slide is read once through the page cache so neither method pays for the disk.
Each method runs ``--repeat`` times (default 3, alternating the methods); the table
shows the median wall time and the largest peak RSS, since single runs of a few
seconds vary by 10-30 % on a busy machine.

The issue's targets are printed next to the figures: peak RSS below 1.5 GB (where
the naive way needs the whole slide, about 4 GB) and wall time no worse than the
naive way.

How to run
----------
::

    python benchmarks/bench_reader.py                 # full size, ~4 GB per slide
    python benchmarks/bench_reader.py --small         # 6000 x 8000, a quick check
    python benchmarks/bench_reader.py --shape 20000 30000 --workdir /data/bench

Slides are written to ``--workdir`` (default ``<tempdir>/glomseg-bench``) and reused
by later runs when a slide of the same shape and layout is already there. Peak RSS
is reported in MiB (``2**20`` bytes) under the name ``peak_rss_mb``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FULL_SHAPE = (31299, 44066)
SMALL_SHAPE = (6000, 8000)
WINDOW = 4000
STRIDE = 2000
#: The issue's memory target: peak RSS below 1.5 GB.
RSS_TARGET_MB = 1536.0
#: Slide layouts: name -> keyword arguments of ``write_synthetic_slide``.
LAYOUTS: dict[str, dict[str, Any]] = {
    "tiled": {"tile": 512},
    "striped": {"tile": None, "rows_per_strip": 64},
}
METHODS = ("glomseg", "naive")


# -- child side: one method, one slide --------------------------------------
def _peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _grid(shape: tuple[int, int], size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of the windows patchify keeps ('drop' the edges that do not fit)."""
    height, width = shape
    return [
        (row, col)
        for row in range(0, height - size + 1, stride)
        for col in range(0, width - size + 1, stride)
    ]


def _run_glomseg(path: Path, size: int, stride: int) -> tuple[int, int]:
    from glomseg import SlideReader, Window

    checksum = 0
    with SlideReader(path) as slide:
        corners = _grid(slide.shape, size, stride)
        for row, col in corners:
            window = slide.read(Window(row, col, size, size))
            checksum += int(window[..., 0].sum(dtype="int64"))
    return len(corners), checksum


def _run_naive(path: Path, size: int, stride: int) -> tuple[int, int]:
    import tifffile

    image = tifffile.imread(path)
    corners = _grid(image.shape[:2], size, stride)
    checksum = 0
    for row, col in corners:
        window = image[row : row + size, col : col + size]
        checksum += int(window[..., 0].sum(dtype="int64"))
    return len(corners), checksum


def child(method: str, path: Path, size: int, stride: int) -> None:
    """Time one method on one slide and print its figures as one JSON line."""
    run = {"glomseg": _run_glomseg, "naive": _run_naive}[method]
    start = time.perf_counter()
    n_windows, checksum = run(path, size, stride)
    seconds = time.perf_counter() - start
    result = {
        "method": method,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "n_windows": n_windows,
        "checksum": checksum,
    }
    print(json.dumps(result), flush=True)


# -- parent side ------------------------------------------------------------
def _has_slide(path: Path, shape: tuple[int, int], tiled: bool) -> bool:
    """Whether ``path`` already holds a slide of this shape and layout."""
    if not path.exists():
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return tuple(page.shape[:2]) == shape and bool(page.is_tiled) == tiled
    except Exception:  # a partial or foreign file: write it again
        return False


def ensure_slide(workdir: Path, shape: tuple[int, int], layout: str) -> Path:
    """Write the synthetic slide of ``shape`` and ``layout`` unless it is already there."""
    options = LAYOUTS[layout]
    path = workdir / f"synthetic-{shape[0]}x{shape[1]}-{layout}.tif"
    if _has_slide(path, shape, options["tile"] is not None):
        size_gb = path.stat().st_size / 1e9
        print(f"reuse  {layout:<8} {path} ({size_gb:.2f} GB)", flush=True)
        return path
    from glomseg.io.synthetic import write_synthetic_slide

    start = time.perf_counter()
    write_synthetic_slide(path, shape, compression="none", **options)
    seconds = time.perf_counter() - start
    size_gb = path.stat().st_size / 1e9
    print(f"write  {layout:<8} {path} ({size_gb:.2f} GB) in {seconds:.1f} s", flush=True)
    return path


def warm_page_cache(path: Path, chunk: int = 64 * 2**20) -> None:
    """Read the file once so that both methods find it in the page cache."""
    with open(path, "rb", buffering=0) as fh:
        buffer = bytearray(chunk)
        while fh.readinto(buffer):
            pass


def measure(method: str, path: Path, size: int, stride: int) -> dict[str, Any]:
    """Run one method on one slide in a fresh subprocess and return its figures."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        method,
        str(path),
        "--window",
        str(size),
        "--stride",
        str(stride),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{method} on {path.name} failed with exit status {done.returncode}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"{method} on {path.name} printed no result:\n{done.stdout}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine repeated runs of one method: median wall time, largest peak RSS."""
    return {
        **runs[0],
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "all_seconds": [r["seconds"] for r in runs],
    }


def report(results: dict[str, dict[str, dict[str, Any]]]) -> bool:
    """Print the side-by-side table and the targets; return whether all targets are met."""
    header = (
        f"{'layout':<8} {'method':<8} {'wall s':>8} {'peak RSS MB':>12} {'windows':>8}"
        f" {'time ratio':>11} {'RSS ratio':>10}  each run s"
    )
    print()
    print(header)
    print("-" * len(header))
    all_met = True
    verdicts = []
    for layout, by_method in results.items():
        ours, naive = by_method["glomseg"], by_method["naive"]
        time_ratio = ours["seconds"] / naive["seconds"]
        rss_ratio = ours["peak_rss_mb"] / naive["peak_rss_mb"]
        for method in METHODS:
            r = by_method[method]
            ratios = f"{time_ratio:>11.2f} {rss_ratio:>10.2f}" if method == "glomseg" else " " * 22
            each = " ".join(f"{t:.2f}" for t in r["all_seconds"])
            print(
                f"{layout:<8} {method:<8} {r['seconds']:>8.2f} {r['peak_rss_mb']:>12.0f}"
                f" {r['n_windows']:>8d} {ratios}  {each}"
            )
        rss_met = ours["peak_rss_mb"] < RSS_TARGET_MB
        time_met = ours["seconds"] <= naive["seconds"]
        all_met = all_met and rss_met and time_met
        verdicts.append(
            f"  {layout:<8} peak RSS {ours['peak_rss_mb']:.0f} MB < {RSS_TARGET_MB:.0f} MB "
            f"(naive {naive['peak_rss_mb']:.0f} MB): {'met' if rss_met else 'NOT met'}; "
            f"wall {ours['seconds']:.2f} s <= naive {naive['seconds']:.2f} s: "
            f"{'met' if time_met else 'NOT met'}"
        )
    print("(wall s: median of the runs; ratios: glomseg / naive)")
    print()
    print(
        "Targets: peak RSS below 1.5 GB where the naive way needs the whole slide (~4 GB), "
        "wall time no worse than the naive way"
    )
    for line in verdicts:
        print(line)
    return all_met


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the benchmark (or, with ``--child``, one measurement)."""
    parser = argparse.ArgumentParser(
        description=(
            "Compare glomseg.SlideReader with tifffile.imread + slicing: wall time and peak "
            f"RSS of reading every {WINDOW}x{WINDOW} window at stride {STRIDE} from synthetic "
            "tiled and striped slides."
        )
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        default=None,
        help=f"slide size in pixels (default {FULL_SHAPE[0]} {FULL_SHAPE[1]}, the HuBMAP size)",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help=f"quick check on a {SMALL_SHAPE[0]}x{SMALL_SHAPE[1]} slide",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "glomseg-bench",
        help="where the slides are written and reused (default: %(default)s)",
    )
    parser.add_argument(
        "--layouts",
        nargs="+",
        choices=tuple(LAYOUTS),
        default=list(LAYOUTS),
        help="slide layouts to measure (default: all)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each method per slide; the table shows the median time (default 3)",
    )
    parser.add_argument("--window", type=int, default=WINDOW, help=argparse.SUPPRESS)
    parser.add_argument("--stride", type=int, default=STRIDE, help=argparse.SUPPRESS)
    parser.add_argument(
        "--child", nargs=2, metavar=("METHOD", "PATH"), default=None, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.child is not None:
        method, path = args.child
        if method not in METHODS:
            parser.error(f"unknown method {method!r}")
        child(method, Path(path), args.window, args.stride)
        return 0

    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.small and args.shape is not None:
        parser.error("give at most one of --small and --shape")
    shape = SMALL_SHAPE if args.small else tuple(args.shape or FULL_SHAPE)
    if min(shape) < args.window:
        parser.error(f"the slide {shape} is smaller than one {args.window}-pixel window")
    args.workdir.mkdir(parents=True, exist_ok=True)

    slides = {layout: ensure_slide(args.workdir, shape, layout) for layout in args.layouts}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for layout, path in slides.items():
        warm_page_cache(path)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
        for _ in range(args.repeat):
            for method in METHODS:
                runs[method].append(measure(method, path, args.window, args.stride))
        checksums = {m: sorted({r["checksum"] for r in rs}) for m, rs in runs.items()}
        counts = {m: sorted({r["n_windows"] for r in rs}) for m, rs in runs.items()}
        if (
            any(len(v) != 1 for v in (*checksums.values(), *counts.values()))
            or len({(checksums[m][0], counts[m][0]) for m in METHODS}) != 1
        ):
            raise SystemExit(
                f"MISMATCH on the {layout} slide: checksums {checksums}, windows {counts}"
            )
        results[layout] = {m: summarize(rs) for m, rs in runs.items()}
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
