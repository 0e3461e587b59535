"""An ML Program (``spec.mlProgram``, the .mlpackage format) loaded into a list of numpy steps and run.

Load time: every ``const`` is decoded (immediate values and weight-file blobs), every op whose inputs are all
constants (the ``constexpr_*`` decompression ops, casts of weights) is evaluated once, and each remaining op is bound
to its numpy implementation. The program's ``classify`` op names the probabilities and the class labels. Run time:
the steps run in program order on a batch; each output's shape is checked against the shape the file declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import ConversionError, UnsupportedOperationError
from . import live, mil_constexpr, mil_elementwise, mil_recurrent, mil_resample, mil_scatter, mil_shape, mil_tensor, plan, stages  # noqa: F401  (ops register)
from .milvalue import BY_NAME, FLOAT_TYPES, WeightFiles, decode, tensor_type
from .registry import MIL, OpCall

if TYPE_CHECKING:
    from ...packaging import VerifiedReads

F32 = np.float32
FUNCTION = "main"


def _to_compute(value):
    """Floating constants held as float32. A constant the file declares float16 was decoded as float16, so it is
    widened exactly; one it declares float32 keeps its bits in either compute precision."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value.astype(F32)
    return value


def element_type(dtype: str):
    """The numpy type a value the file declares as ``dtype`` is held in: float32 for every float type (the compute
    precision decides rounding), the integer or bool type itself otherwise; None for non-tensors."""
    if dtype in FLOAT_TYPES:
        return np.dtype(F32)
    return np.dtype(BY_NAME[dtype][0]) if dtype in BY_NAME and BY_NAME[dtype][0] is not None else None


