"""Training recipes side by side on real HuBMAP tiles: whole-image Dice by step and CPU minute.

    python benchmarks/bench_training.py [--tiles DIR] [--steps 1200] [--old-steps 400]
        [--eval-every 200] [--recipes new,old] [--save-model out/new.h5]
    python benchmarks/bench_training.py --plot   # redraw docs/_static/training.png

Data: ``shared/data/hubmap_tiles`` (see ``hubmap.py``), 66 training and 44
validation images split by source image, at 2x downsample (~1.96 um/px).

- **old**: the recipe glomseg's examples used before: a fixed grid of 256-px tiles
  exported once (``export_tiles``), flips / quarter turns / mild colour jitter
  (``make_datasets(augment=True)``), a ResNet-18 U-Net with the full decoder,
  BCE + Dice, Adam at a constant 1e-3.
- **new**: :class:`glomseg.TrainingRecipe` defaults: 256-px crops drawn anew every
  step from the whole images (half centred on a glomerulus), geometric, stain,
  colour, blur and noise augmentation, a ResNet-18 U-Net with a half-width decoder,
  BCE + Dice, Adam with warm-up and cosine decay, EMA of the weights.

Both run a fixed number of optimiser steps (batch 8) from seed 0; every
``--eval-every`` steps the current model (the EMA weights for the new recipe)
predicts every validation image whole (256-px tiles, stride 192, gaussian
blending, no TTA) and is scored at full resolution against the polygons: mean
Dice per image and Dice pooled over all pixels. CPU minutes are the process's CPU
time spent training, evaluation excluded; nothing is chosen by validation score.
The figures go to ``benchmarks/training_results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import hubmap

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "training_results.json"
PLOT = HERE.parent / "docs" / "_static" / "training.png"


class Curve:
    """Scores the model every ``every`` steps; keeps the learning curve."""

    def __init__(self, name: str, validation: hubmap.Validation, every: int, tile: int) -> None:
        self.name = name
        self.validation = validation
        self.every = every
        self.tile = tile
        self.points: list[dict[str, float]] = []
        self.eval_cpu = 0.0
        self.eval_wall = 0.0
        self.cpu0 = time.process_time()
        self.wall0 = time.perf_counter()

    def callback(self, model: Any) -> Any:
        import tf_keras as keras

        curve = self

        class Report(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                curve.record((epoch + 1) * curve.every, model, logs or {})

        return Report()

    def record(self, step: int, model: Any, logs: dict[str, Any]) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        score = self.validation.score(model.predict, tile_size=self.tile)
        self.eval_cpu += time.process_time() - cpu
        self.eval_wall += time.perf_counter() - wall
        point = {
            "step": step,
            "cpu_min": (time.process_time() - self.cpu0 - self.eval_cpu) / 60,
            "wall_min": (time.perf_counter() - self.wall0 - self.eval_wall) / 60,
            "loss": float(logs.get("loss", float("nan"))),
            "mean": score["mean"],
            "pooled": score["pooled"],
        }
        self.points.append(point)
        print(
            f"[{self.name}] step {step}: Dice mean per image {point['mean']:.4f}, pooled "
            f"{point['pooled']:.4f}; train loss {point['loss']:.4f}; "
            f"{point['cpu_min']:.1f} CPU min, {point['wall_min']:.1f} wall min of training",
            flush=True,
        )


def run_new(data: hubmap.Split, validation: hubmap.Validation, args: argparse.Namespace) -> Any:
    from glomseg import TrainingRecipe, load_training_images

    recipe = TrainingRecipe(steps=args.steps, seed=args.seed)
    images, masks = load_training_images(data.train, downsample=hubmap.DOWNSAMPLE)
    model = recipe.build(
        pixel_size_um=hubmap.PIXEL_SIZE_UM * hubmap.DOWNSAMPLE, downsample=hubmap.DOWNSAMPLE
    )
    curve = Curve("new", validation, args.eval_every, recipe.crop_size)
    recipe.fit(
        model, images, masks, steps_per_epoch=args.eval_every, callbacks=[curve.callback(model)]
    )
    if args.save_model:
        model.save(args.save_model)
        print(f"saved the new recipe's model to {args.save_model}", flush=True)
    return {"recipe": recipe.to_dict(), "curve": curve.points}


def run_old(data: hubmap.Split, validation: hubmap.Validation, args: argparse.Namespace) -> Any:
    from glomseg import GlomUNet, TileFilter, Tiler, export_tiles
    from glomseg.model import make_datasets
    from glomseg.tiles import read_manifest

    size = 256
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tiles"
        export_tiles(
            data.train,
            root,
            tiler=Tiler(size, size, edge="shift", downsample=hubmap.DOWNSAMPLE),
            tile_filter=TileFilter(),
            processes=1,
            progress=False,
        )
        rows = read_manifest(root)
        records = [(str(root / r["image"]), str(root / r["mask"]), r["slide"]) for r in rows]
        train, _ = make_datasets(
            records, validation=records[:1], batch_size=8, seed=args.seed, augment=True
        )
        model = GlomUNet(
            backbone="resnet18",
            input_size=size,
            loss="bce_dice",
            learning_rate=1e-3,
            seed=args.seed,
        )
        curve = Curve("old", validation, args.eval_every, size)
        model.fit(
            train,
            epochs=args.old_steps // args.eval_every,
            steps_per_epoch=args.eval_every,
            patience=None,
            callbacks=[curve.callback(model)],
        )
    return {"tiles": len(records), "curve": curve.points}


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    colors = {"new": "#2a9d58", "old": "#9a9a9a"}
    for name, run in results["runs"].items():
        curve = run["curve"]
        for ax, x in zip(axes, ("step", "cpu_min"), strict=True):
            xs = [p[x] for p in curve]
            ax.plot(xs, [p["mean"] for p in curve], "o-", color=colors[name], label=f"{name}: mean")
            ax.plot(
                xs,
                [p["pooled"] for p in curve],
                "s--",
                color=colors[name],
                alpha=0.6,
                label=f"{name}: pooled",
            )
    for ax, label in zip(
        axes, ("optimiser steps (batch 8)", "CPU minutes of training"), strict=True
    ):
        ax.set_xlabel(label)
        ax.set_ylabel("validation Dice (44 whole images)")
        ax.set_ylim(0, 1)
        ax.axhline(0.86, color="#c44", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Learning curves on real HuBMAP tiles, 2 CPU cores", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=1200, help="steps of the new recipe")
    parser.add_argument("--old-steps", type=int, default=400, help="steps of the old recipe")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--recipes", default="new,old")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-model", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--plot", action="store_true", help="only redraw the plot")
    parser.add_argument("--limit", type=int, default=None, help="images per side (a quick check)")
    args = parser.parse_args()
    if args.plot:
        plot(json.loads(args.results.read_text()), PLOT)
        return
    data = hubmap.split(hubmap.find_tiles(args.tiles))
    if args.limit:
        data = hubmap.Split(data.train[: args.limit], data.validation[: args.limit])
    validation = hubmap.Validation(data.validation)
    print(
        f"{len(data.train)} training and {len(data.validation)} validation images; "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    runs: dict[str, Any] = {}
    for name in args.recipes.split(","):
        runs[name] = {"new": run_new, "old": run_old}[name](data, validation, args)
        results = {"cpus": os.cpu_count(), "runs": runs}
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"{'recipe':8s}{'steps':>7s}{'CPU min':>9s}{'mean':>8s}{'pooled':>8s}{'mean/CPU min':>14s}"
    )
    for name, run in runs.items():
        last = run["curve"][-1]
        print(
            f"{name:8s}{last['step']:7d}{last['cpu_min']:9.1f}{last['mean']:8.3f}"
            f"{last['pooled']:8.3f}{last['mean'] / last['cpu_min']:14.4f}"
        )


if __name__ == "__main__":
    main()
