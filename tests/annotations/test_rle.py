from __future__ import annotations

import csv
from pathlib import Path

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage.draw import polygon as sk_polygon

from glomseg.annotations._annotations import read_annotations
from glomseg.annotations._rasterize import MaskRasterizer
from glomseg.annotations._rle import (
    _transitions,
    read_submission,
    rle_decode,
    rle_encode,
    write_submission,
)
from glomseg.errors import GlomsegError, RLEError
from glomseg.evaluate._metrics import dice_coefficient

DATA = Path(__file__).parents[1] / "data" / "slide_annotations"


def reference_rle(mask: np.ndarray, order: str = "F", base: int = 1) -> str:
    """The public notebooks' encoder, generalised to both orders and bases."""
    pixels = np.asarray(mask, dtype=np.uint8).flatten(order=order)
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0]
    runs[0::2] += base
    runs[1::2] -= runs[::2] - base
    return " ".join(str(x) for x in runs)


def test_reference_matches_documented_example() -> None:
    # Guard the oracle itself: pixels numbered top-to-bottom then left-to-right, 1-based.
    m = np.array([[0, 1, 1], [0, 1, 0], [1, 1, 0]], dtype=bool)
    assert reference_rle(m) == "3 5"
    assert reference_rle(m, "C") == "2 2 5 1 7 2"


# -- hand-checked cases ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "expected_f", "expected_c"),
    [
        (np.zeros((3, 4), bool), "", ""),
        (np.ones((3, 4), bool), "1 12", "1 12"),
        (np.eye(3, dtype=bool), "1 1 5 1 9 1", "1 1 5 1 9 1"),
        (np.array([[1, 0], [1, 0], [0, 1]], bool), "1 2 6 1", "1 1 3 1 6 1"),
        # A run crossing from the bottom of column 0 to the top of column 1.
        (np.array([[0, 1], [1, 0]], bool), "2 2", "2 2"),
        (np.array([[1, 1, 1]], bool), "1 3", "1 3"),
        (np.array([[1], [0], [1]], bool), "1 1 3 1", "1 1 3 1"),
    ],
)
def test_known_encodings(mask: np.ndarray, expected_f: str, expected_c: str) -> None:
    assert rle_encode(mask) == expected_f
    assert rle_encode(mask, order="C") == expected_c
    assert np.array_equal(rle_decode(expected_f, mask.shape), mask)
    assert np.array_equal(rle_decode(expected_c, mask.shape, order="C"), mask)


def test_base_zero() -> None:
    m = np.array([[1, 0], [0, 1]], bool)
    assert rle_encode(m, base=0) == "0 1 3 1"
    assert np.array_equal(rle_decode("0 1 3 1", (2, 2), base=0), m)


def test_empty_shapes() -> None:
    assert rle_encode(np.zeros((0, 5), bool)) == ""
    assert rle_decode("", (0, 5)).shape == (0, 5)
    assert rle_decode("", (2, 3)).shape == (2, 3)
    assert not rle_decode("  ", (2, 3)).any()


def test_decode_layout_is_documented() -> None:
    f = rle_decode("2 3", (4, 5))
    c = rle_decode("2 3", (4, 5), order="C")
    assert f.shape == c.shape == (4, 5)
    assert f.flags.f_contiguous
    assert not f.flags.c_contiguous
    assert c.flags.c_contiguous
    assert f.dtype == c.dtype == np.bool_


def test_integer_mask_nonzero_is_inside() -> None:
    m = np.array([[0, 255], [3, 0]], dtype=np.uint8)
    assert rle_encode(m) == "2 2"


@pytest.mark.parametrize("order", ["F", "C"])
def test_layouts_and_views_agree(order: str) -> None:
    rng = np.random.default_rng(1)
    base = rng.random((37, 53)) < 0.3
    views = {
        "C": base,
        "F": np.asfortranarray(base),
        "strided": base[::2, 1::3],
        "reversed": base[::-1, ::-1],
        "int8": base.astype(np.int8),
    }
    for name, view in views.items():
        assert rle_encode(view, order=order) == reference_rle(view, order), name  # type: ignore[arg-type]