def _declared_kind(value: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """``value`` in the element kind (float, signed or unsigned integer, bool) the file declares for it: a mixed
    int32/float matmul the file types int32 gives int32 (truncated toward zero), and the like."""
    if dtype is None or value.dtype.kind == dtype.kind:
        return value
    if dtype.kind in "iu" and value.dtype.kind == "f":
        return np.trunc(value).astype(dtype)
    return value.astype(dtype)


OPSET_PREFIX = "CoreML"  # ML Program opsets are named CoreML5 (iOS15) ... CoreML8 (iOS18)
IOS_OF_COREML = 10  # CoreML<n> is iOS<n + 10>


def _ios_opset(name: str, where: str) -> int:
    digits = name[len(OPSET_PREFIX) :] if name.startswith(OPSET_PREFIX) else ""
    if not digits.isdigit():
        raise UnsupportedOperationError(f"ML Program opset {name!r} is not one the executor knows (CoreML5-8)", path=where)
    return int(digits) + IOS_OF_COREML


class Step:
    __slots__ = ("call", "fn", "outputs", "declared", "types", "half", "release", "observe_only")

    def __init__(self, call: OpCall, fn, outputs: list[str], declared: list, dtypes: list[str]):
        self.call, self.fn, self.outputs, self.declared = call, fn, outputs, declared
        self.types = [element_type(d) for d in dtypes]  # the numpy type of each output as the file declares it
        self.half = [d == "fp16" for d in dtypes]  # outputs the file declares float16 (rounded when computing in fp16)
        self.release: list[str] = []  # computed values no later step reads: dropped after this one
        self.observe_only = False  # folded into a later step (plan.fuse_pads): run only to show its value


class Program:
    """A loaded ML Program. ``run(x)`` maps the (N, C, H, W) float32 image tensor to (N, K) probabilities."""

    def __init__(self, spec, model_dir: Path, where: str, fp16: bool, reads: VerifiedReads | None = None):
        self.where, self.fp16 = where, fp16
        functions = spec.mlProgram.functions
        if FUNCTION not in functions:
            raise ConversionError(f"ML Program has no {FUNCTION!r} function", path=where)
        fn = functions[FUNCTION]
        block = fn.block_specializations[fn.opset]
        self.opset = _ios_opset(fn.opset, where)
        if len(fn.inputs) != 1:
            raise UnsupportedOperationError(f"ML Program has {len(fn.inputs)} inputs; one image input is supported", path=where)
        self.input = fn.inputs[0].name
        self.env: dict = {}
        self.consts: set[str] = set()
        self.decoded = live.Constants(where)  # the constants' bytes together, bounded
        self.shapes: dict[str, tuple | None] = {self.input: tensor_type(fn.inputs[0].type, where)[1]}
        self.batched: set[str] = {self.input}
        self.batchable = True
        self.steps: list[Step] = []
        self.files = WeightFiles(model_dir, where, reads)
        self.probabilities: str | None = None
        self.labels: list[str] = []
        for index, operation in enumerate(block.operations):
            self._load(operation, index)
        if self.probabilities is None:
            raise UnsupportedOperationError("ML Program has no classify op; only classifiers are supported", path=where)
        self.files = None  # weight bytes are no longer needed once decoded
        for step in self.steps:  # a program that runs image by image keeps every declared shape as it is
            step.call.batched = step.call.batched and self.batchable
        plan.fuse_pads(self)
        plan.fuse_relus(self)
        plan.plan_release(self)
        sizes = [int(np.prod(shape)) for step in self.steps for shape in step.declared if shape]
        self.largest_activation: int = 4 * max(sizes, default=1)  # bytes per image of the biggest float32 value
        self.peak_bytes: int = 0  # the most computed-value bytes alive at once for one image, over the passes run so far
        self.stage_reads: dict[int, set[str]] = {}
        self.stages: list[tuple[int, int, int]] = stages.plan_stages(self) if self.batchable else []

    # ------------------------------------------------------------------------------------------------ loading
    def _declare(self, operation) -> tuple[list[str], list, list[str]]:
        names, shapes, dtypes = [], [], []
        for out in operation.outputs:
            if out.type.WhichOneof("type") == "tensorType":
                dtype, shape = tensor_type(out.type, self.where)
            else:
                dtype, shape = "other", None
            names.append(out.name)
            shapes.append(shape)
            dtypes.append(dtype)
            self.shapes[out.name] = shape
        return names, shapes, dtypes

    def _args(self, operation, op_name: str) -> dict[str, list[str]]:
        """Input bindings by parameter name; inline values and attributes become named constants."""
        args: dict[str, list[str]] = {}
        for key, argument in operation.inputs.items():
            names = []
            for i, binding in enumerate(argument.arguments):
                if binding.WhichOneof("binding") == "name":
                    if binding.name not in self.env and binding.name not in self.shapes:
                        raise ConversionError(f"op {op_name!r} reads {binding.name!r} before it is defined", path=self.where)
                    names.append(binding.name)
                else:
                    const_name = f"{op_name}::{key}::{i}"
                    self._constant(const_name, decode(binding.value, self.files, self.where), binding.value.type)
                    names.append(const_name)
            args[key] = names
        for key, value in operation.attributes.items():
            if key != "name":
                const_name = f"{op_name}::@{key}"
                self._constant(const_name, decode(value, self.files, self.where), value.type)
                args[key] = [const_name]
        return args

    def add_constant(self, name: str, value) -> None:
        """A constant of the executor's own (for load-time rewrites of the steps)."""
        self._constant(name, np.asarray(value) if not isinstance(value, str) else value)

    def _constant(self, name: str, value, value_type=None) -> None:
        self.env[name] = _to_compute(value)
        self.decoded.add(self.env[name], f"constant {name!r}")
        self.consts.add(name)
        if value_type is not None and value_type.WhichOneof("type") == "tensorType":
            self.shapes[name] = tensor_type(value_type, self.where)[1]

    def _load(self, operation, index: int) -> None:
        kind = operation.type
        names, declared, dtypes = self._declare(operation)
        op_name = names[0] if names else f"#{index}"
        if operation.blocks:
            raise UnsupportedOperationError(
                f"{kind} op {op_name!r} has nested blocks (control flow), which the executor does not support", path=self.where
            )
        if kind == "const":
            value = decode(operation.attributes["val"], self.files, self.where)
            self._constant(names[0], value)
            return
        args = self._args(operation, op_name)
        if kind == "classify":
            self._classify(args, op_name)
            return
        definition = MIL.lookup(kind, f"op {op_name!r}", self.where)
        batched = any(n in self.batched for names_ in args.values() for n in names_)
        call = OpCall(kind, op_name, self.where, args, self.env, self.consts, self.shapes, batched, self.opset)
        if all(n in self.consts for names_ in args.values() for n in names_):
            self._fold(call, definition.impl, names, declared, dtypes)
            return
        if batched:
            self.batched.update(names)
            if not definition.batch(call) or any(s is None or len(s) == 0 or s[0] != 1 for s in declared):
                self.batchable = False
        self.steps.append(Step(call, definition.impl, names, declared, dtypes))

    def _fold(self, call: OpCall, fn, names, declared, dtypes) -> None:
        """Evaluate an op on constants once; its outputs take the file's declared element type."""
        outputs = fn(call)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        for name, value, shape, dtype in zip(names, outputs, declared, dtypes, strict=True):
            value = _declared_kind(np.asarray(value), element_type(dtype))
            if shape is not None and tuple(value.shape) != tuple(shape):
                raise ConversionError(
                    f"{call.op_type} op {call.name!r} produced shape {list(value.shape)}, the file declares {list(shape)}", path=self.where
                )
            if dtype == "fp16":
                value = value.astype(np.float16)
            self.env[name] = value.astype(F32) if value.dtype.kind == "f" else value
            self.decoded.add(self.env[name], f"{call.op_type} op {call.name!r}")
            self.consts.add(name)

    def _classify(self, args: dict[str, list[str]], op_name: str) -> None:
        probabilities = args.get("probabilities", [None])[0]
        if probabilities is None or "classes" not in args:
            raise ConversionError(f"classify op {op_name!r} lacks probabilities or classes", path=self.where)
        classes = self.env[args["classes"][0]]
        self.labels = [str(c) for c in (classes.tolist() if isinstance(classes, np.ndarray) else classes)]
        self.probabilities = probabilities

    # ------------------------------------------------------------------------------------------------ running
    def run(self, x: np.ndarray, observe=None) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, K) float32 probabilities; N > 1 only when ``batchable``. ``observe(name,
        value)``, if given, sees every op output as it is computed (valid only during the call)."""
        env = self._begin(x)
        self._run_steps(env, 0, len(self.steps), x.shape[0], observe)
        return self._probabilities(env, x.shape[0])

    def run_staged(self, x: np.ndarray) -> np.ndarray:
        """``run`` over any number of images, stage by stage (``self.stages``, see ``stages.plan_stages``): each
        stage's steps run on passes of at most its number of images, the values still to be read regrouped between
        stages. Only for a ``batchable`` program; the same arithmetic per image as ``run``."""
        n = x.shape[0]
        envs: list[dict] = []
        sizes: list[int] = []
        for start, stop, images in self.stages:
            count = max(1, -(-n // images))
            if not envs:
                bounds = stages.even_bounds(n, count)
                envs = [self._begin(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
                sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            elif count != len(envs):
                envs, sizes = stages.regroup(envs, sizes, count, self.stage_reads[start]), stages.even_sizes(n, count)
            for env, size in zip(envs, sizes, strict=True):
                self._run_steps(env, start, stop, size, None)
        return np.concatenate([self._probabilities(env, size) for env, size in zip(envs, sizes, strict=True)], axis=0)

    def _begin(self, x: np.ndarray) -> dict:
        env = dict(self.env)
        env[self.input] = x
        return env

    def _probabilities(self, env: dict, n: int) -> np.ndarray:
        probs = np.asarray(env[self.probabilities], F32)
        return probs.reshape(n, -1)

    def _run_steps(self, env: dict, start: int, stop: int, n: int, observe) -> None:
        """Steps ``start:stop`` on the values of one pass of ``n`` images in ``env`` (updated in place). The computed
        values alive at once are counted (``live.Meter``): over LIVE_ACTIVATION_BUDGET_BYTES the pass stops."""
        meter = live.Meter(sum(v.nbytes for k, v in env.items() if k not in self.env and isinstance(v, np.ndarray)), n, self.where)
        for step in self.steps[start:stop]:
            if step.observe_only and observe is None:
                continue
            call = step.call.bound(env)
            out = step.fn(call)
            outs = out if isinstance(out, tuple) else (out,)
            if len(outs) != len(step.outputs):
                raise ConversionError(
                    f"{call.op_type} op {call.name!r} produced {len(outs)} outputs, the file declares {len(step.outputs)}", path=self.where
                )
            for name, value, shape, dtype, half in zip(step.outputs, outs, step.declared, step.types, step.half, strict=True):
                value = _declared_kind(np.asarray(value), dtype)
                lead = (n,) if self.batchable and name in self.batched else tuple(shape[:1]) if shape else ()
                if shape is not None and (value.shape[1:] != tuple(shape[1:]) or value.shape[:1] != lead):
                    raise ConversionError(
                        f"{call.op_type} op {call.name!r} produced shape {list(value.shape)}, the file declares {list(shape)}",
                        path=self.where,
                    )
                if value.dtype == np.float64:
                    value = value.astype(F32)
                if self.fp16 and half and value.dtype == F32:
                    value = value.astype(np.float16).astype(F32)
                meter.add(value, env.get(name))
                env[name] = value
                if observe is not None:
                    observe(name, value)
            for name in step.release:
                meter.remove(env.pop(name))
        self.peak_bytes = max(self.peak_bytes, meter.peak_per_image)
