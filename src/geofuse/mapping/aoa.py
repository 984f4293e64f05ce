"""Area of applicability (AOA) of a map: where the model has seen data like the scene's.

Meyer & Pebesma 2021 ("Predicting into unknown space? Estimating the area of applicability of
spatial prediction models", Methods Ecol. Evol. 12: 1620) judge a prediction by how far its
predictors lie from the training data, in the model's own feature space:

- the space: for a network the inputs of its output layer (the patch embedding it classifies
  from), for a per-patch forest its features weighted by the forest's importances (their
  recipe); standardised on the training patches and rotated onto their principal components
  (enough to keep 99% of the variance, at most :data:`MAX_COMPONENTS`);
- the dissimilarity index (DI) of a patch: the distance to the nearest training patch divided
  by the mean distance between training patches;
- the threshold: the DI of each training patch to the nearest training patch of *another
  group* (polygon, tile, cell: the units the leakage-free folds keep apart, so that a patch is
  judged as cross-validation judged it), and of those the largest that is not an outlier (upper
  whisker: at most Q3 + 1.5 IQR).

A map pixel is inside the AOA when its DI does not exceed the threshold. The map stores
``DI / threshold`` (``dissimilarity``: above 1 = outside); an ensemble averages its members'
ratios, each member measured against its own training data. The reference is at most
:data:`MAX_REFERENCE` training patches (a seeded sample), so memory and time stay bounded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geofuse.errors import ConfigError, DataNotFoundError

MAX_REFERENCE = 5000  #: training patches a member's AOA is measured against
MAX_COMPONENTS = 32  #: principal components kept of the feature space
KEPT_VARIANCE = 0.99  #: share of the training variance the components keep
SEED = 20210601  #: sample of the training patches
BATCH = 256
PAIR_CHUNK = 1024  #: reference rows per distance block


@dataclass
class AoaReference:
    """A member's training patches in its feature space (plain data, picklable).

    Attributes:
        mean, scale: standardisation of the raw features (and, for forests, their weights).
        components: (D, k) projection onto the principal components.
        points: (n, k) the reference patches, projected.
        mean_distance: mean distance between two reference patches.
        threshold: largest non-outlying DI of a reference patch to another group's.
        training_di: quantiles (0, 25, 50, 75, 100 %) of the reference patches' DI.
    """

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    points: np.ndarray
    mean_distance: float
    threshold: float
    training_di: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AoaReference:
        return cls(**d)

    def project(self, features: np.ndarray) -> np.ndarray:
        """Raw features (N, D) -> coordinates (N, k) in the reference's space."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return (z @ self.components).astype(np.float32)

    def dissimilarity(self, features: np.ndarray) -> np.ndarray:
        """``DI / threshold`` of patches with raw features (N, D): above 1 = outside."""
        nearest = _nearest(self.project(features), self.points.astype(np.float32))
        return (nearest / self.mean_distance / self.threshold).astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """What ``predict.json`` records of the reference."""
        return {"reference_patches": len(self.points), "components": self.components.shape[1],
                "features": self.components.shape[0], "mean_distance": self.mean_distance,
                "threshold_di": self.threshold, "training_di_quantiles": self.training_di}


def _nearest(query: np.ndarray, points: np.ndarray,
             exclude: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Distance from each query row to its nearest row of ``points``; with ``exclude`` =
    (query groups, point groups), points of the query's own group are skipped."""
    p = torch.from_numpy(points)
    out = np.empty(len(query), dtype=np.float64)
    for s in range(0, len(query), PAIR_CHUNK):
        d = torch.cdist(torch.from_numpy(query[s:s + PAIR_CHUNK]), p).double()
        if exclude is not None:
            same = exclude[0][s:s + PAIR_CHUNK, None] == exclude[1][None, :]
            d[torch.from_numpy(same)] = float("inf")
        out[s:s + PAIR_CHUNK] = d.min(dim=1).values.numpy()
    return out


def _mean_distance(points: np.ndarray) -> float:
    """Mean Euclidean distance between two different rows of ``points``."""
    p = torch.from_numpy(points)
    total, n = 0.0, len(points)
    for s in range(0, n, PAIR_CHUNK):
        total += float(torch.cdist(p[s:s + PAIR_CHUNK], p).double().sum())
    return total / (n * (n - 1))


def upper_whisker(values: np.ndarray) -> float:
    """The largest value not above Q3 + 1.5 IQR (a box plot's upper whisker)."""
    q1, q3 = np.percentile(values, [25, 75])
    return float(values[values <= q3 + 1.5 * (q3 - q1)].max())


def build_reference(features: np.ndarray, groups: np.ndarray,
                    weights: np.ndarray | None = None) -> AoaReference:
    """The AOA reference of training patches with raw features (N, D) and groups (N,).

    Args:
        features: the patches in the model's feature space.
        groups: the leakage unit of each patch (polygon, tile, ...).
        weights: per-feature weights applied after standardising (a forest's importances).

    Raises:
        ConfigError: fewer than two groups, or features that do not vary.
    """
    x = np.asarray(features, dtype=np.float64)
    codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1]
    if codes.max(initial=0) < 1:
        raise ConfigError("the area of applicability needs training patches from at least 2 "
                          "groups (polygons, tiles); map without --aoa")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    w = np.ones(x.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    live = (std > 1e-12) & (w > 0)
    if not live.any():
        raise ConfigError("the model's features do not vary over its training patches, so "
                          "no area of applicability can be measured; map without --aoa")
    scale = np.where(live, std / np.where(live, w, 1.0), np.inf)  # z = (x - mean) * w / std
    z = (x - mean) / scale
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(MAX_COMPONENTS, len(z) - 1, z.shape[1]), random_state=SEED)
    pca.fit(z)  # randomised for wide features (a forest on flattened pixels)
    share = np.cumsum(pca.explained_variance_ratio_)
    k = int(min(np.searchsorted(share, KEPT_VARIANCE) + 1, len(share)))
    components = pca.components_[:k].T
    points = (z @ components).astype(np.float32)
    mean_distance = _mean_distance(points)
    if mean_distance <= 0:
        raise ConfigError("the model maps every training patch to the same features; map "
                          "without --aoa")
    di = _nearest(points, points, exclude=(codes, codes)) / mean_distance
    return AoaReference(mean, scale, components, points, mean_distance, upper_whisker(di),
                        np.percentile(di, [0, 25, 50, 75, 100]).tolist())


