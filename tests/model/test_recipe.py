"""Tests of the training recipe: Lovasz loss, cosine schedule, EMA, TrainingRecipe (CPU)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glomseg import Augmentation, GlomUNet, TrainingRecipe, dice_coefficient
from glomseg.model import ModelConfig, ReinhardNormalizer

HAS_TF = all(
    importlib.util.find_spec(name) is not None
    for name in ("tensorflow", "tf_keras", "segmentation_models")
)
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs the tf extra: pip install 'glomseg[tf]'")
SIGMOID_1 = float(1 / (1 + np.exp(-1.0)))


def blobs(n: int, shape=(96, 96), seed=0):
    """Pink tissue with dark purple disks (the 'glomeruli') and their masks."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    images, masks = [], []
    for _ in range(n):
        image = np.empty((*shape, 3), np.uint8)
        image[:] = (225, 170, 205)
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        mask = np.zeros(shape, bool)
        for _ in range(2):
            r, c, radius = rng.integers(15, shape[0] - 15), rng.integers(15, shape[1] - 15), 10
            mask |= (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
        image[mask] = (110, 50, 130)
        images.append(image)
        masks.append(mask)
    return images, masks


# ---------------------------------------------------------------- losses


@needs_tf
@settings(max_examples=40, deadline=None)
@given(
    truth=st.lists(st.booleans(), min_size=2, max_size=30),
    wrong=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_lovasz_hinge_equals_jaccard_loss_on_binary_errors(truth, wrong) -> None:
    # Right with margin 1 (logit = sign) gives error 0, logit 0 gives error 1: then the
    # Lovasz extension is the Jaccard loss |M| / |T | M| of the wrong set M.
    from glomseg.model import lovasz_hinge_loss

    t = np.array(truth, dtype=np.float32)
    m = np.array(wrong[: len(truth)], dtype=bool)
    probs = np.where(t > 0, SIGMOID_1, 1 - SIGMOID_1).astype(np.float32)
    probs[m] = 0.5
    union = np.count_nonzero((t > 0) | m)
    expected = np.count_nonzero(m) / union if union else 0.0
    got = float(lovasz_hinge_loss(t[None, :, None], probs[None, :, None])[0])
    assert got == pytest.approx(expected, abs=1e-5)


@needs_tf
def test_bce_lovasz_trains_a_model_and_round_trips() -> None:
    model = GlomUNet(backbone="resnet18", input_size=64, loss="bce_lovasz", seed=1)
    images, masks = blobs(4, (64, 64))
    x = np.stack(images).astype(np.float32) / 255
    y = np.stack(masks)[..., None].astype(np.float32)
    before = model.keras_model.evaluate(model.preprocess(x), y, verbose=0)[0]
    model.keras_model.fit(model.preprocess(x), y, epochs=3, batch_size=4, verbose=0)
    after = model.keras_model.evaluate(model.preprocess(x), y, verbose=0)[0]
    assert after < before


# ---------------------------------------------------------------- schedule and EMA


@needs_tf
def test_cosine_schedule_warms_up_and_decays() -> None:
    model = GlomUNet(backbone="resnet18", input_size=64, learning_rate=1e-3, seed=0)
    images, masks = blobs(4, (64, 64))
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(
        (np.stack(images).astype(np.float32) / 255, np.stack(masks)[..., None].astype("f4"))
    ).batch(2)
    model.fit(data, epochs=2, steps_per_epoch=5, schedule="cosine", warmup_steps=2, patience=None)
    rate = model.keras_model.optimizer.learning_rate
    schedule = getattr(rate, "_schedule", None) or model.keras_model.optimizer._learning_rate
    at = [float(schedule(step)) for step in (0, 1, 2, 6, 10)]
    assert at[0] == pytest.approx(1e-5)
    assert at[1] == pytest.approx(0.5e-3 + 0.5e-5)
    assert at[2] == pytest.approx(1e-3)
    assert at[2] > at[3] > at[4]
    assert at[4] == pytest.approx(1e-5, rel=1e-3)
    model.fit(data, epochs=1, steps_per_epoch=2, patience=None)  # constant after cosine
    rate = model.keras_model.optimizer._learning_rate
    assert float(rate) == pytest.approx(1e-3)  # the config's rate, not the schedule's 1 % end
    with pytest.raises(ValueError, match="needs steps_per_epoch"):
        model.fit(data, epochs=1, schedule="cosine")
    with pytest.raises(ValueError, match="schedule must be one of"):
        model.fit(data, epochs=1, schedule="cosin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ema must be None or lie in"):
        model.fit(data, epochs=1, ema=1.0)


@needs_tf
def test_recipe_fit_trains_an_existing_model_at_the_recipe_learning_rate() -> None:
    model = GlomUNet(backbone="resnet18", input_size=64, learning_rate=1e-3, seed=0)
    images, masks = blobs(4, (96, 96))
    recipe = TrainingRecipe(
        crop_size=64,
        steps=2,
        batch_size=2,
        learning_rate=2e-4,
        warmup=0.5,
        augmentation=Augmentation.none(),
        ema=None,
    )
    recipe.fit(model, images, masks)
    schedule = model.keras_model.optimizer._learning_rate
    assert float(schedule(1)) == pytest.approx(2e-4)  # the peak, after one warm-up step
    assert model.config.learning_rate == 1e-3  # the model's own setting is kept
    with pytest.raises(ValueError, match="learning_rate must be a number > 0, got 0"):
        model.fit(None, epochs=1, learning_rate=0)
    small = TrainingRecipe(crop_size=32, steps=2, batch_size=2)  # crops are cut at 64
    with pytest.raises(ValueError, match="crop_size 32 is smaller than the model's input_size 64"):
        small.fit(model, images, masks)


@needs_tf
def test_ema_averages_every_weight_with_a_warm_up() -> None:
    from glomseg.model._optim import ema_callback as _ema_callback
    from glomseg.model._tf import import_tf

    tf, keras, _ = import_tf()
    model = GlomUNet(backbone="resnet18", input_size=64, seed=0).keras_model
    ema = _ema_callback(keras, tf, 0.99)
    ema.set_model(model)
    ema.on_train_begin()
    start = [w.numpy() for w in model.weights]
    for weight in model.weights:
        weight.assign(weight + 1.0)
    ema.on_train_batch_end(0)  # step 0: momentum min(0.99, 1/10) = 0.1
    for average, w0 in zip(ema.shadow, start, strict=True):
        np.testing.assert_allclose(average.numpy(), 0.1 * w0 + 0.9 * (w0 + 1.0), atol=1e-5)
    ema.on_test_begin()  # validation sees the average ...
    np.testing.assert_allclose(model.weights[0].numpy(), ema.shadow[0].numpy())
    ema.on_test_end()  # ... and training goes on from its own weights
    np.testing.assert_allclose(model.weights[0].numpy(), start[0] + 1.0, atol=1e-6)
    ema.on_train_end()
    np.testing.assert_allclose(model.weights[0].numpy(), ema.shadow[0].numpy())


# ---------------------------------------------------------------- TrainingRecipe


def test_recipe_checks_and_round_trips() -> None:
    recipe = TrainingRecipe(steps=100, warmup=0.1, augmentation=Augmentation(hed=0.1))
    assert recipe.warmup_steps == 10
    assert TrainingRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        TrainingRecipe(steps=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainingRecipe(loss="lovasz")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup must be in"):
        TrainingRecipe(warmup=0.9)


def test_model_config_records_scale_and_stain() -> None:
    stain = {"method": "reinhard", "means": [1.0, 2.0, 3.0], "stds": [1.0, 1.0, 1.0]}
    config = ModelConfig(
        pixel_size_um=1.96, downsample=2, decoder_filters=(8, 8, 8, 8, 8), stain=stain
    )
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.decoder_filters == (8, 8, 8, 8, 8)
    with pytest.raises(ValueError, match="pixel_size_um must be a number > 0"):
        ModelConfig(pixel_size_um=0)
    with pytest.raises(ValueError, match="pixel_size_um must be finite"):
        ModelConfig(pixel_size_um=float("inf"))
    with pytest.raises(ValueError, match="decoder_filters must be 5 positive integers"):
        ModelConfig(decoder_filters=(8, 8))


@needs_tf
def test_recipe_learns_blobs_and_saves_what_it_learned(tmp_path) -> None:
    images, masks = blobs(6, seed=0)
    recipe = TrainingRecipe(
        crop_size=64,
        steps=60,
        batch_size=4,
        decoder_filters=(32, 32, 16, 16, 8),
        augmentation=Augmentation(rotation=10, scale=0.1, blur=0.5, noise=0.01),
        seed=2,
    )
    stain = ReinhardNormalizer.fit(images)
    model = recipe.build(pixel_size_um=2.0, downsample=2, stain=stain)
    recipe.fit(model, images, masks, steps_per_epoch=30)
    test_images, test_masks = blobs(4, (64, 64), seed=9)
    probs = model.predict(np.stack(test_images))
    dice = dice_coefficient(probs > 0.5, np.stack(test_masks))
    assert dice > 0.8
    path = model.save(tmp_path / "m.h5")
    loaded = GlomUNet.load(path)
    assert loaded.config.pixel_size_um == 2.0
    assert loaded.config.downsample == 2
    assert loaded.config.decoder_filters == (32, 32, 16, 16, 8)
    assert loaded.stain_normalizer == stain
    loaded.set_stain_normalizer(None)
    assert loaded.stain_normalizer is None
    assert loaded.config.stain is None
    loaded.set_stain_normalizer(stain.to_dict())
    assert loaded.stain_normalizer == stain
    with pytest.raises(TypeError, match="stain must be None, a stain normaliser"):
        loaded.set_stain_normalizer(42)
    np.testing.assert_allclose(loaded.predict(np.stack(test_images)), probs, atol=1e-5)
