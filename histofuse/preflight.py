"""Every check a recipe gets before anything trains, in one place: ``histofuse recipe check`` and ``histofuse run``
run the same ones, and a Python caller of ``run_recipe`` calls :func:`preflight` first.

The recipe's schema and cross-references, its trackers, its model built on the meta device with every phase
applied, and each component it names run once on a tiny input. Every problem found is listed in one
:class:`RecipeError`, each with its key path. What needs the dataset itself (classes of external sets) is checked
when the run loads it.
"""

from __future__ import annotations

from pathlib import Path

from histofuse.errors import RecipeError


def preflight(recipe_path: Path | str, overrides: list[str] | None = None):
    """``(recipe, registry, model)`` for a recipe file or a shipped recipe's name, or one error listing every problem."""
    from histofuse.contracts import check_contracts
    from histofuse.recipe import check_recipe, load_recipe
    from histofuse.recipe_files import resolve_recipe
    from histofuse.registry import default_registry
    from histofuse.summary import check_model
    from histofuse.training.trackers import tracker_problems

    recipe_path = resolve_recipe(Path(recipe_path))  # a bare name (quickstart) is a shipped recipe
    recipe = load_recipe(recipe_path, overrides or [])
    registry = default_registry()
    problems = check_recipe(recipe, registry) + tracker_problems(recipe.training.log_with)
    if problems:
        raise RecipeError(str(recipe_path), problems)
    problems, model = check_model(recipe, registry)
    if not problems:
        problems = check_contracts(recipe, registry, model)
    if problems:
        raise RecipeError(str(recipe_path), problems)
    return recipe, registry, model
