"""A recipe's model checked before anything trains: built on the meta device, every phase applied to it."""

from __future__ import annotations

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
    from histofuse.phase_plan import apply_phase

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