def test_band_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny bands force runs to cross band boundaries in both kernels.
    import glomseg.annotations._rle as rle_module

    monkeypatch.setattr(rle_module, "_BAND_PIXELS", 7)
    rng = np.random.default_rng(2)
    for _ in range(20):
        m = rng.random((rng.integers(1, 12), rng.integers(1, 12))) < 0.5
        for order in ("F", "C"):
            assert rle_encode(m, order=order) == reference_rle(m, order)  # type: ignore[arg-type]
            assert rle_encode(np.asfortranarray(m), order=order) == reference_rle(m, order)  # type: ignore[arg-type]


# -- properties ------------------------------------------------------------------------

masks = hnp.arrays(
    dtype=np.bool_,
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),
    elements=st.booleans(),
)


def _variants(m: np.ndarray) -> list[np.ndarray]:
    # Plus all-empty, all-full, and full borders (runs touching every edge).
    border = np.zeros_like(m)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return [m, np.zeros_like(m), np.ones_like(m), border, np.asfortranarray(m)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks, st.sampled_from(["F", "C"]), st.sampled_from([0, 1]))
def test_roundtrip_property(m: np.ndarray, order: str, base: int) -> None:
    for variant in _variants(m):
        encoded = rle_encode(variant, order=order, base=base)  # type: ignore[arg-type]
        assert encoded == reference_rle(variant, order, base)
        decoded = rle_decode(encoded, variant.shape, order=order, base=base)  # type: ignore[arg-type]
        assert decoded.shape == variant.shape
        assert np.array_equal(decoded, variant)


@settings(max_examples=60, deadline=None)
@given(masks)
def test_runs_are_canonical(m: np.ndarray) -> None:
    numbers = [int(x) for x in rle_encode(m).split()]
    starts, lengths = numbers[0::2], numbers[1::2]
    assert all(length > 0 for length in lengths)
    # Strictly separated runs: at least one background pixel between them.
    assert all(s + n < s_next for s, n, s_next in zip(starts, lengths, starts[1:], strict=False))
    assert sum(lengths) == int(m.sum())
    t = _transitions(m, "F")
    assert np.all(np.diff(t) > 0)


# -- errors ---------------------------------------------------------------------------


def test_encode_rejects_float_mask() -> None:
    with pytest.raises(TypeError, match="float64"):
        rle_encode(np.zeros((2, 2)))


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2)])
def test_encode_rejects_wrong_ndim(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros(shape, bool))


def test_bad_order_suggests() -> None:
    with pytest.raises(ValueError, match="order must be one of 'C', 'F', got 'f'"):
        rle_encode(np.zeros((2, 2), bool), order="f")  # type: ignore[arg-type]


