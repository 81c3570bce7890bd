"""Tests of glomseg.model._augment and _sampling: seeded crops, alignment, stain jitter."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glomseg import (
    Augmentation,
    MaskRasterizer,
    SlideReader,
    SlideSource,
    load_training_images,
    read_annotations,
)
from glomseg.errors import DatasetError
from glomseg.model import CropSampler, make_crop_dataset

HAS_TF = all(
    importlib.util.find_spec(name) is not None
    for name in ("tensorflow", "tf_keras", "segmentation_models")
)
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs the tf extra: pip install 'glomseg[tf]'")
SAMPLE = Path(__file__).parents[2] / "examples" / "data" / "sample"
COLOUR_ONLY = Augmentation(flips=False, rotation=0, scale=0)


def _augment(image: np.ndarray, mask: np.ndarray, seed: int, crop: int, aug: Augmentation):
    from glomseg.model._augment import augment_crop
    from glomseg.model._tf import import_tf

    tf, _, _ = import_tf()
    out = augment_crop(
        tf,
        tf.constant(image),
        tf.constant(mask),
        tf.constant([seed, 7], tf.int64),
        crop_size=crop,
        augmentation=aug,
    )
    return out[0].numpy(), out[1].numpy()


def tissue_image(shape=(120, 160), seed=0):
    rng = np.random.default_rng(seed)
    image = np.full((*shape, 3), 255, np.uint8)
    image[10:-10, 10:-10] = rng.integers(60, 200, (shape[0] - 20, shape[1] - 20, 3))
    mask = np.zeros(shape, bool)
    mask[50:70, 70:95] = True
    return image, mask


# ---------------------------------------------------------------- Augmentation


def test_augmentation_checks_and_presets() -> None:
    with pytest.raises(ValueError, match="rotation must be in"):
        Augmentation(rotation=-1)
    with pytest.raises(TypeError, match="flips must be a bool"):
        Augmentation(flips=1)  # type: ignore[arg-type]
    none = Augmentation.none()
    assert none.region_size(96) == 96
    assert not none.flips
    assert none.hed == 0
    geometric = Augmentation.geometric()
    assert geometric.hed == 0
    assert geometric.rotation > 0
    assert geometric.scale > 0
    assert Augmentation().region_size(256) % 2 == 0
    assert Augmentation().replace(hed=0.1).hed == 0.1


@needs_tf
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), data_seed=st.integers(0, 1000))
def test_geometry_keeps_mask_aligned_with_image(seed: int, data_seed: int) -> None:
    # A mask drawn from the image's own pixels: any geometric transform must keep them equal.
    rng = np.random.default_rng(data_seed)
    aug = Augmentation.geometric()
    side = aug.region_size(32)
    binary = rng.random((side, side)) < 0.4
    image = np.repeat((binary * 255).astype(np.uint8)[..., None], 3, axis=2)
    mask = binary.astype(np.uint8)[..., None]
    out_image, out_mask = _augment(image, mask, seed, 32, aug)
    assert out_mask.shape == (32, 32, 1)
    np.testing.assert_array_equal(out_mask[..., 0] > 0.5, out_image[..., 0] > 0.5)
    assert set(np.unique(out_mask)) <= {0.0, 1.0}


@needs_tf
@pytest.mark.parametrize("side", [34, 35])
def test_no_augmentation_cuts_the_crop_unchanged_from_any_region(side: int) -> None:
    rng = np.random.default_rng(side)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    mask = np.zeros((side, side, 1), np.uint8)
    mask[10, 5:9] = 1  # a 4-pixel run: a half-pixel shift blurred it to 3
    out_image, out_mask = _augment(image, mask, 0, 32, Augmentation.none())
    at = (side - 32) // 2
    np.testing.assert_allclose(out_image, image[at : at + 32, at : at + 32] / 255, atol=1e-6)
    np.testing.assert_array_equal(out_mask, mask[at : at + 32, at : at + 32])


@needs_tf
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_flips_and_quarter_turns_move_whole_pixels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = (rng.random((16, 16, 1)) < 0.5).astype(np.uint8)
    aug = Augmentation.none().replace(flips=True)
    out_image, out_mask = _augment(image, mask, seed, 16, aug)
    symmetries = []
    for k in range(4):
        turned = np.rot90(image, k)
        symmetries += [turned, turned[:, ::-1]]
    got = np.rint(out_image * 255).astype(np.uint8)
    matches = [i for i, s in enumerate(symmetries) if np.array_equal(got, s)]
    assert matches, "not one of the 8 symmetries of the square"
    index = matches[0]
    turned = np.rot90(mask, index // 2)
    expected = turned[:, ::-1] if index % 2 else turned
    np.testing.assert_array_equal(out_mask.astype(np.uint8), expected)


@needs_tf
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), cross_lab=st.booleans())
def test_stain_and_colour_jitter_leave_masks_untouched(seed: int, cross_lab: bool) -> None:
    image, mask = tissue_image((48, 48), seed=seed % 100)
    mask_in = mask.astype(np.uint8)[..., None]
    colour = Augmentation.cross_lab(PAS).replace(flips=False, rotation=0, scale=0)
    out_image, out_mask = _augment(image, mask_in, seed, 48, colour if cross_lab else COLOUR_ONLY)
    np.testing.assert_array_equal(out_mask, mask_in.astype(np.float32))
    assert not np.allclose(out_image, image / 255.0, atol=1 / 255)
    assert out_image.min() >= 0
    assert out_image.max() <= 1


@needs_tf
def test_hed_jitter_alone_changes_stained_pixels_only_mildly() -> None:
    with SlideReader(SAMPLE / "van0013_train_107.tif") as reader:
        image = reader.read(downsample=8)[:64, :64]
    mask = np.zeros((64, 64, 1), np.uint8)
    hed_only = Augmentation.none().replace(hed=0.05)
    outs = [_augment(image, mask, s, 64, hed_only)[0] for s in range(4)]
    base = image / 255.0
    diffs = [float(np.abs(o - base).mean()) for o in outs]
    assert all(0.002 < d < 0.15 for d in diffs), diffs
    assert len({round(d, 6) for d in diffs}) == 4  # every seed recolours differently


PAS = ((0.5914, 0.7289, 0.3449), (0.2940, 0.9253, 0.2395))


def stained_image(amounts: np.ndarray, stains=PAS) -> np.ndarray:
    """A float [0, 1] image whose optical density is ``amounts @ stains``, nothing clipped."""
    return np.exp(-amounts @ np.asarray(stains, dtype=np.float32)).astype(np.float32)


def transfer_only(**changes) -> Augmentation:
    options = {"stain_transfer": 1.0, "stain_amount": 2.0, "source_stain": PAS, **changes}
    return Augmentation.none().replace(**options)


def test_stain_transfer_checks_its_options() -> None:
    with pytest.raises(ValueError, match=r"stain_amount must be in \[1, 4\], got 0.5"):
        Augmentation(stain_amount=0.5)
    with pytest.raises(ValueError, match="source_stain rows must not be parallel"):
        Augmentation(source_stain=((1, 1, 1), (2, 2, 2)))
    with pytest.raises(ValueError, match="source_stain must be 2 rows of 3"):
        Augmentation(source_stain=((1, 1, 1),))  # type: ignore[arg-type]
    rows = Augmentation(source_stain=((3, 4, 0), (0, 0, 2))).source_stain
    assert rows == ((0.6, 0.8, 0.0), (0.0, 0.0, 1.0))
    cross = Augmentation.cross_lab(PAS)
    assert Augmentation(**{**cross.__dict__}) == cross


@needs_tf
def test_stain_transfer_needs_the_source_stains() -> None:
    image, mask = tissue_image((48, 48))
    aug = Augmentation.none().replace(stain_transfer=0.5)
    with pytest.raises(ValueError, match="stain_transfer needs source_stain"):
        _augment(image, mask.astype(np.uint8)[..., None], 0, 48, aug)


@needs_tf
def test_transfer_to_the_source_itself_gives_the_image_back(monkeypatch) -> None:
    from glomseg.model import _augment as module

    monkeypatch.setattr(module, "STAIN_BANK", {"same": PAS})
    rng = np.random.default_rng(1)
    amounts = rng.uniform(0.05, 1.5, (32 * 32, 2)).astype(np.float32)
    image = stained_image(amounts).reshape(32, 32, 3)
    tf = pytest.importorskip("tensorflow")
    out = module._transfer(
        tf, tf.constant(image), transfer_only(stain_amount=1.0), tf.constant([3, 4], tf.int64)
    ).numpy()
    np.testing.assert_allclose(out, image, atol=2e-5)


@needs_tf
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), which=st.sampled_from(["h-e", "masson-trichrome"]))
def test_transfer_remixes_with_the_target_stains_within_the_stated_amounts(
    seed: int, which: str
) -> None:
    from glomseg.model import _augment as module

    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(seed % 1000)
    amounts = rng.uniform(0.05, 0.8, (24 * 24, 2)).astype(np.float32)
    image = stained_image(amounts).reshape(24, 24, 3)
    bank = {which: module.STAIN_BANK[which]}
    original = module.STAIN_BANK
    module.STAIN_BANK = bank
    try:
        aug = transfer_only()
        out = module._transfer(tf, tf.constant(image), aug, tf.constant([seed, 1], tf.int64))
        out = out.numpy().reshape(-1, 3)
    finally:
        module.STAIN_BANK = original
    target = np.array([np.asarray(row) / np.linalg.norm(row) for row in bank[which]])
    source = np.asarray(PAS, dtype=np.float64)
    residual = np.cross(source[0], source[1])
    density = -np.log(out.astype(np.float64))
    solved = density @ np.linalg.pinv(np.vstack([target, residual / np.linalg.norm(residual)]))
    ratios = solved[:, :2] / amounts
    # One factor per stain for the whole crop, between 1 / amount and sqrt(amount).
    assert np.ptp(ratios, axis=0).max() < 1e-3 * ratios.max()
    assert (ratios > 1 / aug.stain_amount - 1e-3).all()
    assert (ratios < np.sqrt(aug.stain_amount) + 1e-3).all()
    assert np.abs(solved[:, 2]).max() < 1e-3  # no residual where the input had none


# ---------------------------------------------------------------- CropSampler


def test_sampler_is_deterministic_and_centres_on_glomeruli() -> None:
    image, mask = tissue_image((200, 240))
    sampler = CropSampler([image], [mask], region_size=32, glomerulus_fraction=1.0, seed=3)
    for index in range(20):
        region, region_mask = sampler.sample(index)
        assert region_mask[16, 16, 0] == 1  # the centre is a glomerulus pixel
        np.testing.assert_array_equal(region, sampler.sample(index)[0])
    other = CropSampler([image], [mask], region_size=32, glomerulus_fraction=1.0, seed=4)
    assert any(not np.array_equal(sampler.sample(i)[0], other.sample(i)[0]) for i in range(10))


def test_background_crops_centre_on_tissue_and_share_is_respected() -> None:
    image, mask = tissue_image((200, 240))
    tissue = CropSampler([image], [mask], region_size=16, glomerulus_fraction=0.0, seed=1)
    for index in range(30):
        region, _ = tissue.sample(index)
        assert region[8, 8].tolist() != [255, 255, 255]
    half = CropSampler([image], [mask], region_size=16, glomerulus_fraction=0.5, seed=1)
    on_glomerulus = sum(half.sample(i)[1][8, 8, 0] for i in range(400))
    # about half centred on the glomerulus (500 px) and a few tissue centres land on it too
    assert 170 < on_glomerulus < 280


def test_sampler_pads_images_smaller_than_the_region() -> None:
    image, mask = tissue_image((30, 40))
    sampler = CropSampler([image], [mask], region_size=64, glomerulus_fraction=0.0)
    region, region_mask = sampler.sample(0)
    assert region.shape == (64, 64, 3)
    assert region_mask.shape == (64, 64, 1)
    assert (region == 255).all(axis=2).sum() >= 64 * 64 - 30 * 40


def test_sampler_rejects_bad_input() -> None:
    image, mask = tissue_image()
    with pytest.raises(DatasetError, match="2 images but 1 masks"):
        CropSampler([image, image], [mask], region_size=8)
    with pytest.raises(DatasetError, match="no image has a glomerulus"):
        CropSampler([image], [np.zeros_like(mask)], region_size=8)
    with pytest.raises(DatasetError, match="image 0 must be uint8"):
        CropSampler([image.astype(np.float32)], [mask], region_size=8)
    with pytest.raises(DatasetError, match="mask 0 has shape"):
        CropSampler([image], [mask[:-1]], region_size=8)
    with pytest.raises(ValueError, match="glomerulus_fraction must be in"):
        CropSampler([image], [mask], region_size=8, glomerulus_fraction=1.5)
    assert len(CropSampler([image], [np.zeros_like(mask)], region_size=8, glomerulus_fraction=0))


@needs_tf
def test_crop_dataset_same_seed_same_crops() -> None:
    image, mask = tissue_image((160, 200))
    aug = Augmentation()
    region = aug.region_size(32)

    def batches(seed: int) -> list[np.ndarray]:
        sampler = CropSampler([image], [mask], region_size=region, seed=seed)
        data = make_crop_dataset(sampler, crop_size=32, batch_size=4, augmentation=aug)
        return [np.concatenate([x.numpy().ravel(), y.numpy().ravel()]) for x, y in data.take(3)]

    first, again, other = batches(5), batches(5), batches(6)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    # resuming at a later index gives the same batches as running on to it
    sampler = CropSampler([image], [mask], region_size=region, seed=5)
    resumed = make_crop_dataset(sampler, crop_size=32, batch_size=4, augmentation=aug, start=8)
    x, y = next(iter(resumed))
    np.testing.assert_array_equal(np.concatenate([x.numpy().ravel(), y.numpy().ravel()]), first[2])


@needs_tf
def test_crop_dataset_refuses_a_region_too_small() -> None:
    image, mask = tissue_image()
    sampler = CropSampler([image], [mask], region_size=32)
    with pytest.raises(ValueError, match="smaller than the"):
        make_crop_dataset(sampler, crop_size=32, augmentation=Augmentation())
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        make_crop_dataset(sampler, crop_size=32, batch_size=0, augmentation=Augmentation.none())


def test_load_training_images_matches_reader_and_rasterizer() -> None:
    path = SAMPLE / "van0013_train_107.tif"
    images, masks = load_training_images([SlideSource.from_path(path)], downsample=4)
    with SlideReader(path) as reader:
        expected_image = reader.read(downsample=4)
        expected_mask = MaskRasterizer(read_annotations(path.with_suffix(".json"))).rasterize(
            reader.shape, downsample=4
        )
    np.testing.assert_array_equal(images[0], expected_image)
    np.testing.assert_array_equal(masks[0], expected_mask)
    assert masks[0].any()
    with pytest.raises(DatasetError, match="needs its annotation file"):
        load_training_images([SlideSource.from_path(path, annotations=None)])


def test_images_are_drawn_in_proportion_to_all_their_centres_not_the_subsample(monkeypatch):
    import glomseg.model._sampling as sampling

    monkeypatch.setattr(sampling, "_MAX_CENTRES", 100)  # as 200 000 is to a whole slide
    rich, poor = np.zeros((100, 100), np.uint8), np.zeros((100, 100), np.uint8)
    rich[:20] = 1  # 2000 glomerulus pixels, subsampled to 100
    poor[:2] = 1  # 200
    tissue = np.full((100, 100, 3), (200, 100, 150), np.uint8)
    sampler = CropSampler([tissue, tissue], [rich, poor], region_size=16, seed=0)
    rng = np.random.default_rng(0)
    draws = [sampler._glom.draw(rng) for _ in range(4000)]
    share = np.mean([image == 0 for image, _ in draws])
    assert share == pytest.approx(2000 / 2200, abs=0.02)  # not 0.5
    assert all((rich if image == 0 else poor).flat[flat] for image, flat in draws)


def test_an_all_glass_sampler_keeps_few_centres(monkeypatch):
    import glomseg.model._sampling as sampling

    monkeypatch.setattr(sampling, "_MAX_CENTRES", 100)
    glass = np.full((200, 200, 3), 245, np.uint8)
    sampler = CropSampler(
        [glass], [np.zeros((200, 200), np.uint8)], region_size=16, glomerulus_fraction=0
    )
    assert len(sampler._tissue.per_image[0]) == 100  # not every one of 40 000 pixels
    assert sampler._tissue.total == 200 * 200
    image, mask = sampler.sample(3)
    assert image.shape == (16, 16, 3)
    assert not mask.any()


def test_a_negative_sampler_seed_is_refused_by_name():
    image = np.full((32, 32, 3), (200, 100, 150), np.uint8)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        CropSampler([image], [np.ones((32, 32), np.uint8)], region_size=16, seed=-1)


def test_a_config_with_a_broken_stain_is_refused_when_made():
    from glomseg.model import ModelConfig

    with pytest.raises(ValueError, match="stain is not a stain normaliser's to_dict"):
        ModelConfig(stain={"method": "macenko"})  # no stain matrix
    reinhard = {"method": "reinhard", "means": [50.0, 0.0, 0.0], "stds": [10.0, 5.0, 5.0]}
    assert ModelConfig(stain=reinhard).stain == reinhard
