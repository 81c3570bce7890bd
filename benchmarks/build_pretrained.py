"""Build the pretrained model shipped in the package: train, validate, time, write the card.

    python benchmarks/build_pretrained.py [--tiles DIR] [--steps 1200] [--seed 0]
        [--restart-steps N [N ...]] [--from-model out/bench/new_recipe.h5]
        [--restarted-model out/bench/restarted.h5]
        [--out src/glomseg/model/pretrained/glomeruli-pas]

The cross-lab model ``glomeruli-crosslab`` is ``--steps 1200 --restart-steps 800
1000 1200 --augmentation default default default cross-lab --out
src/glomseg/model/pretrained/glomeruli-crosslab`` (its page:
``docs/model_card_glomeruli-crosslab.rst``).

1. **Train** :class:`glomseg.TrainingRecipe` (its defaults, ``--steps`` steps,
   ``--seed``) on the 66 HuBMAP tiles with ids below 250 at 2x downsample
   (1.96 um/px); with ``--restart-steps N1 N2 ...``, then one more cosine cycle
   of the same recipe for each N (warm restarts), the k-th with seed
   ``--seed + k``. ``--from-model`` skips the first cycle and starts from a
   model that ``bench_training.py --save-model`` trained with the same recipe
   and seed; ``--restarted-model`` skips the restarts too, packaging a model
   that these restarts produced (from ``GlomUNet.save``) and recording them in
   the card. On a
   machine with a GPU TensorFlow uses it; the result depends on steps and seed only.
   ``--augmentation A0 A1 ...`` names each cycle's augmentation (the last one
   repeats): ``default`` (:class:`glomseg.Augmentation`) or ``cross-lab``
   (:meth:`glomseg.Augmentation.cross_lab`).
2. **Package** it as float16 weights with its configuration
   (:func:`glomseg.model._pretrained.save_pretrained`) and load it back, so everything
   below measures the model as shipped; quantize it to int8 and check its masks as
   ``build_int8.py`` does, keeping the int8 network only if they pass.
3. **Choose** the region confidence (``ModelConfig.min_confidence``: prediction
   removes regions of the mask whose mean probability is below it) on the
   *training* images: the candidate with the best mean per-image Dice (flip TTA,
   at the training resolution) is stored with the model.
4. **Validate** on the 44 tiles with ids from 250, never trained on nor used to
   choose anything: each whole 1600 x 1200 image through
   :func:`glomseg.predict_image` (pixel size 0.98 um/px), Dice against its
   polygons at full resolution, mean per image and pooled over all pixels, with
   and without flip TTA, and without the region filter.
5. **Across labs**: the same, with every default and no TTA, on the validation
   tiles re-stained to the synthetic stains of ``bench_domains.py`` and on the
   24 AIDPATH tiles of another lab, with raw colours and with each tile mapped to
   the training images' colours (Reinhard). Prediction-time stain
   normalisation becomes the model's default when it scores higher on the
   synthetic stains (mean per image over them); AIDPATH plays no part in it.
6. **Time** :func:`glomseg.predict_slide` on a synthetic 0.49 um/px slide (as
   HuBMAP scans), every tile predicted: megapixels of slide per second on this CPU.
7. **Write** ``config.json``, ``weights.npz`` and ``card.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import hubmap
import numpy as np
from bench_domains import SHIFTS, image_sets, score
from build_int8 import AGREEMENT, quantize_checked
from scipy import ndimage

from glomseg import (
    Augmentation,
    GlomUNet,
    PredictConfig,
    TrainingRecipe,
    dice_coefficient,
    evaluate_slides,
    load_training_images,
    predict_image,
    predict_slide,
    sliding_window_predict,
)
from glomseg.io.synthetic import write_synthetic_slide
from glomseg.model import (
    MacenkoNormalizer,
    ReinhardNormalizer,
    normalizer_from_dict,
    resolve_backend,
)
from glomseg.model._model import load_pretrained
from glomseg.model._pretrained import DEFAULT_MODEL, ModelCard, save_pretrained
from glomseg.predict._objects import filter_objects
from glomseg.predict._scale import MAX_OBJECT_TILES

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "src" / "glomseg" / "model" / "pretrained" / DEFAULT_MODEL
DOCS = HERE.parent / "docs" / "model_card.rst"
LIMITS = (
    "Trained on 66 tiles of one PAS-stained slide of one lab (HuBMAP VAN0013-LK-202-96, "
    "Vanderbilt); validated on 44 other tiles of that same slide. Expect lower Dice on "
    "other slides, labs, scanners and stains.",
    "Other stains and labs were seen only as synthetic re-stainings of one slide: on "
    "another lab's PAS (AIDPATH) it finds far less than on its own slide (see the table). "
    "Fine-tune it (TrainingRecipe.fit) on a few annotated images of yours: "
    "benchmarks/bench_finetune.py shows it on 8 AIDPATH tiles.",
    "Needs the input's pixel size (from TIFF/OME metadata or pixel_size_um=...); without "
    "it, inputs are assumed to be at 0.98 um/px like its training tiles.",
    "The training polygons are coarse hand outlines; boundaries are learned as drawn.",
    "Trained on CPU for a fixed, short number of steps; longer training (or a GPU) and "
    "pretrained encoders would do better.",
)


#: The training augmentations --augmentation chooses from.
AUGMENTATIONS = {"default": Augmentation(), "cross-lab": Augmentation.cross_lab()}

#: Region confidences tried on the training images (0: keep every region).
CONFIDENCES = (0.0, 0.7, 0.75, 0.8, 0.85, 0.9)


def choose_confidence(
    model: GlomUNet, images: list[np.ndarray], masks: list[np.ndarray]
) -> tuple[float, dict[str, float]]:
    """The region confidence with the best mean Dice on the training images, and all scores."""
    max_rows = MAX_OBJECT_TILES * model.config.input_size
    predictor = model.compiled()  # the backend prediction uses by default
    probs = [
        sliding_window_predict(image, predictor, tile_size=model.config.input_size, tta=True)
        for image in images
    ]
    scores = {}
    for confidence in CONFIDENCES:
        dice = [
            dice_coefficient(filter_objects(p, 0.5, confidence, max_rows), truth)
            for p, truth in zip(probs, masks, strict=True)
        ]
        scores[f"{confidence:g}"] = round(float(np.mean(dice)), 4)
    best = max(CONFIDENCES, key=lambda c: (scores[f"{c:g}"], -c))
    return best, scores


def validate(
    model: GlomUNet,
    data: hubmap.Split,
    images: list[np.ndarray],
    truths: list[np.ndarray],
    *,
    tta: bool,
    filtered: bool = True,
) -> dict[str, float]:
    """Dice on the whole validation images, and where the errors are.

    ``images`` and ``truths`` are the validation images and their masks at full
    resolution, read once for every run.
    """
    config = PredictConfig(tta=tta, min_confidence=None if filtered else 0.0)
    masks = {}
    errors = np.zeros(4, dtype=np.int64)
    for source, image, truth in zip(data.validation, images, truths, strict=True):
        mask = predict_image(image, model, pixel_size_um=hubmap.PIXEL_SIZE_UM, config=config)
        masks[source.slide_id] = (mask, source.annotations)
        errors += error_counts(mask, truth)
    report = evaluate_slides(masks)
    return {
        "mean": round(report.mean, 4),
        "pooled": round(report.pooled, 4),
        "min": round(min(c.dice for c in report.per_slide.values()), 4),
        "glomeruli": int(errors[0]),
        "missed_glomeruli": int(errors[1]),
        "regions": int(errors[2]),
        "false_regions": int(errors[3]),
    }


def error_counts(mask: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Glomeruli, glomeruli the mask misses, predicted regions, regions on no glomerulus."""
    eight = np.ones((3, 3), dtype=bool)
    glomeruli, n_true = ndimage.label(truth, structure=eight)
    regions, n_pred = ndimage.label(mask, structure=eight)
    hit = np.bincount(glomeruli[mask], minlength=n_true + 1)[1:]
    touched = np.bincount(regions[truth], minlength=n_pred + 1)[1:]
    return np.array([n_true, int((hit == 0).sum()), n_pred, int((touched == 0).sum())])


