"""Recipes: TOML in, a typed and validated :class:`Recipe` out.

Every problem is reported at once, each with its key path, and nothing heavy
(torch, timm) is imported here so that ``histofuse recipe check`` is quick.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from histofuse.errors import RecipeError



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
    permute_labels: bool = Field(
        False, description="permutation control: shuffle the diagnoses among the training patients (validation and "
        "test keep theirs); a model that learns from tissue then tests at chance"
    )

    @model_validator(mode="after")
    def _resize_covers_crop(self) -> "DataConfig":
        if self.resize is not None and self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) must be at least image_size ({self.image_size})")
        return self

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


# ------------------------------------------------------------------ messages

_EXPECTED = {
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "missing": "missing required key",
}


_UNION_TAG = re.compile(r"str|int|float|bool|(dict|list|literal|function-\w+)\[.*\]")


def _format_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _UNION_TAG.fullmatch(str(part)):
            # Union branches add their type name to the location; the user never typed it.
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
                break
        else:
            return []
    return list(getattr(current, "model_fields", {}))


def format_validation_errors(error: ValidationError, model: type[BaseModel] = Recipe) -> list[str]:
    """Turn pydantic's errors into one line each: ``key.path: what was expected, got what``."""
    problems: list[str] = []
    seen_paths: set[str] = set()
    for err in error.errors():
        path = _format_path(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(err["loc"][-1])
            known = _known_keys(model, err["loc"])
            hint = difflib.get_close_matches(key, known, n=1)
            msg = f"{path}: unknown key"
            if hint:
                msg += f"; did you mean '{hint[0]}'?"
            if known:
                msg += f" Known keys here: {', '.join(known)}"
            problems.append(msg)
            continue
        if kind in ("union_tag_invalid",) or path in seen_paths and kind in _EXPECTED:
            continue
        if kind in _EXPECTED:
            text = _EXPECTED[kind]
            if kind != "missing":
                text += f", got {_show(err['input'])}"
        elif kind == "literal_error":
            text = f"expected {err['ctx']['expected']}, got {_show(err['input'])}"
        elif kind == "value_error":
            text = str(err["msg"]).removeprefix("Value error, ")
        else:
            text = f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_show(err['input'])}"
        seen_paths.add(path)
        problems.append(f"{path}: {text}")
    return problems


