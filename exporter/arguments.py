"""The one place where parsed command-line arguments become the Python API's typed arguments.

Every command's options carry (as their argparse ``dest``) the name of the API parameter or ``ExportOptions`` field
they set, so the CLI hands them over by name instead of writing each one out again; the typed checks (ExportOptions'
``__post_init__``, the API functions' own) then apply to the CLI and the Python API alike. An option that no API
parameter takes is a bug (a renamed parameter would otherwise be dropped without a word): ``api_arguments`` raises.

Heavy-import free: exporter/cli.py and exporter/xcode/cli.py import it before any option is checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Any

# Options every command has that steer the terminal, not the API (``verbose`` is both: the API takes it too).
CLI_ONLY = frozenset({"command", "debug", "quiet", "json", "html"})


def parameter_names(target: Callable[..., Any]) -> list[str]:
    """The keyword-settable parameters of a function, or the init fields of a dataclass."""
    if dataclasses.is_dataclass(target):
        return [f.name for f in dataclasses.fields(target) if f.init]
    return [name for name, p in inspect.signature(target).parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def api_arguments(args: argparse.Namespace, *targets: Callable[..., Any], cli_only: Iterable[str] = CLI_ONLY) -> list[dict[str, Any]]:
    """``args`` divided among ``targets`` by name: one dict of keyword arguments per target, an argument going to
    the first target that takes it. Raises TypeError for an argument that no target takes and is not ``cli_only``."""
    given = dict(vars(args))
    out: list[dict[str, Any]] = []
    for target in targets:
        names = parameter_names(target)
        out.append({name: given.pop(name) for name in names if name in given})
    unused = sorted(set(given) - set(cli_only))
    if unused:
        raise TypeError(f"command-line options {unused} match no parameter of {[getattr(t, '__name__', t) for t in targets]}")
    return out


class GateAction(argparse.Action):
    """``--gate SPEC`` (repeatable) collected into the dict of gates the API takes (``{"int8": Gate(...)}``); a bad
    SPEC raises ConfigError (exit 2) naming it."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from .validation.tolerances import parse_gate

        key, gate = parse_gate(str(values))
        gates = dict(getattr(namespace, self.dest, None) or {})
        gates[key] = gate
        setattr(namespace, self.dest, gates)
