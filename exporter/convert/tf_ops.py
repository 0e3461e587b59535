"""TensorFlow ops that coremltools' TF frontend or tf2onnx lacks, registered through their public decorators before
conversion.

``Erfc``: TensorFlow writes exact GELU as ``0.5 * x * erfc(-x / sqrt(2))`` (``tf.nn.gelu(approximate=False)``, which
Keras' ``gelu`` activation and GELU layers use), and coremltools 9 has no converter for ``Erfc``. We emit
``erfc(z) = 1 + erf(-z)``; when ``z`` is ``(-x) * c`` (TensorFlow's Neg then Mul), ``-z`` is written as ``x * c`` so
that the MIL graph reads ``0.5 * x * (1 + erf(x * c))``, which coremltools' own ``fuse_gelu_exact`` pass turns into one
``gelu(mode=EXACT)`` op (the same op a PyTorch GELU becomes).

``Expm1``: ``exp(x) - 1``, which Keras' ``celu`` activation (and ``keras.ops.expm1``) computes; neither coremltools 9
nor tf2onnx 1.17 has a converter for it. Written as ``exp(x) - 1``: near zero it loses expm1's relative precision but not its absolute one
(float32 rounding of 1, 6e-8), which is what the model's next layers and the probabilities see. ``Log1p``
(``keras.ops.log1p``), which tf2onnx lacks, is ``log(1 + x)`` in the ONNX file, with the same absolute precision, and
in Core ML files too (see ``register``).
"""

from __future__ import annotations

_registered = False
_registered_onnx = False


def _scalar_const(var):
    """The float value of a scalar constant var, else None."""
    import numpy as np

    val = getattr(var, "val", None)
    if val is None:
        return None
    arr = np.asarray(val)
    return float(arr.reshape(-1)[0]) if arr.size == 1 else None


def _mul_operands(var):
    """(other input, scalar constant) when ``var`` is ``mul`` by a scalar constant, else None."""
    op = getattr(var, "op", None)
    if op is None or op.op_type != "mul":
        return None
    x, y = op.inputs["x"], op.inputs["y"]
    if _scalar_const(y) is not None and _scalar_const(x) is None:
        return x, _scalar_const(y)
    if _scalar_const(x) is not None and _scalar_const(y) is None:
        return y, _scalar_const(x)
    return None


def negated(var):
    """A MIL var equal to ``-var``, folding ``(-x) * c`` into ``x * c`` so no double negation is left behind."""
    from coremltools.converters.mil import Builder as mb

    outer = _mul_operands(var)
    if outer is not None:
        inner_var, c = outer
        inner = _mul_operands(inner_var)
        if inner is not None and inner[1] == -1.0:
            return mb.mul(x=inner[0], y=c)
    return mb.mul(x=var, y=-1.0)


def register_onnx() -> None:
    """Register the tf2onnx handlers once per process."""
    global _registered_onnx
    if _registered_onnx:
        return
    import numpy as np
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    def one_like(ctx, node):
        """A scalar 1 of the node's input type."""
        dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
        return ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype)).output[0]

    def replace(ctx, node, op_type: str, inputs: list[str]) -> None:
        """The TF node replaced by one ONNX node of ``op_type`` on ``inputs``, keeping its name, output and types."""
        shapes, dtypes, output = node.output_shapes, node.output_dtypes, node.output[0]
        ctx.remove_node(node.name)
        ctx.make_node(op_type, inputs, outputs=[output], name=node.name, shapes=shapes, dtypes=dtypes)

    @tf_op("Erfc")
    class Erfc:  # 1 + erf(-x)
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            neg = ctx.make_node("Neg", [node.input[0]], op_name_scope=node.name, name="neg")
            erf = ctx.make_node("Erf", neg.output, op_name_scope=node.name, name="erf")
            replace(ctx, node, "Add", [one_like(ctx, node), erf.output[0]])

    @tf_op("Expm1")
    class Expm1:  # exp(x) - 1
        @classmethod
        def version_1(cls, ctx, node, **kwargs):
            exp = ctx.make_node("Exp", [node.input[0]], op_name_scope=node.name, name="exp")
            replace(ctx, node, "Sub", [exp.output[0], one_like(ctx, node)])

    @tf_op("Log1p")
    class Log1p:  # log(x + 1)
        @classmethod
        def version_1(cls, ctx, node, **kwargs):
            add = ctx.make_node("Add", [node.input[0], one_like(ctx, node)], op_name_scope=node.name, name="add")
            replace(ctx, node, "Log", add.output)

    _registered_onnx = True


def register() -> None:
    """Register the missing TF op converters once per process (coremltools refuses a second registration)."""
    global _registered
    if _registered:
        return
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.tensorflow.tf_op_registry import _TF_OPS_REGISTRY, register_tf_op

    if "Erfc" not in _TF_OPS_REGISTRY:

        @register_tf_op
        def Erfc(context, node):  # the TF op name is the registry key
            z = context[node.inputs[0]]
            context.add(node.name, mb.add(x=1.0, y=mb.erf(x=negated(z)), name=node.name))

    if "Expm1" not in _TF_OPS_REGISTRY:

        @register_tf_op
        def Expm1(context, node):
            x = context[node.inputs[0]]
            context.add(node.name, mb.sub(x=mb.exp(x=x), y=1.0, name=node.name))

    # coremltools writes Log1p as log(x, epsilon=1), which a NeuralNetwork file stores as a unary LOG layer with
    # epsilon 1. The executor reads that layer as NeuralNetwork.proto's LOG, log(x), and the .mlmodel failed parity
    # (max |dp| 0.87 on a trained digits model); whether Core ML adds the epsilon cannot be checked here. An explicit
    # add computes log(1 + x) whichever reading is right, in both formats.
    @register_tf_op(override=True)
    def Log1p(context, node):
        x = context[node.inputs[0]]
        context.add(node.name, mb.log(x=mb.add(x=x, y=1.0), name=node.name))

    _registered = True
