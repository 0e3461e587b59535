"""One const op per repeated small value in a saved ML Program (exporter/quantize/names.py share_constants)."""

from __future__ import annotations

import numpy as np
import pytest


def _spec(prog):
    import coremltools as ct

    mlmodel = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        pass_pipeline=ct.PassPipeline.EMPTY,  # every const op as the builder made it
        skip_model_load=True,
    )
    return mlmodel.get_spec()


def _ops(block):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _ops(inner)


def _unbound(block, visible: set[str]) -> list[str]:
    """Names used in ``block`` (and its nested blocks) that no earlier op of an enclosing scope defines."""
    visible = set(visible) | {v.name for v in block.inputs}
    missing = []
    for op in block.operations:
        for argument in op.inputs.values():
            missing += [b.name for b in argument.arguments if b.WhichOneof("binding") == "name" and b.name not in visible]
        for inner in op.blocks:
            missing += _unbound(inner, visible)
        visible |= {v.name for v in op.outputs}
    return missing + [n for n in block.outputs if n not in visible]


def _main(spec):
    function = spec.mlProgram.functions["main"]
    return function, function.block_specializations[function.opset]


def test_repeated_constants_become_one_in_each_block_and_nested_uses_follow(tmp_path):
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    from exporter.quantize.names import share_constants

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))])
    def prog(x):
        a = mb.add(x=x, y=np.float32(1.5))
        b = mb.mul(x=a, y=np.float32(1.5))  # same value, same type: one const
        k = mb.const(val=np.float32(1.5))  # a third copy, used only inside a branch below
        c = mb.add(x=b, y=np.float32(1.501))  # another value: kept
        flag = mb.greater(x=mb.reduce_sum(x=c, axes=[0, 1]), y=np.float32(0.0))

        def yes():  # its own block: its two 2.0s become one, the outer 1.5 is still visible to it
            return mb.add(x=mb.mul(x=mb.mul(x=c, y=k), y=np.float32(2.0)), y=np.float32(2.0))

        def no():
            return mb.sub(x=c, y=np.float32(2.0))

        return mb.cond(pred=flag, _true_fn=yes, _false_fn=no)

    spec = _spec(prog)
    function, block = _main(spec)
    before = [op for op in _ops(block) if op.type == "const"]
    removed = share_constants(spec)
    after = [op for op in _ops(block) if op.type == "const"]
    assert removed == len(before) - len(after) >= 3  # two outer copies of 1.5 and one of the true branch's 2.0s
    assert _unbound(block, {v.name for v in function.inputs}) == []
    for scope in [block, *(inner for op in _ops(block) for inner in op.blocks)]:
        values = [op.attributes["val"].SerializeToString(deterministic=True) for op in scope.operations if op.type == "const"]
        assert len(values) == len(set(values))  # no value twice in one block
    # the false branch's 2.0 lives in a sibling block: it is not merged into the true branch's
    assert sum(op.type == "const" and op.attributes["val"].immediateValue.tensor.floats.values[:] == [2.0] for op in after) == 2
    milproto_load(spec, specification_version=spec.specificationVersion, file_weights_dir=str(tmp_path))  # type-checks every op


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_shared_constants_shrink_a_real_program_and_change_no_output(tmp_path, precision):
    from conftest import sample
    from coremltools.proto import Model_pb2

    from exporter.convert.coreml import ModelInfo, convert, save
    from exporter.images import iter_batches, list_images
    from exporter.loading import load_model
    from exporter.preprocessing import Preprocessing
    from exporter.quantize.names import share_constants
    from exporter.runtime.coreml_spec import image_preprocessing
    from exporter.runtime.executor import CoreMLExecutor

    s = sample("mobilenet_v1_digits")
    pre = Preprocessing.from_file(s["preprocessing"])
    info = ModelInfo(name="m", labels=s["labels"].read_text().split(), preprocessing=pre, source_sha256="0", source_file="model.keras")
    mlmodel = convert(load_model(s["model"]).model, info, backend="mlprogram", precision=precision)
    long_path, short_path = tmp_path / "long.mlpackage", tmp_path / "short.mlpackage"
    mlmodel.save(str(long_path))
    save(mlmodel, short_path)  # shares constants, then shortens names
    program = "Data/com.apple.CoreML/model.mlmodel"
    original, shared = Model_pb2.Model(), Model_pb2.Model()
    original.ParseFromString((long_path / program).read_bytes())
    shared.ParseFromString((short_path / program).read_bytes())
    consts = [sum(op.type == "const" for op in _ops(_main(sp)[1])) for sp in (original, shared)]
    assert consts[1] < 0.5 * consts[0], consts  # strides, pads, dilations, groups ... once each
    assert share_constants(shared) == 0  # nothing left to share
    assert image_preprocessing(shared) == image_preprocessing(original)  # found by name: never merged away
    pixels = np.concatenate([b for _, b in iter_batches(list_images(s["heldout"])[:32], pre, batch_size=32)])
    np.testing.assert_array_equal(CoreMLExecutor(short_path).predict(pixels), CoreMLExecutor(long_path).predict(pixels))
