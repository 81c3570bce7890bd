"""Step 2: train a GlomUNet on a tile dataset and save it as .h5.

    python examples/train.py out/tiles [--out out/model] [--backbone resnet34] [--epochs 20]

Splits the tiles by slide (no slide on both sides), trains with BCE+Dice and
augmentation, keeps the best checkpoint by validation Dice in
``<out>/best.h5`` (its configuration in ``best.h5.json``) and logs every epoch
to ``<out>/log.csv``.

Pretrained encoders: nothing is downloaded at run time. To start from ImageNet
weights, fetch the backbone's file (e.g. ``resnet34_imagenet_1000_no_top.h5``
from the qubvel/classification_models releases) on a machine with network
access and pass ``--weights /path/to/file.h5``, or place it in
``~/.keras/models/`` and pass ``--weights imagenet``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from glomseg import GlomUNet
from glomseg.model import make_datasets
from glomseg.tiles import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tiles", type=Path, help="a folder made by build_tiles.py")
    parser.add_argument("--out", type=Path, default=Path("out") / "model")
    parser.add_argument("--backbone", default="resnet34")
    parser.add_argument("--weights", default=None, help="'imagenet' or a local .h5 file")
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="a multiple of 32; default: the tile size rounded up to one",
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--loss", choices=["bce_dice", "dice"], default="bce_dice")
    parser.add_argument("--mixed-precision", action="store_true", help="float16 on a GPU")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tile = int(read_manifest(args.tiles)[0]["out_height"])
    # A U-Net needs sides that are multiples of 32: the seed's 400-px tiles become 416.
    size = args.input_size or -(-tile // 32) * 32
    if size != tile:
        print(f"tiles of {tile} px are resized to {size} px for the U-Net")

    train_ds, val_ds = make_datasets(
        args.tiles,
        validation_fraction=args.validation_fraction,
        batch_size=args.batch_size,
        seed=args.seed,
        input_size=None if size == tile else size,
    )
    model = GlomUNet(
        backbone=args.backbone,
        input_size=size,
        encoder_weights=args.weights,
        loss=args.loss,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
    )
    history = model.fit(
        train_ds,
        val_ds,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        checkpoint_dir=args.out,
        verbose=2,
    )
    best = max(history["val_dice_metric"])
    print(f"best validation Dice {best:.3f}; model in {args.out / 'best.h5'}")


if __name__ == "__main__":
    main()