@pytest.mark.parametrize("base", [2, -1, True])
def test_bad_base(base: int) -> None:
    with pytest.raises(ValueError, match="base must be 0 or 1"):
        rle_encode(np.zeros((2, 2), bool), base=base)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd count"),
        ("1 x", "'x' is not"),
        ("1 -2", "'-2' is not"),
        ("1.5 2", "'1.5' is not"),
        ("0 2", "below the first pixel"),
        ("3 0", "length 0"),
        ("5 3", "past the 6 pixels"),
    ],
)
def test_decode_rejects_malformed(rle: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rle_decode(rle, (2, 3))


@pytest.mark.parametrize("shape", [(2,), (2, -1), ("a", 2)])
def test_decode_rejects_bad_shape(shape: object) -> None:
    with pytest.raises(ValueError, match="shape"):
        rle_decode("", shape)  # type: ignore[arg-type]


def test_decode_unsorted_runs_are_unioned() -> None:
    assert np.array_equal(rle_decode("4 2 1 2", (1, 6), order="C"), [[1, 1, 0, 1, 1, 0]])


# -- submission CSV ------------------------------------------------------------------


def test_submission_roundtrip(tmp_path: Path) -> None:
    rows = {"aaa6a05cc": "3 5 10 2", "b2dc8411c": "", "x": "1 1"}
    path = tmp_path / "submission.csv"
    write_submission(path, rows)
    assert read_submission(path) == rows
    with path.open(newline="") as handle:
        parsed = list(csv.reader(handle))
    assert parsed[0] == ["id", "predicted"]
    assert parsed[1:] == [[k, v] for k, v in rows.items()]
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_submission_reads_huge_field(tmp_path: Path) -> None:
    # Far beyond csv's default 131072-character field limit.
    rle = " ".join(f"{i * 10 + 1} 3" for i in range(60_000))
    path = tmp_path / "s.csv"
    path.write_text(f'id,predicted\nslide,"{rle}"\n')
    assert read_submission(path) == {"slide": rle}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("a", "1 2"), ("a", "3 4")], "appears twice"),
        ([("a,b", "1 2")], "image id"),
        ([("", "1 2")], "image id"),
        ([("a", "1,2")], "digits and spaces"),
        ([("a",)], "pairs"),
    ],
)
def test_write_submission_rejects(
    tmp_path: Path, rows: list[tuple[str, ...]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_submission(tmp_path / "s.csv", rows)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,rle\na,1 2\n", "line 1: expected header"),
        ("id,predicted\na 1 2\n", "line 2"),
        ("id,predicted\na,1 2\na,3 4\n", "line 3: image id 'a' appears twice"),
        ("id,predicted\na,1;2\n", "line 2: RLE"),
    ],
)
def test_read_submission_rejects(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_submission(path)


# -- real data: column-major order ---------------------------------------------------


def test_real_annotation_rle_is_column_major() -> None:
    # aaa6a05cc (VAN0003-LK-33-2) is 18484 x 13013 (height x width); work at 4x downsample
    # on 18484 x 13012 (whole 4-pixel blocks; the polygons end at x = 11055).
    annotations = read_annotations(DATA / "VAN0003-LK-33-2-PAS_FFPE_glom_annotations.json")
    d = 4
    mask = MaskRasterizer(annotations).full_mask((18484, 13012), downsample=d)
    assert mask.shape == (4621, 3253)

    # An independent mask from skimage.draw.polygon at the block centres of the 4x grid.
    independent = np.zeros(mask.shape, bool)
    for a in annotations:
        xy = np.asarray(a.geometry.exterior.coords)
        rr, cc = sk_polygon((xy[:, 1] - (d - 1) / 2) / d, (xy[:, 0] - (d - 1) / 2) / d, mask.shape)
        independent[rr, cc] = True
    assert np.array_equal(mask, independent)

    rle = rle_encode(mask)
    assert np.array_equal(rle_decode(rle, mask.shape), mask)
    # The first run starts at the first foreground pixel in column-major order (1-based).
    cols = np.flatnonzero(independent.any(axis=0))
    first_col = int(cols[0])
    first_row = int(np.flatnonzero(independent[:, first_col])[0])
    assert int(rle.split()[0]) == first_col * mask.shape[0] + first_row + 1
    # Row-major RLE read back as column-major scrambles the mask: Dice near 0.
    wrong = rle_decode(rle_encode(mask, order="C"), mask.shape)
    assert dice_coefficient(wrong, mask) < 0.1


def test_decode_rejects_numbers_beyond_int64() -> None:
    with pytest.raises(ValueError, match="malformed RLE"):
        rle_decode("99999999999999999999 1", (3, 3))


def test_write_submission_rejects_ids_that_do_not_round_trip(tmp_path: Path) -> None:
    # read_submission strips whitespace around fields, so " a" would come back as "a"
    for image_id in (" aaa6a05cc", "aaa6a05cc ", "\taaa6a05cc"):
        with pytest.raises(ValueError, match="image id"):
            write_submission(tmp_path / "s.csv", [(image_id, "1 2")])
    assert not list(tmp_path.iterdir())


# -- bad input: overflow, encodings, empty ids ---------------------------------------


def naive_decode(runs: list[tuple[int, int]], shape: tuple[int, int], base: int) -> np.ndarray:
    """Pixel-by-pixel decoding with Python ints (no overflow); raises ValueError on a bad run."""
    height, width = shape
    flat = np.zeros(height * width, dtype=bool)
    for start, length in runs:
        if max(start, length) > np.iinfo(np.int64).max:
            raise ValueError("beyond int64")
        if start < base or length == 0 or start - base + length > flat.size:
            raise ValueError("bad run")
        flat[start - base : start - base + length] = True
    return flat.reshape(width, height).T


_numbers = st.one_of(
    st.integers(0, 12),
    st.integers(0, 2**64),
    st.sampled_from([2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 4, 2**63 - 1, 2**63, 2**64 - 1]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_numbers, _numbers), max_size=6),
    st.tuples(st.integers(0, 4), st.integers(0, 4)),
    st.sampled_from([0, 1]),
)
def test_decode_matches_naive_or_raises_typed_error(
    runs: list[tuple[int, int]], shape: tuple[int, int], base: int
) -> None:
    rle = " ".join(f"{s} {n}" for s, n in runs)
    try:
        expected = naive_decode(runs, shape, base)
    except ValueError:
        with pytest.raises(RLEError, match="malformed RLE"):
            rle_decode(rle, shape, base=base)
    else:
        assert np.array_equal(rle_decode(rle, shape, base=base), expected)


