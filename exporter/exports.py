"""An export folder opened for checking: its manifest, preprocessing contract and labels, and the Keras model it was
made from, loaded and confirmed by SHA-256. ``validate`` and the golden files both start here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .packaging import MANIFEST_NAME, read_manifest
from .preprocessing import Preprocessing

if TYPE_CHECKING:
    from .loading import LoadedModel


@dataclass
class OpenedExport:
    root: Path
    manifest: dict
    preprocessing: Preprocessing
    labels: list[str]
    loaded: LoadedModel  # the Keras model the manifest records (or the one given), hash checked


def open_export(export_dir: str | Path, *, model_path: str | Path | None = None, trust_code: bool = False) -> OpenedExport:
    """Read ``export_dir``'s manifest and contract and load its Keras model (the path the manifest records unless
    ``model_path`` is given) the way the export did (``add_softmax`` and the chosen output as recorded); a model whose SHA-256 differs from
    the manifest's is refused."""
    from .heads import recorded_add_softmax, recorded_output
    from .loading import load_model

    root = Path(export_dir)
    manifest = read_manifest(root)
    pre = Preprocessing.from_dict(manifest["preprocessing"], source=str(root / MANIFEST_NAME))
    from .packaging import find_source_model

    source = Path(model_path) if model_path else find_source_model(manifest, root)
    # The hash is checked before the load: the manifest (untrusted) names the file to load, and with --trust-code a
    # .keras file's Lambda layers run as Keras builds the model, so only the file the export was made from is loaded.
    loaded = load_model(
        source,
        trust_code=trust_code,
        add_softmax=recorded_add_softmax(manifest),
        input_size=pre.input_size,
        expected_sha256=manifest["source"]["sha256"],
        output=recorded_output(manifest),
    )
    return OpenedExport(root=root, manifest=manifest, preprocessing=pre, labels=list(manifest["labels"]), loaded=loaded)
