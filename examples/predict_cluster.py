"""Predict many slides on a Dask cluster, then score them: one task per slide.

    python examples/predict_cluster.py SLIDE ... [--model pretrained] [--out out/cluster]
        [--workers 2] [--scheduler tcp://HOST:8786] [--gpu] [--truth]

Without ``--scheduler`` it starts a ``LocalCluster`` of ``--workers`` processes
on this machine (one thread each: a model per process); with it, it connects
to a running scheduler, for example one started by dask-jobqueue on SLURM or by
dask-kubernetes (see the "Running on a cluster" page of the docs). The slides
and ``--out`` must then be on a file system every worker can read and write.

``--model`` is ``pretrained`` (the model shipped with glomseg), another
pretrained name, or the path of a model saved by ``GlomUNet.save``; each worker
loads it once. For each slide ``<id>`` the run writes ``<out>/<id>.zarr`` (the
mask), ``<id>.rle`` and ``<id>.done.json``, then ``<out>/submission.csv`` once
every slide is done. Rerun the same command after a failure or an interruption:
slides already done are skipped. ``--gpu`` asks each task for one ``GPU``
resource (start GPU workers with ``--resources GPU=1``). ``--truth`` scores each
slide against the polygon JSON beside it (``<slide>.json``) on the cluster.

Needs the ``dask`` extra: ``pip install "glomseg[tf,dask]"``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glomseg import evaluate_slides, predict_slides


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("slides", nargs="+", type=Path)
    parser.add_argument("--model", default="pretrained", help="'pretrained', a name, or a path")
    parser.add_argument("--out", type=Path, default=Path("out") / "cluster")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--scheduler", default=None, help="address of a running scheduler")
    parser.add_argument("--gpu", action="store_true", help="one GPU resource per task")
    parser.add_argument("--pixel-size", type=float, default=None, help="um/px of the slides")
    parser.add_argument("--truth", action="store_true", help="score against <slide>.json")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    model = "glomeruli-pas" if args.model == "pretrained" else args.model
    if args.scheduler:
        cluster = None
        client = Client(args.scheduler)
    else:
        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        client = Client(cluster)
    try:
        print(f"cluster: {client}")
        report = predict_slides(
            args.slides,
            model,
            args.out,
            client=client,
            pixel_size_um=args.pixel_size,
            resources={"GPU": 1} if args.gpu else None,
        )
        for slide_id, outcome in report.slides.items():
            where = f" on {outcome.worker}" if outcome.worker else ""
            detail = outcome.error if outcome.error else f"{outcome.seconds:.1f} s{where}"
            print(f"{slide_id:>24}  {outcome.status:<8} {detail}")
        print(
            f"{len(report.done)} predicted, {len(report.skipped)} done before, "
            f"{len(report.failed)} failed in {report.wall_s:.0f} s"
        )
        if report.submission is not None:
            print(f"wrote {report.submission}")
        if args.truth and report.masks:
            paths = {Path(p).name.split(".")[0]: Path(p) for p in args.slides}
            pairs = {
                key: (mask, paths[key].with_suffix(".json"))
                for key, mask in report.masks.items()
                if paths[key].with_suffix(".json").exists()
            }
            if pairs:
                dice = evaluate_slides(pairs, client=client)
                for key, score in dice.per_slide.items():
                    print(f"{key:>24}  Dice {score.dice:.3f}")
                print(f"mean Dice {dice.mean:.3f}, pooled {dice.pooled:.3f} over {len(pairs)}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
