"""Step 3: predict whole slides with a trained GlomUNet and write a Kaggle submission.

    python examples/predict_slides.py MODEL.h5 SLIDE ... [--out out/predictions]
        [--pixel-size UM] [--downsample FACTOR]
    python examples/predict_slides.py pretrained SLIDE ...   # the model shipped with glomseg

For each slide: a full-resolution mask (``<out>/<id>.zarr``, readable window by
window with :class:`glomseg.SlideMask`), its TIFF copy (``<id>.mask.tif``), an
overlay PNG, and one row of ``<out>/submission.csv`` (``id,predicted``, Kaggle
RLE). The tile size is the model's input size. The scale comes from the model:
a model that knows its pixel size (``GlomUNet.pretrained()``, or one trained with
``pixel_size_um``) resamples each slide to it, taking the slide's pixel size from
its TIFF/OME metadata or ``--pixel-size``; otherwise the model's recorded
downsample. ``--downsample`` overrides both (full-resolution pixels per model
pixel; for tiles resized by train.py, e.g. the seed's 4000-px windows at 416 px,
about 9.6).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from glomseg import GlomUNet, PredictConfig, predict_slide
from glomseg.evaluate import write_overlay
from glomseg.predict import write_submission_csv


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model", help="a .h5 or .keras file saved by GlomUNet, or 'pretrained' for the shipped one"
    )
    parser.add_argument("slides", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("out") / "predictions")
    parser.add_argument("--pixel-size", type=float, default=None, help="um/px of the slides")
    parser.add_argument("--downsample", type=float, default=None, help="override the scale")
    parser.add_argument("--overlap", type=float, default=0.25, help="share of a tile")
    parser.add_argument("--blending", choices=["gaussian", "mean", "crop"], default="gaussian")
    parser.add_argument("--tta", action="store_true", help="average over flips")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--keep-glass", action="store_true", help="predict background tiles too")
    args = parser.parse_args()

    model = GlomUNet.pretrained() if args.model == "pretrained" else GlomUNet.load(args.model)
    size = model.config.input_size
    config = PredictConfig(
        tile_size=size,
        stride=max(1, round(size * (1 - args.overlap))),
        downsample=args.downsample,
        batch_size=args.batch_size,
        blending=args.blending,
        tta=args.tta,
        threshold=args.threshold,
        skip_background=not args.keep_glass,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    masks = {}
    for path in args.slides:
        slide_id = path.name.split(".")[0]
        mask = predict_slide(
            path, model, args.out / f"{slide_id}.zarr", config=config, pixel_size_um=args.pixel_size
        )
        mask.to_tiff(args.out / f"{slide_id}.mask.tif")
        write_overlay(args.out / f"{slide_id}.overlay.png", path, mask, downsample=16)
        masks[slide_id] = mask
        stats = mask.stats
        if stats is not None:
            print(
                f"{slide_id}: {stats.predicted} tiles predicted, {stats.skipped} glass tiles "
                f"skipped, {stats.wall_s:.0f} s"
            )
    print(f"wrote {write_submission_csv(args.out / 'submission.csv', masks)}")


if __name__ == "__main__":
    main()
