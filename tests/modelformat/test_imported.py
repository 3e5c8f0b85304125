"""Importing models trained elsewhere (docs/import.md): the checks and refusals of
``nimbus.modelformat.imported`` on small hand-made graphs, and the Caffe-zoo models that ship
inside the ``onnx`` wheel imported and served in-process, reproducing the wheel's outputs."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.backend.test.runner import Runner
from PIL import Image

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidInput
from nimbus.modelformat.files import ONNX_FILE, SPEC_FILE
from nimbus.modelformat.import_options import ImportOptions
from nimbus.modelformat.imported import (
    ARCHITECTURE,
    image_input,
    import_spec,
    inspect_onnx,
    scores_to_probabilities,
)
from nimbus.serving.predictor import Predictor

ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
CLASSES = tuple(f"c{i}" for i in range(1000))
IMAGES = ImportOptions(task=Task.IMAGE, classes=CLASSES)


def zoo_case(name: str) -> tuple[bytes, dict[str, np.ndarray], np.ndarray]:
    """A model of the wheel's backend test data, the input its own runner feeds it
    (``Runner.generate_dummy_data``) and the output the wheel ships for that input."""
    path = ZOO / f"light_{name}.onnx"
    model = onnx.load(path)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {
        i.name: Runner.generate_dummy_data(i, seed=0, name=name, random=False)
        for i in model.graph.input
        if i.name not in initializers
    }
    expected = numpy_helper.to_array(
        TensorProto.FromString((ZOO / f"light_{name}_output_0.pb").read_bytes())
    )
    return path.read_bytes(), feeds, expected


# From Caffe's zoo (bvlc_googlenet = inception_v1, squeezenet) and Caffe2's (densenet121
# ends before its softmax; shufflenet has gpu_0/ names). resnet50 goes through a real server
# in tests/api/test_imports.py. bvlc_alexnet, vgg19, zfnet512 and inception_v2 pass the same
# way (docs/import.md) but take seconds each to materialise their constant weights.
@pytest.mark.parametrize("name", ["inception_v1", "squeezenet", "densenet121", "shufflenet"])
def test_zoo_models_import_and_serve_their_shipped_outputs(name: str, tmp_path: Path) -> None:
    data, feeds, expected = zoo_case(name)
    spec = import_spec(data, IMAGES)
    ((input_name, x),) = feeds.items()
    assert spec["architecture"] == ARCHITECTURE
    assert spec["input"] == {"name": input_name, "datatype": "FP32", "shape": [-1, 3, 224, 224]}
    imported = spec["imported"]
    assert imported["batch"] == 1 and imported["output_shape"] == [-1, *expected.shape[1:]]
    assert imported["scores"] == ("logits" if name == "densenet121" else "probabilities")
    (tmp_path / ONNX_FILE).write_bytes(data)
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    predictor = Predictor.load(tmp_path)
    assert [o.name for o in predictor.outputs] == ["probabilities", "label", imported["output"]]
    batch = np.concatenate([x, x[:, ::-1]])  # two rows through a graph fixed at batch 1
    scores = predictor.run(batch)
    named = predictor.postprocess(scores, [o.name for o in predictor.outputs])
    own = named[imported["output"]]
    assert own.shape == (2, *expected.shape[1:])
    np.testing.assert_allclose(own[:1], expected, atol=1e-4, rtol=0)
    probabilities = named["probabilities"]
    assert probabilities.shape == (2, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def test_the_servers_answer_is_the_runtimes_on_the_squeezed_output(tmp_path: Path) -> None:
    """squeezenet answers [1, 1000, 1, 1]: /predict's probabilities are its 1000 values."""
    data, feeds, expected = zoo_case("squeezenet")
    (tmp_path / ONNX_FILE).write_bytes(data)
    (tmp_path / SPEC_FILE).write_text(json.dumps(import_spec(data, IMAGES)))
    predictor = Predictor.load(tmp_path)
    described = predictor.describe(predictor.run(next(iter(feeds.values())))[0])
    values = np.array(list(described["probabilities"].values()))
    np.testing.assert_allclose(values, expected.reshape(-1), atol=1e-4)


# -- hand-made graphs ----------------------------------------------------------------------


