"""Benchmark many slides on a Dask cluster: :func:`glomseg.predict_slides` serial and on k workers.

The same synthetic slides (tiled 512, JPEG when imagecodecs is installed) are
predicted into a fresh folder each run:

``serial``
    ``predict_slides(..., client=None)``: one slide after the other, in a
    subprocess of its own so that its peak memory is its own.
``k workers``
    ``predict_slides(..., client=client)`` on a ``LocalCluster`` of ``k`` worker
    processes with one thread each, one task per slide; a new cluster for each
    ``k``. Its start-up time is measured apart and is not in the wall time.
``k w no-trim``
    The same with ``MALLOC_TRIM_THRESHOLD_`` left unset in the workers. Dask's
    nanny sets it to 65536 by default (``distributed.nanny.pre-spawn-environ``),
    which turns off glibc's adaptive mmap threshold: every array over 128 KiB is
    then mapped and unmapped anew, and a slide costs many more page faults.
    ``--malloc dask`` or ``--malloc glibc`` runs one variant only.

Every run's ``submission.csv`` must be byte-identical to the serial one (the
benchmark stops if not). Per run: wall seconds, slides per minute, speed-up over
serial, scaling efficiency (speed-up / k), the mean and median seconds of a
slide's task, the CPU seconds the run took (all threads of the serial process,
or of the workers) and so how many cores it kept busy, and the peak resident
memory of each worker process (``VmHWM`` of ``/proc/self/status``, read on each
worker after the run; ``ru_maxrss`` is kept in the JSON too, but on Linux a
spawned process inherits its parent's high-water mark, so it overstates). Each
worker loads the model once, on its first slide, so model loading is in the
wall time. With ``--repeat R`` the runs go round R times (serial, 1 worker,
2 workers, serial, ...) and each keeps its fastest round: on a shared machine
the other jobs only ever slow a run down.

Models:

``rule`` (default)
    A numpy colour rule (a few ms a batch), so the run measures the pipeline:
    reading, tiling, stitching, writing the mask, the RLE and the CSV. Its
    function is defined here, in ``__main__``, which cloudpickle sends to the
    workers by value.
``pretrained``
    The shipped :meth:`glomseg.GlomUNet.pretrained` model on CPU (TensorFlow);
    tile size and downsample come from the model's configuration.

Usage::

    python benchmarks/bench_distributed.py                       # 8 slides 6000 x 8000, k = 1, 2
    python benchmarks/bench_distributed.py --workers 1 2 4 8 16  # on a 16-core machine
    python benchmarks/bench_distributed.py --model pretrained --slides 4 --shape 3000 4000
    python benchmarks/bench_distributed.py --shape 1000 1500 --slides 2   # a smoke test

The figures go to ``benchmarks/distributed_results.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "distributed_results.json"
WORK = Path(tempfile.gettempdir()) / "glomseg-bench-distributed"
#: The environment this process started with: the nanny of a LocalCluster writes
#: its pre-spawn variables into ``os.environ`` of the process that runs it.
ENVIRON = dict(os.environ)
TRIM = "MALLOC_TRIM_THRESHOLD_"
PRETRAINED = "glomeruli-pas"
EXTRAPOLATE_TO = (1, 4, 16, 64)


# -- the rule model (module level, so that the workers can unpickle it) -------------------------


def colour_rule(batch: np.ndarray) -> np.ndarray:
    """Probability of glomerulus: the share of purple-ish pixels in each 8 x 8 cell."""
    green = batch[..., 1]
    hit = ((green > 90) & (green < 142)).astype(np.float32)
    n, h, w = hit.shape
    cell = 8 if h % 8 == 0 and w % 8 == 0 else 1
    coarse = hit.reshape(n, h // cell, cell, w // cell, cell).mean(axis=(2, 4))
    return np.repeat(np.repeat(coarse, cell, axis=1), cell, axis=2)


def rule_model() -> Callable[[np.ndarray], np.ndarray]:
    """The model factory of ``--model rule``: called once per worker process."""
    return colour_rule


def process_usage() -> dict[str, float]:
    """This process's CPU seconds (all threads) and peak memory in MB (``VmHWM``, ``ru_maxrss``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    maxrss = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    hwm = maxrss  # where /proc is missing
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "sys_s": usage.ru_stime,
        "minor_faults": usage.ru_minflt,
        "vmhwm_mb": hwm,
        "ru_maxrss_mb": maxrss,
    }


