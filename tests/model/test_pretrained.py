"""Tests of the pretrained model shipped as package data: offline loading from a wheel, its card,
its quality on real tiles it never trained on, and its scale handling."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from glomseg import GlomUNet, SlideReader, dice_coefficient, evaluate_slide, predict_image
from glomseg.errors import PretrainedWeightsError
from glomseg.model import ModelCard, available_models
from glomseg.model._model import load_pretrained
from glomseg.model._pretrained import MODELS_DIR, save_pretrained

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "examples" / "data" / "sample"
#: Sample tiles with ids >= 250: the shipped model validated on them and never trained on them.
UNSEEN = ["van0013_train_306", "van0013_train_323", "van0013_train_337", "van0013_train_338"]
HAS_TF = all(
    importlib.util.find_spec(name) is not None
    for name in ("tensorflow", "tf_keras", "segmentation_models")
)
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs the tf extra: pip install 'glomseg[tf]'")

OFFLINE_CHECK = """
import socket, sys, json
def refuse(*args, **kwargs):
    raise OSError("this test allows no network access")
socket.socket.connect = refuse
socket.create_connection = refuse
import glomseg
from glomseg import GlomUNet, SlideReader, evaluate_slide, predict_image
site = sys.argv[1]
assert glomseg.__file__.startswith(site), glomseg.__file__
model = GlomUNet.pretrained()
scores = {}
for tile in sys.argv[2:]:
    with SlideReader(tile + ".tif") as reader:
        image = reader.read()
    mask = predict_image(image, model, pixel_size_um=0.98)
    scores[tile] = evaluate_slide(mask, tile + ".json").dice
print(json.dumps({"card": model.card.name, "scores": scores}))
"""


@pytest.mark.parametrize("name", ["glomeruli-pas", "glomeruli-crosslab"])
def test_the_shipped_models_and_their_cards_are_package_data(name: str) -> None:
    assert available_models() == ["glomeruli-crosslab", "glomeruli-pas"]
    folder = MODELS_DIR / name
    weights = folder / "weights.npz"
    assert weights.stat().st_size < 40e6
    card = ModelCard.from_dict(json.loads((folder / "card.json").read_text()))
    assert card.validation["images"] == 44
    for prediction in ("tta", "no_tta"):
        scores = card.validation[prediction]
        assert 0 < scores["min"] <= scores["mean"] <= 1
        assert 0 < scores["pooled"] <= 1
    assert card.speed["cpu_mpx_per_s"] > 0
    # The region confidence it predicts with is the one its training images chose.
    config = json.loads((folder / "config.json").read_text())
    chosen = card.validation["min_confidence"]
    assert config["min_confidence"] == chosen
    on_training = card.validation["min_confidence_training_dice"]
    assert on_training[f"{chosen:g}"] == max(on_training.values())
    assert (folder / "ATTRIBUTION.md").is_file()
    assert card.name == name
    assert "MIT" in card.licence
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"model/pretrained/*/*.npz"' in pyproject


@needs_tf
def test_pretrained_loads_offline_from_an_installed_wheel(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("glomseg-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "glomseg/model/pretrained/glomeruli-pas/weights.npz" in names
        assert "glomseg/model/pretrained/glomeruli-pas/ATTRIBUTION.md" in names
        archive.extractall(site)
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_CHECK, str(site), *(str(SAMPLE / t) for t in UNSEEN)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["card"] == "glomeruli-pas"
    scores = report["scores"]
    assert min(scores.values()) >= 0.85, scores


@needs_tf
def test_pretrained_finds_the_same_glomeruli_at_other_pixel_sizes() -> None:
    # The same tissue resampled to 0.7x and 1.5x: told its pixel size, the model
    # resamples it back and finds the same glomeruli.
    from skimage.transform import rescale

    model = GlomUNet.pretrained()
    with SlideReader(SAMPLE / "van0013_train_323.tif") as reader:
        image = reader.read()
    masks = {}
    for factor in (0.7, 1.5):
        scaled = rescale(image, factor, channel_axis=2, anti_aliasing=True, preserve_range=True)
        scaled = np.rint(scaled).astype(np.uint8)
        mask = predict_image(scaled, model, pixel_size_um=0.98 / factor)
        assert mask.shape == scaled.shape[:2]
        # back onto a common grid, the original's
        masks[factor] = rescale(mask.astype(float), 1 / factor, order=0)[:1200, :1600] > 0.5
    assert masks[0.7].shape == masks[1.5].shape == (1200, 1600)
    assert dice_coefficient(masks[0.7], masks[1.5]) >= 0.9
    truth = SAMPLE / "van0013_train_323.json"
    assert evaluate_slide(masks[1.5], truth).dice >= 0.75


@needs_tf
def test_unknown_and_broken_pretrained_models(tmp_path: Path) -> None:
    model = GlomUNet(backbone="resnet18", input_size=64, decoder_filters=(8, 8, 8, 8, 8))
    card = ModelCard(
        name="tiny",
        summary="s",
        training_data="t",
        licence="MIT",
        stain="PAS",
        pixel_size_um=2.0,
        input_size=64,
    )
    folder = save_pretrained(model, tmp_path / "tiny", card)
    loaded = load_pretrained("tiny", directory=tmp_path)
    with pytest.raises(ValueError, match="no pretrained model named 'tiny2'; available: tiny"):
        load_pretrained("tiny2", directory=tmp_path)
    assert loaded.card is not None
    assert loaded.card.size_mb == pytest.approx(
        (folder / "weights.npz").stat().st_size / 1e6, abs=0.05
    )
    # every weight comes back as its float16 rounding, in the right place
    pairs = zip(loaded.keras_model.weights, model.keras_model.weights, strict=True)
    for got, saved in pairs:
        expected = saved.numpy().astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=saved.name)
    (folder / "weights.npz").write_bytes(b"not a zip")
    with pytest.raises(PretrainedWeightsError, match="cannot read the weights"):
        load_pretrained("tiny", directory=tmp_path)
    (folder / "card.json").write_text("{")
    with pytest.raises(PretrainedWeightsError, match="not valid JSON"):
        load_pretrained("tiny", directory=tmp_path)


def test_the_stain_reference_round_trips_through_the_card() -> None:
    from glomseg.model import ReinhardNormalizer, normalizer_from_dict, read_pretrained

    card = read_pretrained().card
    for method in ("reinhard", "macenko"):
        normaliser = normalizer_from_dict(card.stain_reference[method])
        assert normaliser.to_dict() == card.stain_reference[method]
    reinhard = normalizer_from_dict(card.stain_reference["reinhard"])
    rng = np.random.default_rng(0)
    pale = rng.integers(150, 235, (64, 64, 3), dtype=np.uint8)  # some other lab's colours
    back = ReinhardNormalizer.fit(reinhard.transform(pale))
    np.testing.assert_allclose(back.means, card.stain_reference["reinhard"]["means"], atol=1.5)