@pytest.mark.parametrize(
    "rle",
    [
        "1 2 9223372036854775807 3",  # the example: start + length wraps to negative
        "9223372036854775807 9223372036854775807",
        "1 9223372036854775807",
        "4 9223372036854775805",  # ends exactly at 2**63: one past the int64 range
    ],
)
def test_decode_refuses_runs_whose_end_overflows_int64(rle: str) -> None:
    with pytest.raises(RLEError, match=r"past the 9 pixels of shape \(3, 3\)"):
        rle_decode(rle, (3, 3))


def test_rle_error_is_a_value_error_and_a_glomseg_error() -> None:
    assert issubclass(RLEError, ValueError)
    assert issubclass(RLEError, GlomsegError)


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"id,predicted\nab\xff,1 2\n", 2),
        (b"\xef\xbb\xbfid,predicted\r\na,1 2\r\n\r\nb\xe9,3 4\r\n", 4),  # BOM, CRLF, blank line
        (b"id,predicted\ra,1 2\rb,\xc3(\r", 3),  # old Mac line ends
        (b"id,predicted\xa0\n", 1),
    ],
)
def test_read_submission_not_utf8_names_file_and_line(
    tmp_path: Path, data: bytes, line: int
) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(data)
    with pytest.raises(RLEError, match=rf"latin1\.csv: line {line}: not UTF-8 text"):
        read_submission(path)


@pytest.mark.parametrize("row", [",1 2", '"",1 2', "  ,", ' "" ,3 4'])
def test_read_submission_refuses_empty_id(tmp_path: Path, row: str) -> None:
    path = tmp_path / "s.csv"
    path.write_text(f"id,predicted\na,1 2\n{row}\n")
    with pytest.raises(RLEError, match=r"s\.csv: line 3: empty image id"):
        read_submission(path)


def test_read_submission_errors_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("image,rle\n")
    with pytest.raises(RLEError, match="line 1: expected header"):
        read_submission(path)


def test_write_submission_streams_rows_and_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "s.csv"
    target.write_text("old\n")
    asked: list[str] = []

    def rows():
        for image_id, rle in (("a", "1 2"), ("b", "3 x")):
            asked.append(image_id)
            yield image_id, rle

    with pytest.raises(ValueError, match="RLE of 'b'"):
        write_submission(target, rows())
    assert asked == ["a", "b"]  # consumed as written
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]
    write_submission(target, iter([("a", "1 2")]))
    assert target.read_text() == "id,predicted\na,1 2\n"
