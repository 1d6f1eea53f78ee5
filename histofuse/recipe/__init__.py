"""Recipes: TOML in, a typed and validated :class:`Recipe` out.

Every problem is reported at once, each with its key path, and nothing heavy
(torch, timm) is imported here so that ``histofuse recipe check`` is quick.
``schema`` holds the sections, ``loading`` reads TOML and applies ``--set``, ``messages`` says what is wrong
and ``checks`` cross-checks a recipe against the registry.
"""

from __future__ import annotations

from histofuse.recipe.checks import (  # noqa: F401
    check_options,
    check_recipe,
    validate_options,
)
from histofuse.recipe.loading import (  # noqa: F401
    apply_overrides,
    load_recipe,
    parse_recipe,
    parse_value,
    read_toml,
    recipe_to_toml,
)
from histofuse.recipe.messages import (  # noqa: F401
    format_validation_errors,
    show_value,
)
from histofuse.recipe.schema import (  # noqa: F401
    BackboneConfig,
    CheckpointConfig,
    DataConfig,
    EarlyStoppingConfig,
    EvaluationConfig,
    ExternalSetConfig,
    HeadConfig,
    LearningRates,
    MagnificationConfig,
    ModelConfig,
    NormalizerConfig,
    PhaseConfig,
    PlateauConfig,
    QCConfig,
    Recipe,
    SplitConfig,
    TTA,
    TilesConfig,
    Tracker,
    TrainingConfig,
)