def speed(model: GlomUNet, *, tta: bool) -> float:
    """Megapixels of a 0.49 um/px slide predicted per second, every tile predicted."""
    with tempfile.TemporaryDirectory() as tmp:
        slide = write_synthetic_slide(Path(tmp) / "s.tif", (4096, 6144), tile=512, seed=0)
        config = PredictConfig(skip_background=False, tta=tta)
        predict_slide(slide.path, model, config=config, pixel_size_um=0.49, progress=False)
        begin = time.perf_counter()
        mask = predict_slide(slide.path, model, config=config, pixel_size_um=0.49, progress=False)
        seconds = time.perf_counter() - begin
        return round(mask.shape[0] * mask.shape[1] / 1e6 / seconds, 2)


def across_labs(
    model: GlomUNet, images: list[np.ndarray], truths: list[np.ndarray]
) -> dict[str, dict[str, dict[str, float]]]:
    """Dice (every default, no TTA) on the validation tiles, their synthetic stains and AIDPATH.

    Once with raw colours, once with each tile mapped to the training images'
    colours (Reinhard, from the card's ``stain_reference``); ``model`` keeps
    its own normaliser afterwards.
    """
    assert model.card is not None
    reinhard = normalizer_from_dict(model.card.stain_reference["reinhard"])
    sets = image_sets(images, truths)
    own = model.stain_normalizer
    result: dict[str, dict[str, dict[str, float]]] = {}
    for label, normaliser in (("raw", None), ("reinhard", reinhard)):
        model.set_stain_normalizer(normaliser)
        result[label] = {}
        for name, (imgs, masks, pixel_size) in sets.items():
            result[label][name] = score(model, imgs, masks, pixel_size, PredictConfig(), True)
            print(f"across labs, {label}, {name}: {result[label][name]}", flush=True)
    model.set_stain_normalizer(own)
    return result


