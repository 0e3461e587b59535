"""Typed results of the Python API. ``Manifest`` and ``Report`` are the JSON documents the CLI writes (they are
dicts, so ``json.dumps`` and existing ``manifest["artifacts"]`` code keep working) with the look-ups people need::

    manifest = exporter.export(...)
    manifest.artifact("mlpackage", "int8").path     # absolute Path of the int8 .mlpackage
    report = exporter.validate(...)
    report.passed, report.artifact("onnx", "fp16").status
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class ArtifactInfo:
    path: Path  # absolute
    format: str
    variant: str
    bytes: int
    sha256: str
    minimum_deployment_target: str
    record: dict  # everything the manifest says about it


@dataclass(frozen=True)
class ArtifactResult:
    path: Path
    format: str
    variant: str
    status: str  # "passed", "failed", "not run"
    engine: dict | None
    failures: list[str]
    record: dict  # every metric the report holds for it


def _find(rows: list[dict], fmt: str, variant: str, where: str) -> dict:
    for row in rows:
        if row["format"] == fmt and row["variant"] == variant:
            return row
    from .precheck import did_you_mean

    have = [f"{r['format']}:{r['variant']}" for r in rows]
    raise ConfigError(f"{where} has no {fmt}:{variant}{did_you_mean(f'{fmt}:{variant}', have)}; it has {have}")


class Manifest(dict):
    """manifest.json of an export, with ``root`` (the export folder) and ``artifact(format, variant)``."""

    def __init__(self, data: dict, root: str | Path):
        super().__init__(data)
        self.root = Path(root).absolute()

    @property
    def artifacts(self) -> list[ArtifactInfo]:
        return [self._info(a) for a in self["artifacts"]]

    def artifact(self, format: str, variant: str) -> ArtifactInfo:  # noqa: A002 - the manifest's own field name
        return self._info(_find(self["artifacts"], format, variant, f"the export {self.root}"))

    def _info(self, a: dict) -> ArtifactInfo:
        return ArtifactInfo(self.root / a["path"], a["format"], a["variant"], a["bytes"], a["sha256"], a["minimum_deployment_target"], a)


class Report(dict):
    """A parity report (schema: exporter/report/SCHEMA.md) with ``passed`` and ``artifact(format, variant)``."""

    @property
    def passed(self) -> bool:
        return bool(self["passed"])

    def artifact(self, format: str, variant: str) -> ArtifactResult:  # noqa: A002
        r = _find(self["artifacts"], format, variant, f"the report of {self['export_dir']}")
        return ArtifactResult(
            Path(self["export_dir"]).absolute() / r["path"], r["format"], r["variant"], r["status"], r.get("engine"), list(r["failures"]), r
        )
