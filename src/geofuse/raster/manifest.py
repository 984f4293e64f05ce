"""The JSON manifest written beside every fused stack (``stack.tif`` -> ``stack.json``).

It is the contract between ``prepare`` (writer) and ``extract``/``predict`` (readers): band
order, which modality each band belongs to, the grid, the sources and per-band statistics.
The stack itself is float32 physical values (raw * scale + offset) with NaN as nodata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from geofuse.errors import DataNotFoundError
from geofuse.io_utils import atomic_write_json


@dataclass
class StackManifest:
    """Everything a reader needs to know about a fused stack."""

    bands: list[str]
    modalities: dict[str, list[str]]
    crs: str
    transform: list[float]  # affine a, b, c, d, e, f
    width: int
    height: int
    sources: dict[str, Any] = field(default_factory=dict)  # modality -> files, resampling, scale
    band_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    created_by: str = "geofuse prepare"

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> StackManifest:
        path = Path(path)
        if not path.is_file():
            raise DataNotFoundError(
                f"stack manifest {str(path)!r} does not exist; run 'geofuse prepare -c CONFIG' "
                "to write the fused stack and its manifest"
            )
        data = json.loads(path.read_text())
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def manifest_path(stack_path: str | Path) -> Path:
    """Path of the manifest that belongs to ``stack_path``."""
    return Path(stack_path).with_suffix(".json")
