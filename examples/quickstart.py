"""Quickstart: glomeruli from the pretrained model, then fine-tuned, on the bundled real sample.

    python examples/quickstart.py [--out out/quickstart] [--steps 80] [--seed 0]

The sample (``examples/data/sample``) holds 20 real PAS kidney tiles of HuBMAP
slide VAN0013-LK-202-96, each stored as a small HuBMAP-style slide: a tiled JPEG
TIFF (three different colour layouts) beside its glomerulus polygon JSON. The
quickstart treats them as slides, like the competition's:

1. **Pretrained.** :meth:`glomseg.GlomUNet.pretrained` loads the model shipped
   inside the package (offline) and :func:`glomseg.predict_slide` runs it over
   the 4 held-back slides (tiles 306, 323, 337 and 338, which it never trained
   on) with overlapping, gaussian-blended tiles and flip TTA; their Dice against
   the polygons is printed.
2. **Fine-tune.** :class:`glomseg.TrainingRecipe` trains the same model on the
   other 16 slides for ``--steps`` optimiser steps (a fixed number, so a slow
   machine gets the same result, only later) at a lower learning rate, and the
   held-back slides are predicted and scored again.
3. **Export.** The Kaggle submission CSV (RLE), the predicted polygons as QuPath
   GeoJSON, and an overlay PNG per slide (prediction tinted green, true glomeruli
   outlined in blue), plus ``overview.png`` with all four.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from glomseg import (
    Augmentation,
    GlomUNet,
    PredictConfig,
    SlideMask,
    SlideSource,
    TrainingRecipe,
    evaluate_slides,
    load_training_images,
    predict_slide,
)
from glomseg.evaluate import write_overlay
from glomseg.predict import write_submission_csv

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "data" / "sample"
HELD_OUT = ["van0013_train_306", "van0013_train_323", "van0013_train_337", "van0013_train_338"]


def predict_and_score(
    model: GlomUNet, slides: dict[str, Path], out: Path
) -> tuple[dict[str, SlideMask], dict[str, float], float]:
    config = PredictConfig(tta=True)  # tile size and scale come from the model
    masks = {
        name: predict_slide(path, model, out / f"{name}.zarr", config=config, progress=False)
        for name, path in slides.items()
    }
    report = evaluate_slides(
        {name: (masks[name], path.with_suffix(".json")) for name, path in slides.items()}
    )
    return masks, {name: s.dice for name, s in report.per_slide.items()}, report.mean


def show(title: str, scores: dict[str, float], mean: float) -> None:
    print(title)
    for name, dice in scores.items():
        print(f"   {name}: {dice:.3f}")
    print(f"   mean Dice (the Kaggle score): {mean:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="folder of <id>.tif + .json")
    parser.add_argument("--out", type=Path, default=Path("out") / "quickstart")
    parser.add_argument("--steps", type=int, default=80, help="fine-tuning steps (batch 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    slides = {p.stem: p for p in sorted(args.sample.glob("*.tif"))}
    held_out = {name: slides[name] for name in HELD_OUT}
    training = [SlideSource.from_path(p) for name, p in slides.items() if name not in HELD_OUT]

    # 1. Pretrained ---------------------------------------------------------------------
    model = GlomUNet.pretrained()
    card = model.card
    assert card is not None
    print(
        f"1. pretrained model {card.name!r}: {card.input_size} px tiles at "
        f"{card.pixel_size_um:g} um/px, {card.size_mb:.0f} MB",
        flush=True,
    )
    _, scores, mean = predict_and_score(model, held_out, out / "pretrained")
    show("   Dice of the 4 held-back slides against their polygons:", scores, mean)

    # 2. Fine-tune ----------------------------------------------------------------------
    downsample = model.config.downsample or 2
    images, masks = load_training_images(training, downsample=downsample)
    recipe = TrainingRecipe(
        steps=args.steps,
        learning_rate=2e-4,
        warmup=0.1,
        augmentation=Augmentation(),
        seed=args.seed,
    )
    begin = time.perf_counter()
    recipe.fit(model, images, masks)
    model.save(out / "model" / "fine_tuned.h5")
    print(
        f"2. fine-tuned {recipe.steps} steps of {recipe.batch_size} crops on "
        f"{len(training)} slides in {(time.perf_counter() - begin) / 60:.1f} min",
        flush=True,
    )
    tuned, scores, mean = predict_and_score(model, held_out, out / "masks")
    show("   Dice of the 4 held-back slides after fine-tuning:", scores, mean)

    # 3. Export -------------------------------------------------------------------------
    submission = write_submission_csv(out / "submission.csv", tuned)
    for name, path in held_out.items():
        tuned[name].write_annotations(out / f"{name}.predicted.json")
        write_overlay(
            out / f"{name}.overlay.png",
            path,
            tuned[name],
            downsample=2,
            truth=path.with_suffix(".json"),
        )
    _contact_sheet([out / f"{name}.overlay.png" for name in held_out], out / "overview.png")
    print(
        f"3. wrote {submission}, {len(held_out)} predicted GeoJSON files and overlays, and "
        f"{out / 'overview.png'} in {(time.perf_counter() - start) / 60:.1f} min"
    )


def _contact_sheet(paths: list[Path], target: Path) -> None:
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    height = max(i.shape[0] for i in images)
    width = sum(i.shape[1] for i in images) + 8 * (len(images) - 1)
    sheet = np.full((height, width, 3), 255, dtype=np.uint8)
    col = 0
    for image in images:
        sheet[: image.shape[0], col : col + image.shape[1]] = image
        col += image.shape[1] + 8
    Image.fromarray(sheet).save(target)


if __name__ == "__main__":
    main()