def graph_bytes(
    *,
    input_shape: list[str | int] | None = None,
    elem: int = TensorProto.FLOAT,
    classes: int = 3,
    softmax: bool = True,
    extra_input: bool = False,
    domain: str = "",
    divide_by_zero: bool = False,
    op: str = "Softmax",
    output_shape: list[str | int] | None = None,
) -> bytes:
    """x [N, 3, 4, 4] -> global average pool -> flatten -> MatMul [3, classes] -> softmax."""
    shape: list[str | int] = input_shape if input_shape is not None else ["N", 3, 4, 4]
    rows = shape[1] if isinstance(shape[1], int) else 3
    weights = numpy_helper.from_array(
        np.arange(rows * classes, dtype=np.float32).reshape(rows, classes) / 10, "w"
    )
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("GlobalAveragePool", ["xf"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    last = "logits"
    if divide_by_zero:
        zero = numpy_helper.from_array(np.zeros((1,), np.float32), "zero")
        nodes.append(helper.make_node("Div", ["logits", "zero"], ["inf"]))
        last = "inf"
    else:
        zero = None
    if softmax:
        nodes.append(helper.make_node(op, [last], ["scores"], axis=1))
    else:
        nodes.append(helper.make_node("Identity", [last], ["scores"]))
    if domain:
        nodes.append(helper.make_node("Fancy", ["scores"], ["fancy"], domain=domain))
    inputs = [helper.make_tensor_value_info("x", elem, shape)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]))
    output = "fancy" if domain else "scores"
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape or ["N", classes])],
        initializer=[weights] + ([zero] if zero is not None else []),
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="hand")
    return bytes(model.SerializeToString())


def options(**given: Any) -> ImportOptions:
    return ImportOptions.parse(**{"task": "image", "classes": ["a", "b", "c"], **given})


def test_a_small_graph_imports_with_its_preprocessing() -> None:
    spec = import_spec(graph_bytes(), options(scale="1/255", mean="0.5", std="0.25,0.5,1"))
    assert spec["input"] == {"name": "x", "datatype": "FP32", "shape": [-1, 3, 4, 4]}
    assert spec["outputs"][-1] == {"name": "scores", "datatype": "FP32", "shape": [-1, 3]}
    assert spec["preprocessing"] == {
        "kind": "image",
        "layout": "NCHW",
        "height": 4,
        "width": 4,
        "channels": 3,
        "scale": 1 / 255,
        "mean": [0.5],
        "std": [0.25, 0.5, 1.0],
    }
    assert spec["imported"]["batch"] is None and spec["imported"]["producer"] == "hand"
    assert spec["imported"]["opsets"] == {"ai.onnx": 17}


def test_free_sides_are_fixed_by_size_and_logits_get_a_softmax() -> None:
    data = graph_bytes(input_shape=["N", 3, "H", "W"], softmax=False)
    with pytest.raises(InvalidInput, match="height and width are free; fix them with --size"):
        inspect_onnx(data, options())
    spec = import_spec(data, options(size="8x6"))
    assert spec["input"]["shape"] == [-1, 3, 8, 6] and spec["imported"]["scores"] == "logits"
    unknown = graph_bytes(softmax=False, output_shape=["N", "C"])
    fixed = import_spec(unknown, options())  # the class dimension as the run answered it
    assert fixed["imported"]["output_shape"] == fixed["outputs"][-1]["shape"] == [-1, 3]
    scores = np.array([[1.0, 2.0, 3.0]], np.float32)
    probabilities = scores_to_probabilities(scores, "logits")
    np.testing.assert_allclose(probabilities, [np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum()])
    assert scores_to_probabilities(scores, "probabilities") is scores


