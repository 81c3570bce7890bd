"""Cross-lab quality: one model on HuBMAP validation, synthetic stain shifts and AIDPATH.

    python benchmarks/bench_domains.py [--model pretrained|PATH.h5 ...] [--tta]
        [--normalise none reinhard] [--stride 0 128 ...] [--json out/bench/domains.json]

For each model and each prediction-time stain setting, :func:`glomseg.predict_image`
(every other option at its default, the pixel size given) predicts whole images
of three kinds, and Dice is reported as the mean per image and pooled over all
pixels:

1. **HuBMAP validation**: the 44 whole 1600 x 1200 PAS tiles with ids from 250
   (0.98 um/px), never trained on.
2. **Synthetic stain shifts**: the same 44 tiles re-stained to other stains
   (:data:`SHIFTS`): each pixel's optical density is unmixed into the training
   slide's two stain vectors and a residual, and remixed with a target's vectors
   and amounts. None of these targets is in the training augmentation's
   :data:`glomseg.model.STAIN_BANK`.
3. **Scale shifts**: the same 44 tiles with their pixel size stated :data:`SCALES`
   times its value, so that the model sees glomeruli that much smaller or larger
   than the training slide's: a stand-in for a kidney with small glomeruli, a
   section that cuts them off-centre, or a pixel size read wrong.
4. **AIDPATH**: 24 PAS tiles of another lab (1024 x 1024, about 0.59 um/px;
   Bueno et al., Mendeley Data k7nvtgn2x6 v3, CC BY 4.0), validation only: nothing
   is trained, tuned or chosen on them. Each image's Dice goes into the JSON and
   the five lowest are printed: a few tiles decide its mean per image. One of them,
   10165, has a whole glomerulus (detached into the glass) that its mask leaves
   out, so a model that finds it scores about 0.1 there.

Prediction-time stain settings (``--normalise``): ``none`` (raw colours) and
``reinhard`` (each tile mapped to the training images' L*a*b* statistics, from the
model card's ``stain_reference``, or the pretrained model's when the model has no card).
``--stride`` compares grids: each step in model pixels (0, the default: a quarter
overlap) is scored for each model and stain setting. A denser grid averages each
pixel over more framings of it, at the cost of more tiles.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import hubmap
import numpy as np
from PIL import Image

from glomseg import GlomUNet, PredictConfig, load_training_images, predict_image
from glomseg.evaluate import dice_coefficient
from glomseg.model import STAIN_BANK, available_models, normalizer_from_dict

HERE = Path(__file__).resolve().parent
AIDPATH = HERE.parent.parent / "shared" / "data" / "aidpath"
AIDPATH_PIXEL_SIZE_UM = 0.59

#: The training slide's stains (Macenko on its training tiles), nuclear stain first.
SOURCE = STAIN_BANK["pas-hubmap"]

#: Synthetic target stains: (nuclear vector, counterstain vector, amount factors).
SHIFTS: dict[str, tuple[tuple[float, ...], tuple[float, ...], tuple[float, float]]] = {
    # The training slide's own stains at under half their amounts: a pale PAS.
    "pale PAS": (SOURCE[0], SOURCE[1], (0.45, 0.45)),
    # Macenko's reference H&E (the default target of most implementations), lighter.
    "H&E": ((0.5626, 0.7201, 0.4062), (0.2159, 0.8012, 0.5581), (0.7, 0.7)),
    # A pinker, paler PAS: less haematoxylin, a magenta counterstain.
    "pink PAS": ((0.65, 0.70, 0.30), (0.20, 0.90, 0.38), (0.4, 0.6)),
    # Haematoxylin and a brown (DAB-like) counterstain, Ruifrok and Johnston's vectors.
    "H-DAB": ((0.650, 0.704, 0.286), (0.268, 0.570, 0.776), (0.8, 0.8)),
    # The training slide's colours as grey levels.
    "greyscale": ((), (), (1.0, 1.0)),
}

#: Scale shifts: the factor the validation tiles' pixel size is stated at (0.6: the model
#: sees glomeruli at 0.6 times the size it learned).
SCALES = (0.6, 1.5)


def restain(image: np.ndarray, shift: str) -> np.ndarray:
    """``image`` (uint8 RGB) re-stained to the target ``SHIFTS[shift]``."""
    nuclear, counter, (a, b) = SHIFTS[shift]
    if not nuclear:
        grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.repeat(np.rint(grey)[..., None], 3, axis=2).astype(np.uint8)
    source = np.array(SOURCE, dtype=np.float64)
    source /= np.linalg.norm(source, axis=1, keepdims=True)
    residual = np.cross(source[0], source[1])
    basis = np.vstack([source, residual / np.linalg.norm(residual)])
    target = np.array([nuclear, counter], dtype=np.float64)
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    remix = np.vstack([target * np.array([[a], [b]]), basis[2:]])
    density = -np.log(np.maximum(image.reshape(-1, 3).astype(np.float64), 1.0) / 255.0)
    out = 255.0 * np.exp(-(density @ np.linalg.inv(basis)) @ remix)
    return np.rint(np.clip(out, 0, 255)).reshape(image.shape).astype(np.uint8)


def aidpath() -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """The AIDPATH tiles and their masks (red in the mask image: R > 127 and G < 128)."""
    names, images, masks = [], [], []
    for path in sorted(AIDPATH.glob("*_mask.png")):
        stem = path.name.removesuffix("_mask.png")
        names.append(stem)
        images.append(np.asarray(Image.open(AIDPATH / f"{stem}.png").convert("RGB")))
        rgb = np.asarray(Image.open(path).convert("RGB"))
        masks.append((rgb[..., 0] > 127) & (rgb[..., 1] < 128))
    if not names:
        raise SystemExit(f"no AIDPATH tiles in {AIDPATH}")
    return names, images, masks


def image_sets(
    images: list[np.ndarray], truths: list[np.ndarray], limit: int | None = None
) -> dict[str, tuple[list[np.ndarray], list[np.ndarray], float]]:
    """The validation images, their re-stained copies and AIDPATH: (images, truths, um/px)."""
    px = hubmap.PIXEL_SIZE_UM
    sets = {"HuBMAP validation": (images, truths, px)}
    for shift in SHIFTS:
        sets[shift] = ([restain(image, shift) for image in images], truths, px)
    for factor in SCALES:
        sets[f"glomeruli {factor:g}x"] = (images, truths, px * factor)
    _, a_images, a_truths = aidpath()
    sets["AIDPATH"] = (a_images[:limit], a_truths[:limit], AIDPATH_PIXEL_SIZE_UM)
    return sets


def score(
    model: GlomUNet,
    images: list[np.ndarray],
    truths: list[np.ndarray],
    pixel_size_um: float,
    config: PredictConfig,
    stain: bool,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Mean per-image and pooled Dice of ``predict_image`` on whole images.

    With ``names`` (one per image), each image's Dice too, under ``"per image"``.
    """
    dice, inter, total = [], 0, 0
    for image, truth in zip(images, truths, strict=True):
        mask = predict_image(image, model, pixel_size_um=pixel_size_um, config=config, stain=stain)
        dice.append(dice_coefficient(mask, truth))
        inter += int(np.count_nonzero(mask & truth))
        total += int(np.count_nonzero(mask)) + int(np.count_nonzero(truth))
    pooled = 1.0 if total == 0 else 2 * inter / total
    result: dict[str, Any] = {"mean": round(float(np.mean(dice)), 4), "pooled": round(pooled, 4)}
    if names is not None:
        result["per image"] = {n: round(d, 4) for n, d in zip(names, dice, strict=True)}
    return result