def malloc_trim_threshold() -> str | None:
    """This process's ``MALLOC_TRIM_THRESHOLD_`` (glibc reads it at start-up)."""
    return os.environ.get(TRIM)


# -- set-up -----------------------------------------------------------------------------------


def slide_paths(args: argparse.Namespace) -> list[Path]:
    h, w = args.shape
    return [args.workdir / f"slide{i:02d}-{h}x{w}.tif" for i in range(args.slides)]


def ensure_slides(args: argparse.Namespace) -> list[Path]:
    """Write the synthetic slides into the work folder once; reuse them after."""
    from glomseg.io.synthetic import write_synthetic_slide

    try:
        import imagecodecs  # noqa: F401

        compression = "jpeg"
    except ImportError:
        compression = "none"
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = slide_paths(args)
    for seed, path in enumerate(paths):
        if path.exists():
            continue
        print(f"writing {path.name} ({compression}) ...", flush=True)
        tmp = path.with_name(f".{path.stem}.partial.tif")
        write_synthetic_slide(
            tmp,
            tuple(args.shape),
            tile=512,
            compression=compression,
            seed=seed,
            annotation_path=path.with_suffix(".json"),
        )
        tmp.replace(path)
    args.compression = compression
    return paths


def model_and_config(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model source and the PredictConfig of ``--model``."""
    from glomseg import PredictConfig

    if args.model == "rule":
        return rule_model, PredictConfig(tile_size=512, downsample=2, batch_size=args.batch)
    # tile_size and downsample None: each worker takes them from the loaded model's config
    return PRETRAINED, PredictConfig(batch_size=args.batch)


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def summarise(report: Any, wall: float, before: list[Any], after: list[Any]) -> dict[str, Any]:
    """The figures of one run; ``before``, ``after``: :func:`process_usage` of each process."""
    report.raise_on_failure()
    outcomes = list(report.slides.values())
    seconds = [o.seconds for o in outcomes]
    return {
        "wall_s": wall,
        "slide_mean_s": statistics.fmean(seconds),
        "slide_median_s": statistics.median(seconds),
        "slide_s": seconds,
        "predict_slide_s": sum(o.stats.wall_s for o in outcomes),
        "per_worker": dict(Counter(str(o.worker) for o in outcomes)),
        "cpu_s": sum(a["cpu_s"] - b["cpu_s"] for a, b in zip(after, before, strict=True)),
        "sys_s": sum(a["sys_s"] - b["sys_s"] for a, b in zip(after, before, strict=True)),
        "minor_faults": sum(
            a["minor_faults"] - b["minor_faults"] for a, b in zip(after, before, strict=True)
        ),
        "rss": after,
    }


# -- runs -------------------------------------------------------------------------------------


def run_serial_child(args: argparse.Namespace) -> None:
    """In the subprocess: predict every slide here, print the figures as one JSON line."""
    from glomseg import predict_slides

    model, config = model_and_config(args)
    before = process_usage()
    begin = time.perf_counter()
    report = predict_slides(
        slide_paths(args), model, args.serial_child, config=config, progress=False
    )
    wall = time.perf_counter() - begin
    result = summarise(report, wall, [before], [process_usage()])
    result["malloc_trim_threshold"] = [malloc_trim_threshold()]
    print("RESULT " + json.dumps(result), flush=True)


def run_serial(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    print("serial ...", flush=True)
    command = [sys.executable, __file__, *sys.argv[1:], "--workdir", str(args.workdir)]
    command += ["--serial-child", str(fresh(out))]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=ENVIRON)
    if done.returncode:
        print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
        raise SystemExit(f"the serial run failed with code {done.returncode}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    result.update(workers=1, startup_s=0.0)
    return result


def run_cluster(
    args: argparse.Namespace, name: str, k: int, malloc: str, out: Path
) -> dict[str, Any]:
    """One run on a new LocalCluster of ``k`` workers; ``malloc="glibc"`` unsets the trim."""
    import dask
    from distributed import Client, LocalCluster

    from glomseg import predict_slides

    print(f"{name} ...", flush=True)
    model, config = model_and_config(args)
    environ = {f"distributed.nanny.pre-spawn-environ.{TRIM}": None} if malloc == "glibc" else {}
    begin = time.perf_counter()
    try:
        with dask.config.set(environ):
            cluster = LocalCluster(
                n_workers=k,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                memory_limit=args.memory_limit,
                silence_logs=logging.ERROR,
            )
        with cluster, Client(cluster) as client:
            client.wait_for_workers(k)
            startup = time.perf_counter() - begin
            before = client.run(process_usage)
            begin = time.perf_counter()
            report = predict_slides(
                slide_paths(args), model, fresh(out), config=config, client=client, progress=False
            )
            wall = time.perf_counter() - begin
            after = client.run(process_usage)
            result = summarise(report, wall, [before[w] for w in after], list(after.values()))
            result["malloc_trim_threshold"] = list(client.run(malloc_trim_threshold).values())
    finally:  # undo what the nannies wrote into this process's environment
        os.environ.clear()
        os.environ.update(ENVIRON)
    result.update(workers=k, startup_s=startup)
    return result


# -- report -----------------------------------------------------------------------------------


def derive(results: dict[str, dict[str, Any]], n_slides: int) -> None:
    serial = results["serial"]["wall_s"]
    for r in results.values():
        r["slides_per_min"] = n_slides / r["wall_s"] * 60
        r["speedup"] = serial / r["wall_s"]
        r["efficiency"] = r["speedup"] / r["workers"]
        r["peak_rss_mb"] = max(x["vmhwm_mb"] for x in r["rss"])
        r["cores_busy"] = r["cpu_s"] / r["wall_s"]
        r["kfaults"] = r["minor_faults"] / 1000


def extrapolate(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """1,000 slides on N workers: serial median slide seconds x 1000 / N / efficiency.

    The efficiency is the best one measured at the largest worker count <= N
    (the smallest count measured where none is), capped at 1: noise is no promise.
    """
    per_slide = results["serial"]["slide_median_s"]
    measured = sorted(
        (r["workers"], r["efficiency"], name) for name, r in results.items() if name != "serial"
    )
    rows = []
    for n in EXTRAPOLATE_TO:
        k, eff, name = max((m for m in measured if m[0] <= n), default=measured[0])
        eff = min(eff, 1.0)
        rows.append(
            {
                "workers": n,
                "efficiency": eff,
                "measured_at": k,
                "measured_in": name,
                "minutes": per_slide * 1000 / n / eff / 60,
                "ideal_minutes": per_slide * 1000 / n / 60,
            }
        )
    return rows


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[dict[str, float]]:
    derive(results, args.slides)
    names = list(results)
    print()
    print(
        f"{args.slides} synthetic slides {args.shape[0]} x {args.shape[1]} (tiled 512, "
        f"{args.compression}), model {args.model}, on {os.cpu_count()} CPUs "
        f"({platform.machine()}, {platform.system()}), fastest of {args.repeat} round(s)"
    )
    rows = [
        ("workers", "workers", "{:d}"),
        ("wall time [s]", "wall_s", "{:.1f}"),
        ("slides per minute", "slides_per_min", "{:.1f}"),
        ("speed-up over serial", "speedup", "{:.2f}"),
        ("scaling efficiency", "efficiency", "{:.2f}"),
        ("slide task, mean [s]", "slide_mean_s", "{:.2f}"),
        ("slide task, median [s]", "slide_median_s", "{:.2f}"),
        ("CPU time [s]", "cpu_s", "{:.1f}"),
        ("  of which system [s]", "sys_s", "{:.1f}"),
        ("minor page faults [k]", "kfaults", "{:.0f}"),
        ("cores busy (CPU / wall)", "cores_busy", "{:.2f}"),
        ("peak RSS per process [MB]", "peak_rss_mb", "{:.0f}"),
        ("cluster start-up [s]", "startup_s", "{:.1f}"),
    ]
    print(f"{'':28s}" + "".join(f"{n:>14s}" for n in names))
    for label, key, fmt in rows:
        cells = []
        for n in names:
            value = results[n][key]
            cells.append("-" if n == "serial" and key == "startup_s" else fmt.format(value))
        print(f"{label:28s}" + "".join(f"{c:>14s}" for c in cells))
    spread = {n: "/".join(str(c) for c in r["per_worker"].values()) for n, r in results.items()}
    print(f"{'slides per worker':28s}" + "".join(f"{spread[n]:>14s}" for n in names))
    trims = {
        n: ",".join(sorted({str(t) for t in r["malloc_trim_threshold"]}))
        for n, r in results.items()
    }
    print(f"{TRIM:28s}" + "".join(f"{trims[n]:>14s}" for n in names))
    print(
        "peak RSS: the VmHWM of each worker process after the run (the largest shown), of the "
        "subprocess for serial; CPU: all threads of the serial subprocess or of the workers; "
        "start-up (LocalCluster + workers) is not in the wall time"
    )
    print(f"submission.csv of every run byte-identical to the serial one: yes ({len(names)} runs)")
    rows_x = extrapolate(results)
    print()
    print(
        "EXTRAPOLATION, not measured: 1,000 such slides on N workers = serial median "
        f"slide {results['serial']['slide_median_s']:.2f} s x 1000 / N / efficiency measured "
        "at the largest worker count k <= N on this machine (the best variant, capped at 1)"
    )
    print(f"{'N workers':>10s}{'efficiency':>12s}{'from':>14s}{'minutes':>10s}{'if ideal':>10s}")
    for row in rows_x:
        print(
            f"{row['workers']:>10d}{row['efficiency']:>12.2f}{row['measured_in']:>14s}"
            f"{row['minutes']:>10.1f}{row['ideal_minutes']:>10.1f}"
        )
    return rows_x


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=2, default=(6000, 8000), metavar=("H", "W"))
    parser.add_argument("--model", choices=("rule", "pretrained"), default="rule")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=8, help="tiles per predictor call")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each run keeps its best")
    parser.add_argument(
        "--malloc",
        choices=("dask", "glibc"),
        nargs="+",
        default=["dask", "glibc"],
        help=f"workers with dask's {TRIM}=65536, and/or with it unset",
    )
    parser.add_argument("--memory-limit", default="auto", help="per worker, as LocalCluster's")
    parser.add_argument("--workdir", type=Path, default=WORK, help="slides and outputs")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the runs' output folders")
    parser.add_argument("--serial-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serial_child is not None:
        run_serial_child(args)
        return
    if min(args.slides, args.repeat, *args.workers) < 1:
        parser.error("--slides, --repeat and --workers must be >= 1")

    ensure_slides(args)
    runs: dict[str, tuple[int, str]] = {}  # name: (workers, malloc)
    for malloc in args.malloc:
        for k in args.workers:
            plural = "s" if k > 1 else ""
            runs[f"{k} worker{plural}" if malloc == "dask" else f"{k} w no-trim"] = (k, malloc)
    outs = {name: args.workdir / f"out-{k}-{malloc}" for name, (k, malloc) in runs.items()}
    outs["serial"] = args.workdir / "out-serial"
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in ["serial", *runs]}
    for round_ in range(args.repeat):
        if args.repeat > 1:
            print(f"round {round_ + 1} of {args.repeat}", flush=True)
        rounds["serial"].append(run_serial(args, outs["serial"]))
        reference = outs["serial"] / "submission.csv"
        for name, (k, malloc) in runs.items():
            rounds[name].append(run_cluster(args, name, k, malloc, outs[name]))
            if not filecmp.cmp(reference, outs[name] / "submission.csv", shallow=False):
                raise SystemExit(f"FAILED: {name}'s submission.csv differs from the serial one")
    results = {name: min(done, key=lambda r: r["wall_s"]) for name, done in rounds.items()}
    for name, done in rounds.items():
        results[name]["all_wall_s"] = [r["wall_s"] for r in done]
    extrapolation = report(results, args)
    args.json.write_text(
        json.dumps(
            {
                "slides": args.slides,
                "shape": list(args.shape),
                "compression": args.compression,
                "model": args.model,
                "repeat": args.repeat,
                "cpus": os.cpu_count(),
                "machine": platform.platform(),
                "identical_submissions": True,
                "runs": results,
                "extrapolation_1000_slides": extrapolation,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"\nwrote {args.json}")
    if not args.keep:
        for out in outs.values():
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
