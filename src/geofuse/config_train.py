"""The ``train`` section of a study config: model, loss, baselines and Lightning settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from geofuse._config_base import _Model


class ModelConfig(_Model):
    """Which network to train, its size and transfer-learning options."""

    name: str = Field(
        "simple_cnn", description="Registered model (checked when the model is built); list "
        "them with 'geofuse models': simple_cnn, resnet18, resnet50, mobilenetv2_100, "
        "efficientnet_b0, ..."
    )
    hidden: int = Field(128, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    pool: Literal["flatten", "avg", "stats"] = Field(
        "flatten", description="simple_cnn: flatten the feature map into the dense layer (the "
        "reports' model), average it per channel (global average pooling: 64 features "
        "whatever the patch size, far fewer weights for small datasets) or take each "
        "channel's mean, max and std (stats: 192 features, adds texture)."
    )
    kernel_size: int = Field(
        1, ge=1, description="pixel_net: side of the first convolution; 1 sees each pixel "
        "alone, an odd size > 1 its neighbourhood too."
    )
    band_stats: bool = Field(
        False, description="simple_cnn: also feed the dense layer each input band's mean, std, "
        "min and max over the patch (the features a random forest on per-band statistics "
        "uses), learned jointly with the convolutional features."
    )
    encoders: dict[str, str] | None = Field(
        None, description="late/decision_fusion: encoder per modality, e.g. {dem: small_cnn, "
        "s2: simple_cnn} (small_cnn or a registered model with .features); default small_cnn."
    )
    merge: Literal["concat", "attention"] = Field(
        "concat", description="late_fusion: concatenate modality features or weight them by "
        "learned attention."
    )
    weights: dict[str, float] | None = Field(
        None, description="decision_fusion: fixed weight per modality (normalised to sum 1); "
        "default: learned softmax weights."
    )
    se_reduction: int = Field(
        16, ge=1, description="progressive_fusion: Squeeze-and-Excitation reduction ratio."
    )
    refinement_passes: int = Field(
        1, ge=0, description="progressive_fusion: decoder-to-encoder back-projection passes."
    )
    mode: Literal["early", "late", "progressive"] = Field(
        "late", description="tabular_fusion: attributes as extra constant channels (early), "
        "MLP features joined before the head (late) or FiLM at every stage (progressive)."
    )
    pretrained_path: str | None = Field(
        None, description="simple_cnn/early_fusion and backbones: local weight file, relative "
        "to the config file; never downloaded. Backbones take a torch/timm state dict of the "
        "RGB network, of a multispectral one (name its bands in pretrained_bands), or of one "
        "for exactly the input bands; ViTs are resampled to the patch and token size; "
        "simple_cnn loads its encoder (features.*). 'geofuse pretrain' writes such a file "
        "(self-supervised, from the study's own patches). Default: train from scratch."
    )
    pretrained_bands: list[str] | str | None = Field(
        None, description="Backbones and segmentation encoders with a pretrained_path: the "
        "weight file's input bands in order, or a preset: sentinel2_l1c (the 13 bands of "
        "SSL4EO-S12 / TorchGeo sentinel2_all weights: B1-B8, B8A, B9-B12) or sentinel2_l2a "
        "(the same without B10). Input bands are matched by name (s2_B04 = B4): a matched band "
        "keeps its pretrained kernel, any other band starts small and random, file bands the "
        "input lacks are dropped. Default (timm backbones): the bands a 'geofuse pretrain' file "
        "records."
    )
    vit_patch_size: int | None = Field(
        None, ge=1, description="vit_* backbones: token side in pixels (timm's patch_size); "
        "must divide the patch (or upsample_to). Default: the largest of 16, 8, 4, 2, 1 that "
        "gives at least 4 x 4 tokens."
    )
    input_adaptation: Literal["cycle", "band_aware", "reduce"] = Field(
        "cycle", description="Backbones with pretrained weights: cycle (timm: RGB kernels "
        "repeated over the bands, scaled by 3/C), band_aware (RGB kernels on the real R, G, B "
        "bands, small random start elsewhere) or reduce (learned 1x1 conv C -> 3)."
    )
    rgb_bands: list[str] | None = Field(
        None, min_length=3, max_length=3, description="band_aware: names of the red, green, "
        "blue bands; default B4, B3, B2 (also as <prefix>_B4), or the input sensor's own "
        "(sensor: landsat57: B3, B2, B1)."
    )
    freeze_fraction: float = Field(
        0.0, ge=0, le=1, description="Backbones: share of parameterised layers frozen, first "
        "first (the reference ResNet-50 collapsed at 0.85)."
    )
    freeze_stages: list[str] | None = Field(
        None, description="Backbones: stages to freeze, e.g. [conv1, layer1] (resnet) or "
        "[conv_stem, blocks.0] (mobilenet/efficientnet)."
    )
    upsample_to: int | None = Field(
        None, ge=2, description="Backbones: bilinear upsampling of patches to this size; "
        "interpolated pixels add no information, prefer larger native patches."
    )
    backbone_lr_scale: float = Field(
        1.0, ge=0, description="Backbones: backbone learning rate = lr * this (head: lr)."
    )
    encoder: str = Field(
        "resnet18", description="Segmentation models (lstm_unet, unet_early, unet_late, "
        "siamese_unet, unet_single): the timm/smp encoder, e.g. resnet18 or resnet50. Options "
        "left at this section's defaults take the model's own (dropout 0; input adaptation "
        "band_aware with a pretrained_path and R, G, B bands, else cycle)."
    )
    lstm_hidden_dim: int = Field(
        256, ge=1, description="lstm_unet: hidden channels of the ConvLSTM at the bottleneck; "
        "temporal_cnn: units of the LSTM over the dates."
    )
    time_series: list[str] | None = Field(
        None, description="temporal_cnn: the modalities that are the dates of a time series, "
        "in date order (each the same bands, e.g. [s2_may, s2_jul, s2_sep]); the other input "
        "modalities join every date as static bands."
    )
    lstm_layers: int = Field(2, ge=1, description="lstm_unet: stacked ConvLSTM layers.")
    lstm_kernel_size: int = Field(3, ge=1, description="lstm_unet: ConvLSTM kernel size.")
    skip_fusion: Literal["absdiff", "concat"] = Field(
        "absdiff", description="siamese_unet: skip features |last - first| or [first, last, "
        "last - first] (keeps the direction of change)."
    )
    decoder_channels: list[int] | None = Field(
        None, description="Segmentation models: U-Net decoder channels per stage, deepest "
        "first; default the model's own."
    )

    @field_validator("pretrained_bands")
    @classmethod
    def _known_band_set(cls, value: list[str] | str | None) -> list[str] | str | None:
        from geofuse.models.adapt import resolve_pretrained_bands

        resolve_pretrained_bands(value)  # an unknown preset or a repeated band is refused here
        return value


#: Losses for multi-label targets (label sets); ``auto`` picks ``bce`` for them.
MULTILABEL_LOSSES = ("bce", "focal")
REGRESSION_LOSSES = ("mse", "huber", "l1")


class LossConfig(_Model):
    """Training loss (``train.loss``): logits against integer targets or label sets."""

    name: Literal["auto", "cross_entropy", "focal", "bce", "dice", "bce_dice", "mse",
                  "huber", "l1"] = Field(
        "auto", description="auto (cross_entropy; bce for multi-label targets; mse for "
        "regression targets), cross_entropy, focal (sigmoid focal for multi-label), bce "
        "(one-vs-rest; the multi-label loss), dice (soft, softmax) or bce_dice = alpha * "
        "weighted-BCE(beta) + (1 - alpha) * Dice. Multi-label targets (bigearthnet_mm) take "
        "auto, bce or focal. Regression targets (values) take auto, mse, huber (quadratic "
        "within delta, linear beyond: robust to outliers) or l1 (mean absolute error), on "
        "the standardised (train.target_transform'ed) target."
    )
    class_weights: list[float] | Literal["balanced"] | None = Field(
        None, description="Per-class weights in label order (the focal loss's alpha), or "
        "'balanced' = n / (K * count) from the train split."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross_entropy only.")
    gamma: float = Field(2.0, ge=0, description="Focal focusing exponent (0 = cross-entropy).")
    pos_weight: float = Field(1.0, gt=0, description="bce/bce_dice: weight of positive terms.")
    alpha: float = Field(0.5, ge=0, le=1, description="bce_dice: weight of the BCE term.")
    beta: float = Field(
        0.5, gt=0, lt=1, description="bce_dice: positive share of the modified BCE."
    )
    smooth: float = Field(1.0, ge=0, description="dice/bce_dice: smoothing term.")
    delta: float = Field(
        1.0, gt=0, description="huber: where the loss turns linear, in standard deviations "
        "of the (transformed) training target."
    )


class BaselineConfig(_Model):
    """scikit-learn baselines (``train.model.name``: random_forest, logistic_regression)."""

    features: Literal["stats", "pixels"] = Field(
        "stats", description="stats: NaN-aware mean/std/min/max per band; pixels: flattened "
        "patch (NaN -> band mean of the train split). Segmentation sets (masks) are "
        "classified pixel by pixel on the pixel's values in every band and date (NaN -> band "
        "mean); stats adds, per band over the dates, the NaN-aware mean/std/min/max and last "
        "minus first date; pixels keeps the series alone."
    )
    max_pixels: int = Field(
        200_000, ge=1, description="Segmentation sets: the most labelled train-split pixels "
        "the classifier is fitted on, drawn uniformly (keeping the class shares) with the "
        "study seed; all of them when there are fewer."
    )
    n_estimators: int = Field(200, ge=1, description="random_forest: number of trees.")
    max_depth: int | None = Field(None, ge=1, description="random_forest: tree depth limit.")
    c: float = Field(1.0, gt=0, description="logistic_regression: inverse L2 strength C.")
    max_iter: int = Field(1000, ge=1, description="logistic_regression: solver iterations.")


class TrainConfig(_Model):
    """Lightning training settings."""

    modalities: list[str] | None = Field(None, description="Modalities to use; default all.")
    bands: list[str] | None = Field(None, description="Band subset (overrides modalities).")
    model: ModelConfig = ModelConfig()
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    early_stopping_patience: int = Field(10, ge=1)
    monitor: Literal["val_loss", "val_f1_macro", "val_accuracy", "val_iou", "val_r2"] = Field(
        "val_loss", description="The validation metric that picks the best checkpoint and "
        "drives early stopping and the plateau schedule (loss minimised, the others "
        "maximised). With class-balanced losses val_loss and macro F1 can disagree: "
        "val_f1_macro selects on the metric the study compares. val_iou: segmentation "
        "(masks) only, the change class's IoU of a binary mask, else mean IoU. val_r2: "
        "regression (values) only, the coefficient of determination."
    )
    target_transform: Literal["none", "log1p"] = Field(
        "none", description="Regression targets (values) only: the network learns the "
        "standardised log(1 + value) (log1p; for counts and other skewed, non-negative "
        "targets such as population) or the standardised value (none); predictions and "
        "metrics are back in the target's own unit either way."
    )
    checkpoint: Literal["best", "last"] = Field(
        "best", description="Weights a run keeps: best (the epoch with the best train.monitor "
        "on the validation fold; early stopping on) or last (the final epoch of the fixed "
        "schedule; no early stopping and no selection on the validation fold, so its "
        "validation figures are as unbiased as a held-out test's). last suits a cosine or "
        "linear schedule."
    )
    plateau_patience: int = Field(4, ge=1)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    loss: LossConfig = LossConfig()
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop momentum.")
    tabular_l2: float = Field(
        0.0, ge=0, description="Extra weight decay on parameters whose name contains 'tab'."
    )
    scheduler: Literal[
        "none", "plateau", "cosine", "linear", "step", "cyclic", "exponential"
    ] = Field("plateau", description="Per-epoch LR schedule; plateau watches train.monitor.")
    step_size: int = Field(
        5, ge=1, description="step: epochs between decays; cyclic: epochs per half cycle."
    )
    gamma: float = Field(0.1, gt=0, le=1, description="step/exponential LR multiplier.")
    min_lr_fraction: float = Field(
        0.01, ge=0, le=1, description="cosine/linear: final LR as a share of lr."
    )
    cyclic_base_lr: float | None = Field(
        None, gt=0, description="cyclic: lowest LR; default lr * min_lr_fraction."
    )
    cyclic_max_lr: float | None = Field(None, gt=0, description="cyclic: highest LR; default lr.")
    warmup_epochs: int = Field(
        0, ge=0, description="Linear LR warm-up epochs before the schedule (not with plateau)."
    )
    baseline: BaselineConfig = BaselineConfig()
    augment: bool = Field(True, description="Random flips and 90-degree rotations of the "
                          "training patches (all bands alike).")
    jitter: float = Field(
        0.0, ge=0, le=1, description="Per-band radiometric jitter of the training patches: "
        "gain ~ N(1, jitter) and offset ~ N(0, jitter) per band and patch, in units of the "
        "band's standard deviation (e.g. 0.1); 0 = off."
    )
    mixup: float = Field(
        0.0, ge=0, description="Mixup on the training batches: each batch is blended with a "
        "shuffled copy of itself, weight ~ Beta(mixup, mixup), and the loss is blended alike "
        "(Zhang et al. 2018; e.g. 0.2); 0 = off."
    )
    cutmix: float = Field(
        0.0, ge=0, description="CutMix on the training batches: a random box of each patch "
        "is replaced by the same box of a shuffled patch (every modality alike), box area "
        "~ 1 - Beta(cutmix, cutmix), and the loss is blended by area (Yun et al. 2019; e.g. "
        "1.0); with mixup also on, each batch uses one of the two at random; 0 = off."
    )
    crop: float = Field(
        1.0, gt=0, le=1, description="Random resized crop of the training patches: a window "
        "of this share of the area up to the whole patch, aspect 3/4-4/3, resized back to the "
        "patch size, at the same place in every modality (e.g. 0.5); 1 = off."
    )
    normalization: Literal["train", "test_area", "per_patch"] = Field(
        "train", description="Band standardisation (networks): train = the training split's "
        "statistics for every split; test_area = the test split at evaluation with the test "
        "patches' own per-band mean/std (unlabelled, no labels used), which removes a "
        "radiometric offset between the training area and another city or date (saved as "
        "normalization_test.json); per_patch = after the training statistics, every patch "
        "standardised per band by its own mean/std, in training and evaluation (keeps only "
        "contrast and texture: absolute brightness is lost, and band_stats sees mean 0, std 1)."
    )
    tta: bool = Field(
        False, description="Test-time augmentation: evaluate (val, test) on the class "
        "probabilities averaged over the 8 flips and rotations of every patch."
    )
    calibration: Literal["temperature", "none"] = Field(
        "temperature", description="Calibrate the class probabilities after training: "
        "'temperature' divides the logits by one scalar fitted on the validation split "
        "(minimum NLL; Guo et al. 2017), so that a probability of 0.8 is right about 80 % of "
        "the time; predictions, accuracy and the class map are unchanged, the probabilities "
        "and uncertainty rasters become honest. The ECE before and after is in metrics.json "
        "and the run report. 'none' keeps the raw softmax. Ignored for regression."
    )
    checkpoint_interval_s: float = Field(
        300.0, gt=0, description="Write the resumable last.ckpt at least this often (seconds); "
        "it is also written when training ends or is interrupted."
    )
    checkpoint_overhead: float = Field(
        0.02, gt=0, le=1, description="last.ckpt (and best.ckpt when it changed) is written "
        "after every epoch while writing costs at most this share of the training time since "
        "the previous write, so a hard kill loses at most one epoch; slower writes are spaced "
        "out to keep that share."
    )
    num_workers: int = Field(0, ge=0)
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field(
        "auto", description="Lightning accelerator: auto (a GPU when present), cpu, gpu "
        "(= cuda), mps (Apple silicon)."
    )
    devices: int = Field(
        1, ge=1, description="Devices to train on with data-parallel DDP (e.g. 4 GPUs of one "
        "machine; on the CPU, processes). Each device takes batch_size patches a step, so the "
        "effective batch is batch_size x devices; epoch metrics are computed over the whole "
        "split, gathered from every device. Evaluation after training runs on one device."
    )
    strategy: Literal["ddp_spawn", "ddp_fork"] = Field(
        "ddp_spawn", description="How the devices > 1 processes start: ddp_spawn (fresh "
        "interpreters; works everywhere) or ddp_fork (faster start; CPU or a GPU not yet "
        "used by the parent process; not on Windows)."
    )
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = Field(
        "32-true", description="Numeric precision of training: 32-true, or mixed precision "
        "16-mixed (CUDA GPUs, with loss scaling) or bf16-mixed (recent GPUs and CPUs): about "
        "half the activation memory and faster steps on tensor-core GPUs."
    )
    deterministic: bool | Literal["warn"] = Field(
        True, description="Deterministic kernels (same config, same metrics); 'warn' lets ops "
        "without a deterministic GPU kernel run with a warning instead of failing."
    )
    label_fraction: float = Field(
        1.0, gt=0, le=1, description="Train on this share of the training split's groups "
        "(polygons, tiles), drawn per class with at least one each, nested for one seed (a "
        "smaller share is a subset of a larger); validation and test are unchanged. For "
        "learning curves: ablation.label_fractions."
    )
    output: str = Field("runs", description="Run directories go here, relative to workdir.")
    run_name: str | None = None

    @model_validator(mode="after")
    def _check_schedule(self) -> TrainConfig:
        if self.warmup_epochs and self.scheduler == "plateau":
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs} cannot be combined with scheduler "
                "'plateau'; pick another scheduler (e.g. cosine) or set warmup_epochs: 0"
            )
        return self


class PretrainConfig(_Model):
    """Self-supervised SimCLR pretraining of ``train.model``'s encoder (``geofuse pretrain``).

    Two random views of every patch (dihedral flip/rotation, random resized crop, per-band
    gain/offset jitter, gaussian noise) are pulled together and other patches pushed apart by
    the NT-Xent loss; no label is used. The bands are those of ``train.bands`` /
    ``train.modalities``.
    """

    epochs: int = Field(50, ge=1, description="Passes over the unlabelled patches.")
    batch_size: int = Field(
        256, ge=2, description="Patches per step (2x as many views); larger batches give more "
        "negatives. Capped at the number of patches."
    )
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (cosine decay to 1%).")
    weight_decay: float = Field(1e-6, ge=0)
    temperature: float = Field(0.2, gt=0, description="NT-Xent softmax temperature.")
    projection_dim: int = Field(64, ge=2, description="Output size of the 2-layer projection "
                                "MLP (dropped after pretraining).")
    crop_scale: float = Field(
        0.5, gt=0, le=1, description="Random resized crop: smallest crop area as a share of "
        "the patch (resized back to patch_size); 1 = no crop."
    )
    jitter: float = Field(0.2, ge=0, le=1, description="Per-band gain ~ N(1, jitter) and "
                          "offset ~ N(0, jitter), in band standard deviations.")
    noise: float = Field(0.05, ge=0, description="Std of added gaussian noise (band stds).")
    include_test: bool = Field(
        False, description="Also use the test split's images (never its labels): transductive "
        "pretraining, which makes the test set less independent; default train + val only."
    )
    stack_patches: int = Field(
        0, ge=0, description="Also learn from this many random windows of the fused stack "
        "(prepare's output: every pixel of the scene, labelled or not), of the study's patch "
        "size and bands; windows mostly nodata are skipped. Users have far more imagery than "
        "labels: e.g. 20000 (held in memory: N x bands x patch_size^2 x 4 bytes). The scene "
        "holds the test areas too: their images (never labels) are then seen, as with "
        "include_test. 0 = the study's patches only."
    )
    output: str | None = Field(
        None, description="Weight file, relative to workdir; default "
        "pretrained/<model>_simclr.pt."
    )