def shift_mean(row: dict[str, dict[str, float]]) -> float:
    """Mean per-image Dice over the synthetic stains."""
    return float(np.mean([row[shift]["mean"] for shift in SHIFTS]))


def _restarts_text(restarts: list[dict]) -> str:
    """The card's words for the warm restarts after the first cosine cycle."""
    if not restarts:
        return "."
    cycles = ", ".join(f"{r['steps']} steps with seed {r['seed']}" for r in restarts)
    return f"; then warm restarts, each a new cosine cycle from the weights before it: {cycles}."


def _labs_table(labs: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The across-labs figures as an RST list table."""
    names = list(labs["raw"])
    lines = [".. list-table::", "   :header-rows: 1", "", "   * - images"]
    lines += [f"     - {label}" for label in labs]
    for name in names:
        lines.append(f"   * - {name}")
        lines += [
            f"     - {row[name]['mean']:.3f} / {row[name]['pooled']:.3f}" for row in labs.values()
        ]
    return lines


def _name_arg(name: str) -> str:
    """The argument of GlomUNet.pretrained() that loads ``name``."""
    return "" if name == DEFAULT_MODEL else repr(name).replace("'", '"')


def _labs_section(v: dict) -> list[str]:
    """The card's across-labs figures, where the build measured them."""
    if "across_labs" not in v:
        return []
    return [
        "Across labs and stains",
        "----------------------",
        "",
        "``predict_image`` without flip TTA (``PredictConfig(tta=False)``; its default "
        "without a config flips), every other option at its default and the pixel size "
        "given: the same validation tiles re-stained to synthetic stains none of which is "
        "in the training augmentation, and with their pixel size stated 0.6 and 1.5 times "
        "its value (glomeruli smaller or larger than the training slide's) "
        "(``benchmarks/bench_domains.py``), and 24 PAS tiles of another lab (AIDPATH: Bueno "
        "et al., Mendeley Data k7nvtgn2x6 v3, CC BY 4.0), never trained or chosen on. "
        "Mean Dice per image / pooled; *Reinhard* maps each tile to the training images' "
        "colours first"
        + (
            " (the default, chosen on the synthetic stains)."
            if v["normalise_by_default"]
            else " (not the default: it did not help on the synthetic stains)."
        ),
        "",
        *_labs_table(v["across_labs"]),
        "",
        "The synthetic stains are re-stained copies of the validation tiles: choosing "
        "whether to normalise on them is the one choice those tiles took part in.",
        "",
    ]


def write_docs(card: ModelCard, path: Path) -> None:
    """The model card as a page of the docs (regenerated with the model)."""
    v, sp = card.validation, card.speed
    recipe = card.recipe
    title = f"Model card: ``{card.name}``"
    lines = [
        ".. This page is written by benchmarks/build_pretrained.py; edit that, not this.",
        "",
        title,
        "=" * len(title),
        "",
        card.summary,
        "",
        ".. code-block:: python",
        "",
        "   from glomseg import GlomUNet, predict_image, predict_slide",
        "",
        f"   model = GlomUNet.pretrained({_name_arg(card.name)})  # offline, from package data",
        '   mask = predict_slide("slide.tiff", model)  # scale from the slide\'s metadata',
        "   mask = predict_image(image, model, pixel_size_um=0.5)",
        "   print(model.card.to_markdown())",
        "",
        "For another lab's images, map their colours onto the training images' first:",
        "",
        ".. code-block:: python",
        "",
        "   from glomseg.model import normalizer_from_dict",
        "",
        '   reference = model.card.stain_reference["macenko"]  # or "reinhard"',
        "   model.set_stain_normalizer(normalizer_from_dict(reference))",
        "",
        f"- **Training data**: {card.training_data}.",
        f"- **Licence**: {card.licence}",
        f"- **Stain**: {card.stain}",
        f"- **Input**: {card.input_size} px tiles at {card.pixel_size_um:g} um per pixel; "
        "prediction resamples any input to that scale.",
        f"- **Weights**: {card.size_mb:.1f} MB (float16).",
        f"- **Recipe**: :class:`glomseg.TrainingRecipe` with {recipe['steps']} steps of "
        f"{recipe['batch_size']} crops of {recipe['crop_size']} px, backbone "
        f"{recipe['backbone']}, decoder {tuple(recipe['decoder_filters'])}, loss "
        f"{recipe['loss']}, peak learning rate {recipe['learning_rate']:g}, EMA "
        f"{recipe['ema']}, seed {recipe['seed']}" + _restarts_text(recipe.get("restarts", [])),
        "",
        "Validation",
        "----------",
        "",
        f"{v['images']} {v['what']}, never used for training or for choosing anything:",
        "",
        "=================  ====================  ================  ==============",
        "prediction         Dice mean per image   Dice pooled       worst image",
        "=================  ====================  ================  ==============",
        f"flip TTA           {v['tta']['mean']:<20.3f}  {v['tta']['pooled']:<16.3f}  "
        f"{v['tta']['min']:.3f}",
        f"no TTA             {v['no_tta']['mean']:<20.3f}  {v['no_tta']['pooled']:<16.3f}  "
        f"{v['no_tta']['min']:.3f}",
        f"TTA, all regions   {v['tta_unfiltered']['mean']:<20.3f}  "
        f"{v['tta_unfiltered']['pooled']:<16.3f}  {v['tta_unfiltered']['min']:.3f}",
        "=================  ====================  ================  ==============",
        "",
        f"With flip TTA, the mask misses {v['tta']['missed_glomeruli']} of the "
        f"{v['tta']['glomeruli']} glomeruli entirely, and {v['tta']['false_regions']} of its "
        f"{v['tta']['regions']} regions touch no glomerulus (without removing unsure "
        f"regions: {v['tta_unfiltered']['missed_glomeruli']} and "
        f"{v['tta_unfiltered']['false_regions']} of {v['tta_unfiltered']['regions']}).",
        "",
        f"Prediction removes regions of the mask whose mean probability is below "
        f"{v['min_confidence']:g} (the model's ``config.min_confidence``; set "
        "``PredictConfig(min_confidence=0)`` to keep them all, as the last row does). "
        "The value was chosen on the training images, as the best mean per-image Dice "
        "among "
        + ", ".join(f"{k} ({d:.3f})" for k, d in v["min_confidence_training_dice"].items())
        + "; the validation images played no part in it.",
        "",
        *_labs_section(v),
        "Speed",
        "-----",
        "",
        f"{sp['cpu_mpx_per_s']:g} megapixels of slide per second without TTA, "
        f"{sp['cpu_mpx_per_s_tta']:g} with flip TTA ({sp['what']}; {sp['machine']}).",
        "",
        "Known limits",
        "------------",
        "",
        *[f"- {limit}" for limit in card.limits],
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--restart-steps", type=int, nargs="+", default=[])
    parser.add_argument("--from-model", type=Path, default=None)
    parser.add_argument("--restarted-model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--limit", type=int, default=None, help="images per side (a quick check)")
    parser.add_argument(
        "--augmentation",
        nargs="+",
        choices=sorted(AUGMENTATIONS),
        default=["default"],
        help="each cycle's augmentation, the last one repeated (cross-lab: "
        "Augmentation.cross_lab())",
    )
    parser.add_argument(
        "--save-trained", type=Path, default=None, help="save the trained model here (.h5)"
    )
    args = parser.parse_args()
    data = hubmap.split(hubmap.find_tiles(args.tiles))
    if args.limit:
        data = hubmap.Split(data.train[: args.limit], data.validation[: args.limit])
    cycles = 1 + len(args.restart_steps)
    names = (args.augmentation + [args.augmentation[-1]] * cycles)[:cycles]
    augmentations = [AUGMENTATIONS[name] for name in names]
    recipe = TrainingRecipe(steps=args.steps, seed=args.seed, augmentation=augmentations[0])
    begin = time.perf_counter()
    images, masks = load_training_images(data.train, downsample=hubmap.DOWNSAMPLE)
    reference = {
        "reinhard": ReinhardNormalizer.fit(images).to_dict(),
        "macenko": MacenkoNormalizer.fit(images).to_dict(),
    }
    if args.restarted_model is not None and not args.restart_steps:
        parser.error("--restarted-model needs the --restart-steps it was trained with")
    if args.restarted_model is not None:
        trained = GlomUNet.load(args.restarted_model, compile=False)
        print(f"packaging {args.restarted_model}")
    elif args.from_model is None:
        trained = recipe.train(
            images,
            masks,
            pixel_size_um=hubmap.PIXEL_SIZE_UM * hubmap.DOWNSAMPLE,
            downsample=hubmap.DOWNSAMPLE,
        )
        print(f"trained {recipe.steps} steps in {(time.perf_counter() - begin) / 60:.1f} min")
    else:
        trained = GlomUNet.load(args.from_model, compile=bool(args.restart_steps))
        print(f"starting from {args.from_model}")
    restarts = [
        TrainingRecipe(steps=steps, seed=args.seed + k, augmentation=augmentations[k])
        for k, steps in enumerate(args.restart_steps, start=1)
    ]
    for restart in restarts if args.restarted_model is None else []:
        begin = time.perf_counter()
        restart.fit(trained, images, masks)
        minutes = (time.perf_counter() - begin) / 60
        print(f"restart (seed {restart.seed}): {restart.steps} more steps in {minutes:.1f} min")
    if args.save_trained is not None:
        trained.save(args.save_trained)
        print(f"saved {args.save_trained}")
    card = ModelCard(
        name=args.out.name,
        summary=(
            "A U-Net (ResNet-18 encoder, half-width decoder) that segments kidney glomeruli "
            "in PAS-stained whole-slide images at 1.96 um per pixel"
            + (
                ", trained last with stain-transfer augmentation for other stains and labs."
                if "cross-lab" in names
                else "."
            )
        ),
        training_data=(
            f"{len(data.train)} PAS tiles (1600 x 1200 px, ~0.98 um/px; ids below "
            f"{hubmap.SPLIT_ID}) of HuBMAP slide VAN0013-LK-202-96 (Kaggle 26dc41664) with "
            "their glomerulus polygons, from github.com/cns-iu/ccf-research-ftu "
            "(commit fb0b6fc), seen at 2x downsample"
        ),
        licence=(
            "Weights: MIT, like glomseg. Training data: MIT (c) 2020 CNS Indiana University; "
            "images: HuBMAP public data (see ATTRIBUTION.md beside the weights)."
        ),
        stain=(
            "PAS (periodic acid-Schiff) of one lab, seen through the augmentation of each "
            "training cycle: " + ", ".join(names) + " (cross-lab: four crops in five "
            "re-stained to PAS, H&E, trichrome, silver or alcian-blue stain vectors, pale to "
            "dark, with wide HED, colour, grey, blur and JPEG jitter; zoom +-25 %). "
            "stain_reference holds Reinhard and Macenko normalisers fitted on its training "
            "images; whether prediction applies the Reinhard one by default was decided on "
            "the synthetic stains (see validation.across_labs)."
        ),
        pixel_size_um=hubmap.PIXEL_SIZE_UM * hubmap.DOWNSAMPLE,
        input_size=recipe.crop_size,
        recipe={**recipe.to_dict(), "restarts": [restart.to_dict() for restart in restarts]},
        stain_reference=reference,
    )
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(trained, Path(tmp) / args.out.name, card)
        model = load_pretrained(args.out.name, directory=tmp)
        sample = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
        drift = float(np.abs(model.predict(sample) - trained.predict(sample)).max())
        print(f"float16 weights change probabilities by at most {drift:.2e}")
        # The int8 network PredictConfig(precision="int8") runs, made and checked as
        # build_int8.py does; save_pretrained below writes it only if it passed.
        checked = load_training_images(data.train[::3], downsample=1)[0]
        if not quantize_checked(model, images, list(checked)):
            print(f"int8 masks agree with float32's below {AGREEMENT}: no int8 network")
        confidence, scores = choose_confidence(model, images, masks)
        print(f"region confidence {confidence:g}; training-image Dice by confidence: {scores}")
        model.set_min_confidence(confidence or None)
        trained.set_min_confidence(confidence or None)
        # Read and rasterized once, at full resolution, for every run.
        held_out = load_training_images(data.validation, downsample=1)
        truths = [truth.astype(bool) for truth in held_out[1]]
        labs = across_labs(model, held_out[0], truths)
        normalise = shift_mean(labs["reinhard"]) > shift_mean(labs["raw"])
        reinhard = normalizer_from_dict(card.stain_reference["reinhard"])
        for each in (model, trained):
            each.set_stain_normalizer(reinhard if normalise else None)
        print(f"prediction-time Reinhard normalisation by default: {normalise}")
        validation = {
            "images": len(data.validation),
            "what": "whole 1600 x 1200 tiles with ids >= 250, Dice at full resolution",
            "tta": validate(model, data, *held_out, tta=True),
            "no_tta": validate(model, data, *held_out, tta=False),
            "tta_unfiltered": validate(model, data, *held_out, tta=True, filtered=False),
            "min_confidence": confidence,
            "min_confidence_training_dice": scores,
            "across_labs": labs,
            "normalise_by_default": normalise,
        }
        print(f"validation: {validation}")
        timing = {
            "cpu_mpx_per_s": speed(model, tta=False),
            "cpu_mpx_per_s_tta": speed(model, tta=True),
            "what": "megapixels of a 0.49 um/px slide per second, all tiles predicted",
            "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
            "backend": "/".join(resolve_backend()),
        }
        print(f"speed: {timing}")
        card = ModelCard.from_dict(
            {**card.to_dict(), "validation": validation, "speed": timing, "limits": LIMITS}
        )
        folder = save_pretrained(model, args.out, card)  # float16-rounded, int8 network
    if args.out.parent == OUT.parent:  # a model shipped in the package: its docs page too
        page = DOCS if args.out == OUT else DOCS.with_name(f"model_card_{args.out.name}.rst")
        write_docs(load_pretrained(args.out.name, directory=folder.parent).card, page)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
