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


def code_blocks(path, language):
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


def test_the_plugin_example_in_the_docs_works(tmp_path):
    import importlib.util

    import cv2
    import numpy as np

    from histofuse.plugins import create_plugin_manager
    from histofuse.registry import Registry

    [source] = [b for b in code_blocks(REPO / "docs" / "plugins.md", "python") if "register_datasets" in b]
    (tmp_path / "my_lab_data.py").write_text(source)
    spec = importlib.util.spec_from_file_location("my_lab_data", tmp_path / "my_lab_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for label in ("benign", "malignant"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for patient in range(3):
            cv2.imwrite(str(tmp_path / "data" / label / f"{label[0]}{patient}_1.png"), np.zeros((4, 4, 3), np.uint8))
    dataset = Registry(create_plugin_manager(entry_points=False, plugins=(module,))).get("dataset", "my_lab")
    table = dataset.scan(tmp_path / "data")
    assert len(table) == 6 and table["group"].nunique() == 6


def test_the_recipe_snippets_in_the_docs_are_valid(tiny_recipe_dict, registry):
    """Every [data] snippet of the own-data and dataset pages parses and passes the registry's checks."""
    import tomllib

    from histofuse.recipe import check_recipe, parse_recipe

    snippets = [b for page in (REPO / "docs" / "datasets").glob("*.md") for b in code_blocks(page, "toml")]
    assert len(snippets) >= 3
    for snippet in snippets:
        parsed = tomllib.loads(snippet)
        raw = {**tiny_recipe_dict, **{k: v for k, v in parsed.items() if k != "evaluate"}}
        if "data" in parsed:
            raw["data"] = {**tiny_recipe_dict["data"], "options": {}, **parsed["data"]}
        if "evaluate" in parsed:
            raw["evaluate"] = parsed["evaluate"]
        problems = check_recipe(parse_recipe(raw), registry)
        assert problems == [], (snippet, problems)
