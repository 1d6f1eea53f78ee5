"""The recipe's sections as pydantic models: every key, its type, default and bounds."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator


class _Section(BaseModel):
    # strict: TOML is typed, so "0.1" where a number belongs is a mistake, not a number.
    model_config = ConfigDict(extra="forbid", strict=True)


class SplitConfig(_Section):
    val: float = Field(0.15, gt=0, lt=1)
    test: float | None = Field(None, gt=0, lt=1, description="fraction of patients held out for testing (default 0.15); not with folds")
    seed: int | None = Field(None, ge=0, lt=2**32, description="seed of the patient split; default: the recipe's seed")
    folds: int | None = Field(
        None, ge=2, le=20, description="K-fold cross-validation by patient: each fold in turn is the test split"
    )
    fold: int | None = Field(None, ge=1, description="with folds: train and test only this fold (1..folds)")
    _ignored_test: float | None = PrivateAttr(None)  # a test fraction that folds replaced, reported when the run starts

    @model_validator(mode="after")
    def _leaves_training_data(self) -> "SplitConfig":
        if self.folds is not None:
            # --folds K turns any one-split recipe into a cross-validation: its test fraction gives way, said at the start.
            self._ignored_test, self.test = self.test, None
            if self.fold is not None and self.fold > self.folds:
                raise ValueError(f"fold = {self.fold} but there are only {self.folds} folds (1..{self.folds})")
            if self.val >= 0.9:
                raise ValueError(f"val = {self.val:g} leaves too little of each fold's training patients; keep it below 0.9")
            return self
        if self.fold is not None:
            raise ValueError("fold needs folds: set data.split.folds = K too")
        if self.test is None:
            self.test = 0.15
        if self.val + self.test >= 0.9:
            raise ValueError(f"val + test = {self.val + self.test:g} leaves too little for training; keep it below 0.9")
        return self


class TilesConfig(_Section):
    size: int | None = Field(None, ge=16, le=4096, description="tile side in pixels at the data's scale; default data.image_size")
    stride: int | None = Field(None, ge=8, le=4096, description="step of the evaluation grid; default the tile size (no overlap)")
    min_tissue: float = Field(0.5, ge=0, le=1, description="tissue fraction a training tile needs, and a grid tile to count alone")
    max_tiles: int = Field(64, ge=1, le=4096, description="at most this many grid tiles per image, the tissue-richest")
    pooling: Literal["mean", "attention"] = Field("mean", description="an image's tiles become one prediction by the "
                                                  "mean of their probabilities, or attention trained with the head")
    bag: int | None = Field(None, ge=2, le=256, description="attention: random tissue tiles per training image (8)")

    def resolved(self, image_size: int) -> "TilesConfig":
        size = self.size or image_size
        bag = (self.bag or 8) if self.pooling == "attention" else 1
        return self.model_copy(update={"size": size, "stride": self.stride or size, "bag": bag})


class DataConfig(_Section):
    dataset: str
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    classes: list[str] | None = Field(None, min_length=2)
    image_size: int = Field(224, ge=16, le=4096)
    resize: int | None = Field(None, ge=16, le=8192)
    batch_size: int = Field(32, ge=1, le=4096)
    eval_batch_size: int | None = Field(None, ge=1, le=4096)
    num_workers: int | None = Field(None, ge=0, le=256)
    prefetch: int | None = Field(None, ge=1, le=64, description="batches each loading worker keeps ready (torch default 2)")
    max_failed_fraction: float = Field(0.05, ge=0, le=1)
    max_image_pixels: int = Field(200_000_000, ge=1, description="images whose header claims more pixels are refused before decoding")
    cache: bool = Field(False, description="decode and resize each image once, into an on-disk memory-mapped cache")
    cache_dir: str | None = Field(None, description="where the cache lives; default ~/.cache/histofuse/decoded")
    split: SplitConfig = Field(default_factory=SplitConfig)
    mpp: float | None = Field(
        None, gt=0.01, le=20, description="µm per pixel every image is rescaled to first, so tissue has one size in "
        "pixels across datasets; then images are cropped, not resized"
    )
    tiles: TilesConfig | None = Field(
        None, description="train on random tissue tiles; evaluate on a grid of tiles, pooled into one prediction per image"
    )
    permute_labels: bool = Field(
        False, description="permutation control: shuffle the diagnoses among the training patients (validation and "
        "test keep theirs); a model that learns from tissue then tests at chance"
    )

    @model_validator(mode="after")
    def _resize_covers_crop(self) -> "DataConfig":
        if self.resize is not None and self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) must be at least image_size ({self.image_size})")
        if self.tiles is not None:
            tiles = self.tiles.resolved(self.image_size)
            if tiles.stride > tiles.size:
                raise ValueError(f"tiles.stride ({tiles.stride}) is larger than the tile ({tiles.size}): the grid would "
                                 "leave gaps between tiles; keep stride <= size")
        return self

    @property
    def keeps_scale(self) -> bool:
        """With a physical scale or tiles, images are cropped at their (rescaled) resolution, never resized to fit."""
        return self.mpp is not None or self.tiles is not None

    @property
    def resize_to(self) -> int:
        """Shorter side before cropping; 256 for 224 as in the paper."""
        return self.resize if self.resize is not None else round(self.image_size * 8 / 7)


class BackboneConfig(_Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    source: str = "timm"
    model: str
    pretrained: bool | str = False
    options: dict[str, Any] = Field(default_factory=dict)
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="the weights' precision: 'bfloat16' halves the memory of a backbone that no phase "
        "unfreezes (a frozen foundation model); its features are handed on as float32"
    )


class HeadConfig(_Section):
    hidden: int = Field(512, ge=1, le=65536)
    dropout: float = Field(0.7, ge=0, lt=1)


class MagnificationConfig(_Section):
    enabled: bool = False
    values: list[int] = Field(default_factory=lambda: [40, 100, 200, 400], min_length=1)
    dim: int = Field(16, ge=1, le=1024)
    unknown_rate: float = Field(0.1, ge=0, le=1)


class ModelConfig(_Section):
    backbones: list[BackboneConfig] = Field(min_length=1)
    fusion: str = "concat"
    fusion_options: dict[str, Any] = Field(default_factory=dict)
    head: HeadConfig = Field(default_factory=HeadConfig)
    magnification: MagnificationConfig = Field(default_factory=MagnificationConfig)


class LearningRates(_Section):
    """``head``, ``backbone`` (every unfrozen backbone layer), and optionally one key per backbone name."""

    # Extra keys are per-backbone overrides (lr = { head = 2e-5, backbone = 1e-6, vit = 5e-7 }); check_recipe
    # checks that they name backbones and are numbers.
    model_config = ConfigDict(extra="allow", strict=True)
    head: float = Field(gt=0, le=1)
    backbone: float = Field(0.0, ge=0, le=1)

    def for_backbone(self, name: str) -> float:
        return float((self.model_extra or {}).get(name, self.backbone))


class PhaseConfig(_Section):
    name: str
    epochs: int = Field(ge=1, le=10_000)
    unfreeze: Literal["none", "all"] | dict[str, int] = "none"
    lr: LearningRates
    augment: Literal["strong", "medium", "light", "none"] = "strong"
    stain_jitter: float = Field(0.0, ge=0, le=1)
    stain_jitter_method: Literal["hestain", "macenko"] = "hestain"
    batchnorm: Literal["auto", "frozen", "train"] = Field(
        "auto", description="batch norms of unfrozen layers: 'frozen' keeps normalizing with their running statistics "
        "while their weights train, 'train' normalizes with batch statistics and updates them, 'auto' is 'frozen' for "
        "pretrained backbones and 'train' for those built from random weights; frozen layers' always stay frozen"
    )
    warmup_epochs: float = Field(
        0.0, ge=0, le=100, description="ramp the learning rate of backbone groups this phase newly unfreezes linearly "
        "from 0 over this many epochs, so their first large gradients cannot wreck what earlier phases learned"
    )
    layer_decay: float = Field(
        1.0, gt=0, le=1, description="layer-wise learning-rate decay: each backbone parameter group trains at this "
        "factor times the rate of the group above it (the top group at lr.backbone); 1 = one rate for all"
    )
    cache_features: bool | None = Field(
        None, description="compute the frozen backbones' features once and train fusion + head on them (needs "
        'unfreeze = "none", augment = "none", stain_jitter = 0); unset: on for such a phase over a frozen foundation '
        "model on one process, off otherwise"
    )

    @model_validator(mode="after")
    def _cached_features_need_a_frozen_deterministic_phase(self) -> "PhaseConfig":
        if self.cache_features:
            problems = [f"{key} = {value}" for key, value, ok in (
                ("unfreeze", repr(self.unfreeze), self.unfreeze == "none" or (isinstance(self.unfreeze, dict) and not any(self.unfreeze.values()))),
                ("augment", repr(self.augment), self.augment == "none"),
                ("stain_jitter", self.stain_jitter, self.stain_jitter == 0),
            ) if not ok]
            if problems:
                raise ValueError(
                    "cache_features reuses one pass of the backbones, so the phase must train no backbone and see every "
                    f'image the same way each epoch (unfreeze = "none", augment = "none", stain_jitter = 0); here {", ".join(problems)}'
                )
        return self


class PlateauConfig(_Section):
    patience: int = Field(3, ge=0)
    factor: float = Field(0.2, gt=0, lt=1)
    min_lr: float = Field(0.0, ge=0)


class EarlyStoppingConfig(_Section):
    enabled: bool = True
    patience: int = Field(7, ge=1)
    min_delta: float = Field(0.0, ge=0)


class CheckpointConfig(_Section):
    enabled: bool = True
    keep: int = Field(2, ge=1, le=1000, description="complete epoch checkpoints kept; older ones are deleted")
    keep_after_run: bool = Field(False, description="keep them once the run has finished (model.safetensors stays)")


Tracker = Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio"]


class TrainingConfig(_Section):
    weight_decay: float = Field(1e-5, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["balanced", "none"] = "balanced"
    sampler: Literal["balanced", "shuffle"] = "balanced"
    grad_clip: float = Field(1.0, ge=0)
    grad_accumulation: int = Field(1, ge=1, le=1024)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    channels_last: bool = Field(False, description="NHWC memory layout for convolutions: faster with bf16 on CPUs and GPUs")
    compile: bool = Field(False, description="torch.compile the model (inductor) each phase; pays a compile time per phase")
    monitor: Literal["val_auc", "val_loss", "val_balanced_accuracy"] = "val_auc"
    restore_best_between_phases: bool = True
    plateau: PlateauConfig = Field(default_factory=PlateauConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    checkpoints: CheckpointConfig = Field(default_factory=CheckpointConfig)
    log_with: list[Tracker] = Field(default_factory=list, description="Accelerate trackers, besides history.csv")


class QCConfig(_Section):
    enabled: bool = False
    blur: float = Field(75.0, ge=0)
    background: int = Field(220, ge=1, le=255)
    min_tissue: float = Field(0.40, ge=0, le=1)


class NormalizerConfig(_Section):
    name: str = "reinhard"
    options: dict[str, Any] = Field(default_factory=dict)
    sample: int | None = Field(None, ge=1)


TTA = Literal["none", "paper7", "d4", "crops5"]
MULTI_CROP: frozenset[str] = frozenset({"crops5"})  # TTA modes that cut their views from one larger square


class EvaluationConfig(_Section):
    tta: TTA = "none"
    threshold: Literal["youden", "argmax"] | float = "youden"
    temperature_scaling: bool = False
    bootstrap: int = Field(1000, ge=0, le=100_000)
    color_baseline: bool = True
    by: list[str] = Field(default_factory=lambda: ["magnification"], description="dataset columns to break metrics down by")
    normalizer: NormalizerConfig = Field(default_factory=NormalizerConfig)
    compare_normalizers: list[str] = Field(
        default_factory=list, description="also evaluate the test split and every [[evaluate]] set under each of these"
    )

    @model_validator(mode="after")
    def _threshold_is_a_probability(self) -> "EvaluationConfig":
        if isinstance(self.threshold, float) and not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        return self


class ExternalSetConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    dataset: str
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    label_map: dict[str, str] = Field(default_factory=dict)
    qc: QCConfig = Field(default_factory=QCConfig)
    normalize: bool = False
    tta: TTA | None = None


class Recipe(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = Field(42, ge=0, lt=2**32)
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    phases: list[PhaseConfig] = Field(min_length=1)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    evaluate: list[ExternalSetConfig] = Field(default_factory=list)

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)
