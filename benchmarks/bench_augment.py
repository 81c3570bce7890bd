"""Does augmentation starve training on 2 cores? Crop pipeline throughput against training.

    python benchmarks/bench_augment.py [--tiles DIR] [--steps 20] [--cross-lab]

On the real HuBMAP training images (``hubmap.py``), with the
:class:`glomseg.TrainingRecipe` defaults (256-px crops, batch 8):

1. the crop pipeline alone (:func:`glomseg.model.make_crop_dataset`): crops per second
   with full augmentation and with none;
2. training the recipe's model for ``--steps`` steps fed by that pipeline, and
   fed by one batch repeated from memory (no sampling, no augmentation): seconds
   per step. Equal step times mean the pipeline keeps up, so augmentation costs
   training nothing.

``--cross-lab`` measures :meth:`glomseg.Augmentation.cross_lab` (stain transfer,
wide colour jitter, grey and JPEG) instead of the defaults.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import hubmap

from glomseg import Augmentation, TrainingRecipe, load_training_images
from glomseg.model import CropSampler, MacenkoNormalizer, make_crop_dataset


def throughput(sampler: CropSampler, aug: Augmentation, batches: int) -> float:
    data = iter(make_crop_dataset(sampler, crop_size=256, batch_size=8, augmentation=aug))
    next(data)  # build the pipeline
    begin = time.perf_counter()
    for _ in range(batches):
        next(data)
    return batches * 8 / (time.perf_counter() - begin)


def step_seconds(recipe: TrainingRecipe, data: object, steps: int) -> float:
    model = recipe.build()
    model.fit(data, epochs=1, steps_per_epoch=2, patience=None)  # build and warm up
    begin = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, patience=None)
    return (time.perf_counter() - begin) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cross-lab", action="store_true")
    args = parser.parse_args()
    data = hubmap.split(hubmap.find_tiles(args.tiles))
    images, masks = load_training_images(data.train, downsample=hubmap.DOWNSAMPLE)
    recipe = TrainingRecipe()
    aug = recipe.augmentation
    if args.cross_lab:
        aug = Augmentation.cross_lab(MacenkoNormalizer.fit(images).stain_matrix)
    sampler = CropSampler(images, masks, region_size=aug.region_size(256), seed=0)
    plain = CropSampler(images, masks, region_size=256, seed=0)
    full_rate = throughput(sampler, aug, 40)
    none_rate = throughput(plain, Augmentation.none(), 40)
    print(f"crop pipeline alone: {full_rate:.1f} crops/s augmented, {none_rate:.1f} crops/s plain")

    fed = make_crop_dataset(sampler, crop_size=256, batch_size=8, augmentation=aug)
    cached = fed.take(1).cache().repeat()
    live = step_seconds(recipe, fed, args.steps)
    memory = step_seconds(recipe, cached, args.steps)
    print(
        f"training step: {live:.2f} s fed by the augmented pipeline, {memory:.2f} s fed from "
        f"memory (ratio {live / memory:.2f}); training consumes {8 / live:.1f} crops/s, "
        f"the pipeline alone makes {full_rate / (8 / live):.1f}x that"
    )


if __name__ == "__main__":
    main()
