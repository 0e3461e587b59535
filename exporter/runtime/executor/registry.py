"""The executor's one operation registry, for both model types: ML Program ops (``mlprogram``) and NeuralNetwork
layers (``neuralnetwork``).

Each implementation registers itself with ``@op(...)`` or ``@layer(...)``; the two tables (``MIL``, ``NN``) are the
only list of what the executor runs, and README's "supported operations" block is generated from them
(``python -m exporter.runtime.executor.oplist --write``). An entry carries:

* ``impl``: for an ML Program op, ``fn(call: OpCall) -> output(s)``; for a NeuralNetwork layer,
  ``build(params, ctx: LayerContext) -> (run, batch_rule)`` (a layer's parameters are a protobuf message, read once);
* ``batch``: for ML Program ops, ``rule(call) -> bool``, whether running the op on a batch of N in place of the
  declared 1 computes the same thing image by image (NeuralNetwork builders return their rule, since it depends on
  the parameters they decode);
* ``inplace``: the implementation may write its result into its ``x`` (it calls ``OpCall.out()``);
* ``fresh``: its output is always a new array it allocated (so a later in-place op may overwrite it).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...errors import ConversionError, UnsupportedOperationError

_MISSING = object()
# Where the generated list of supported operations lives (named in the error for an unknown one).
SUPPORTED_LIST = 'README.md, section "Core ML executor: supported operations"'


def always(_call) -> bool:
    return True


def never(_call) -> bool:
    return False


@dataclass(frozen=True)
class Entry:
    name: str
    impl: Callable
    batch: Callable
    inplace: bool
    fresh: bool
    module: str


class Registry:
    """Operation name -> Entry for one model type; ``lookup`` refuses an unknown name with the list's location."""

    def __init__(self, model_type: str, noun: str):
        self.model_type, self.noun = model_type, noun
        self.entries: dict[str, Entry] = {}
        self.refused: dict[str, str] = {}  # names the executor declines on purpose -> why (see ``refuse``)

    def register(self, *names: str, batch: Callable = never, inplace: bool = False, fresh: bool = False):
        def add(impl):
            for name in names:
                if name in self.entries:
                    raise RuntimeError(f"{self.model_type} {self.noun} {name!r} is registered twice")
                self.entries[name] = Entry(name, impl, batch, inplace, fresh or inplace, impl.__module__)
            return impl

        return add

    def refuse(self, reason: str, *names: str) -> None:
        """Decline ``names`` with ``reason`` (a clause after the name: "draws random numbers, ...")."""
        for name in names:
            if name in self.entries:
                raise RuntimeError(f"{self.model_type} {self.noun} {name!r} is registered and refused")
            self.refused[name] = reason

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> Entry:
        return self.entries[name]

    def names(self) -> list[str]:
        return sorted(self.entries)

    def lookup(self, name: str, what: str, where: str) -> Entry:
        """The entry for ``name``; ``what`` names the op or layer in the file (for the error)."""
        entry = self.entries.get(name)
        if entry is None and name in self.refused:
            raise UnsupportedOperationError(
                f"{self.model_type} {self.noun} type {name!r} ({what}) {self.refused[name]}; the Core ML executor does not run it",
                path=where,
            )
        if entry is None:
            close = difflib.get_close_matches(name, self.entries, n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise UnsupportedOperationError(
                f"{self.model_type} {self.noun} type {name!r} ({what}) is not supported by the Core ML executor; it "
                f"runs {len(self.entries)} {self.model_type} {self.noun} types{hint}, listed in {SUPPORTED_LIST}",
                path=where,
            )
        return entry


MIL = Registry("ML Program", "op")
NN = Registry("NeuralNetwork", "layer")


def op(*names: str, batch: Callable = never, inplace: bool = False, fresh: bool = False):
    """Register ``fn`` for the MIL op types ``names``. ``batch`` says, from the op's constant parameters, whether
    running it on a batch of N in place of the declared 1 computes the same thing image by image."""
    return MIL.register(*names, batch=batch, inplace=inplace, fresh=fresh)


def layer(*names: str, fresh: bool = False):
    """Register a NeuralNetwork layer builder ``build(params, ctx) -> (run, batch_rule)`` for ``names``."""
    return NN.register(*names, fresh=fresh)


class OpCall:
    """One op's view of its parameters: values by name (inputs and attributes alike), whether they are constants,
    their declared shapes, and a per-op cache for data derived from constants."""

    __slots__ = ("op_type", "name", "where", "args", "env", "consts", "shapes", "cache", "batched", "inplace", "opset")

    def __init__(
        self,
        op_type: str,
        name: str,
        where: str,
        args: dict[str, list[str]],
        env: dict,
        consts: set,
        shapes: dict,
        batched: bool = False,
        opset: int = 15,
    ):
        self.op_type, self.name, self.where, self.args = op_type, name, where, args
        self.env, self.consts, self.shapes, self.batched = env, consts, shapes, batched
        self.cache: dict = {}
        self.inplace = False  # set by the interpreter when x is a fresh array no later op reads: write into it
        self.opset = opset  # the program's iOS opset (15 for iOS15 = CoreML5 ... 18 for iOS18 = CoreML8)

    def bound(self, env: dict) -> OpCall:
        """This call reading from ``env`` (one forward pass's values); everything else is shared."""
        call = object.__new__(OpCall)
        for slot in OpCall.__slots__:
            setattr(call, slot, getattr(self, slot))
        call.env = env
        return call

    def out(self, key: str = "x"):
        """The array to write the result into (``x`` itself when ``inplace``), or None for a new one."""
        return self.env[self.args[key][0]] if self.inplace else None

    def has(self, key: str) -> bool:
        return key in self.args

    def __getitem__(self, key: str):
        if key not in self.args:
            raise self.fail(f"has no {key!r} parameter")
        return self.env[self.args[key][0]]

    def get(self, key: str, default=None):
        return self.env[self.args[key][0]] if key in self.args else default

    def values(self, key: str) -> list:
        return [self.env[name] for name in self.args.get(key, [])]

    def is_const(self, key: str) -> bool:
        return key in self.args and all(name in self.consts for name in self.args[key])

    def const(self, key: str, default=_MISSING):
        """A parameter that must be a constant of the file, as a Python value (scalars unwrapped, arrays as lists)."""
        if key not in self.args:
            if default is _MISSING:
                raise self.fail(f"has no {key!r} parameter")
            return default
        if not self.is_const(key):
            raise self.unsupported(f"needs a constant {key!r}; a computed one is not supported")
        value = self.env[self.args[key][0]]
        if isinstance(value, np.ndarray):
            return value.item() if value.ndim == 0 else value.tolist()
        return value

    def value(self, key: str, default=_MISSING):
        """A parameter as a Python value (scalars unwrapped, arrays as lists), constant or computed."""
        if key not in self.args:
            if default is _MISSING:
                raise self.fail(f"has no {key!r} parameter")
            return default
        value = self.env[self.args[key][0]]
        if isinstance(value, np.ndarray):
            return value.item() if value.ndim == 0 else value.tolist()
        return value

    def shape(self, key: str, index: int = 0):
        """The declared static shape of a parameter, or None."""
        return self.shapes.get(self.args[key][index]) if key in self.args else None

    def rank(self, key: str) -> int | None:
        shape = self.shape(key)
        return None if shape is None else len(shape)

    def fail(self, message: str) -> ConversionError:
        return ConversionError(f"{self.op_type} op {self.name!r} {message}", path=self.where)

    def unsupported(self, message: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(f"{self.op_type} op {self.name!r} {message}", path=self.where)


def axes_exclude_batch(key: str, default=None):
    """Batch rule for ops with an axis/axes parameter: fine when no axis is 0 (normalised by the declared rank).
    ``default`` is the op's own default when the parameter is absent; None means "every axis"."""

    def rule(call: OpCall) -> bool:
        value = call.const(key, default)
        if value is None:
            return False
        rank = call.rank("x") if call.has("x") else call.rank("values")
        axes = value if isinstance(value, list) else [value]
        return rank is not None and all(int(a) % rank != 0 for a in axes)

    return rule
