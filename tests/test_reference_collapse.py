"""The Week 4 reference failure, reproduced and caught.

The course report trained a ResNet-50 on 8-band 8x8 patches upsampled to 32x32, with a 1x1 band
reduction in front and 85% of the network frozen, and got 0% validation accuracy without
noticing. Without pretrained weights the frozen 85% is random and the same failure appears:
geofuse must say so in metrics.json and the report, with a diagnosis that names the frozen share.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from factories import make_config
from geofuse.data.patchset import PatchSet
from geofuse.training.train import train_model

CLASSES = ["Agriculture", "Forest", "Parcels", "Urban", "Water"]


def _hard_patches(n: int = 100, seed: int = 0) -> PatchSet:
    """8-band 8x8 patches whose class shows only in a weak per-band shift (as in real data)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    x = rng.normal(0, 1, (n, 8, 8, 8)) + 0.15 * rng.normal(0, 1, (len(CLASSES), 8))[y][..., None,
                                                                                      None]
    split = np.where((np.arange(n) // len(CLASSES)) % 5 == 4, 1, 0).astype(np.uint8)
    s2 = [f"s2_{i}" for i in range(6)]
    return PatchSet(x=x.astype(np.float32), y=y, band_names=[*s2, "NDVI", "elevation"],
                    modalities={"s2": s2, "modis": ["NDVI"], "dem": ["elevation"]},
                    class_names=CLASSES, groups=[f"polygon:{i}" for i in range(n)],
                    coords=np.zeros((n, 2)), split=split)


@pytest.mark.slow
def test_resnet50_85_percent_frozen_on_upsampled_8x8_is_flagged(tmp_path) -> None:
    cfg = make_config(tmp_path, epochs=4, batch_size=16, lr=1e-5, early_stopping_patience=50)
    cfg.train.model.name = "resnet50"
    cfg.train.model.input_adaptation = "reduce"
    cfg.train.model.freeze_fraction = 0.85
    cfg.train.model.upsample_to = 32
    cfg.guards.flat_epochs = 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train_model(cfg, progress=False, patchset=_hard_patches(50))
    texts = " ".join(str(w.message) for w in caught)
    assert "upsampl" in texts.lower()  # the upsampling artefact warning
    assert "frozen" in texts.lower()  # the >80% freezing warning
    metrics = json.loads((run / "metrics.json").read_text())
    guard = metrics["guard"]
    assert guard["collapsed"], guard
    assert guard["frozen_fraction"] == pytest.approx(0.85, abs=0.03)
    assert "frozen" in guard["diagnosis"]
    report = (run / "report.md").read_text()
    assert "CAUTION" in report and "frozen" in report
