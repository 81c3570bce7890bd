"""Int8 networks on OpenVINO: float32's masks, never stale weights, files that round-trip."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from glomseg import PredictConfig, predict_image
from glomseg.errors import BackendError, PretrainedWeightsError
from glomseg.evaluate import dice_coefficient
from glomseg.model import _backends
from glomseg.model._backends import resolve_backend
from glomseg.model._int8 import Int8Network, read_int8, save_int8

HAS_TF = all(
    importlib.util.find_spec(name) is not None
    for name in ("tensorflow", "tf_keras", "segmentation_models")
)
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_NNCF = importlib.util.find_spec("nncf") is not None
needs_tf_openvino = pytest.mark.skipif(
    not (HAS_TF and HAS_OPENVINO), reason="needs the tf and openvino extras"
)
needs_nncf = pytest.mark.skipif(
    not (HAS_TF and HAS_NNCF and HAS_OPENVINO), reason="needs the tf and int8 extras"
)

#: A real tile of the bundled sample (HuBMAP VAN0013, 0.98 um/px; examples/data/ATTRIBUTION.md).
SAMPLE = Path(__file__).parents[2] / "examples" / "data" / "sample" / "van0013_train_107.tif"

#: Lowest Dice of an int8 mask against float32's that the docs promise.
MASK_DICE = 0.99


# -- choosing int8: no TensorFlow needed --------------------------------------------------------


@pytest.fixture
def with_openvino(monkeypatch):
    monkeypatch.setattr(_backends, "openvino_available", lambda: True)
    monkeypatch.setattr(_backends, "cpu_bfloat16", lambda: True)


def test_int8_runs_on_request_only(with_openvino):
    assert resolve_backend("auto", "int8", int8=True) == ("openvino", "int8")
    assert resolve_backend("openvino", "int8", int8=True) == ("openvino", "int8")
    assert resolve_backend(int8=True) == ("openvino", "bfloat16")  # auto: never int8
    assert resolve_backend("openvino", "auto", int8=True) == ("openvino", "bfloat16")
    assert resolve_backend(gpu=True, int8=True) == ("tensorflow", "float32")


def test_int8_is_refused_where_it_cannot_run(with_openvino, monkeypatch):
    with pytest.raises(BackendError, match="OpenVINO only"):
        resolve_backend("tensorflow", "int8", int8=True)
    with pytest.raises(BackendError, match=r"no int8 network.*quantize_int8.*glomseg\[int8\]"):
        resolve_backend("openvino", "int8", int8=False)
    monkeypatch.setattr(_backends, "openvino_available", lambda: False)
    with pytest.raises(BackendError, match=r"precision='int8' needs OpenVINO.*glomseg\[openvino\]"):
        resolve_backend("auto", "int8", int8=True)


# -- int8 files ---------------------------------------------------------------------------------


def test_a_folder_without_an_int8_network_has_none(tmp_path):
    assert read_int8(tmp_path) is None


def test_a_corrupt_or_incomplete_int8_network_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "int8.json").write_text("{not json")
    with pytest.raises(PretrainedWeightsError, match=r"int8\.json: not a valid int8"):
        read_int8(tmp_path)
    (tmp_path / "int8.json").write_text(json.dumps({"fingerprint": [1, 2]}))
    with pytest.raises(PretrainedWeightsError, match=r"int8\.xml is missing"):
        read_int8(tmp_path)
    (tmp_path / "int8.xml").write_text("<net/>")
    (tmp_path / "int8.bin").write_bytes(b"")
    found = read_int8(tmp_path)
    assert found == Int8Network(tmp_path / "int8.xml", (1, 2))
    if HAS_OPENVINO:
        with pytest.raises(PretrainedWeightsError, match="not a readable int8 network"):
            found.load()


# -- the shipped models' int8 networks on a real tile ------------------------------------------


@pytest.fixture(scope="module")
def tile() -> np.ndarray:
    return np.asarray(tifffile.imread(SAMPLE))


@needs_tf_openvino
def test_the_cross_lab_model_predicts_float32_masks_in_int8(tile):
    from glomseg import GlomUNet

    model = GlomUNet.pretrained("glomeruli-crosslab")  # glomeruli-pas has none: its check failed
    assert model.compiled().precision != "int8"  # auto never picks it
    masks = {}
    for precision in ("float32", "int8"):
        config = PredictConfig(tta=False, backend="openvino", precision=precision)
        masks[precision] = predict_image(tile, model, pixel_size_um=0.98, config=config)
    assert masks["float32"].sum() > 10_000  # the tile holds glomeruli
    assert dice_coefficient(masks["int8"], masks["float32"]) >= MASK_DICE


@needs_tf_openvino
def test_new_weights_make_the_int8_network_stale(tile):
    from glomseg import GlomUNet

    model = GlomUNet.pretrained("glomeruli-crosslab")
    batch = tile[np.newaxis, :256, :256]
    before = model.compiled("openvino", "int8")(batch)
    weight = next(w for w in model.keras_model.weights if np.any(w.numpy()))
    weight.assign(weight.numpy() * 1.001)  # as training would
    with pytest.raises(BackendError, match="no int8 network for its current weights"):
        model.compiled("openvino", "int8")
    with pytest.raises(BackendError, match="no int8 network"):
        predict_image(tile, model, config=PredictConfig(precision="int8"))
    model.keras_model.set_weights(
        GlomUNet.pretrained("glomeruli-crosslab").keras_model.get_weights()
    )
    np.testing.assert_allclose(model.compiled("openvino", "int8")(batch), before, atol=1e-6)


@needs_tf_openvino
def test_a_refused_int8_request_leaves_nothing_on_disk(small_float_model, monkeypatch, tmp_path):
    from glomseg import predict_slide

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(BackendError, match="no int8 network"):
        predict_slide(SAMPLE, small_float_model, config=PredictConfig(precision="int8"))
    assert not list(tmp_path.iterdir())  # no temporary mask folder left behind


# -- quantizing a model of one's own ------------------------------------------------------------


@pytest.fixture(scope="module")
def small_float_model():
    if not (HAS_TF and HAS_OPENVINO):
        pytest.skip("needs the tf and openvino extras")
    from glomseg import GlomUNet

    return GlomUNet(backbone="resnet18", input_size=64, encoder_weights=None, seed=0)


@pytest.fixture(scope="module")
def small_model():
    if not (HAS_TF and HAS_NNCF and HAS_OPENVINO):
        pytest.skip("needs the tf and int8 extras")
    from glomseg import GlomUNet

    return GlomUNet(backbone="resnet18", input_size=64, encoder_weights=None, seed=0)


@needs_nncf
def test_quantize_int8_checks_its_input(small_model):
    with pytest.raises(ValueError, match="images is empty"):
        small_model.quantize_int8([])
    with pytest.raises(ValueError, match="crops must be an integer >= 1"):
        small_model.quantize_int8([np.zeros((64, 64, 3), np.uint8)], crops=0)
    with pytest.raises(ValueError, match=r"images\[1\] must be uint8 of shape \(H, W, 3\)"):
        small_model.quantize_int8([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)])


@needs_nncf
def test_a_quantized_model_round_trips_through_its_folder(small_model, tile, tmp_path):
    from glomseg.model._model import load_pretrained
    from glomseg.model._pretrained import ModelCard, save_pretrained

    images = [tile[:300, :300], tile[300:600, 200:700]]
    small_model.quantize_int8(images, crops=8, seed=1)
    predictor = small_model.compiled("openvino", "int8")
    assert predictor.precision == "int8"
    batch = tile[np.newaxis, :64, :64]
    probabilities = predictor(batch)
    assert probabilities.shape == (1, 64, 64)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()

    card = ModelCard(
        name="tiny",
        summary="a test model",
        training_data="two crops of the sample tile",
        licence="MIT",
        stain="PAS",
        pixel_size_um=0.98,
        input_size=64,
    )
    # A network of weights that float16 storage rounds would not fit the loaded model: the
    # folder is written without it, and a warning says how to keep one.
    with pytest.warns(UserWarning, match="int8 network is not saved"):
        save_pretrained(small_model, tmp_path / "tiny", card)
    assert not any(p.name.startswith("int8") for p in (tmp_path / "tiny").iterdir())
    # The network must describe the float16-rounded weights a folder stores: round first.
    for weight in small_model.keras_model.weights:
        weight.assign(weight.numpy().astype(np.float16).astype(np.float32))
    with pytest.raises(BackendError, match="no int8 network"):
        small_model.compiled("openvino", "int8")  # rounding changed the weights
    small_model.quantize_int8(images, crops=8, seed=1)
    expected = small_model.compiled("openvino", "int8")(batch)
    save_pretrained(small_model, tmp_path / "tiny", card)
    assert {"int8.xml", "int8.bin", "int8.json"} <= {p.name for p in (tmp_path / "tiny").iterdir()}
    loaded = load_pretrained("tiny", directory=tmp_path)
    again = loaded.compiled("openvino", "int8")
    np.testing.assert_allclose(again(batch), expected, atol=1e-6)

    # Quantized again (other crops), the model predicts with the new network, not a cached one.
    loaded.quantize_int8(images, crops=8, seed=2)
    assert loaded.compiled("openvino", "int8") is not again

    # Saved again after training, the folder loses its stale network rather than keep it.
    weight = next(w for w in loaded.keras_model.weights if np.any(w.numpy()))
    weight.assign(weight.numpy() * 0.5)
    save_pretrained(loaded, tmp_path / "tiny", card)
    assert not (tmp_path / "tiny" / "int8.json").exists()
    with pytest.raises(BackendError, match="no int8 network"):
        load_pretrained("tiny", directory=tmp_path).compiled("openvino", "int8")


def test_save_int8_leaves_no_description_when_writing_fails(tmp_path):
    (tmp_path / "int8.json").write_text(json.dumps({"fingerprint": [1]}))

    class Broken:
        network = None
        fingerprint = (1,)

        def load(self) -> object:
            raise OSError("No space left on device")

    if not HAS_OPENVINO:
        pytest.skip("needs the openvino extra")
    # What a writer killed mid-save left: its scratch folder, named for a process now ended.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    killed = tmp_path / f".int8.xml.{socket.gethostname()}-{child.pid}.0123abcd.partial"
    killed.mkdir()
    (killed / "int8.bin").write_bytes(b"half")
    with pytest.raises(OSError, match="No space left"):
        save_int8(tmp_path, Broken())  # type: ignore[arg-type]
    assert read_int8(tmp_path) is None  # never an old description beside new files
    assert not list(tmp_path.iterdir())  # nor this save's scratch files, nor the killed one's
