"""Build the int8 network a shipped model predicts with on request (OpenVINO), and check it.

    python benchmarks/build_int8.py [--model glomeruli-pas glomeruli-crosslab]
        [--tiles DIR] [--crops 300] [--seed 0] [--dry-run]

For each model (a folder of ``src/glomseg/model/pretrained``):

1. **Quantize** it with :meth:`glomseg.GlomUNet.quantize_int8` on its 66
   training tiles at 1.96 um/px (300 cross-lab augmented calibration crops,
   seed 0; see :mod:`glomseg.model._int8`).
2. **Check** its masks against float32's (OpenVINO both, ``predict_image``
   without TTA, every other option at its default) on every third training tile
   and on those tiles re-stained to the five synthetic stains of
   ``bench_domains.py``: the rule, fixed before any model was built, is a pooled
   Dice of at least 0.99 on each of the six sets. No validation image takes part;
   ``bench_backends.py`` reports the HuBMAP validation and AIDPATH masks.
3. **Write** ``int8.xml``, ``int8.bin`` and ``int8.json`` into the model's
   folder if the check passes (not with ``--dry-run``); otherwise leave the folder
   as it was and exit with status 1.

Needs the ``int8`` extra (NNCF and OpenVINO): ``pip install -e '.[dev]'`` has it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import hubmap
import numpy as np
from bench_backends import _dice
from bench_domains import SHIFTS, restain

from glomseg import GlomUNet, PredictConfig, load_training_images, predict_image
from glomseg.model._int8 import save_int8
from glomseg.model._pretrained import MODELS_DIR

#: The least pooled Dice of int8 masks against float32's on each checked set.
AGREEMENT = 0.99


def agreement(model: GlomUNet, images: list[np.ndarray]) -> dict[str, float]:
    """Pooled Dice of int8 masks against float32's per set: the tiles, then each re-staining."""
    sets = {"training tiles": images}
    sets.update({shift: [restain(image, shift) for image in images] for shift in SHIFTS})
    result = {}
    for name, imgs in sets.items():
        masks = {}
        for precision in ("float32", "int8"):
            config = PredictConfig(tta=False, backend="openvino", precision=precision)
            masks[precision] = [
                predict_image(i, model, pixel_size_um=hubmap.PIXEL_SIZE_UM, config=config)
                for i in imgs
            ]
        result[name] = _dice(masks["int8"], masks["float32"])["pooled"]
        print(f"  {name:16s} int8 against float32: pooled Dice {result[name]}", flush=True)
    return result


def quantize_checked(
    model: GlomUNet, training: list[np.ndarray], checked: list[np.ndarray], **options: int
) -> bool:
    """Quantize ``model`` and keep its int8 network only if :func:`agreement` passes."""
    model.quantize_int8(training, **options)
    if min(agreement(model, checked).values()) >= AGREEMENT:
        return True
    del model.__dict__["_int8"]  # not kept: save_pretrained then writes none
    return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", nargs="+", default=["glomeruli-pas", "glomeruli-crosslab"])
    parser.add_argument("--tiles", type=Path, default=None)
    parser.add_argument("--crops", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="check, but write nothing")
    args = parser.parse_args()
    data = hubmap.split(hubmap.find_tiles(args.tiles))
    training, _ = load_training_images(data.train, downsample=hubmap.DOWNSAMPLE)
    checked, _ = load_training_images(data.train[::3], downsample=1)
    failed = []
    for name in args.model:
        model = GlomUNet.pretrained(name)
        begin = time.perf_counter()
        passed = quantize_checked(
            model, list(training), list(checked), crops=args.crops, seed=args.seed
        )
        print(f"{name}: quantized and checked in {time.perf_counter() - begin:.0f} s")
        if not passed:
            print(f"{name}: below {AGREEMENT} on a set, not written")
            failed.append(name)
        elif not args.dry_run:
            save_int8(MODELS_DIR / name, model.__dict__["_int8"])
            print(f"{name}: wrote its int8 network into {MODELS_DIR / name}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