# -- a member's training patches and features -------------------------------------------------
def patches_file(run_dir: str | Path) -> Path:
    """The PatchSet a run trained on.

    Raises:
        DataNotFoundError: it is gone.
    """
    info = json.loads((Path(run_dir) / "run.json").read_text())
    path = Path(info.get("patches_path") or "")
    if not path.is_file():
        raise DataNotFoundError(
            f"--aoa needs the training patches of run {str(run_dir)!r}, but its PatchSet "
            f"{str(path)!r} is gone; restore it (or re-run 'geofuse extract') or map without "
            "--aoa")
    return path


def training_sample(run_dir: str | Path, bands: list[str], limit: int = MAX_REFERENCE
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of at most ``limit`` training patches of a run (raw values, the run's
    bands) and their groups, read from its PatchSet without loading the rest.

    Raises:
        DataNotFoundError: the run's PatchSet is gone.
    """
    import h5py

    with h5py.File(patches_file(run_dir), "r") as f:
        names = json.loads(f.attrs["band_names"])
        split = f["split"][()]
        train = np.flatnonzero(split == 0)
        if len(train) > limit:
            train = np.sort(np.random.default_rng(SEED).choice(train, limit, replace=False))
        where = {b: i for i, b in enumerate(names)}
        x = f["x"][train][:, [where[b] for b in bands]]
        groups = np.char.decode(f["groups"][train], "utf-8")
    return x.astype(np.float32), groups


@torch.inference_mode()
def network_features(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The inputs of a network's output layers for a batch: every ``nn.Linear`` whose output
    has the shape of the network's output, concatenated in call order (one head: its input,
    the embedding it classifies from; decision fusion: every modality's)."""
    seen: list[tuple[torch.Tensor, tuple[int, ...]]] = []

    def record(_: torch.nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        seen.append((inputs[0], tuple(output.shape)))

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, torch.nn.Linear)]
    try:
        out = model(image)
    finally:
        for h in hooks:
            h.remove()
    parts = [x.flatten(1) for x, shape in seen if shape == tuple(out.shape)]
    if not parts:
        raise ConfigError(f"{type(model).__name__} has no linear output layer to measure an "
                          "area of applicability in; map without --aoa")
    return torch.cat(parts, dim=1).float()


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


def member_reference(member: Any) -> AoaReference:
    """The AOA reference of a loaded patch member (network or per-patch forest).

    Raises:
        ConfigError: a dense or per-pixel member; DataNotFoundError: its PatchSet is gone.
    """
    from geofuse.data.normalize import normalize

    if member.spec.kind not in ("patch", "patch_forest"):
        raise ConfigError(
            f"--aoa: {member.spec.model} maps pixel by pixel ({member.spec.kind}); the area of "
            "applicability is measured for patch classifiers (a network or forest per patch); "
            "map without --aoa")
    x, groups = training_sample(member.spec.run_dir, list(member.spec.bands))
    if member.spec.kind == "patch":
        x = normalize(x, member.stats)
    feats = np.concatenate([member_features(member, x[s:s + BATCH])
                            for s in range(0, len(x), BATCH)])
    weights = forest_weights(member.model) if member.spec.kind == "patch_forest" else None
    return build_reference(feats, groups, weights)


