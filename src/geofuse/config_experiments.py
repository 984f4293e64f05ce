"""Config sections of studies: collapse guards and the ablation grid (with Ray)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from geofuse._config_base import _Model


class GuardConfig(_Model):
    """Thresholds of the collapse guard."""

    one_class_fraction: float = Field(
        0.9, gt=0, le=1, description="Collapse if one class gets this share of predictions."
    )
    majority_margin: float = Field(
        0.0, ge=0, description="Collapse if accuracy <= majority-class rate + this margin."
    )
    flat_epochs: int = Field(
        10, ge=2, description="Collapse if val_loss stays flat for this many epochs."
    )
    flat_tolerance: float = Field(
        1e-3, ge=0, description="Flat: max - min of val_loss <= this share of its mean."
    )
    stop_on_collapse: bool = Field(
        False, description="Stop training at the first validation epoch with a NaN or flat "
        "loss or one-class predictions (the reason is recorded in run.json)."
    )


class RayConfig(_Model):
    """Run ablation cells as Ray tasks (``ablation.ray``)."""

    address: str | None = Field(
        None, description="Ray cluster address (auto, ray://host:10001) or 'local' to start a "
        "local Ray instance; default: no Ray (local processes, see ablation.workers)."
    )
    num_cpus_per_cell: float = Field(1.0, gt=0, description="CPUs Ray reserves per cell.")
    num_gpus_per_cell: float = Field(
        0.0, ge=0, description="GPUs Ray reserves per cell: each cell then trains on its own "
        "GPU(s) (Ray sets CUDA_VISIBLE_DEVICES); a fraction such as 0.5 puts two cells on one "
        "GPU; at least train.devices for data-parallel cells; 0 = none reserved."
    )


class AblationModelConfig(_Model):
    """One model/fusion strategy of the ablation grid (``ablation.models`` entry)."""

    name: str = Field(description="Registered model, e.g. simple_cnn, late_fusion.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="train.model keys for this entry, e.g. {merge: "
        "attention}."
    )
    label: str | None = Field(None, description="Name in config ids; default name[+options].")
    train: dict[str, Any] = Field(
        default_factory=dict, description="train keys this entry changes (not model, "
        "modalities or bands), e.g. {tta: true, jitter: 0.1, monitor: val_f1_macro}: compare "
        "training levers in one study, on the same folds, with paired statistics."
    )


class AblationConfig(_Model):
    """Sensor-subset x model x seed grid, cross-validated over grouped folds (geofuse ablate)."""

    folds: int = Field(5, ge=2, description="Number of cross-validation folds.")
    group_by: Literal["polygon", "cell", "tile", "block"] = Field(
        "polygon", description="Unit that never straddles folds: polygon or cell (the "
        "PatchSet's groups: label polygons, or 1 km cells of So2Sat-POP), "
        "tile (tile_regex on the group) or block (square spatial blocks of block_size)."
    )
    block_size: float | None = Field(
        None, gt=0, description="group_by block: block side in CRS units (use at least a few "
        "patch footprints); blocks are also merged with the polygons they cut."
    )
    tile_regex: str = Field(
        r"^([^/]+)/", description="group_by tile: regex whose first group (or match) in a "
        "patch's group gives its tile, e.g. 'tile_03/polygon:17' -> tile_03."
    )
    stratify: Literal["class", "change_level"] = Field(
        "class", description="Stratify folds by class, or by change level (low <5%, moderate "
        "5-30%, high >=30% positive pixels; segmentation)."
    )
    test_fraction: float = Field(
        0.0, ge=0, lt=1, description="Held-out test share carved out first (grouped, "
        "stratified); evaluated per cell, never used for selection."
    )
    buffer: float | None = Field(
        None, gt=0, description="Spatial buffer in CRS units (metres in a UTM grid): in each "
        "fold, training patches whose centre lies closer than this to a validation or test "
        "patch centre are left out of that fold's training, so that every score is measured "
        "at least this far from the training data (buffered cross-validation against spatial "
        "autocorrelation; Roberts et al. 2017). Use about the range over which the "
        "landscape stays alike, e.g. a few patch footprints. Needs georeferenced patches."
    )
    baseline: str | None = Field(
        None, description="config_id the others are tested against (paired tests), e.g. "
        "'s2/simple_cnn'; default: the primary modality alone with the first model."
    )
    sensors: list[list[str]] | None = Field(
        None, description="Modality subsets; default: primary alone, primary + each other, all."
    )
    primary: str | None = Field(None, description="Primary modality; default the first one.")
    models: list[str | AblationModelConfig] | None = Field(
        None, description="Model names or {name, options, label}; default: train.model."
    )
    seeds: list[int] | None = Field(None, description="Training seeds; default [seed].")
    label_fractions: list[float] | None = Field(
        None, description="Learning curve: also train every configuration on these shares of "
        "each fold's training groups (train.label_fraction; nested per seed, every class "
        "kept), e.g. [0.1, 0.25, 0.5, 1.0]; configurations are named <sensors>/<model>@<share>"
        " (ablation.baseline too, e.g. s2/simple_cnn@100%) and the report draws the curves and "
        "tests each sensor set against the baseline's at the same share; the main tables and "
        "the best configuration stay at the baseline's share. Default: all labels only."
    )
    epochs: int | None = Field(None, ge=1, description="Override train.epochs per cell.")
    workers: int = Field(1, ge=1, description="Cells trained in parallel (local processes).")
    ray: RayConfig = RayConfig()
    importance: bool = Field(
        False, description="Per-modality and per-band permutation importance on each "
        "validation fold."
    )
    importance_repeats: int = Field(5, ge=1, description="Permutations per band/modality.")
    keep_checkpoints: bool = Field(
        False, description="Keep each cell's checkpoints (default: deleted once recorded)."
    )
    cell_figures: bool = Field(
        False, description="Draw each cell's run figures (training curves, confusion "
        "matrices, example tiles, reliability) as it finishes. Off by default: the study report "
        "draws its own, and 'geofuse report RUN_DIR' draws a cell's on demand (drawing them "
        "costs about as much as training a small cell on a CPU)."
    )
    output: str = Field("studies", description="Study folders go here, relative to workdir.")

    @model_validator(mode="after")
    def _check_grouping(self) -> AblationConfig:
        if self.group_by == "block" and self.block_size is None:
            raise ValueError("group_by 'block' needs ablation.block_size (CRS units); set it")
        shares = self.label_fractions
        if shares is not None and (not shares or any(not 0 < f <= 1 for f in shares)
                                   or len(set(shares)) != len(shares)):
            raise ValueError(f"ablation.label_fractions {shares} must list distinct shares in "
                             "(0, 1], e.g. [0.1, 0.25, 0.5, 1.0]")
        return self


class MappingConfig(_Model):
    """Map a scene with the study's best configuration after ``geofuse ablate`` (``mapping``)."""

    scene: str | None = Field(
        None, description="Fused stack to map once the ablation has finished: a path "
        "(relative to the config file) or 'stack' for the study's own prepared stack; the "
        "best configuration's fold models map it as an ensemble (geofuse predict) into "
        "<study>/map/, and with an ablation.test_fraction the map is assessed against the "
        "held-out polygons (geofuse assess). Keeps the cells' checkpoints. Default: no map."
    )
    stride: int = Field(1, ge=1, description="Patch classifiers: map every stride-th pixel "
                        "(each class fills its stride x stride cell); 1 = every pixel.")
    tile_size: int = Field(256, ge=16, description="Dense models: tile size of the blended "
                           "sliding window.")
    tta: bool = Field(False, description="Average the 8 flips and rotations.")
    aoa: bool = Field(
        False, description="Patch classifiers: also map the area of applicability (geofuse "
        "predict --aoa; Meyer & Pebesma 2021): map/aoa.tif, map/aoa.png and the share of the "
        "mapped area whose patches lie farther from the training data, in the fold models' "
        "feature space, than cross-validation tested."
    )
    mmu_ha: float | None = Field(
        None, gt=0, description="Class maps: also publish the map with this minimum mapping "
        "unit in hectares (geofuse vectorize): map/classes_mmu.tif and map/classes_mmu.gpkg, "
        "one polygon per region with class, area and mean uncertainty. Default: none."
    )
    suggest: int | None = Field(
        None, ge=1, description="Also write this many places to label next (geofuse "
        "suggest: the most uncertain patch-sized places of each class, or of a value map by "
        "the spread of the fold models, and a random fifth, spread out, away from the study's "
        "labels): map/label_suggestions.gpkg with an empty 'class' (or 'value') column to "
        "fill, .json and .png. Default: none."
    )

