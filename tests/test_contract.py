"""The ONNX contract of serving/contract.py, which export and serving both use: the
BatchNormalization walk (main graph, subgraphs, local functions) and the metadata check."""

from __future__ import annotations

import onnx
import pytest
from conftest import tiny_model
from onnx import TensorProto, helper

from serving import contract
from serving.contract import ContractError, check_graph, check_metadata, check_model
from serving.model import ModelError, read_model


def _with_bn_in_function(path):
    """tiny_model's graph with its MatMul wrapped in a local function whose body holds a BN:
    what torch.onnx's dynamo exporter can emit for a module it keeps as a function."""
    proto = onnx.load(str(path))
    fn = helper.make_function(
        "bnserve.test", "MatBN", ["x", "w"], ["y"],
        [helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])),
         helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
         helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
         helper.make_node("BatchNormalization", ["m3", "one", "zero", "zero", "one"], ["b3"],
                          name="hidden_bn"),
         helper.make_node("Squeeze", ["b3", "axes"], ["y"])],
        opset_imports=[helper.make_opsetid("", 18)])
    axes = helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("axes", TensorProto.INT64, [1], [2]))
    fn.node.insert(0, axes)
    matmul = next(n for n in proto.graph.node if n.op_type == "MatMul")
    matmul.op_type, matmul.domain = "MatBN", "bnserve.test"
    proto.functions.append(fn)
    proto.opset_import.append(helper.make_opsetid("bnserve.test", 1))
    out = path.with_name("fn.onnx")
    onnx.save(proto, str(out))
    return out


def test_bn_inside_a_local_function_is_found_and_refused(tmp_path):
    path = _with_bn_in_function(tiny_model(tmp_path))
    proto = onnx.load(str(path))
    assert [n.op_type for n in proto.graph.node].count("BatchNormalization") == 0  # not in the main graph
    assert contract.batchnorm_nodes(proto) == ["hidden_bn"]
    with pytest.raises(ModelError, match=r"1 BatchNormalization node\(s\) \(hidden_bn\)"):
        read_model(path)


def test_bn_inside_an_if_branch_is_found(tmp_path):
    proto = onnx.load(str(tiny_model(tmp_path)))
    branch = helper.make_graph(
        [helper.make_node("BatchNormalization", ["input", "s", "s", "s", "s"], ["o"], name="branch_bn")],
        "branch", [], [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
        [helper.make_tensor("s", TensorProto.FLOAT, [1], [1.0])])
    proto.graph.node.append(helper.make_node("If", ["cond"], ["unused"], then_branch=branch,
                                             else_branch=branch, name="if"))
    assert contract.batchnorm_nodes(proto) == ["branch_bn", "branch_bn"]
    with pytest.raises(ContractError, match="BatchNormalization"):
        check_graph(proto)


def test_a_contract_file_passes_and_yields_the_serving_spec(tmp_path):
    meta, spec = check_model(onnx.load(str(tiny_model(tmp_path))))
    assert meta["format"] == contract.FORMAT
    assert (spec.channels, spec.height, spec.width, spec.classes) == (1, 4, 4, ("a", "b", "c"))
    assert (spec.mean, spec.std, spec.dtype) == ((0.5,), (0.25,), "float32")
    assert spec.input_convention is None  # a file from before input_convention: served, not converted
    meta["input_convention"] = {"pipeline": "mnist", "background": "dark"}
    assert check_metadata(meta).input_convention == {"pipeline": "mnist", "background": "dark"}


@pytest.mark.parametrize("changes, needle", [
    ({"format": "bnserve-onnx/0"}, "expected 'bnserve-onnx/1'"),
    ({"parity": {"passed": "yes"}}, "parity check did not pass"),
    # what a deep linear network's export would carry: a vector input, no image spec
    ({"input": {"name": "input", "shape": [None, 10], "dtype": "float32", "layout": "NC"}},
     "needs an image input spec"),
    ({"normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25]}}, "inconsistent metadata"),
    ({"classes": []}, "inconsistent metadata"),
    ({"normalization": {"mean": [0.5], "std": [0.0]}}, r"std=\(0.0,\)"),
    ({"input": {"name": "input", "channels": 1, "height": 4, "width": 4, "dtype": "int8"}}, "input dtype 'int8'"),
    ({"input_convention": {"pipeline": "imagenet"}}, "input_convention must be an object whose pipeline"),
    ({"input_convention": "fashion-mnist"}, "input_convention must be"),
])
def test_metadata_check_refuses_with_the_reason(tmp_path, changes, needle):
    meta = contract.read_metadata(onnx.load(str(tiny_model(tmp_path))))
    check_metadata(meta)  # the unchanged metadata passes
    with pytest.raises(ContractError, match=needle):
        check_metadata({**meta, **changes})


def test_graph_names_are_checked(tmp_path):
    proto = onnx.load(str(tiny_model(tmp_path)))
    proto.graph.output[0].name = "probs"
    with pytest.raises(ContractError, match="expected 'input' / 'logits'"):
        check_graph(proto)


# --- one logit per class (a model whose output size is not its number of classes) ------------


def test_output_size_must_be_the_number_of_classes():
    contract.check_output_size(3, ("a", "b", "c"))
    contract.check_output_size(None, ("a", "b", "c"))  # not stated: checked on a real run instead
    with pytest.raises(ContractError, match=r"outputs 3 logits per image but its metadata names 4 classes \(a, b, c, d\)"):
        contract.check_output_size(3, ("a", "b", "c", "d"))


def test_a_model_with_more_classes_than_logits_is_refused_at_load(tmp_path):
    path = tiny_model(tmp_path, classes=("a", "b", "c", "d"))
    assert contract.output_size(onnx.load(str(path))) == 3
    with pytest.raises(ModelError, match="outputs 3 logits per image but its metadata names 4 classes") as e:
        read_model(path)
    assert "BNSERVE_MODEL" in str(e.value)  # says what to do next


def test_a_symbolic_output_size_is_checked_on_a_real_run_at_start(tmp_path):
    from serving.model import OnnxClassifier
    path = tiny_model(tmp_path, classes=("a", "b"), outputs="k")
    assert contract.output_size(onnx.load(str(path))) is None
    with pytest.raises(ModelError, match="outputs 3 logits per image but its metadata names 2 classes"):
        OnnxClassifier(path, want="cpu", threads=1)
    OnnxClassifier(tiny_model(tmp_path, name="ok.onnx", outputs="k"), want="cpu", threads=1)  # 3 and 3: served


def test_build_metadata_is_what_check_metadata_reads():
    meta = contract.build_metadata(model={"name": "m"}, dataset="d", classes=["x", "y"], channels=3, height=8,
                                   width=6, mean=[0.1, 0.2, 0.3], std=[1, 2, 3], parity={"passed": True},
                                   dtype="float16", input_convention={"pipeline": "cifar10"}, opset=18)
    spec = check_metadata(meta)
    assert (spec.channels, spec.height, spec.width, spec.classes, spec.dtype) == (3, 8, 6, ("x", "y"), "float16")
    assert meta["input"]["shape"] == [None, 3, 8, 6] and meta["output"] == {"name": "logits", "shape": [None, 2]}
    assert meta["opset"] == 18 and spec.input_convention == {"pipeline": "cifar10"}