Refusal = tuple[Callable[[], bytes], dict[str, Any], str]
REFUSALS: dict[str, Refusal] = {
    "not onnx": (lambda: b"\x00garbage" * 10, {}, "not an ONNX model"),
    "custom domain": (
        lambda: graph_bytes(domain="com.example"),
        {},
        "custom operator domain 'com.example'",
    ),
    "checker": (lambda: graph_bytes(op="NoSuchOp"), {}, "onnx.checker refuses the model"),
    "two inputs": (lambda: graph_bytes(extra_input=True), {}, "takes 2 inputs"),
    "fixed batch of 4": (
        lambda: graph_bytes(input_shape=[4, 3, 4, 4]),
        {},
        "fixed batch of 4",
    ),
    "class count": (
        lambda: graph_bytes(classes=5),
        {},
        "it scores 5 classes, but 3 class names were given",
    ),
    "size against fixed sides": (lambda: graph_bytes(), {"size": "8x8"}, "fixed height of 4"),
    "ambiguous layout": (
        lambda: graph_bytes(input_shape=["N", 3, 4, 3]),
        {},
        "say its layout with --input-layout",
    ),
    "channels": (
        lambda: graph_bytes(input_shape=["N", 5, 4, 4]),
        {"layout": "NCHW"},
        "5 channels",
    ),
    "uint8 with scale": (
        lambda: graph_bytes(elem=TensorProto.UINT8),
        {"scale": "1/255"},
        "takes UINT8 pixels",
    ),
    "tabular needs rank 2": (
        lambda: graph_bytes(),
        {"task": "tabular"},
        "a tabular model must take FP32 \\[batch, features\\]",
    ),
    "text needs strings": (
        lambda: graph_bytes(),
        {"task": "text"},
        "a text model must take strings",
    ),
    "infinite scores": (lambda: graph_bytes(divide_by_zero=True), {}, "not finite"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_refusal_names_the_problem(case: str) -> None:
    make, given, message = REFUSALS[case]
    with pytest.raises(InvalidInput, match=message):
        import_spec(make(), options(**given))


def test_external_data_is_refused(tmp_path: Path) -> None:
    model = onnx.load_model_from_string(graph_bytes())
    onnx.save_model(
        model,
        tmp_path / "m.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    with pytest.raises(InvalidInput, match=re.escape("external data file ('weights.bin')")):
        import_spec((tmp_path / "m.onnx").read_bytes(), options())


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"classes": []}, "no classes"),
        ({"classes": ["a", "a"]}, "given twice"),
        ({"classes": [" "]}, "invalid class name"),
        ({"task": "video"}, "invalid task 'video'"),
        ({"task": "tabular", "size": "2x2"}, "size apply to image models only"),
        ({"scale": "1/0"}, "invalid scale"),
        ({"scale": "-1"}, "scale must be a finite number above 0"),
        ({"std": "0"}, "std must be above 0"),
        ({"size": "224"}, "invalid size '224'"),
        ({"layout": "CHWN"}, "invalid input layout"),
    ],
)
def test_bad_options_are_refused_before_the_model_is_read(
    given: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        options(**given)


def test_options_round_trip_through_the_check_child() -> None:
    given = options(layout="nhwc", scale="1/255", mean="0.1,0.2,0.3", size="32x16")
    assert given.layout == "NHWC" and given.size == (32, 16)
    assert ImportOptions.from_dict(given.to_dict()) == given


def test_image_input_scales_normalises_and_moves_the_channels() -> None:
    pixels = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    prep = {"layout": "NCHW", "scale": 0.5, "mean": [1.0, 2.0, 3.0], "std": [2.0, 2.0, 2.0]}
    x = image_input(pixels, prep, "FP32")
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    assert x[0, 1, 0, 1] == (pixels[0, 1, 1] * 0.5 - 2.0) / 2.0
    nhwc = image_input(pixels, {**prep, "layout": "NHWC"}, "UINT8")
    assert nhwc.dtype == np.uint8 and np.array_equal(nhwc[0], pixels)


def test_predict_decodes_a_photo_with_the_stated_preprocessing(tmp_path: Path) -> None:
    """An imported image model's /predict: the photo resized to the input, scaled,
    normalised and laid out as the import said, and the graph's logits given a softmax."""
    data = graph_bytes(softmax=False)
    spec = import_spec(data, options(scale="1/255", mean="0.5", std="0.25"))
    (tmp_path / ONNX_FILE).write_bytes(data)
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    predictor = Predictor.load(tmp_path)
    pixels = np.random.default_rng(3).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    photo = io.BytesIO()
    Image.fromarray(pixels).save(photo, format="PNG")
    x = predictor.example_from_body(photo.getvalue())
    expected = ((pixels / 255 - 0.5) / 0.25).transpose(2, 0, 1)[np.newaxis]
    np.testing.assert_allclose(x, expected, atol=1e-5)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["scores"], {"x": expected.astype(np.float32)})
    answer = predictor.describe(predictor.run(x)[0])
    want = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose(list(answer["probabilities"].values()), want, atol=1e-5)
    assert answer["label"] == "abc"[int(want.argmax())]


