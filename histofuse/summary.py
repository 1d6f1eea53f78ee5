"""What a recipe resolves to, as tables: components, model size, phases, data."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from histofuse.recipe import Recipe
from histofuse.registry import Registry


def build_on_meta(recipe: Recipe, registry: Registry, num_classes: int):
    """The recipe's model with shapes but no storage: counting 107M parameters costs no memory or download."""
    import torch

    from histofuse.model import build_model

    with torch.device("meta"):
        return build_model(recipe, registry, num_classes, pretrained=False)


def check_model(recipe: Recipe, registry: Registry) -> tuple[list[str], object]:
    """Build the model on the meta device and apply every phase: problems found, and the model if it built.

    Catches what only the model knows (a backbone with fewer groups than a phase
    unfreezes, options its factory rejects) before a single epoch is spent.
    """
    from histofuse.errors import RecipeError
    from histofuse.model import apply_phase

    num_classes = len(recipe.data.classes) if recipe.data.classes else 2
    try:
        model = build_on_meta(recipe, registry, num_classes)
    except RecipeError as exc:
        return exc.problems, None
    except Exception as exc:  # a plugin's factory refusing its inputs: still the recipe's problem, said plainly
        names = ", ".join(f"{b.name} ({b.source}: {b.model})" for b in recipe.model.backbones)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [f"model: the model could not be built from this recipe ({names}; fusion {recipe.model.fusion}): {first}"], None
    problems = []
    for i, phase in enumerate(recipe.phases):
        try:
            apply_phase(model, phase, f"phases[{i}]")
        except RecipeError as exc:
            problems += exc.problems
    return problems, model


def describe_recipe(recipe: Recipe, registry: Registry, model) -> list[Table]:
    from histofuse.model import apply_phase, count_parameters, describe_rates

    components = Table(title=f"recipe '{recipe.name}': components")
    for column in ("role", "kind", "name", "provided by"):
        components.add_column(column)
    dataset = registry.entry("dataset", recipe.data.dataset)
    components.add_row("data", "dataset", dataset.name, dataset.distribution)
    for cfg in recipe.model.backbones:
        entry = registry.entry("backbone", cfg.source)
        components.add_row(cfg.name, "backbone", f"{entry.name}: {cfg.model}", entry.distribution)
    fusion = registry.entry("fusion", recipe.model.fusion)
    components.add_row("fusion", "fusion", fusion.name, fusion.distribution)

    sizes = Table(title=f"model: {count_parameters(model) / 1e6:.1f}M parameters")
    for column in ("part", "parameters", "features", "groups", "pretrained"):
        sizes.add_column(column, justify="right" if column in ("parameters", "features", "groups") else "left")
    for cfg in recipe.model.backbones:
        backbone = model.backbones[cfg.name]
        sizes.add_row(
            cfg.name, f"{count_parameters(backbone) / 1e6:.2f}M", str(backbone.num_features),
            str(len(backbone.parameter_groups())), str(cfg.pretrained),
        )
    sizes.add_row("fusion + head", f"{sum(p.numel() for p in model.head_parameters()) / 1e6:.2f}M", "", "", "")

    phases = Table(title=f"phases: {recipe.total_epochs} epochs at most")
    for column in ("#", "name", "epochs", "unfreeze", "lr head", "lr backbone", "trainable", "augment"):
        phases.add_column(column)
    for i, phase in enumerate(recipe.phases):
        plan = apply_phase(model, phase, f"phases[{i}]")
        unfreeze = ", ".join(f"{k} last {v}" for k, v in plan.unfrozen_groups.items() if v) or "none"
        trainable = sum(plan.trainable.values())
        phases.add_row(
            str(i + 1), phase.name, str(phase.epochs), unfreeze, f"{phase.lr.head:g}",
            describe_rates(plan.param_groups, skip_head=True) or "-",
            f"{trainable / 1e6:.2f}M", phase.augment,
        )

    data = Table(title="data")
    data.add_column("key")
    data.add_column("value")
    root = Path(recipe.data.root).expanduser() if recipe.data.root else None
    state = "not set" if root is None else (str(root) if root.exists() else f"{root} (missing: {dataset.spec.source})")
    data.add_row("root", state)
    data.add_row("image size", f"resize {recipe.data.resize_to}, crop {recipe.data.image_size}")
    split = recipe.data.split
    held_out = f"test {split.test:g}" if split.folds is None else f"{split.folds} folds" + (f", fold {split.fold} only" if split.fold else "")
    data.add_row("split (by patient)", f"val {split.val:g}, {held_out}, seed {recipe.seed if split.seed is None else split.seed}")
    data.add_row("batch size", str(recipe.data.batch_size))

    cfg = recipe.evaluation
    evaluation = Table(title=f"evaluation: threshold {cfg.threshold} and temperature from validation, TTA {cfg.tta}")
    for column in ("set", "dataset", "root", "QC", "normalize", "TTA"):
        evaluation.add_column(column)
    evaluation.add_row("test", recipe.data.dataset, "(test split)", "-", "no", cfg.tta)
    for external in recipe.evaluate:
        spec = registry.get("dataset", external.dataset)
        root = Path(external.root).expanduser() if external.root else None
        where = "not set" if root is None else (str(root) if root.exists() or spec.generated else f"{root} (missing)")
        normalize = f"{cfg.normalizer.name} {cfg.normalizer.options}" if external.normalize else "no"
        evaluation.add_row(
            external.name, external.dataset, where, "yes" if external.qc.enabled else "no", normalize, external.tta or cfg.tta
        )
    return [components, sizes, phases, data, evaluation]
