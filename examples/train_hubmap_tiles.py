"""Train a GlomUNet on real HuBMAP kidney tiles, on CPU, and report validation Dice.

    python examples/train_hubmap_tiles.py [--tiles ../shared/data/hubmap_tiles]
        [--out out/hubmap_unet] [--epochs 14] [--steps-per-epoch 50] [--backbone resnet18]
        [--input-size 256] [--batch-size 8] [--downsample 2] [--split-id 250] [--minutes 24]

With these defaults, on 2 shared CPU cores: 1320 tiles (792 train / 528 validation),
~60-70 s an epoch of 50 steps when the CPU is not contended, 14 epochs in 20 min;
best validation Dice 0.67 (mean per tile), 0.76 pooled over all validation pixels.

The input folder holds 1600x1200 PAS JPEG tiles of one HuBMAP slide
(``van0013_train_<id>.jpg``) with their glomerulus polygons
(``van0013_train_<id>.json``, GeoJSON features, ``[x, y] = [col, row]``).

1. **Tiles.** :func:`glomseg.export_tiles` treats each image as a small slide
   (:class:`glomseg.SlideSource` finds its JSON beside it) and cuts it with a
   :class:`glomseg.Tiler` into ``input_size`` tiles at ``downsample`` (edge
   ``"shift"``: every pixel covered, neighbouring tiles overlap a little): images
   area-averaged, masks rasterized on the tile grid (pixel-centre rule), written as
   ``images/``, ``masks/`` (0/1) and ``manifest.csv`` under ``<out>/tiles``.
2. **Split.** By source-image id ranges: ids below ``--split-id`` train, the rest
   validate, so no source image (and no overlapping tile) is on both sides. The ids
   run 2-339 in two groups (2-249 and 250-339); 250 puts 66 images in training and
   44 in validation.
3. **Train.** ``GlomUNet(encoder_weights=None)`` (no pretrained weights: nothing is
   downloaded) with BCE+Dice, stopping after ``--epochs`` or when the next epoch
   would pass ``--minutes``; the best epoch by validation Dice is kept in
   ``<out>/checkpoints/best.h5``.
4. **Report.** Validation Dice per epoch (mean of per-tile Dice, 1 for a tile
   where mask and prediction are both empty), and at the end for the best
   checkpoint, also pooled over all validation pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from glomseg import (
    GlomUNet,
    SlideSource,
    TileFilter,
    Tiler,
    dice_coefficient,
    export_tiles,
    make_datasets,
    read_manifest,
)

# The same environment GlomUNet sets before it imports TensorFlow; needed here
# only for the two small callbacks below.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
DEFAULT_TILES = HERE.parent.parent / "shared" / "data" / "hubmap_tiles"


def build_tiles(source: Path, out: Path, *, size: int, downsample: int) -> list[dict]:
    """Export every tile image as a small slide into glomseg's tile format; return the rows."""
    sources = [SlideSource.from_path(jpg) for jpg in sorted(source.glob("*.jpg"))]
    export_tiles(
        sources,
        out,
        tiler=Tiler(size, size, edge="shift", downsample=downsample),
        tile_filter=TileFilter(),  # keep every tile
        processes=2,
        progress=False,
    )
    return read_manifest(out)


def source_id(slide: str) -> int:
    match = re.search(r"(\d+)$", slide)
    if match is None:
        raise ValueError(f"cannot read a tile id from {slide!r}")
    return int(match[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=Path, default=DEFAULT_TILES)
    parser.add_argument("--out", type=Path, default=Path("out/hubmap_unet"))
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--downsample", type=int, default=2)
    parser.add_argument("--split-id", type=int, default=250)
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=24.0, help="training time budget")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    rows = build_tiles(
        args.tiles, args.out / "tiles", size=args.input_size, downsample=args.downsample
    )
    root = args.out / "tiles"
    records = [(str(root / r["image"]), str(root / r["mask"]), r["slide"]) for r in rows]
    train = [r for r in records if source_id(r[2]) < args.split_id]
    val = [r for r in records if source_id(r[2]) >= args.split_id]
    train_ids = sorted({source_id(r[2]) for r in train})
    val_ids = sorted({source_id(r[2]) for r in val})
    assert not set(train_ids) & set(val_ids)
    print(
        f"tiles: {len(records)} ({args.input_size}px at {args.downsample}x) in "
        f"{time.perf_counter() - start:.0f} s; train {len(train)} tiles from "
        f"{len(train_ids)} images (ids {train_ids[0]}-{train_ids[-1]}), validation "
        f"{len(val)} tiles from {len(val_ids)} images (ids {val_ids[0]}-{val_ids[-1]})",
        flush=True,
    )

    train_ds, val_ds = make_datasets(
        train, validation=val, batch_size=args.batch_size, seed=args.seed, augment=True
    )
    model = GlomUNet(
        backbone=args.backbone,
        input_size=args.input_size,
        encoder_weights=None,
        loss="bce_dice",
        learning_rate=1e-3,
        seed=args.seed,
    )

    import tf_keras as keras

    budget = args.minutes * 60.0

    class Report(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()
            self.last = self.t0

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            took, self.last = now - self.last, now
            logs = logs or {}
            print(
                f"epoch {epoch + 1}: {took:.0f} s, loss {logs.get('loss', float('nan')):.4f}, "
                f"train Dice {logs.get('dice_metric', float('nan')):.4f}, "
                f"val loss {logs.get('val_loss', float('nan')):.4f}, "
                f"val Dice {logs.get('val_dice_metric', float('nan')):.4f}",
                flush=True,
            )
            if now - self.t0 + took > budget:
                print(f"stopping: another epoch would pass the {args.minutes:g} min budget")
                self.model.stop_training = True

    train_start = time.perf_counter()
    history = model.fit(
        train_ds,
        val_ds,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        checkpoint_dir=args.out / "checkpoints",
        patience=None,
        callbacks=[Report()],
    )
    train_time = time.perf_counter() - train_start

    best = GlomUNet.load(args.out / "checkpoints" / "best.h5", compile=True)
    result = best.evaluate(val_ds)
    probs, truths = [], []
    for images, masks in val_ds:
        probs.append(best.predict(images.numpy()))
        truths.append(masks.numpy()[..., 0] > 0.5)
    pred = np.concatenate(probs) > 0.5
    truth = np.concatenate(truths)
    per_tile = float(np.mean([dice_coefficient(p, t) for p, t in zip(pred, truth, strict=True)]))
    pooled = dice_coefficient(pred, truth)
    best_epoch = int(np.argmax(history["val_dice_metric"])) + 1
    print(
        f"done: {len(history['loss'])} epochs in {train_time / 60:.1f} min "
        f"({train_time / len(history['loss']):.0f} s/epoch); backbone {args.backbone}, "
        f"input {args.input_size}, downsample {args.downsample}, batch {args.batch_size}, "
        f"{len(train)} train / {len(val)} val tiles"
    )
    print(
        f"best epoch {best_epoch}: validation Dice (mean per tile) {result['dice_metric']:.4f} "
        f"(numpy check {per_tile:.4f}); pooled over all validation pixels {pooled:.4f}"
    )
    summary = {
        "backbone": args.backbone,
        "input_size": args.input_size,
        "downsample": args.downsample,
        "batch_size": args.batch_size,
        "epochs_run": len(history["loss"]),
        "seconds_per_epoch": train_time / len(history["loss"]),
        "train_tiles": len(train),
        "val_tiles": len(val),
        "best_epoch": best_epoch,
        "val_dice_mean_per_tile": result["dice_metric"],
        "val_dice_pooled": pooled,
        "history": history,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