# ------------------------------------------------------------------- loading


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), [f"no such recipe file (looked in {path.resolve().parent})"])
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise RecipeError(str(path), [f"not UTF-8 text: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [f"not valid TOML: {exc}"]) from None


_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


def _parse_override_path(path: str) -> list[str | int]:
    keys: list[str | int] = []
    for segment in path.split("."):
        if segment.isdigit():
            keys.append(int(segment))
            continue
        match = _SEGMENT.match(segment)
        if not match:
            raise ValueError(f"'{path}' is not a key path like training.label_smoothing or phases[0].epochs")
        keys.append(match.group(1))
        keys += [int(i) for i in re.findall(r"\[(\d+)\]", match.group(2))]
    return keys


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string: --set data.root=/data/BreaKHis


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> list[str]:
    """Apply ``key.path=value`` overrides in place; return problems instead of raising."""
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item}: expected KEY=VALUE, e.g. --set phases[0].epochs=2")
            continue
        path, text = item.split("=", 1)
        try:
            keys = _parse_override_path(path.strip())
        except ValueError as exc:
            problems.append(f"--set {item}: {exc}")
            continue
        node: Any = raw
        for depth, key in enumerate(keys[:-1]):
            where = path if depth == len(keys) - 2 else ".".join(str(k) for k in keys[: depth + 1])
            if isinstance(key, int):
                if not isinstance(node, list) or key >= len(node):
                    problems.append(f"--set {item}: {where} has no item {key}")
                    break
                node = node[key]
            else:
                if not isinstance(node, dict):
                    problems.append(f"--set {item}: {where} is not a table")
                    break
                node = node.setdefault(key, {})
        else:
            last = keys[-1]
            if isinstance(last, int):
                if not isinstance(node, list) or last >= len(node):
                    problems.append(f"--set {item}: no item {last} to set")
                    continue
            elif not isinstance(node, dict):
                problems.append(f"--set {item}: parent of '{last}' is not a table")
                continue
            node[last] = parse_value(text.strip())
    return problems


def parse_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(source, format_validation_errors(exc)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file; raise :class:`RecipeError` listing every problem."""
    raw = read_toml(path)
    problems = apply_overrides(raw, overrides or [])
    if problems:
        raise RecipeError(str(path), problems)
    return parse_recipe(raw, str(path))


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe, every default written out (TOML has no null, so unset keys are omitted)."""
    import tomli_w

    return tomli_w.dumps(recipe.model_dump(mode="json", exclude_none=True))


# ------------------------------------------------------------ cross-checks


def check_recipe(recipe: Recipe, registry: Any) -> list[str]:
    """Problems that need the registry or span sections; the ``validate_recipe`` hook adds its own."""
    problems: list[str] = []

    def known(kind: str, name: str, path: str) -> Any:
        try:
            return registry.get(kind, name)
        except Exception as exc:
            problems.append(f"{path}: {exc}")
            return None

    dataset = known("dataset", recipe.data.dataset, "data.dataset")
    if dataset is not None:
        problems += check_options(dataset, recipe.data.options, "data.options")
    fusion = known("fusion", recipe.model.fusion, "model.fusion")
    if fusion is not None:
        problems += check_options(fusion, recipe.model.fusion_options, "model.fusion_options")

    names = [b.name for b in recipe.model.backbones]
    for i, backbone in enumerate(recipe.model.backbones):
        if names.count(backbone.name) > 1 and names.index(backbone.name) < i:
            problems.append(f"model.backbones[{i}].name: '{backbone.name}' is used by two backbones")
        spec = known("backbone", backbone.source, f"model.backbones[{i}].source")
        if spec is not None:
            problems += check_options(spec, backbone.options, f"model.backbones[{i}].options")
        if isinstance(backbone.pretrained, str) and not Path(backbone.pretrained).expanduser().is_file():
            folder = " (a folder in the Hub's layout is named by model = \"local-dir:PATH\")" if Path(backbone.pretrained).expanduser().is_dir() else ""
            problems.append(
                f"model.backbones[{i}].pretrained: weights file '{backbone.pretrained}' does not exist{folder}; "
                "give a path to a .safetensors or .pth state dict, true (download from the hub) or false"
            )
        if backbone.dtype != "float32":
            problems += [
                f"model.backbones[{i}].dtype: {backbone.dtype} weights are for a backbone no phase trains, but "
                f"phases[{j}] unfreezes '{backbone.name}'; keep float32 and set training.mixed_precision instead"
                for j, phase in enumerate(recipe.phases)
                if phase.unfreeze == "all" or (isinstance(phase.unfreeze, dict) and phase.unfreeze.get(backbone.name, 0) > 0)
            ]

    phase_names = [p.name for p in recipe.phases]
    for i, phase in enumerate(recipe.phases):
        if phase_names.count(phase.name) > 1 and phase_names.index(phase.name) < i:
            problems.append(f"phases[{i}].name: '{phase.name}' is used by two phases")
        if isinstance(phase.unfreeze, dict):
            for key, count in phase.unfreeze.items():
                if key not in names:
                    hint = difflib.get_close_matches(key, names, n=1)
                    extra = f"; did you mean '{hint[0]}'?" if hint else ""
                    problems.append(
                        f"phases[{i}].unfreeze.{key}: no backbone named '{key}'{extra} Backbones: {', '.join(names)}"
                    )
                elif count < 0:
                    problems.append(f"phases[{i}].unfreeze.{key}: expected a number of groups >= 0, got {count}")
        for key, value in (phase.lr.model_extra or {}).items():
            if key not in names:
                hint = difflib.get_close_matches(key, names + ["head", "backbone"], n=1)
                extra = f"; did you mean '{hint[0]}'?" if hint else ""
                problems.append(f"phases[{i}].lr.{key}: unknown key{extra} Keys: head, backbone, or a backbone name ({', '.join(names)})")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                problems.append(f"phases[{i}].lr.{key}: expected a number between 0 and 1, got {_show(value)}")
        unfrozen = [n for n in names if phase.unfreeze == "all" or (isinstance(phase.unfreeze, dict) and phase.unfreeze.get(n, 0) > 0)]
        # Any positive count, even under a misspelt name, so one typo is reported once.
        trains_backbone = phase.unfreeze == "all" or (
            isinstance(phase.unfreeze, dict) and any(v > 0 for v in phase.unfreeze.values())
        )
        if not problems:
            for name in unfrozen:
                if phase.lr.for_backbone(name) == 0:
                    key = name if name in (phase.lr.model_extra or {}) else "backbone"
                    problems.append(f"phases[{i}].lr.{key}: phase unfreezes layers of '{name}' but their learning rate is 0")
        if not trains_backbone and (phase.lr.backbone > 0 or phase.lr.model_extra):
            problems.append(
                f"phases[{i}].lr.backbone: set to {phase.lr.backbone:g} but this phase unfreezes nothing; "
                "set unfreeze (\"all\" or a table of backbone = groups) or drop lr.backbone"
            )

    normalizer_cfg = recipe.evaluation.normalizer
    if any(e.normalize for e in recipe.evaluate):
        normalizer = known("normalizer", normalizer_cfg.name, "evaluation.normalizer.name")
        if normalizer is not None:
            problems += check_options(normalizer, normalizer_cfg.options, "evaluation.normalizer.options")
    for i, name in enumerate(recipe.evaluation.compare_normalizers):
        known("normalizer", name, f"evaluation.compare_normalizers[{i}]")
    set_names = [e.name for e in recipe.evaluate]
    for i, external in enumerate(recipe.evaluate):
        if set_names.count(external.name) > 1 and set_names.index(external.name) < i or external.name == "test":
            problems.append(f"evaluate[{i}].name: '{external.name}' is used twice or is reserved ('test')")
        spec = known("dataset", external.dataset, f"evaluate[{i}].dataset")
        if spec is not None:
            problems += check_options(spec, external.options, f"evaluate[{i}].options")
        if recipe.data.classes is not None:
            unknown = sorted(set(external.label_map.values()) - set(recipe.data.classes))
            if unknown:
                problems.append(f"evaluate[{i}].label_map: maps to {unknown}, not in data.classes {recipe.data.classes}")

    if recipe.data.classes is not None and len(set(recipe.data.classes)) != len(recipe.data.classes):
        problems.append("data.classes: class names must be unique")
    for hook_problems in registry.pm.hook.validate_recipe(recipe=recipe):
        problems += list(hook_problems or [])
    return problems


def check_options(spec: Any, options: dict[str, Any], path: str) -> list[str]:
    schema = getattr(spec, "options", None)
    if schema is None:
        return [f"{path}.{key}: '{spec.name}' takes no options" for key in options]
    try:
        schema.model_validate(options)
    except ValidationError as exc:
        return [f"{path}.{p}" if not p.startswith("(") else f"{path}: {p}" for p in format_validation_errors(exc, schema)]
    return []


def validate_options(spec: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Options as the component's schema resolves them (defaults filled in)."""
    schema = getattr(spec, "options", None)
    if schema is None:
        return dict(options)
    return schema.model_validate(options).model_dump()
