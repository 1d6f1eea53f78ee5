"""Docs stay in step with the code: every hook and every recipe key is documented."""

import inspect
import re

import pytest

from conftest import REPO
from histofuse import hookspecs, recipe

HOOKS_DOC = (REPO / "docs" / "hooks.md").read_text()
RECIPES_DOC = (REPO / "docs" / "recipes.md").read_text()


def hook_specs():
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if callable(fn) and hasattr(fn, "histofuse_spec")
    }


def test_hooks_doc_lists_every_hook_with_its_real_arguments():
    documented = dict(re.findall(r"^### `(\w+)\(([^)]*)\)`", HOOKS_DOC, flags=re.M))
    expected = {name: ", ".join(inspect.signature(fn).parameters) for name, fn in hook_specs().items()}
    assert documented == expected


@pytest.mark.parametrize(
    "model",
    [recipe.Recipe, recipe.DataConfig, recipe.SplitConfig, recipe.ModelConfig, recipe.BackboneConfig, recipe.HeadConfig,
     recipe.TrainingConfig, recipe.PlateauConfig, recipe.EarlyStoppingConfig, recipe.PhaseConfig,
     recipe.EvaluationConfig, recipe.NormalizerConfig, recipe.ExternalSetConfig, recipe.QCConfig,
     recipe.MagnificationConfig],
    ids=lambda m: m.__name__,
)
def test_recipe_doc_lists_every_key(model):
    def documented(key):
        return f"| `{key}` |" in RECIPES_DOC or re.search(rf"^#+ `\[+([a-z_]+\.)?{key}\]+`", RECIPES_DOC, flags=re.M)

    missing = [f for f in model.model_fields if not documented(f)]
    assert missing == []


def test_readme_commands_match_ci():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    test_command = 'pip install -e ".[dev]" && python -m pytest -q'
    assert test_command in readme and test_command in ci
    assert "pip install -e . && histofuse run recipes/quickstart.toml" in readme
