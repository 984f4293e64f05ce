"""A map member's feature space and AOA reference (:mod:`geofuse.mapping.aoa`).

The references are built once in the command's process, on the mapping device, and saved to
one file beside the partial products; every worker loads them once with its models (they are
not sent with each window).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geofuse.errors import ConfigError
from geofuse.mapping.aoa import (
    AoaReference,
    TrainingSample,
    build_reference,
    patches_file,
    sample_batches,
    training_sample,
)

PATCH_KINDS = ("patch", "patch_forest")


@torch.inference_mode()
def network_features(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The inputs of a network's output layers for a batch (see :func:`forward_with_features`)."""
    return forward_with_features(model, image)[1]


@torch.inference_mode()
def forward_with_features(model: torch.nn.Module, image: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's output for a batch and the inputs of its output layers: the
    ``nn.Linear`` layers whose output has the shape of the network's output, the last one
    called in each branch (a branch: the layer's parent module, or the layer itself inside a
    ModuleDict/ModuleList, as decision fusion's heads), concatenated in call order. A hidden
    layer as wide as the output, followed by the head in the same parent, is left out."""
    parent: dict[int, str] = {}
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            is_list = isinstance(module, torch.nn.ModuleDict | torch.nn.ModuleList)
            parent[id(child)] = f"{name}.{child_name}" if is_list else name
    seen: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}

    def record(module: torch.nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        branch = parent.get(id(module), "")
        seen.pop(branch, None)  # the last call of a branch, in call order
        seen[branch] = (inputs[0], tuple(output.shape))

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, torch.nn.Linear)]
    try:
        out = model(image)
    finally:
        for h in hooks:
            h.remove()
    parts = [x.flatten(1) for x, shape in seen.values() if shape == tuple(out.shape)]
    if not parts:
        raise ConfigError(f"{type(model).__name__} has no linear output layer to measure an "
                          "area of applicability in; map without --aoa")
    return out, torch.cat(parts, dim=1).float()


def member_features(member: Any, x: np.ndarray) -> np.ndarray:
    """Raw features (N, D) of patches ``x`` (N, C, P, P) in a member's space: normalised
    patches through the network (Monte Carlo dropout paused), or a forest's patch features."""
    if member.spec.kind == "patch_forest":
        from geofuse.models.forest import patch_features

        return patch_features(np.ascontiguousarray(x), member.spec.features,
                              np.asarray(member.stats.mean))
    from geofuse.data.transforms import standardize_patches

    image = torch.from_numpy(np.ascontiguousarray(x)).to(member.device)
    if member.per_patch:
        image = standardize_patches(image)
    image = image.contiguous(memory_format=torch.channels_last)
    if member.mc is not None:
        member.mc.active = False
    try:
        return network_features(member.model, image).cpu().numpy()
    finally:
        if member.mc is not None:
            member.mc.active = True


def forest_weights(estimator: Any) -> np.ndarray | None:
    """A fitted forest's feature importances (Meyer & Pebesma's weights); None for a model
    without them (logistic regression: every feature counts alike)."""
    model = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    importances = getattr(model, "feature_importances_", None)
    return None if importances is None else np.asarray(importances, dtype=np.float64)


def member_reference(member: Any, sample: TrainingSample) -> AoaReference:
    """The AOA reference of a loaded patch member (network or per-patch forest): its training
    ``sample`` read, normalised and embedded a batch at a time."""
    from geofuse.data.normalize import normalize

    feats = [member_features(member, x if member.spec.kind == "patch_forest"
                             else normalize(x, member.stats))
             for x in sample_batches(sample)]
    weights = forest_weights(member.model) if member.spec.kind == "patch_forest" else None
    return build_reference(np.concatenate(feats), sample.units, weights,
                           f"run {member.spec.run_dir!r}", sample.exclusion)


def aoa_references(specs: list[Any], device: str, progress: bool) -> list[AoaReference]:
    """Each member's reference, built in this process on ``device``.

    Raises:
        ConfigError: members that map pixel by pixel, or unusable training patches;
            DataNotFoundError: a PatchSet is gone.
    """
    from geofuse.mapping.infer import load_member
    from geofuse.progress_bars import step_progress

    first = specs[0]
    if first.kind not in PATCH_KINDS:
        raise ConfigError(
            f"--aoa: {first.model} maps pixel by pixel; the area of applicability is measured "
            "for patch classifiers (a network or forest per patch); map without --aoa")
    # every PatchSet first: no progress bar before a one-line error
    samples = [training_sample(spec.run_dir, list(spec.bands)) for spec in specs]
    refs = []
    with step_progress(progress) as bar:
        task = bar.add_task("area of applicability: training patches", total=len(specs))
        for spec, sample in zip(specs, samples, strict=True):
            refs.append(member_reference(load_member(spec, None, device), sample))
            bar.advance(task)
    return refs


def reference_files(specs: list[Any]) -> list[Path]:
    """The PatchSets the references come from (they belong in the map's fingerprint)."""
    return [patches_file(s.run_dir) for s in specs]


def save_references(refs: list[AoaReference], path: Path) -> None:
    """Write the references for the workers (pickled plain data)."""
    path.write_bytes(pickle.dumps([r.to_dict() for r in refs], protocol=4))


def load_references(path: str | Path) -> list[AoaReference]:
    """The references :func:`save_references` wrote."""
    return [AoaReference.from_dict(d) for d in pickle.loads(Path(path).read_bytes())]
