"""Quickstart: the whole glomseg pipeline on the bundled real sample, on CPU.

    python examples/quickstart.py [--out out/quickstart] [--minutes 5] [--steps 300]

The sample (``examples/data/sample``) holds 20 real PAS kidney tiles of HuBMAP
slide VAN0013-LK-202-96, each stored as a small HuBMAP-style slide: a tiled JPEG
TIFF (three different colour layouts) beside its glomerulus polygon JSON. The
quickstart treats them as slides, like the competition's:

1. **Tiles.** :func:`glomseg.export_tiles` cuts the 16 training slides into
   256 x 256 tiles at 2x downsample, images area-averaged and masks rasterized
   from the polygons, into ``<out>/tiles``.
2. **Train.** A :class:`glomseg.GlomUNet` (resnet18, trained from scratch: no
   download) learns on 13 slides, validating on 3 by slide, for ``--steps``
   steps or ``--minutes`` minutes, whichever comes first; the best
   checkpoint by validation Dice is kept.
3. **Predict.** :func:`glomseg.predict_slide` runs the model over the 4
   held-back slides with overlapping, gaussian-blended tiles and flip TTA, into
   full-resolution masks.
4. **Score and export.** Dice of each held-back slide against its polygons and
   their mean (the Kaggle score), the Kaggle submission CSV (RLE), the predicted
   polygons as QuPath GeoJSON, and an overlay PNG per slide: prediction tinted
   green, the true glomeruli outlined in blue.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from glomseg import (
    GlomUNet,
    PredictConfig,
    SlideSource,
    TileFilter,
    Tiler,
    evaluate_slides,
    export_tiles,
    make_datasets,
    predict_slide,
    read_manifest,
    write_overlay,
    write_submission_csv,
)

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "data" / "sample"
HELD_OUT = ["van0013_train_306", "van0013_train_323", "van0013_train_337", "van0013_train_338"]
VALIDATION = ["van0013_train_249", "van0013_train_267", "van0013_train_282"]
TILE, DOWNSAMPLE = 256, 2


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="folder of <id>.tif + .json")
    parser.add_argument("--out", type=Path, default=Path("out") / "quickstart")
    parser.add_argument("--steps", type=int, default=300, help="training steps (batches of 8)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    slides = {p.stem: p for p in sorted(args.sample.glob("*.tif"))}
    training = [SlideSource.from_path(p) for name, p in slides.items() if name not in HELD_OUT]
    held_out = {name: slides[name] for name in HELD_OUT}

    # 1. Tiles -------------------------------------------------------------------------
    export_tiles(
        training,
        out / "tiles",
        tiler=Tiler(TILE, 192, edge="shift", downsample=DOWNSAMPLE),
        tile_filter=TileFilter(),  # keep every tile: the sample is all tissue
        processes=2,
        progress=False,
    )
    rows = read_manifest(out / "tiles")
    tiles = [
        (str(out / "tiles" / r["image"]), str(out / "tiles" / r["mask"]), r["slide"]) for r in rows
    ]
    train = [t for t in tiles if t[2] not in VALIDATION]
    validation = [t for t in tiles if t[2] in VALIDATION]
    print(
        f"1. tiles: {len(tiles)} of {TILE} px at {DOWNSAMPLE}x from {len(training)} slides "
        f"({len(train)} train, {len(validation)} validation, split by slide)",
        flush=True,
    )

    # 2. Train -------------------------------------------------------------------------
    train_ds, val_ds = make_datasets(train, validation=validation, batch_size=8, seed=args.seed)
    model = GlomUNet(backbone="resnet18", input_size=TILE, encoder_weights=None, seed=args.seed)
    steps_per_epoch = 25
    epochs = max(1, args.steps // steps_per_epoch)
    history = model.fit(
        train_ds,
        val_ds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        checkpoint_dir=out / "model",
        patience=None,
        callbacks=[time_budget(args.minutes * 60)],
    )
    model = GlomUNet.load(out / "model" / "best.h5")
    val_dice = history["val_dice_metric"]
    print(
        f"2. trained {len(val_dice)} epochs of {steps_per_epoch} steps; validation Dice by "
        f"epoch: {' '.join(f'{d:.2f}' for d in val_dice)}; best {max(val_dice):.3f}",
        flush=True,
    )

    # 3. Predict -----------------------------------------------------------------------
    config = PredictConfig(
        tile_size=TILE, stride=192, downsample=DOWNSAMPLE, tta=True, skip_background=False
    )
    masks = {
        name: predict_slide(
            path, model, out / "masks" / f"{name}.zarr", config=config, progress=False
        )
        for name, path in held_out.items()
    }
    print(f"3. predicted {len(masks)} held-back slides", flush=True)

    # 4. Score and export --------------------------------------------------------------
    report = evaluate_slides(
        {name: (masks[name], path.with_suffix(".json")) for name, path in held_out.items()}
    )
    submission = write_submission_csv(out / "submission.csv", masks)
    for name, path in held_out.items():
        masks[name].write_annotations(out / f"{name}.predicted.json")
        write_overlay(
            out / f"{name}.overlay.png",
            path,
            masks[name],
            downsample=2,
            truth=path.with_suffix(".json"),
        )
    _contact_sheet([out / f"{name}.overlay.png" for name in held_out], out / "overview.png")
    print("4. Dice of the held-back slides against their polygons:")
    for name, score in report.per_slide.items():
        print(f"   {name}: {score.dice:.3f}")
    print(f"   mean Dice (the Kaggle score): {report.mean:.3f}")
    print(
        f"wrote {submission}, {len(held_out)} predicted GeoJSON files and overlays, and "
        f"{out / 'overview.png'} in {(time.perf_counter() - start) / 60:.1f} min"
    )


def time_budget(seconds: float) -> object:
    """A Keras callback that stops training before the next epoch would pass ``seconds``."""
    import tf_keras as keras  # GlomUNet has imported TensorFlow by now

    class TimeBudget(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_begin(self, logs: object = None) -> None:
            self.begin = self.last = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            now = time.perf_counter()
            took, self.last = now - self.last, now
            if now - self.begin + took > seconds:
                self.model.stop_training = True

    return TimeBudget()


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