def text_graph() -> bytes:
    """Strings in, tokenised with standard operators (lower case, split on spaces, counts of
    four words), two classes out: a text model that needs no tokeniser outside the graph."""
    weights = numpy_helper.from_array(
        np.array([[2, -2], [-2, 2], [3, -3], [-3, 3]], np.float32), "w"
    )
    nodes = [
        helper.make_node(
            "StringNormalizer", ["review"], ["lower"], case_change_action="LOWER", locale="C"
        ),
        helper.make_node("StringSplit", ["lower"], ["words", "counts"]),
        helper.make_node(
            "TfIdfVectorizer",
            ["words"],
            ["tf"],
            mode="TF",
            min_gram_length=1,
            max_gram_length=1,
            max_skip_count=0,
            ngram_counts=[0],
            ngram_indexes=[0, 1, 2, 3],
            pool_strings=["good", "bad", "great", "awful"],
        ),
        helper.make_node("MatMul", ["tf", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "text",
        [helper.make_tensor_value_info("review", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    return bytes(model.SerializeToString())


def test_a_text_graph_that_tokenises_itself_takes_text(tmp_path: Path) -> None:
    data = text_graph()
    spec = import_spec(data, ImportOptions.parse(task="text", classes=["pos", "neg"]))
    assert spec["input"] == {"name": "review", "datatype": "BYTES", "shape": [-1]}
    assert spec["imported"]["scores"] == "logits"
    (tmp_path / ONNX_FILE).write_bytes(data)
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    predictor = Predictor.load(tmp_path)
    texts = np.array([b"A GOOD and great film", b"awful, bad bad"], dtype=object)
    scores = predictor.run(predictor.prepare(texts))
    assert list(predictor.postprocess(scores, ["label"])["label"]) == ["pos", "neg"]
    answer = predictor.describe(predictor.run(predictor.example_from_body(b'{"text": "good"}'))[0])
    assert answer["label"] == "pos" and answer["probabilities"]["pos"] > 0.98


def test_a_classifier_with_a_label_output_and_probabilities_without_a_softmax_node(
    tmp_path: Path,
) -> None:
    """ai.onnx.ml's LinearClassifier (what converters such as skl2onnx emit): a label output
    and a probabilities output that sums to 1 with no Softmax node; served as they are."""
    coefficients = np.array([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]], np.float32)
    intercepts = np.array([0.1, -0.1], np.float32)
    node = helper.make_node(
        "LinearClassifier",
        ["X"],
        ["label", "probabilities"],
        domain="ai.onnx.ml",
        classlabels_ints=[0, 1],
        coefficients=coefficients.reshape(-1).tolist(),
        intercepts=intercepts.tolist(),
        post_transform="SOFTMAX",
    )
    graph = helper.make_graph(
        [node],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    data = helper.make_model(graph, opset_imports=opsets).SerializeToString()
    spec = import_spec(data, ImportOptions.parse(task="tabular", classes=["no", "yes"]))
    assert spec["imported"]["scores"] == "probabilities"
    assert spec["imported"]["output"] == "probabilities" and len(spec["outputs"]) == 2
    (tmp_path / ONNX_FILE).write_bytes(data)
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    predictor = Predictor.load(tmp_path)
    x = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]], np.float32)
    logits = x @ coefficients.T + intercepts
    want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    got = predictor.postprocess(predictor.run(x), ["probabilities"])["probabilities"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    answer = predictor.describe(
        predictor.run(predictor.example_from_body(b'{"features": [1, 0, 2]}'))[0]
    )
    assert answer["label"] == "no" and abs(answer["probabilities"]["no"] - want[0, 0]) < 1e-5