def load(spec: str) -> GlomUNet:
    """``pretrained`` (the default shipped model), a shipped model's name, or a saved ``.h5``."""
    if spec == "pretrained":
        return GlomUNet.pretrained()
    if spec in available_models():
        return GlomUNet.pretrained(spec)
    return GlomUNet.load(spec, compile=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", nargs="+", default=["pretrained", "glomeruli-crosslab"])
    parser.add_argument("--tiles", type=Path, default=None)
    parser.add_argument("--tta", action="store_true", help="flip TTA (default: off)")
    parser.add_argument(
        "--stride",
        type=int,
        nargs="+",
        default=[0],
        help="grid steps in model pixels to compare (0: the default, a quarter overlap)",
    )
    parser.add_argument(
        "--normalise", nargs="+", choices=("none", "reinhard"), default=["none", "reinhard"]
    )
    parser.add_argument("--limit", type=int, default=None, help="images per set (a quick check)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data = hubmap.split(hubmap.find_tiles(args.tiles))
    validation = data.validation[: args.limit]
    images, truths = load_training_images(validation, downsample=1)
    truths = [t.astype(bool) for t in truths]
    sets = image_sets(images, truths, args.limit)
    aidpath_names = aidpath()[0][: args.limit]
    reference = GlomUNet.pretrained().card
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for spec in args.model:
        model = load(spec)
        card = model.card or reference
        for normalise, stride in itertools.product(args.normalise, args.stride):
            model.set_stain_normalizer(
                normalizer_from_dict(card.stain_reference["reinhard"])
                if normalise == "reinhard"
                else None
            )
            config = PredictConfig(tta=args.tta, stride=stride or None)
            key = f"{spec} | {normalise}" + (f" | stride {stride}" if stride else "")
            results[key] = {}
            for name, (imgs, masks, pixel_size) in sets.items():
                begin = time.perf_counter()
                results[key][name] = score(
                    model,
                    imgs,
                    masks,
                    pixel_size,
                    config,
                    stain=normalise != "none",
                    names=aidpath_names if name == "AIDPATH" else None,
                )
                seconds = time.perf_counter() - begin
                row = {k: v for k, v in results[key][name].items() if k != "per image"}
                print(f"{key:50s} {name:18s} {row}  ({seconds:.0f} s)", flush=True)
    print()
    names = list(sets)
    print("mean Dice per image / pooled, predict_image defaults" + (" + TTA" if args.tta else ""))
    print(f"{'model | stain at prediction':50s} " + " ".join(f"{n[:17]:>17s}" for n in names))
    for key, row in results.items():
        cells = " ".join(f"{row[n]['mean']:.3f} / {row[n]['pooled']:.3f}".rjust(17) for n in names)
        print(f"{key:50s} {cells}")
    print()
    print("the five lowest AIDPATH images (Dice), where its mean per image goes")
    for key, row in results.items():
        lowest = sorted(row["AIDPATH"]["per image"].items(), key=lambda item: item[1])[:5]
        print(f"{key:50s} " + ", ".join(f"{n} {d:.3f}" for n, d in lowest))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
