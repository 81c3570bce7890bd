from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glomseg.evaluate._metrics import dice_coefficient, mean_dice, soft_dice


def naive_dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2 * (a & b).sum() / total


@st.composite
def mask_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12))
    a = draw(hnp.arrays(np.bool_, shape))
    b = draw(hnp.arrays(np.bool_, shape))
    return a, b


def test_known_values() -> None:
    a = np.array([[1, 1, 0, 0]], bool)
    b = np.array([[0, 1, 1, 0]], bool)
    assert dice_coefficient(a, b) == 0.5
    assert dice_coefficient(a, a) == 1.0
    assert dice_coefficient(a, ~a) == 0.0
    assert dice_coefficient(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    assert dice_coefficient(np.zeros((3, 3), bool), np.eye(3, dtype=bool)) == 0.0


def test_integer_masks_nonzero_inside() -> None:
    assert dice_coefficient(np.array([0, 255, 1], np.uint8), np.array([0, 1, 1], bool)) == 1.0


def test_banded_matches_naive(monkeypatch: pytest.MonkeyPatch) -> None:
    import glomseg.evaluate._metrics as metrics

    monkeypatch.setattr(metrics, "_BAND_ELEMENTS", 5)
    rng = np.random.default_rng(0)
    a, b = rng.random((23, 17)) < 0.4, rng.random((23, 17)) < 0.6
    assert dice_coefficient(a, b) == pytest.approx(naive_dice(a, b))
    p = rng.random((23, 17)).astype(np.float32)
    expected = 2 * float((p * b).sum()) / (float(p.sum()) + b.sum())
    assert soft_dice(p, b) == pytest.approx(expected, rel=1e-6)


@settings(max_examples=150, deadline=None)
@given(mask_pairs())
def test_dice_properties(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    d = dice_coefficient(a, b)
    assert d == dice_coefficient(b, a)
    assert 0.0 <= d <= 1.0
    assert (d == 1.0) == bool(np.array_equal(a, b))
    assert d == pytest.approx(naive_dice(a, b))
    assert dice_coefficient(a, a) == 1.0
    # On binary inputs soft Dice is Dice.
    assert soft_dice(a.astype(np.float32), b) == pytest.approx(d)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(0, 1, width=32)),
    st.data(),
)
def test_soft_dice_range(p: np.ndarray, data: st.DataObject) -> None:
    t = data.draw(hnp.arrays(np.bool_, p.shape))
    s = soft_dice(p, t)
    assert 0.0 <= s <= 1.0
    assert soft_dice(p, t) == pytest.approx(soft_dice(t.astype(np.float32), p))


def test_soft_dice_smooth_and_empty() -> None:
    z = np.zeros(4, np.float32)
    assert soft_dice(z, z) == 1.0
    assert soft_dice(z, np.ones(4, bool)) == 0.0
    assert soft_dice(z, np.ones(4, bool), smooth=1.0) == pytest.approx(1 / 5)


def test_mean_dice_sequences_mappings_generators() -> None:
    full, empty = np.ones((2, 2), bool), np.zeros((2, 2), bool)
    assert mean_dice([full, empty], [full, full]) == 0.5
    assert mean_dice({"a": full, "b": empty}, {"b": empty, "a": empty}) == 0.5
    assert mean_dice((m for m in [full]), iter([full])) == 1.0


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"pred \(2, 3\) and truth \(3, 2\)"):
        dice_coefficient(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match=r"pred \(4,\) and truth \(5,\)"):
        soft_dice(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError, match=r"pred \(2, 2\) and truth \(2, 3\)"):
        mean_dice([np.zeros((2, 2), bool)], [np.zeros((2, 3), bool)])


@pytest.mark.parametrize("dtype", [np.float32, np.complex64, object])
def test_dice_rejects_non_binary_dtype(dtype: type) -> None:
    with pytest.raises(TypeError, match="pred must be a bool or integer mask"):
        dice_coefficient(np.zeros(3, dtype), np.zeros(3, bool))
    with pytest.raises(TypeError, match="truth must be a bool or integer mask"):
        dice_coefficient(np.zeros(3, bool), np.zeros(3, dtype))


@pytest.mark.parametrize("value", [-0.1, 1.5, np.nan])
def test_soft_dice_rejects_out_of_range(value: float) -> None:
    p = np.array([0.2, value], np.float32)
    with pytest.raises(ValueError, match=r"prob values must lie in \[0, 1\]"):
        soft_dice(p, np.zeros(2, bool))


def test_soft_dice_rejects_bad_smooth() -> None:
    with pytest.raises(ValueError, match="smooth"):
        soft_dice(np.zeros(2), np.zeros(2), smooth=-1)


def test_mean_dice_errors() -> None:
    m = np.zeros((2, 2), bool)
    with pytest.raises(ValueError, match="at least one image"):
        mean_dice([], [])
    with pytest.raises(ValueError, match="differ in length: truths has more than 1"):
        mean_dice([m], [m, m])
    with pytest.raises(ValueError, match="differ in length: preds has more than 1"):
        mean_dice([m, m], [m])
    with pytest.raises(ValueError, match=r"missing \['b'\], extra \['c'\]"):
        mean_dice({"a": m, "c": m}, {"a": m, "b": m})
    with pytest.raises(TypeError, match="two mappings"):
        mean_dice({"a": m}, [m])


def test_zero_dimensional_masks() -> None:
    assert dice_coefficient(np.bool_(True), np.bool_(True)) == 1.0
    assert dice_coefficient(np.array(1), np.array(0)) == 0.0
    assert soft_dice(np.float32(0.5), np.bool_(True)) == pytest.approx(2 / 3)


def test_mean_dice_refuses_a_single_image_taken_for_a_batch() -> None:
    mask = np.zeros((4, 5), dtype=bool)
    with pytest.raises(ValueError, match="preds is one 2-D array, not a batch"):
        mean_dice(mask, mask)
    batch = np.zeros((2, 4, 5), dtype=bool)
    assert mean_dice(batch, batch) == 1.0


def test_truth_wholly_outside_the_prediction_is_an_error_not_ignored():
    from shapely.geometry import box

    from glomseg.evaluate._evaluate import evaluate_slide

    half = np.zeros((10, 10), dtype=bool)  # say, a mask at half the slide's resolution
    with pytest.raises(
        ValueError,
        match=r"1 of 2 truth polygons lie wholly outside the "
        r"prediction of shape \(10, 10\)",
    ):
        evaluate_slide(half, [box(1, 1, 3, 3), box(14, 12, 18, 16)])
    poking = evaluate_slide(half, [box(1, 1, 3, 3), box(7, 7, 12, 12)])  # past the edge: fine
    assert poking.truth == 9 + 9
