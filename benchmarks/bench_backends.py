"""CPU prediction per backend and precision: rates against the bare model, and masks.

    python benchmarks/bench_backends.py [--model pretrained] [--repeats 3]
        [--skip-masks] [--min-confidence C] [--slide-scale 4]
        [--json out/bench/backends.json]

Everything runs in one process, on whatever cores the machine has, in this order:

1. **Rates.** A 3072 x 3072 image of real tissue at 0.98 um/px (six HuBMAP
   validation tiles side by side, cropped) is 1536 x 1536 pixels of model input at
   the shipped model's 1.96 um/px. The *bare model* is the naive fp32 baseline:
   the Keras network's own ``predict`` on the 36 non-overlapping 256-px tiles of
   that input, already preprocessed, batch 8. Then :func:`glomseg.predict_image`
   with the model's defaults and no TTA (256-px tiles every 192 px, 64 tiles:
   1.78 times the pixels the bare model sees, blending, background test, region
   filter), once per backend and precision this machine can run. A rate is
   megapixels of model input (1536 x 1536) per second, best of ``--repeats``
   after one warm-up call; "in model" is the time inside the compiled predictor.
2. **Masks.** Each backend's masks against the TensorFlow float32 masks (Dice,
   pooled over pixels and the lowest per image; whole, and on the interior at
   least ``MARGIN`` pixels from every edge) on the 44 HuBMAP validation tiles and
   the 24 AIDPATH tiles, and each one's Dice against the truth (mean per image /
   pooled). For scale, the same for TensorFlow float32 itself on each image
   framed ``FRAME`` pixels off (its first rows and columns cut, so the grid and
   the resampling fall elsewhere on the tissue), on the interior of the common
   area: how far float32 masks move when nothing but the framing does.
   ``--min-confidence 0`` turns the region filter off for the masks (every
   thresholded region kept), to see how much of a difference is whole regions
   whose mean probability lies near the model's cutoff.
3. **A slide.** :func:`glomseg.predict_slide` with every default on a tiled
   TIFF of 31299 x 44066 / ``--slide-scale`` per side, real tissue on its left
   third and glass elsewhere, per backend; the minutes are extrapolated to the
   full-size slide (by its area) and to 16 cores (by the cores, as if the model's
   time scaled with them: an estimate, not a measurement).

OpenVINO int8 runs the model's int8 network where it has one (``glomeruli-crosslab``
does, see ``build_int8.py``), on any CPU.

Where the CPU computes bfloat16 natively (AVX-512 BF16 or AMX) the bfloat16 rows
are measured; elsewhere OpenVINO cannot run them and TensorFlow only emulates
them (slowly), so they are left out of the rates and kept for the masks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_domains
import hubmap
import numpy as np
import tifffile

from glomseg import GlomUNet, PredictConfig, load_training_images, predict_image, predict_slide
from glomseg.errors import BackendError
from glomseg.evaluate import dice_coefficient
from glomseg.model import available_models
from glomseg.model._backends import cpu_bfloat16, openvino_available

SIDE = 3072
SLIDE_SHAPE = (31299, 44066)
#: Full-resolution pixels cut from the top and left of each image for the framing row.
FRAME = 16
#: Full-resolution pixels left out at every edge for the interior Dice.
MARGIN = 96


def has_int8(model: GlomUNet) -> bool:
    """Whether the model has an int8 network for its weights (and OpenVINO is installed)."""
    try:
        model.compiled("openvino", "int8")
    except BackendError:
        return False
    return True


def backends(native_bf16: bool, rates: bool, int8: bool = True) -> list[tuple[str, str]]:
    """The (backend, precision) pairs to run: bfloat16 for rates only where it is native."""
    pairs = [("tensorflow", "float32")]
    if openvino_available():
        pairs.append(("openvino", "float32"))
        if int8:
            pairs.append(("openvino", "int8"))
    if native_bf16 or not rates:
        pairs.append(("tensorflow", "bfloat16"))
        if native_bf16 and openvino_available():
            pairs.append(("openvino", "bfloat16"))
    return pairs


class Timed:
    """The model, with the time inside its compiled predictor counted."""

    def __init__(self, model: GlomUNet) -> None:
        self.model = model
        self.seconds = 0.0

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def stain_normalizer(self) -> Any:
        return self.model.stain_normalizer

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.model(images)

    def compiled(self, backend: str, precision: str) -> Any:
        predictor = self.model.compiled(backend, precision)

        def timed(images: np.ndarray) -> np.ndarray:
            begin = time.perf_counter()
            out = predictor(images)
            self.seconds += time.perf_counter() - begin
            return out

        timed.config = predictor.config  # type: ignore[attr-defined]
        timed.stain_normalizer = predictor.stain_normalizer  # type: ignore[attr-defined]
        return timed


def tissue_image(validation: list[Any]) -> np.ndarray:
    """3072 x 3072 of real tissue: six 1600 x 1200 validation tiles, two across, three down."""
    images, _ = load_training_images(validation[:6], downsample=1)
    rows = [np.concatenate(images[i : i + 2], axis=1) for i in range(0, 6, 2)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:SIDE, :SIDE])


def best_of(repeats: int, run: Any) -> float:
    run()  # warm-up: tracing, compiling, caches
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return min(times)


def rates(model: GlomUNet, image: np.ndarray, repeats: int, native: bool) -> dict[str, Any]:
    size = model.config.input_size
    ds = round(model.config.pixel_size_um / hubmap.PIXEL_SIZE_UM)
    low = image.reshape(SIDE // ds, ds, SIDE // ds, ds, 3).mean(axis=(1, 3)).round()
    low = low.astype(np.uint8)
    n = low.shape[0] // size
    tiles = low[: n * size, : n * size].reshape(n, size, n, size, 3).swapaxes(1, 2)
    batch = model.preprocess(tiles.reshape(n * n, size, size, 3))
    network = model.keras_model
    megapixels = low.shape[0] * low.shape[1] / 1e6
    bare = best_of(repeats, lambda: network.predict(batch, batch_size=8, verbose=0))
    out: dict[str, Any] = {
        "model input MP": round(megapixels, 3),
        "bare fp32 tf.keras": {"seconds": round(bare, 3), "MP/s": round(megapixels / bare, 3)},
    }
    print(f"bare fp32 tf.keras model, {n * n} tiles: {bare:.2f} s, {megapixels / bare:.2f} MP/s")
    timed = Timed(model)
    for backend, precision in [*backends(native, True, has_int8(model)), ("auto", "auto")]:
        config = PredictConfig(tta=False, backend=backend, precision=precision)

        def run(config: PredictConfig = config) -> None:
            predict_image(image, timed, pixel_size_um=hubmap.PIXEL_SIZE_UM, config=config)

        run()
        timed.seconds = 0.0
        seconds = best_of(repeats, run)
        in_model = timed.seconds / (repeats + 1)
        key = f"predict_image {backend}/{precision}"
        out[key] = {
            "seconds": round(seconds, 3),
            "MP/s": round(megapixels / seconds, 3),
            "ratio to bare": round(bare / seconds, 3),
            "in model s": round(in_model, 3),
        }
        print(
            f"{key:40s} {seconds:6.2f} s  {megapixels / seconds:5.2f} MP/s  "
            f"x{bare / seconds:.2f} of bare  (in model {in_model:.2f} s)",
            flush=True,
        )
    return out


def masks(
    model: GlomUNet, validation: list[Any], native: bool, min_confidence: float | None = None
) -> dict[str, Any]:
    images, truths = load_training_images(validation, downsample=1)
    _, a_images, a_truths = bench_domains.aidpath()
    sets = {
        "HuBMAP validation": (images, [t.astype(bool) for t in truths], hubmap.PIXEL_SIZE_UM),
        "AIDPATH": (a_images, a_truths, bench_domains.AIDPATH_PIXEL_SIZE_UM),
    }
    out: dict[str, Any] = {}
    reference: dict[str, list[np.ndarray]] = {}
    for backend, precision in backends(native, False, has_int8(model)):
        key = f"{backend}/{precision}"
        config = PredictConfig(
            tta=False, backend=backend, precision=precision, min_confidence=min_confidence
        )
        out[key] = {}
        for name, (imgs, truth, px) in sets.items():
            begin = time.perf_counter()
            predicted = [predict_image(i, model, pixel_size_um=px, config=config) for i in imgs]
            seconds = time.perf_counter() - begin
            row = {"truth": _dice(predicted, truth), "seconds": round(seconds, 1)}
            if key == "tensorflow/float32":
                reference[name] = predicted
            else:
                row["against float32"] = _dice(predicted, reference[name])
                row["against float32, interior"] = _dice(
                    [_interior(m) for m in predicted], [_interior(m) for m in reference[name]]
                )
            out[key][name] = row
            print(f"{key:22s} {name:18s} {row}", flush=True)
    key = f"tensorflow/float32 framed {FRAME} px off"
    config = PredictConfig(
        tta=False, backend="tensorflow", precision="float32", min_confidence=min_confidence
    )
    out[key] = {}
    for name, (imgs, _, px) in sets.items():
        framed = [
            predict_image(
                np.ascontiguousarray(i[FRAME:, FRAME:]), model, pixel_size_um=px, config=config
            )
            for i in imgs
        ]
        row = {
            "against float32, interior": _dice(
                [_interior(m) for m in framed],
                [_interior(m[FRAME:, FRAME:]) for m in reference[name]],
            )
        }
        out[key][name] = row
        print(f"{key:22s} {name:18s} {row}", flush=True)
    return out


def _interior(mask: np.ndarray) -> np.ndarray:
    return mask[MARGIN:-MARGIN, MARGIN:-MARGIN]


def _dice(masks: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    pairs = list(zip(masks, truths, strict=True))
    per = [dice_coefficient(m, t) for m, t in pairs]
    inter = sum(int(np.count_nonzero(m & t)) for m, t in pairs)
    total = sum(int(np.count_nonzero(m)) + int(np.count_nonzero(t)) for m, t in pairs)
    return {
        "mean": round(float(np.mean(per)), 4),
        "pooled": round(1.0 if total == 0 else 2 * inter / total, 4),
        "lowest": round(float(np.min(per)), 4),
    }


def write_slide(path: Path, validation: list[Any], scale: int) -> tuple[int, int]:
    """A tiled TIFF of 31299 x 44066 / ``scale``: real tissue on the left third, glass elsewhere."""
    h, w = (side // scale for side in SLIDE_SHAPE)
    images, _ = load_training_images(validation, downsample=1)
    th, tw = images[0].shape[:2]
    across = -(-(w // 3) // tw)
    rows = [
        np.concatenate([images[(r * across + c) % len(images)] for c in range(across)], axis=1)
        for r in range(-(-h // th))
    ]
    tissue = np.concatenate(rows, axis=0)[:h, : w // 3]
    canvas = np.full((-(-h // 512) * 512, -(-w // 512) * 512, 3), 242, dtype=np.uint8)
    canvas[:h, : w // 3] = tissue

    def tiles() -> Any:
        for r in range(0, h, 512):
            for c in range(0, w, 512):
                yield canvas[r : r + 512, c : c + 512]

    tifffile.imwrite(
        path,
        tiles(),
        shape=(h, w, 3),
        dtype=np.uint8,
        tile=(512, 512),
        photometric="rgb",
        resolution=(1e4 / hubmap.PIXEL_SIZE_UM, 1e4 / hubmap.PIXEL_SIZE_UM),
        resolutionunit="CENTIMETER",
    )
    return h, w


def slide(model: GlomUNet, validation: list[Any], scale: int, native: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slide.tif"
        h, w = write_slide(path, validation, scale)
        for backend, precision in backends(native, True, has_int8(model)):
            config = PredictConfig(backend=backend, precision=precision)
            begin = time.perf_counter()
            mask = predict_slide(
                path, model, Path(tmp) / "mask.zarr", config=config, progress=False
            )
            seconds = time.perf_counter() - begin
            stats = mask.stats
            full = seconds * scale * scale / 60
            key = f"{backend}/{precision}"
            out[key] = {
                "shape": [h, w],
                "seconds": round(seconds, 1),
                "predicted tiles": stats.predicted,
                "skipped tiles": stats.skipped,
                "in model s": round(stats.predict_s, 1),
                "full slide min": round(full, 1),
                "full slide min at 16 cores (estimate)": round(full * cores / 16, 1),
            }
            print(f"slide {h} x {w}, {key}: {out[key]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="pretrained")
    parser.add_argument("--tiles", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-masks", action="store_true")
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="the region filter's cutoff for the masks (0: off); default the model's",
    )
    parser.add_argument("--slide-scale", type=int, default=4, help="0: no slide")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.model == "pretrained":
        model = GlomUNet.pretrained()
    elif args.model in available_models():
        model = GlomUNet.pretrained(args.model)
    else:
        model = GlomUNet.load(args.model, compile=False)
    native = cpu_bfloat16()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, native "
        f"bfloat16: {native}, OpenVINO: {openvino_available()}",
        flush=True,
    )
    data = hubmap.split(hubmap.find_tiles(args.tiles))
    results: dict[str, Any] = {"cores": os.cpu_count(), "native bfloat16": native}
    results["rates"] = rates(model, tissue_image(data.validation), args.repeats, native)
    if not args.skip_masks:
        results["masks"] = masks(model, data.validation, native, args.min_confidence)
    if args.slide_scale:
        results["slide"] = slide(model, data.validation, args.slide_scale, native)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
