"""Tests of the low-confidence region filter (glomseg.predict._objects) and its use."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from glomseg import PredictConfig, predict_image
from glomseg.predict._objects import ObjectFilter, filter_objects


def reference(probs: np.ndarray, threshold: float, confidence: float, max_rows: int) -> np.ndarray:
    """The rule on the whole image, written plainly: one region at a time."""
    mask = probs > threshold
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    clipped = np.clip(probs, 0, 1).astype(np.float64)
    for i, box in enumerate(ndimage.find_objects(labels), 1):
        region = labels == i
        tall = box[0].stop - box[0].start > max_rows
        if not tall and clipped[region].mean() < confidence:
            mask[region] = False
    return mask


@st.composite
def prob_maps(draw):
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    probs = np.zeros((h, w), dtype=np.float32)
    for _ in range(draw(st.integers(0, 8))):
        r, c = rng.integers(0, h), rng.integers(0, w)
        dh, dw = rng.integers(1, 15), rng.integers(1, 8)
        probs[r : r + dh, c : c + dw] = rng.uniform(0.3, 1.05, (min(dh, h - r), min(dw, w - c)))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, h - 1)), max_size=6))) - {h})
    return probs, [0, *cuts, h]


@given(
    case=prob_maps(),
    confidence=st.sampled_from([0.0, 0.6, 0.75, 0.9]),
    max_rows=st.integers(1, 20),
)
@settings(max_examples=300, deadline=None)
def test_bands_give_the_whole_image_rule(case, confidence, max_rows):
    probs, cuts = case
    expected = reference(probs, 0.5, confidence, max_rows)
    stream = ObjectFilter(probs.shape[1], min_confidence=confidence, max_rows=max_rows)
    out = []
    for a, b in itertools.pairwise(cuts):
        out += stream.push(a, probs[a:b] > 0.5, probs[a:b])
        assert stream.held_rows <= max_rows  # memory stays bounded
    out += stream.finish()
    assert stream.held_rows == 0
    starts = [start for start, _ in out]
    assert starts == sorted(starts)
    streamed = np.concatenate([m for _, m in out]) if out else np.zeros((0, probs.shape[1]), bool)
    np.testing.assert_array_equal(streamed, expected)
    np.testing.assert_array_equal(filter_objects(probs, 0.5, confidence, max_rows), expected)


def test_a_region_is_decided_on_all_its_pixels():
    # A U: two arms that only meet in the last band. Each arm alone is unsure (0.6),
    # the base is sure (1.0); the whole region's mean (0.69) is over 0.65: it is kept.
    probs = np.zeros((10, 7), dtype=np.float32)
    probs[0:9, 1], probs[0:9, 5] = 0.6, 0.6
    probs[9, 1:6] = 1.0
    assert reference(probs, 0.5, 0.65, 100).sum() == 23
    stream = ObjectFilter(7, min_confidence=0.65, max_rows=100)
    held = stream.push(0, probs[:9] > 0.5, probs[:9])
    assert held == []  # both arms are still open
    out = stream.push(9, probs[9:] > 0.5, probs[9:]) + stream.finish()
    assert np.concatenate([m for _, m in out]).sum() == 23


def test_rows_must_come_in_order_and_match():
    stream = ObjectFilter(4, min_confidence=0.5, max_rows=8)
    stream.push(0, np.zeros((2, 4), bool), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="expected row 2, got 3"):
        stream.push(3, np.zeros((1, 4), bool), np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"must both be \(n, 4\)"):
        stream.push(2, np.zeros((1, 5), bool), np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="max_rows"):
        ObjectFilter(4, min_confidence=0.5, max_rows=0)


def blobs(batch: np.ndarray) -> np.ndarray:
    """A predictor sure of dark pixels (0.95) and unsure of mid-grey ones (0.6)."""
    grey = batch.mean(axis=-1)
    return np.where(grey < 60, 0.95, np.where(grey < 150, 0.6, 0.0)).astype(np.float32)


def test_prediction_takes_the_confidence_from_the_config_or_the_model():
    image = np.full((96, 128, 3), 235, dtype=np.uint8)
    image[10:40, 10:40] = (30, 10, 60)  # sure
    image[50:80, 70:110] = (150, 80, 130)  # unsure
    blobs.config = SimpleNamespace(  # type: ignore[attr-defined]
        input_size=32, pixel_size_um=1.0, downsample=1, min_confidence=None
    )
    everything = predict_image(image, blobs, pixel_size_um=1.0, tta=False)
    assert everything[10:40, 10:40].all()
    assert everything[50:80, 70:110].all()
    config = PredictConfig(min_confidence=0.8)
    sure = predict_image(image, blobs, pixel_size_um=1.0, tta=False, config=config)
    assert sure[10:40, 10:40].all()
    assert not sure[50:80, 70:110].any()
    blobs.config.min_confidence = 0.8  # type: ignore[attr-defined]
    from_model = predict_image(image, blobs, pixel_size_um=1.0, tta=False)
    np.testing.assert_array_equal(from_model, sure)
    off = PredictConfig(min_confidence=0.0)  # the config wins over the model
    np.testing.assert_array_equal(
        predict_image(image, blobs, pixel_size_um=1.0, tta=False, config=off), everything
    )
    with pytest.raises(ValueError, match="min_confidence must be in"):
        PredictConfig(min_confidence=1.0)
    blobs.config.min_confidence = 2  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"model\.config\.min_confidence"):
        predict_image(image, blobs, pixel_size_um=1.0, tta=False)
