"""The executor's one registry: README's list of supported operations is the registry's, every registered ML Program op
and NeuralNetwork layer has a test case, and the in-place flags that the load-time plan reads come from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_mil_ops
import test_mil_ops_rare
import test_nn_layers
import test_nn_legacy
import test_weights

from exporter.errors import UnsupportedOperationError
from exporter.runtime.executor import mlprogram, neuralnetwork, oplist  # noqa: F401  (ops and layers register)
from exporter.runtime.executor.registry import MIL, NN, Registry

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_exactly_the_registered_ops_and_layers():
    assert oplist.current(README) == oplist.render(), (
        "README.md's supported-operations block differs from the registry; run python -m exporter.runtime.executor.oplist --write"
    )
    block = oplist.current(README)
    for name in MIL.names() + NN.names():
        assert f"`{name}`" in block


def test_every_registered_ml_program_op_has_a_test_case():
    covered = test_mil_ops.COVERS | test_mil_ops_rare.COVERS | test_weights.COVERS | test_nn_legacy.MIL_COVERS
    missing = sorted(set(MIL.names()) - covered)
    assert not missing, f"registered ML Program ops without a test case: {missing}"
    unknown = sorted(covered - set(MIL.names()))
    assert not unknown, f"test cases named after ops the executor does not register: {unknown}"


def test_every_registered_neuralnetwork_layer_has_a_test_case():
    covered = test_nn_layers.COVERS | test_nn_legacy.COVERS
    missing = sorted(set(NN.names()) - covered)
    assert not missing, f"registered NeuralNetwork layers without a test case: {missing}"
    unknown = sorted(covered - set(NN.names()))
    assert not unknown, f"test cases named after layers the executor does not register: {unknown}"


def test_inplace_flags_live_on_the_registration():
    inplace = {name for name in MIL.names() if MIL[name].inplace}
    assert {"add", "sub", "mul", "relu", "relu6", "clip"} <= inplace
    assert all(MIL[name].fresh for name in inplace)  # writing into x makes a fresh array again
    assert {"conv", "max_pool", "avg_pool"} <= {name for name in MIL.names() if MIL[name].fresh}


def test_an_unknown_name_is_refused_with_the_file_and_where_the_list_is():
    with pytest.raises(UnsupportedOperationError) as info:
        MIL.lookup("sine", "op 'y'", "m.mlpackage")
    message = str(info.value)
    assert message.startswith("m.mlpackage: ") and "'sine'" in message and "op 'y'" in message
    assert "README.md" in message and f"{len(MIL.names())} ML Program op types" in message
    assert "close: sin" in message  # a likely misspelling is named
    with pytest.raises(UnsupportedOperationError, match="NeuralNetwork layer type 'nope'"):
        NN.lookup("nope", "layer 'n'", "m.mlmodel")


def test_a_name_cannot_be_registered_twice():
    registry = Registry("Test", "op")
    registry.register("x")(lambda c: c)
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.register("x")(lambda c: c)
