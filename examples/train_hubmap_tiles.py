"""Train a GlomUNet on real HuBMAP kidney tiles, on CPU, and score whole validation images.

    python examples/train_hubmap_tiles.py --tiles DIR [--out out/hubmap_unet] [--steps 1200]
        [--batch-size 8] [--seed 0] [--split-id 250] [--minutes M]

``--tiles`` (or the environment variable ``GLOMSEG_HUBMAP_TILES``) is a folder of
1600 x 1200 PAS tiles of one HuBMAP slide (``van0013_train_<id>.jpg``, or
``.png``/``.tif``; ~0.98 um/px) with their glomerulus polygons
(``van0013_train_<id>.json``): the 110 tiles these were drawn from, or the 20 of
the bundled sample, ``examples/data/sample``.

1. **Split** by source-image id: ids below ``--split-id`` train, the rest
   validate, so no image is on both sides (250 puts 66 images in training, 44 in
   validation).
2. **Load** the training images whole at 2x downsample (1.96 um/px, a glomerulus
   ~100 px across) with their masks (:func:`glomseg.load_training_images`).
3. **Train** :class:`glomseg.TrainingRecipe`: 256-px crops drawn anew every step,
   half centred on a glomerulus, with geometric, stain, colour, blur and noise
   augmentation; a ResNet-18 U-Net from scratch (nothing is downloaded), BCE +
   Dice, warm-up and cosine learning rate, EMA of the weights, for ``--steps``
   optimiser steps. The result depends on the steps and the seed, not on the
   machine's speed; the last weights are kept (nothing is chosen by validation).
4. **Score** every validation image whole at full resolution with
   :func:`glomseg.predict_image` (flip TTA) against its polygons: Dice mean per
   image (the Kaggle score) and pooled over all pixels. The model goes to
   ``<out>/model.h5``, the figures to ``<out>/summary.json``.

With the defaults, on 2 CPU cores, a step takes about 3 s (about an hour in all);
``benchmarks/bench_training.py`` records the learning curve. ``--minutes`` caps
the whole run, loading and scoring included: training stops early (and says so)
when the remaining steps would not fit, which makes the result depend on the
machine, so prefer fewer ``--steps``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from glomseg import (
    SlideReader,
    SlideSource,
    TrainingRecipe,
    evaluate_slides,
    load_training_images,
    predict_image,
)

PIXEL_SIZE_UM = 0.98  # the tiles at full resolution
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
DOWNSAMPLE = 2


def source_id(path: Path) -> int:
    match = re.search(r"(\d+)$", path.stem)
    if match is None:
        raise SystemExit(f"cannot read a tile id from {path.name}")
    return int(match[1])


def time_cap(
    seconds: float, start: float, reserve: float, steps_per_epoch: int, done: dict[str, int]
) -> object:
    """A Keras callback that stops before the next epoch would pass the whole-run cap."""
    import tf_keras as keras  # TrainingRecipe has imported TensorFlow by now

    class TimeCap(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
            self.begin = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            now = time.perf_counter()
            done["steps"] = (epoch + 1) * steps_per_epoch
            if now + (now - self.begin) + reserve > start + seconds:
                print(
                    f"stopping after {(epoch + 1) * steps_per_epoch} steps: the next "
                    f"{steps_per_epoch} would pass --minutes",
                    flush=True,
                )
                self.model.stop_training = True

    return TimeCap()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=Path, default=os.environ.get("GLOMSEG_HUBMAP_TILES"))
    parser.add_argument("--out", type=Path, default=Path("out/hubmap_unet"))
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-id", type=int, default=250)
    parser.add_argument("--minutes", type=float, default=None, help="cap on the whole run")
    args = parser.parse_args()
    paths = sorted(p for p in Path(args.tiles or ".").iterdir() if p.suffix in IMAGE_SUFFIXES)
    if args.tiles is None or not paths:
        sys.exit(f"--tiles: no tiles in {args.tiles} (or set GLOMSEG_HUBMAP_TILES)")
    start = time.perf_counter()

    sources = [SlideSource.from_path(p) for p in paths]
    train = [s for s in sources if source_id(s.slide) < args.split_id]
    validation = [s for s in sources if source_id(s.slide) >= args.split_id]
    images, masks = load_training_images(train, downsample=DOWNSAMPLE)
    print(
        f"{len(train)} training images (ids < {args.split_id}), {len(validation)} validation "
        f"images; loaded in {time.perf_counter() - start:.0f} s",
        flush=True,
    )

    recipe = TrainingRecipe(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    model = recipe.build(pixel_size_um=PIXEL_SIZE_UM * DOWNSAMPLE, downsample=DOWNSAMPLE)
    callbacks = []
    done = {"steps": recipe.steps}
    steps_per_epoch = next(n for n in (100, 50, 20, 10, 5, 1) if recipe.steps % n == 0)
    if args.minutes is not None:
        # Keep room for scoring: time one validation image now (this also builds the graph).
        with SlideReader(validation[0].slide) as reader:
            probe = reader.read()
        begin = time.perf_counter()
        predict_image(probe, model, pixel_size_um=PIXEL_SIZE_UM)
        reserve = (time.perf_counter() - begin) * len(validation) * 1.2
        callbacks.append(time_cap(args.minutes * 60, start, reserve, steps_per_epoch, done))
    train_start = time.perf_counter()
    recipe.fit(model, images, masks, steps_per_epoch=steps_per_epoch, callbacks=callbacks)
    train_minutes = (time.perf_counter() - train_start) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.h5")

    predictions = {}
    for source in validation:
        with SlideReader(source.slide) as reader:
            image = reader.read()
        mask = predict_image(image, model, pixel_size_um=PIXEL_SIZE_UM, tta=True)
        predictions[source.slide_id] = (mask, source.annotations)
    report = evaluate_slides(predictions)
    pooled = report.pooled
    print(
        f"trained {done['steps']} of {recipe.steps} steps (batch {recipe.batch_size}) in "
        f"{train_minutes:.1f} min; "
        f"validation Dice over {len(validation)} whole images: mean per image "
        f"{report.mean:.4f}, pooled over pixels {pooled:.4f}; whole run "
        f"{(time.perf_counter() - start) / 60:.1f} min"
    )
    summary = {
        "recipe": recipe.to_dict(),
        "steps_run": done["steps"],
        "train_minutes": train_minutes,
        "validation_images": len(validation),
        "dice_mean_per_image": report.mean,
        "dice_pooled": pooled,
        "per_image": {name: score.dice for name, score in report.per_slide.items()},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
