"""Tests of tile statistics, the tile predicates and TileFilter."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from glomseg.tiles._filtering import (
    CoverageBand,
    Decision,
    GlomerulusOrSample,
    MinTissue,
    NotBlank,
    TileFilter,
    TilePredicate,
    TileStats,
    tile_stats,
)
from glomseg.tiles._tiling import TileKey

KEY = TileKey("VAN0013-LK-202-96", 3, 4)
PINK = (200, 100, 150)  # saturation 255 * 100 / 200 = 127.5: tissue
GREY = (128, 128, 128)  # saturation 0: not tissue
GLASS = (245, 245, 245)


def stats(coverage=0.0, tissue=0.5, mean=180.0, std=40.0):
    return TileStats(coverage=coverage, tissue=tissue, mean=mean, std=std)


def reference_stats(image, mask, threshold=40):
    """Straightforward float reference of tile_stats."""
    values = image.astype(np.float64)
    high = values.max(axis=2)
    low = values.min(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        saturation = np.where(high > 0, (high - low) * 255 / high, 0.0)
    return (
        float(np.mean(mask != 0)),
        float(np.mean(saturation > threshold)),
        float(values.mean()),
        float(values.std()),
    )


# -- tile_stats ------------------------------------------------------------------------
def test_hand_made_tile():
    image = np.empty((10, 10, 3), dtype=np.uint8)
    image[:] = GREY
    image[:, :3] = PINK  # 30 % tissue
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:7, 2:7] = True  # 25 % glomerulus
    result = tile_stats(image, mask)
    assert result.coverage == pytest.approx(0.25)
    assert result.tissue == pytest.approx(0.30)
    assert result.mean == pytest.approx(image.mean())
    assert result.std == pytest.approx(image.std())


def test_saturation_threshold_is_strict_and_black_is_not_tissue():
    image = np.zeros((1, 4, 3), dtype=np.uint8)
    image[0, 0] = (255, 215, 215)  # saturation exactly 40: not tissue
    image[0, 1] = (255, 214, 214)  # saturation 41: tissue
    image[0, 2] = (0, 0, 0)  # black: max = 0, saturation 0
    image[0, 3] = (1, 0, 0)  # saturation 255
    result = tile_stats(image, np.zeros((1, 4), dtype=bool))
    assert result.tissue == pytest.approx(0.5)
    assert tile_stats(image, np.zeros((1, 4), bool), saturation_threshold=0).tissue == 0.75
    assert tile_stats(image, np.zeros((1, 4), bool), saturation_threshold=255).tissue == 0.0


def test_uint8_masks_count_nonzero_pixels():
    image = np.full((2, 2, 3), 255, dtype=np.uint8)
    mask = np.array([[0, 1], [255, 0]], dtype=np.uint8)
    assert tile_stats(image, mask).coverage == 0.5


def test_glass_and_constant_tiles():
    glass = np.empty((6, 6, 3), dtype=np.uint8)
    glass[:] = GLASS
    result = tile_stats(glass, np.zeros((6, 6), dtype=bool))
    assert result == TileStats(coverage=0.0, tissue=0.0, mean=245.0, std=0.0)


@given(
    st.integers(1, 30),
    st.integers(1, 30),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
)
def test_stats_match_a_float_reference(height, width, seed, threshold):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    mask = rng.random((height, width)) < rng.random()
    result = tile_stats(image, mask, saturation_threshold=threshold)
    coverage, tissue, mean, std = reference_stats(image, mask, threshold)
    assert result.coverage == pytest.approx(coverage)
    assert result.tissue == pytest.approx(tissue)
    assert result.mean == pytest.approx(mean)
    assert result.std == pytest.approx(std, abs=1e-6)


def test_stats_of_a_tile_taller_than_one_band():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(1300, 5, 3), dtype=np.uint8)
    image[:700] //= 4  # bands differ
    mask = rng.random((1300, 5)) < 0.3
    result = tile_stats(image, mask)
    coverage, tissue, mean, std = reference_stats(image, mask)
    assert (result.coverage, result.tissue) == pytest.approx((coverage, tissue))
    assert (result.mean, result.std) == pytest.approx((mean, std))


@pytest.mark.parametrize(
    ("image", "mask", "kwargs", "error", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), bool), {}, ValueError, "uint8"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool), {}, ValueError, r"\(h, w, 3\)"),
        (np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4), bool), {}, ValueError, "got uint8"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), bool), {}, ValueError, "mask shape"),
        (np.zeros((0, 4, 3), np.uint8), np.zeros((0, 4), bool), {}, ValueError, "empty"),
        (
            np.zeros((4, 4, 3), np.uint8),
            np.zeros((4, 4), bool),
            {"saturation_threshold": 256},
            ValueError,
            "saturation_threshold must be in",
        ),
        (
            np.zeros((4, 4, 3), np.uint8),
            np.zeros((4, 4), bool),
            {"saturation_threshold": 40.5},
            TypeError,
            "saturation_threshold must be an integer, got 40.5",
        ),
    ],
)
def test_invalid_tile_stats_inputs(image, mask, kwargs, error, message):
    with pytest.raises(error, match=message):
        tile_stats(image, mask, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"coverage": -0.1}, ValueError, r"coverage must be in \[0, 1\], got -0.1"),
        ({"tissue": 1.01}, ValueError, r"tissue must be in \[0, 1\], got 1.01"),
        ({"mean": 256.0}, ValueError, r"mean must be in \[0, 255\], got 256.0"),
        ({"std": -1.0}, ValueError, "std must be in"),
        ({"coverage": float("nan")}, ValueError, "coverage must be in"),
        ({"coverage": "0.5"}, TypeError, "coverage must be a number"),
    ],
)
def test_invalid_tile_stats_values(kwargs, error, message):
    with pytest.raises(error, match=message):
        stats(**kwargs)


# -- predicates -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("coverage", "reason"),
    [
        (0.0, "coverage 0 outside [0.1, 0.9]"),
        (0.03, "coverage 0.03 outside [0.1, 0.9]"),
        (0.0999, "coverage 0.0999 outside [0.1, 0.9]"),
        (0.1, None),
        (0.5, None),
        (0.9, None),
        (0.9001, "coverage 0.9001 outside [0.1, 0.9]"),
        (1.0, "coverage 1 outside [0.1, 0.9]"),
    ],
)
def test_coverage_band(coverage, reason):
    assert CoverageBand()(stats(coverage=coverage), KEY) == reason


@pytest.mark.parametrize(
    ("tissue", "reason"), [(0.0, "tissue 0 < 0.2"), (0.19, "tissue 0.19 < 0.2"), (0.2, None)]
)
def test_min_tissue(tissue, reason):
    assert MinTissue(0.2)(stats(tissue=tissue), KEY) == reason


@pytest.mark.parametrize(
    ("mean", "std", "blank"),
    [
        (243.0, 3.5, True),
        (220.5, 9.9, True),
        (220.0, 3.5, False),  # not brighter than max_mean
        (243.0, 10.0, False),  # not more uniform than min_std
        (243.0, 25.0, False),
        (100.0, 3.0, False),  # dark and uniform: not glass
    ],
)
def test_not_blank(mean, std, blank):
    reason = NotBlank()(stats(mean=mean, std=std), KEY)
    if blank:
        assert reason == f"blank: mean {mean:.4g} > 220 and std {std:.4g} < 10"
    else:
        assert reason is None


def test_glomerulus_tiles_are_always_kept():
    rule = GlomerulusOrSample(background_share=0.0, min_tissue=1.0)
    for col in range(50):
        assert rule(stats(coverage=1e-6, tissue=0.0), TileKey("s", 0, col)) is None


def test_background_sampling_is_deterministic():
    keys = [
        TileKey(slide, row, col) for slide in ("a", "b_1") for row in range(5) for col in range(5)
    ]
    first = [GlomerulusOrSample(0.3, seed=5)(stats(), k) for k in keys]
    again = [GlomerulusOrSample(0.3, seed=5)(stats(), k) for k in keys]
    assert first == again
    other_seed = [GlomerulusOrSample(0.3, seed=6)(stats(), k) for k in keys]
    assert first != other_seed
    # The decision depends on the draw, which depends on each part of the key.
    rule = GlomerulusOrSample(0.3, seed=5)
    draws = {rule.draw(k) for k in keys}
    assert len(draws) == len(keys)
    assert rule.draw(TileKey("a", 1, 2)) != rule.draw(TileKey("a", 2, 1))


def test_draw_does_not_depend_on_the_process():
    code = (
        "from glomseg.tiles._filtering import GlomerulusOrSample; "
        "from glomseg.tiles._tiling import TileKey; "
        "print(repr(GlomerulusOrSample(seed=3).draw(TileKey('26dc41664', 7, 9))))"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        outputs.add(float(done.stdout))
    assert outputs == {GlomerulusOrSample(seed=3).draw(TileKey("26dc41664", 7, 9))}


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 1.0])
def test_kept_share_is_close_to_background_share(share):
    rule = GlomerulusOrSample(background_share=share, seed=11)
    keys = [
        TileKey(f"slide{s}", row, col) for s in range(4) for row in range(40) for col in range(40)
    ]
    kept = sum(rule(stats(), key) is None for key in keys)
    # 6400 draws: the binomial standard deviation is at most 0.00625.
    assert kept / len(keys) == pytest.approx(share, abs=0.025)
    if share == 0.0:
        assert kept == 0
    if share == 1.0:
        assert kept == len(keys)


@given(
    st.text(min_size=1, max_size=20), st.integers(0, 10**6), st.integers(0, 10**6), st.integers()
)
def test_draws_are_uniform_numbers_in_the_unit_interval(slide, row, col, seed):
    draw = GlomerulusOrSample(seed=seed).draw(TileKey(slide, row, col))
    assert 0.0 <= draw < 1.0


def test_background_sampling_reasons():
    rule = GlomerulusOrSample(background_share=0.5, seed=0, min_tissue=0.2)
    assert rule(stats(tissue=0.1), KEY) == "background with tissue 0.1 < 0.2"
    rejected = [
        k
        for k in (TileKey("s", 0, col) for col in range(20))
        if rule(stats(tissue=0.5), k) is not None
    ]
    assert rejected
    reason = rule(stats(tissue=0.5), rejected[0])
    assert reason is not None
    assert reason.startswith("background not sampled: draw ")
    assert reason.endswith(" >= share 0.5")
    assert float(reason.split()[4]) >= 0.5


@pytest.mark.parametrize(
    ("factory", "error", "message"),
    [
        (lambda: CoverageBand(low=-0.1), ValueError, r"low must be in \[0, 1\], got -0.1"),
        (lambda: CoverageBand(high=1.5), ValueError, r"high must be in \[0, 1\], got 1.5"),
        (lambda: CoverageBand(0.6, 0.5), ValueError, "low must be <= high, got low=0.6, high=0.5"),
        (lambda: MinTissue(2), ValueError, r"fraction must be in \[0, 1\], got 2"),
        (lambda: NotBlank(max_mean=300), ValueError, r"max_mean must be in \[0, 255\], got 300"),
        (lambda: NotBlank(min_std=-1), ValueError, "min_std must be in"),
        (
            lambda: GlomerulusOrSample(background_share=1.2),
            ValueError,
            r"background_share must be in \[0, 1\], got 1.2",
        ),
        (lambda: GlomerulusOrSample(seed=1.5), TypeError, "seed must be an integer, got 1.5"),
        (lambda: GlomerulusOrSample(min_tissue=-0.5), ValueError, "min_tissue must be in"),
        (lambda: MinTissue(True), TypeError, "fraction must be a number, got True"),
    ],
)
def test_invalid_predicates_name_the_parameter(factory, error, message):
    with pytest.raises(error, match=message):
        factory()


def test_predicates_follow_the_protocol():
    for predicate in (CoverageBand(), MinTissue(), NotBlank(), GlomerulusOrSample()):
        assert isinstance(predicate, TilePredicate)


# -- TileFilter ---------------------------------------------------------------------------
def test_all_predicates_must_pass_and_the_first_failure_is_reported():
    tile_filter = TileFilter(NotBlank(), MinTissue(0.2), CoverageBand())
    assert tile_filter(stats(coverage=0.5, tissue=0.5), KEY) == Decision(True, "")
    assert tile_filter(stats(coverage=0.5, tissue=0.1), KEY) == Decision(
        False, "MinTissue: tissue 0.1 < 0.2"
    )
    assert tile_filter(stats(coverage=0.0, tissue=0.1), KEY).reason.startswith("MinTissue:")
    assert tile_filter(stats(coverage=0.0, tissue=0.5), KEY).reason == (
        "CoverageBand: coverage 0 outside [0.1, 0.9]"
    )
    assert tile_filter(stats(tissue=0.0, mean=250.0, std=1.0), KEY).reason.startswith("NotBlank:")


def test_empty_filter_keeps_everything_and_decisions_are_truthy():
    decision = TileFilter()(stats(), KEY)
    assert decision
    assert decision.kept
    assert not Decision(False, "x")


def test_plain_functions_are_predicates_and_named_in_reasons():
    def not_first_row(tile_stats: TileStats, key: TileKey) -> str | None:
        return "first row" if key.grid_row == 0 else None

    tile_filter = TileFilter(not_first_row)
    assert tile_filter(stats(), TileKey("s", 0, 1)) == Decision(False, "not_first_row: first row")
    assert tile_filter(stats(), TileKey("s", 1, 1))


def test_non_callable_predicates_are_rejected():
    with pytest.raises(TypeError, match=r"predicates\[1\] must be callable"):
        TileFilter(MinTissue(), 0.5)  # type: ignore[arg-type]


def make_tile(coverage_rows: int, tissue_cols: int, size: int = 20):
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = GLASS
    image[:, :tissue_cols] = PINK
    mask = np.zeros((size, size), dtype=bool)
    mask[:coverage_rows] = True
    return image, mask


def test_seed_recipe_on_real_pixels():
    tile_filter = TileFilter.seed_recipe()
    assert tile_filter(tile_stats(*make_tile(coverage_rows=10, tissue_cols=20)), KEY)
    small = tile_filter(tile_stats(*make_tile(coverage_rows=1, tissue_cols=20)), KEY)
    assert small == Decision(False, "CoverageBand: coverage 0.05 outside [0.1, 0.9]")
    assert not tile_filter(tile_stats(*make_tile(coverage_rows=19, tissue_cols=20)), KEY)
    assert TileFilter.seed_recipe(low=0.01, high=1.0)(
        tile_stats(*make_tile(coverage_rows=1, tissue_cols=20)), KEY
    )


def test_winners_recipe_keeps_every_glomerulus_and_samples_background_with_tissue():
    tile_filter = TileFilter.winners_recipe(background_share=0.25, seed=3)
    keys = [TileKey("26dc41664", row, col) for row in range(30) for col in range(30)]
    glomerulus = tile_stats(*make_tile(coverage_rows=1, tissue_cols=20))
    background = tile_stats(*make_tile(coverage_rows=0, tissue_cols=10))
    glass = tile_stats(*make_tile(coverage_rows=0, tissue_cols=0))
    assert all(tile_filter(glomerulus, k) for k in keys)
    assert not any(tile_filter(glass, k) for k in keys)
    assert tile_filter(glass, keys[0]).reason == (
        "GlomerulusOrSample: background with tissue 0 < 0.015"
    )
    kept = [k for k in keys if tile_filter(background, k)]
    assert len(kept) / len(keys) == pytest.approx(0.25, abs=0.05)
    # The same tiles are chosen by a fresh filter (a rerun, or another worker).
    again = TileFilter.winners_recipe(background_share=0.25, seed=3)
    assert kept == [k for k in keys if again(background, k)]


def test_prejudge_never_contradicts_the_full_filter():
    from glomseg.tiles import GlomerulusOrSample

    rule_sets = [
        TileFilter.seed_recipe(),
        TileFilter.winners_recipe(background_share=0.3, seed=2),
        TileFilter(MinTissue(0.2), GlomerulusOrSample(0.5)),
    ]
    rng = np.random.default_rng(0)
    for tile_filter in rule_sets:
        for i in range(300):
            coverage = float(rng.choice([0.0, rng.uniform(0, 1)]))
            stats = TileStats(coverage, float(rng.uniform(0, 1)), 180.0, 30.0)
            key = TileKey("s", i // 20, i % 20)
            early = tile_filter.prejudge(coverage, key)
            if early is not None:
                assert not early.kept
                assert not tile_filter(stats, key).kept