def aoa_references(specs: list[Any], progress: bool) -> list[AoaReference]:
    """Each member's reference (its training patches in its feature space), built once in
    the command's process and sent to the workers with the map's context.

    Raises:
        ConfigError: members that map pixel by pixel; DataNotFoundError: a PatchSet is gone.
    """
    from geofuse.mapping.infer import load_member
    from geofuse.progress_bars import step_progress

    first = specs[0]
    if first.kind not in ("patch", "patch_forest"):
        raise ConfigError(
            f"--aoa: {first.model} maps pixel by pixel; the area of applicability is measured "
            "for patch classifiers (a network or forest per patch); map without --aoa")
    for spec in specs:  # every file first: no progress bar before a one-line error
        patches_file(spec.run_dir)
    refs = []
    with step_progress(progress) as bar:
        task = bar.add_task("area of applicability: training patches", total=len(specs))
        for spec in specs:
            refs.append(member_reference(load_member(spec, None, "cpu")))
            bar.advance(task)
    return refs


# -- the map product ------------------------------------------------------------------------
AOA_BANDS = ["dissimilarity", "inside_aoa"]
STRIP_ROWS = 256


def aoa_bands(ratio: np.ndarray, mapped: np.ndarray) -> np.ndarray:
    """(2, h, w) float32 of a window: ``DI / threshold`` and 1 inside the AOA / 0 outside;
    NaN where the map has no value."""
    keep = mapped & np.isfinite(ratio)
    ratio = np.where(keep, ratio, np.nan).astype(np.float32)
    inside = np.where(keep, (ratio <= 1.0).astype(np.float32), np.nan).astype(np.float32)
    return np.stack([ratio, inside])


def aoa_product(references: list[AoaReference]) -> Any:
    """The ``aoa.tif`` product (:class:`~geofuse.mapping.outputs.Product`)."""
    from geofuse.mapping.outputs import Product

    return Product("aoa", list(AOA_BANDS), "float32", float("nan"), "average", {
        "method": "area of applicability, Meyer & Pebesma 2021: dissimilarity index / "
                  "threshold (above 1 = outside); inside_aoa 1 / 0",
        "threshold_di": "; ".join(f"{r.threshold:.4g}" for r in references)})


def outside_shares(aoa_path: Path, classes_path: Path | None, class_names: list[str]
                   ) -> dict[str, Any]:
    """Mapped pixels outside the AOA: in all, and per class of the class map (if any), read
    in strips."""
    import rasterio
    from rasterio.windows import Window

    k = len(class_names)
    total = np.zeros(2, dtype=np.int64)  # mapped, outside
    per_class = np.zeros((max(k, 1), 2), dtype=np.int64)
    with rasterio.open(aoa_path) as src:
        cls = rasterio.open(classes_path) if classes_path is not None else None
        try:
            for row in range(0, src.height, STRIP_ROWS):
                win = Window(0, row, src.width, min(STRIP_ROWS, src.height - row))
                inside = src.read(2, window=win)
                mapped = np.isfinite(inside)
                outside = mapped & (inside < 0.5)
                total += [int(mapped.sum()), int(outside.sum())]
                if cls is not None:
                    c = cls.read(1, window=win)
                    ok = mapped & (c < k)
                    per_class[:, 0] += np.bincount(c[ok], minlength=k)[:k]
                    per_class[:, 1] += np.bincount(c[ok & outside], minlength=k)[:k]
        finally:
            if cls is not None:
                cls.close()
    out: dict[str, Any] = {"mapped_pixels": int(total[0]), "outside_pixels": int(total[1]),
                           "outside_share": float(total[1] / total[0]) if total[0] else None}
    if classes_path is not None:
        out["outside_share_by_class"] = {
            name: (float(per_class[i, 1] / per_class[i, 0]) if per_class[i, 0] else None)
            for i, name in enumerate(class_names)}
    return out


def aoa_figure(aoa_path: Path, title: str) -> Any:
    """The dissimilarity (0-2, decimated to at most 1024 px a side) with the pixels outside
    the AOA outlined in red."""
    import rasterio
    from matplotlib.figure import Figure
    from rasterio.enums import Resampling

    with rasterio.open(aoa_path) as src:
        factor = max(1, int(np.ceil(max(src.height, src.width) / 1024)))
        shape = (max(1, src.height // factor), max(1, src.width // factor))
        ratio = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    fig = Figure(figsize=(8, 8 * shape[0] / max(shape[1], 1)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(ratio), cmap="viridis", vmin=0, vmax=2,
                      interpolation="nearest")
    outside = np.where(np.isfinite(ratio) & (ratio > 1), 1.0, np.nan)
    ax.imshow(outside, cmap="autumn", alpha=0.6, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title}\ndissimilarity index / AOA threshold (red: outside the area of "
                 "applicability)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.6, label="DI / threshold")
    return fig


def publish_aoa_figure(out: Path, written: dict[str, str], title: str) -> dict[str, str]:
    """``aoa.png`` beside a published ``aoa.tif`` (``{}`` when the map has none)."""
    if "aoa" not in written:
        return {}
    from geofuse.mapping.outputs import save_figure

    fig = aoa_figure(out / written["aoa"], title)
    return {"aoa_quicklook": save_figure(fig, out / "aoa.png").name}
