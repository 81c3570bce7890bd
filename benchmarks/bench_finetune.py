"""Adapting the shipped model to another lab's slides: fine-tune on 8 AIDPATH tiles, score 16.

    python benchmarks/bench_finetune.py [--model glomeruli-crosslab|pretrained|PATH.h5]
        [--steps 120] [--learning-rate 2e-4] [--seed 0] [--json out/bench/finetune.json]

A user with a few annotated images of their own stain fine-tunes the model for a
fixed number of steps (:meth:`glomseg.TrainingRecipe.fit` on the images at the
model's pixel size) and predicts the rest. Here the "own lab" is AIDPATH (24 PAS
tiles of another lab, 1024 x 1024, about 0.59 um/px; Bueno et al., Mendeley Data
k7nvtgn2x6 v3, CC BY 4.0): every third tile (8) fine-tunes, the other 16 are
scored before and after, whole, with :func:`glomseg.predict_image` at its
defaults and the pixel size given: Dice mean per image and pooled. The split is
fixed before any run; nothing is chosen on the 16.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_domains import AIDPATH_PIXEL_SIZE_UM, aidpath, load, score
from PIL import Image

from glomseg import Augmentation, PredictConfig, TrainingRecipe


def at_model_scale(
    image: np.ndarray, mask: np.ndarray, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``mask`` resampled by 1 / ``factor`` (area average; mask at 0.5)."""
    h, w = mask.shape
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    cover = Image.fromarray(mask.astype(np.float32)).resize(size, Image.Resampling.BOX)
    return small, np.asarray(cover) >= 0.5


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="glomeruli-crosslab")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names, images, truths = aidpath()
    train = [i for i in range(len(names)) if i % 3 == 0]
    test = [i for i in range(len(names)) if i % 3 != 0]
    model = load(args.model)
    config = PredictConfig()
    test_images, test_truths = [images[i] for i in test], [truths[i] for i in test]
    before = score(model, test_images, test_truths, AIDPATH_PIXEL_SIZE_UM, config, stain=True)
    print(f"before: {before} on {len(test)} AIDPATH tiles", flush=True)
    factor = model.config.pixel_size_um / AIDPATH_PIXEL_SIZE_UM
    pairs = [at_model_scale(images[i], truths[i], factor) for i in train]
    recipe = TrainingRecipe(
        steps=args.steps,
        learning_rate=args.learning_rate,
        warmup=0.1,
        augmentation=Augmentation(),
        seed=args.seed,
    )
    begin = time.perf_counter()
    recipe.fit(model, [p[0] for p in pairs], [p[1] for p in pairs])
    minutes = (time.perf_counter() - begin) / 60
    after = score(model, test_images, test_truths, AIDPATH_PIXEL_SIZE_UM, config, stain=True)
    print(f"after {args.steps} steps on {len(train)} tiles ({minutes:.1f} min): {after}")
    result = {
        "model": args.model,
        "train_tiles": [names[i] for i in train],
        "test_tiles": [names[i] for i in test],
        "steps": args.steps,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "minutes": round(minutes, 1),
        "before": before,
        "after": after,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
