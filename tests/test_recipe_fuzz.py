"""Property test: any mutation of a valid recipe is accepted, or rejected with a validation message — never a
traceback, and never accepted only to crash when the model is built and its phases applied."""

import copy
import math

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY_RECIPE

SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 99, 1e-12, 1e308, -0.0, 0.5, 2**31]),
    st.text(max_size=12),
    st.sampled_from(["", "all", "none", "auto", "fast", "../../etc/passwd", "é测试"]),
    st.booleans(),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(min_size=1, max_size=6), SCALARS, max_size=2))


def paths(tree, prefix=()):
    """Every (path, value) in a nested dict/list."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        yield prefix + (key,), value
        if isinstance(value, (dict, list)):
            yield from paths(value, prefix + (key,))


def parent_of(tree, path):
    for key in path[:-1]:
        tree = tree[key]
    return tree


@st.composite
def mutated_recipes(draw):
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["data"]["root"] = "unused-by-recipe-check"
    for _ in range(draw(st.integers(1, 3))):
        candidates = list(paths(recipe))
        path, _ = draw(st.sampled_from(candidates))
        parent = parent_of(recipe, path)
        action = draw(st.sampled_from(["replace", "delete", "add", "empty_phases", "zero_lr", "unfreeze_more"]))
        if action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(VALUES)
        elif action == "empty_phases":
            recipe["phases"] = []
        elif action == "zero_lr" and recipe.get("phases"):
            phase = draw(st.sampled_from(recipe["phases"])) if isinstance(recipe["phases"], list) else None
            if isinstance(phase, dict):
                phase["lr"] = {"head": 0.0, "backbone": 0.0}
        elif action == "unfreeze_more" and isinstance(recipe.get("phases"), list) and recipe["phases"]:
            phase = draw(st.sampled_from(recipe["phases"]))
            if isinstance(phase, dict):
                phase["unfreeze"] = {"cnn": draw(st.integers(0, 10**6)), "vit": 99}
    return recipe


def cells(table, column: int) -> list:
    """The cells of one column of a rich Table, top to bottom."""
    return list(table.columns[column].cells)


def toml_or_none(recipe):
    try:
        return tomli_w.dumps(recipe)
    except (TypeError, ValueError):  # NaN in an integer position and the like: not writable as TOML at all
        return None


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_recipes())
def test_a_mutated_recipe_is_accepted_or_rejected_with_a_message(tmp_path_factory, recipe):
    from histofuse.errors import HistofuseError
    from histofuse.recipe import check_recipe, load_recipe
    from histofuse.registry import default_registry
    from histofuse.cli.tables import describe_recipe
    from histofuse.summary import check_model

    text = toml_or_none(recipe)
    if text is None:
        return
    path = tmp_path_factory.mktemp("fuzz") / "recipe.toml"
    path.write_text(text)
    registry = default_registry()
    try:
        parsed = load_recipe(path, [])
        problems = check_recipe(parsed, registry)
        if not problems:
            problems, model = check_model(parsed, registry)
    except HistofuseError as exc:
        message = str(exc)
        assert message.strip() and "Traceback" not in message
        return
    if problems:
        assert all(isinstance(p, str) and p.strip() for p in problems)
        return
    # Accepted: everything training needs before its first step must hold, and `recipe check` describes all of it.
    tables = describe_recipe(parsed, registry, model)
    backbones = [b.name for b in parsed.model.backbones]
    assert [t.row_count for t in tables] == [
        1 + len(backbones) + 1,  # components: the dataset, each backbone, the fusion
        len(backbones) + 1,  # sizes: each backbone, then fusion + head
        len(parsed.phases),  # one row per phase
        4,  # data: root, image size, split, batch size
        1 + len(parsed.evaluate),  # evaluation: the test split, then each external set
    ]
    components, sizes, phases = tables[:3]
    assert cells(components, 0) == ["data", *backbones, "fusion"] and cells(sizes, 0) == [*backbones, "fusion + head"]
    assert cells(phases, 1) == [p.name for p in parsed.phases]
    assert cells(phases, 2) == [str(p.epochs) for p in parsed.phases]
    assert parsed.phases and all(p.epochs >= 1 for p in parsed.phases)
    assert all(math.isfinite(v) for p in parsed.phases for v in (p.lr.head, p.lr.backbone))
    assert 0 < parsed.data.image_size and parsed.data.batch_size >= 1


@pytest.mark.parametrize("override", ["phases=[]", "phases[0].lr.head=0", "phases[1].unfreeze.cnn=99", "data.batch_size=-3",
                                      "training.label_smoothing=1.5", "seed=-1", "phases[0].epochs=0"])
def test_known_hostile_overrides_are_rejected_by_recipe_check(tmp_path, tiny_recipe_dict, override):
    """In the test process (a subprocess per case cost ~8 s of imports each); that the CLI turns these errors
    into exit code 2 without a traceback is test_run.py's test_recipe_errors_exit_2_with_the_key_path_and_no_traceback."""
    from conftest import write_toml
    from histofuse.errors import RecipeError
    from test_run import run_cli

    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    key = override.split("=")[0].split("[")[0].split(".")[0]
    with pytest.raises(RecipeError) as caught:
        run_cli(["recipe", "check", str(recipe), "--set", override])
    assert caught.value.exit_code == 2 and key in str(caught.value), str(caught.value)
