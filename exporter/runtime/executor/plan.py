"""Load-time planning of an ML Program's steps, none of which changes what is computed:

* a zero ``pad`` whose only reader is a ``valid`` convolution becomes that convolution's own padding (the
  convolution pads into a buffer it keeps, instead of a new array per call); the pad step stays in the list, run
  only when a caller observes every value;
* each computed value is dropped after the last step that reads it;
* an elementwise step whose ``x`` is a fresh array that nothing reads afterwards writes its result into ``x``;
  for ``add`` and ``mul``, whose operands commute exactly in IEEE arithmetic, ``x`` and ``y`` are swapped when only
  ``y`` is such an array;
* a ``relu`` (``relu6``) read only by a convolution with a kernel wider than 1x1 is applied by that convolution as it
  pads its input (``fuse_relus``), the activation step then run only for an observer.
"""

from __future__ import annotations

from .kernels import INPUT_ACTIVATIONS
from .registry import MIL  # an entry's ``inplace`` and ``fresh`` flags say which ops may write into x

COMMUTATIVE = ("add", "mul")  # operands swap without changing a bit of the IEEE result
FUSED_RELU = "::relu_input"  # the conv argument fuse_relus adds (not a MIL parameter name, so never a file's own)


def _readers(steps) -> dict[str, list]:
    readers: dict[str, list] = {}
    for step in steps:
        for names in step.call.args.values():
            for name in names:
                readers.setdefault(name, []).append(step)
    return readers


def _spatial_zero_pad(program, step) -> list[int] | None:
    """(top, bottom, left, right) of a pad step that zero-pads only the last two axes of a rank-4 tensor."""
    call = step.call
    if call.const("mode", "constant") != "constant" or float(call.const("constant_val", 0.0)) != 0.0:
        return None
    pad = [int(p) for p in call.const("pad")]
    rank = len(program.shapes.get(call.args["x"][0]) or ())
    if rank != 4 or len(pad) not in (4, 8) or any(pad[:-4]):
        return None
    return pad[-4:]


def fuse_pads(program) -> None:
    readers = _readers(program.steps)
    for step in program.steps:
        if step.call.op_type != "pad" or len(step.outputs) != 1 or not step.call.is_const("pad"):
            continue
        pads = _spatial_zero_pad(program, step)
        consumers = readers.get(step.outputs[0], [])
        if pads is None or len(consumers) != 1 or step.outputs[0] == program.probabilities:
            continue
        conv = consumers[0].call
        if conv.op_type != "conv" or conv.args.get("x") != step.outputs or conv.const("pad_type", "valid") != "valid":
            continue
        if sum(names.count(step.outputs[0]) for names in conv.args.values()) != 1:
            continue
        program.add_constant(f"{conv.name}::fused_pad_type", "custom")
        program.add_constant(f"{conv.name}::fused_pad", [int(p) for p in pads])
        conv.args = {
            **conv.args,
            "x": step.call.args["x"],
            "pad_type": [f"{conv.name}::fused_pad_type"],
            "pad": [f"{conv.name}::fused_pad"],
        }
        step.observe_only = True


def fuse_relus(program) -> None:
    """A ``relu`` or ``relu6`` whose only reader is a 2-D convolution with a kernel wider than 1x1 is applied by that
    convolution while it copies its input into its padded buffer (``kernels.conv2d``'s ``input_activation``): one
    pass over the activation and one array fewer (NASNet's and Xception's separable convolutions, ResNetV2's
    pre-activations, MobileNetV2's expanded activations before their depthwise convolution). The activation step
    stays in the list, run only when a caller observes every value."""
    readers = _readers([step for step in program.steps if not step.observe_only])
    for step in program.steps:
        if step.call.op_type not in INPUT_ACTIVATIONS or step.observe_only or len(step.outputs) != 1:
            continue
        if step.outputs[0] == program.probabilities:
            continue
        consumers = readers.get(step.outputs[0], [])
        if len(consumers) != 1:
            continue
        conv = consumers[0].call
        if conv.op_type != "conv" or conv.args.get("x") != step.outputs or not conv.is_const("weight"):
            continue
        if sum(names.count(step.outputs[0]) for names in conv.args.values()) != 1:
            continue
        weight = program.env[conv.args["weight"][0]]
        if getattr(weight, "ndim", 0) != 4 or weight.shape[2] * weight.shape[3] == 1:
            continue
        program.add_constant(f"{conv.name}::fused_relu", step.call.op_type)
        conv.args = {**conv.args, "x": step.call.args["x"], FUSED_RELU: [f"{conv.name}::fused_relu"]}
        step.observe_only = True


def plan_release(program) -> None:
    last: dict[str, int] = {}
    for i, step in enumerate(program.steps):
        if step.observe_only:
            continue
        for names in step.call.args.values():
            for name in names:
                if name not in program.consts:
                    last[name] = i
    producer = {name: step for step in program.steps for name in step.outputs}
    for name, i in last.items():
        if name not in (program.probabilities, program.input):
            program.steps[i].release.append(name)

    def writable(step, i: int, key: str) -> bool:
        """Whether the step may write its result into its ``key`` operand."""
        names = step.call.args.get(key, [None])
        source = producer.get(names[0])
        return (
            len(names) == 1
            and source is not None
            and MIL[source.call.op_type].fresh
            and last.get(names[0]) == i
            and sum(args.count(names[0]) for args in step.call.args.values()) == 1
            and program.shapes.get(names[0]) is not None
            and program.shapes.get(names[0]) == step.declared[0]
        )

    for i, step in enumerate(program.steps):
        if not MIL[step.call.op_type].inplace:
            continue
        if step.call.op_type in COMMUTATIVE and not writable(step, i, "x") and writable(step, i, "y"):
            step.call.args = {**step.call.args, "x": step.call.args["y"], "y": step.call.args["x"]}
        step.call.inplace = writable(step, i, "x")
